"""The Avalanche strategy on an offline benchmark built from Fashion-MNIST tensors (a few hundred
images per experience): Avalanche's metrics see the training loss and accuracy, evaluation with
task labels matches the learner's own, task-free evaluation uses ``infer_task`` (the experiences'
fingerprints), checkpointing resumes, fingerprint failures follow ``learn_*``'s policy (refused
before training, or the trained task kept)."""

import math
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("avalanche", reason="the Avalanche extra (impresslearn[avalanche]) is not installed")

from avalanche.benchmarks import tensors_benchmark
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import EvaluationPlugin

from impresslearn import ImpressLearner, TrainConfig
from impresslearn.inference import task_fingerprint
from impresslearn.integrations.avalanche import ImpressLearnStrategy, TrainedExperienceNotStoredError
from impresslearn.learner import TrainedTaskNotStoredError
from impresslearn.models import create_model
from impresslearn.scenarios import BatchLoader, create_scenario

pytestmark = pytest.mark.filterwarnings("ignore:.*optimiser steps:UserWarning", "ignore:No loggers specified")

REPO = Path(__file__).resolve().parents[2]
MASK = TrainConfig(epochs=2, lr=0.01, optimizer="adam", batch_size=32, seed=0)
ALPHA = TrainConfig(epochs=2, lr=0.05, optimizer="adam", batch_size=32, seed=0)


def fmnist_tensors(num_tasks=3, train=300, test=100):
    scenario = create_scenario("permuted_fmnist", num_tasks=num_tasks, train_subset=train, test_subset=test, seed=0)
    return ([scenario.task(t).train.tensors for t in range(num_tasks)],
            [scenario.task(t).test.tensors for t in range(num_tasks)])


@pytest.fixture(scope="module")
def data():
    return fmnist_tensors()


def benchmark(data, task_labels=(0, 1, 2)):
    train, test = data
    return tensors_benchmark(train_tensors=train, test_tensors=test, task_labels=list(task_labels))


def new_strategy(*, fingerprint_examples=None, **kwargs):
    model = create_model("lenet300", num_classes=10, seed=0, hidden=[64, 32])
    examples = {} if fingerprint_examples is None else {"fingerprint_examples": fingerprint_examples}
    learner = ImpressLearner(model, density=0.2, **examples)
    kwargs.setdefault("evaluator", EvaluationPlugin(accuracy_metrics(epoch=True, experience=True),
                                                    loss_metrics(epoch=True, experience=True), loggers=[]))
    kwargs.setdefault("basis_experiences", 2)
    return ImpressLearnStrategy(learner=learner, random_masks=6, mask_train=MASK, alpha_train=ALPHA, **kwargs)


class LossRecorder(SupervisedPlugin):
    """What an Avalanche plugin sees after every training iteration."""

    def __init__(self):
        super().__init__()
        self.losses = []

    def after_training_iteration(self, strategy, **kwargs):
        self.losses.append((strategy.clock.train_exp_counter, strategy.clock.train_exp_epochs, strategy.loss.item()))


def test_training_runs_in_avalanches_loop_and_its_metrics_see_it(data):
    recorder = LossRecorder()
    strategy = new_strategy(plugins=[recorder])
    bm = benchmark(data)
    metrics = {}
    for experience in bm.train_stream:
        metrics = strategy.train(experience)
    learner = strategy.learner
    assert [r.kind for r in learner.tasks.values()] == ["basis", "basis", "new"]
    assert list(learner.tasks) == ["experience 0", "experience 1", "experience 2"]
    assert learner.num_masks == 2 + 6
    # Avalanche's own metrics saw the training loss and accuracy of every experience
    for t in range(3):
        acc = metrics[f"Top1_Acc_Epoch/train_phase/train_stream/Task00{t}"]
        loss = metrics[f"Loss_Epoch/train_phase/train_stream/Task00{t}"]
        # chance is 0.1 and ln(10) = 2.3; an alpha task over 8 masks learns slower than a mask
        assert (0.3 if t < 2 else 0.15) < acc <= 1.0 and 0.0 < loss < 2.3, (t, acc, loss)
    # ...iteration by iteration: 300 images / 32 = 10 iterations x 2 epochs per experience
    assert len(recorder.losses) == 3 * 2 * 10
    for exp in range(3):
        first = [loss for e, ep, loss in recorder.losses if e == exp and ep == 0]
        last = [loss for e, ep, loss in recorder.losses if e == exp and ep == 1]
        assert sum(last) / len(last) < sum(first) / len(first), f"experience {exp} did not learn"


def test_task_label_and_task_free_evaluation(data):
    strategy = new_strategy(eval_mb_size=50)
    bm = benchmark(data)
    for experience in bm.train_stream:
        strategy.train(experience)
    with_labels = strategy.eval(bm.test_stream)
    learner = strategy.learner
    for t in range(3):
        ours = learner.evaluate(f"experience {t}", BatchLoader(torch.utils.data.TensorDataset(*data[1][t]), 50))
        assert with_labels[f"Top1_Acc_Exp/eval_phase/test_stream/Task00{t}/Exp00{t}"] == pytest.approx(ours)
    assert strategy.module.last_inferred == []  # labels were used, nothing inferred

    strategy.module.task_free = True
    free = strategy.eval(bm.test_stream)
    picks = strategy.module.last_inferred
    assert len(picks) == 3 * 2 and set(picks) <= set(learner.tasks)  # one GN decision per batch of 50
    # the same decisions, made by the learner itself, give the same accuracy
    for t in range(3):
        x_all, y_all = data[1][t]
        correct = 0
        for i, (x, y) in enumerate(BatchLoader(torch.utils.data.TensorDataset(x_all, y_all), 50)):
            name = learner.infer_task(x)
            assert name == picks[2 * t + i]
            correct += (learner.predict(name, x).argmax(1) == y).sum().item()
        assert free[f"Top1_Acc_Exp/eval_phase/test_stream/Task00{t}/Exp00{t}"] == pytest.approx(correct / len(y_all))


def test_shared_task_label_means_task_free(data):
    """Domain-incremental: every experience carries label 0, so no label names a task: GN decides."""
    strategy = new_strategy(eval_mb_size=100)
    bm = benchmark(data, task_labels=(0, 0, 0))
    for experience in bm.train_stream:
        strategy.train(experience)
    assert strategy.module.task_for_label(0) is None
    strategy.eval(bm.test_stream)
    assert len(strategy.module.last_inferred) == 3


def test_infer_task_works_under_no_grad_and_inference_mode(data):
    strategy = new_strategy()
    strategy.train(benchmark(data).train_stream[0])
    x = data[1][0][0][:20]
    with torch.no_grad():
        a = strategy.learner.infer_task(x)
    with torch.inference_mode():
        b = strategy.learner.infer_task(x)
    assert a == b == "experience 0"


def test_avalanche_checkpoint_resumes_to_the_same_state(data, tmp_path):
    from avalanche.training.determinism.rng_manager import RNGManager
    from avalanche.checkpointing import maybe_load_checkpoint, save_checkpoint

    bm = benchmark(data)

    def train(strategy, start):
        for experience in bm.train_stream[start:]:
            RNGManager.set_random_seeds(experience.current_experience)  # Avalanche's data order per experience
            strategy.train(experience)

    straight = new_strategy()
    train(straight, 0)

    path = tmp_path / "checkpoint.pkl"
    first = new_strategy()
    train_one = bm.train_stream[0]
    RNGManager.set_random_seeds(0)
    first.train(train_one)
    save_checkpoint(first, str(path))
    hash_at_save = first.learner.state_sha256()
    del first

    resumed, start = maybe_load_checkpoint(new_strategy(), str(path))
    assert start == 1 and resumed.learner.state_sha256() == hash_at_save
    assert list(resumed.learner.tasks) == ["experience 0"]
    train(resumed, start)
    assert resumed.learner.state_sha256() == straight.learner.state_sha256()
    assert resumed.eval(bm.test_stream) == straight.eval(bm.test_stream)


def test_a_failed_experience_stores_nothing(data):
    class Boom(SupervisedPlugin):
        def after_training_iteration(self, strategy, **kwargs):
            raise KeyboardInterrupt("stopped")

    strategy = new_strategy(plugins=[Boom()])
    with pytest.raises(KeyboardInterrupt):
        strategy.train(benchmark(data).train_stream[0])
    assert strategy.learner.num_tasks == 0 and strategy.module.objective is None
    strategy.plugins = [p for p in strategy.plugins if not isinstance(p, Boom)]
    strategy.train(benchmark(data).train_stream[0])
    assert list(strategy.learner.tasks) == ["experience 0"]


def test_bad_arguments_are_refused():
    learner = ImpressLearner(create_model("lenet300", num_classes=10, seed=0, hidden=[8, 8]), density=0.2)
    with pytest.raises(ValueError, match="basis_experiences: must be >= 0"):
        ImpressLearnStrategy(learner=learner, basis_experiences=-1)
    with pytest.raises(TypeError, match="random_masks: must be an integer"):
        ImpressLearnStrategy(learner=learner, basis_experiences=1, random_masks=2.0)
    with pytest.raises(ValueError, match="the bank would stay empty"):
        ImpressLearnStrategy(learner=learner, basis_experiences=0)
    with pytest.raises(TypeError, match="mask_train must be an impresslearn TrainConfig"):
        ImpressLearnStrategy(learner=learner, basis_experiences=1, mask_train={"lr": 0.1})


def test_readme_avalanche_snippet_runs():
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    (snippet,) = [b for b in blocks if "ImpressLearnStrategy" in b]
    # the README's sizes, shrunk for a CPU test
    small = snippet.replace("train_subset=5000, test_subset=1000", "train_subset=200, test_subset=100")
    assert small != snippet
    namespace = {}
    exec(compile(small, "README.md", "exec"), namespace)
    strategy = namespace["strategy"]
    assert list(strategy.learner.tasks) == ["experience 0", "experience 1", "experience 2"]


def test_hybrid_alpha_experiences_and_a_head_too_small(data):
    strategy = new_strategy(hybrid=True)
    bm = benchmark(data)
    for experience in bm.train_stream:
        strategy.train(experience)
    record = strategy.learner.tasks["experience 2"]
    assert record.kind == "hybrid" and record.extra_index == 0
    strategy.eval(bm.test_stream)

    train, test = data
    shifted = tensors_benchmark(train_tensors=[(train[0][0], train[0][1] + 5)], test_tensors=[test[0]],
                                task_labels=[0])
    small = new_strategy()
    with pytest.raises(ValueError, match="class labels up to 14 but the model has 10 outputs"):
        small.train(shifted.train_stream[0])
    assert small.learner.num_tasks == 0


class IterationCounter(SupervisedPlugin):
    """Counts training iterations (optimiser steps), per experience."""

    def __init__(self):
        super().__init__()
        self.steps = {}

    def before_training_iteration(self, strategy, **kwargs):
        exp = strategy.experience.current_experience
        self.steps[exp] = self.steps.get(exp, 0) + 1


def learner_state(learner):
    """Masks, tasks and fingerprints (the hash covers the banks, coefficients, BN statistics and fingerprints)."""
    return learner.num_masks, list(learner.tasks), dict(learner.fingerprints), learner.state_sha256()


def fingerprint_loader(strategy, experience, cfg, seed_offset):
    """The inputs the strategy fingerprints an experience with: its training set in the order of a
    generator seeded ``cfg.seed`` + the experiences stored before it."""
    generator = torch.Generator().manual_seed(cfg.seed + seed_offset)
    return torch.utils.data.DataLoader(experience.dataset, batch_size=cfg.batch_size, shuffle=True, generator=generator)


@pytest.mark.parametrize("phase", ["basis", "alpha"])
@pytest.mark.parametrize("cause, match", [
    ("another sketch", r"input size 784, sketch_dim 64.*\(784, 32, 0\): they could not be compared"),
    ("moments beyond fp16", "do not fit the fingerprint's fp16"),
    ("NaN in the inputs", "NaN or infinite"),
    ("one input", "at least 2 examples"),
])  # fmt: skip
def test_input_fingerprint_failures_refuse_the_experience_before_any_training_step(data, phase, cause, match):
    """The sketch depends on the experience's inputs alone, so it is measured before training: a
    refusal takes no training step and leaves the learner as it was (the first alpha experience has
    not added its random masks yet); the strategy then trains a good experience as usual."""
    counter = IterationCounter()
    strategy = new_strategy(plugins=[counter], basis_experiences=2 if phase == "basis" else 0)
    train, test = data
    x, y = train[0]
    if cause == "another sketch":  # experience 0 stored, its fingerprint replaced by one of a 32-dim sketch
        strategy.train(benchmark(data).train_stream[0])
        strategy.learner.add_fingerprint("experience 0", task_fingerprint(x, sketch_dim=32))
        refused = benchmark(data).train_stream[1]
    else:
        if cause == "moments beyond fp16":  # un-normalised inputs: sketch variances ~1e8
            x = x * 1e4
        elif cause == "NaN in the inputs":
            x = x.clone()
            x[17, 0, 5, 5] = float("nan")
        elif cause == "one input":
            x, y = x[:1], y[:1]
        refused = tensors_benchmark(train_tensors=[(x, y)], test_tensors=[test[0]], task_labels=[0]).train_stream[0]
    before, steps_before = learner_state(strategy.learner), dict(counter.steps)
    stored_before = strategy.trained_experiences
    with pytest.raises(ValueError, match=match):
        strategy.train(refused)
    assert counter.steps == steps_before  # not one training step
    assert learner_state(strategy.learner) == before
    assert strategy.module.objective is None and strategy.trained_experiences == stored_before
    if cause != "another sketch":
        assert strategy.learner.num_masks == 0  # neither a basis mask nor the random masks
        strategy.train(benchmark(data).train_stream[0])
        assert list(strategy.learner.tasks) == ["experience 0"] and counter.steps == {0: 2 * 10}


def test_the_stored_fingerprints_are_those_of_the_experiences_inputs_and_trained_tasks(data):
    """Sketch before training plus entropy after it: the fingerprint a commit measures from the seeded
    loader of the experience's training inputs, with the stored task (the one the plugin stored when it
    measured both after training), for basis and alpha experiences alike."""
    strategy = new_strategy(fingerprint_examples=128)  # fewer than the 300 inputs: the read order matters
    bm = benchmark(data)
    for experience in bm.train_stream:
        strategy.train(experience)
    learner = strategy.learner
    for index, (experience, cfg) in enumerate(zip(bm.train_stream, (MASK, MASK, ALPHA))):
        name = f"experience {index}"
        expected = task_fingerprint(fingerprint_loader(strategy, experience, cfg, index), learner=learner, name=name,
                                    max_examples=128)  # fmt: skip
        stored = learner.fingerprints[name]
        assert torch.equal(stored.mean, expected.mean) and torch.equal(stored.var, expected.var), name
        assert math.isfinite(stored.entropy) and stored.entropy == pytest.approx(expected.entropy, rel=1e-6), name


def test_the_pass_before_training_leaves_the_training_batches_alone(data):
    """A transform that draws from the global RNG (noise augmentation) sees the same draws in training
    with fingerprints as without: the sketch pass before training puts the RNG back."""
    train, test = data
    noisy = tensors_benchmark(train_tensors=train, test_tensors=test, task_labels=[0, 1, 2],
                              train_transform=lambda x: x + 0.5 * torch.randn_like(x))  # fmt: skip
    learned = {}
    for examples in (0, 64):
        strategy = new_strategy(fingerprint_examples=examples)
        for experience in noisy.train_stream:
            RNGManager.set_random_seeds(experience.current_experience)
            strategy.train(experience)
        learner = strategy.learner
        learned[examples] = ([layer.masks() for layer in learner.layers],
                             [rec.coefficients for rec in learner.tasks.values()])
        assert len(learner.fingerprints) == (3 if examples else 0)
    for a, b in zip(learned[0][0] + learned[0][1], learned[64][0] + learned[64][1], strict=True):
        assert torch.equal(a, b)


class PoisonAfterTraining(SupervisedPlugin):
    """After the last training epoch, makes the last layer's weight NaN (logits NaN: the entropy
    baseline cannot be measured, as after a diverged run); ``restore`` puts it back."""

    def __init__(self):
        super().__init__()
        self.saved = None
        self.epochs = 0

    def after_training_epoch(self, strategy, **kwargs):
        self.epochs += 1
        if self.epochs == strategy.train_epochs:
            weight = strategy.learner.layers[-1].weight
            self.saved = weight.detach().clone()
            with torch.no_grad():
                weight.fill_(float("nan"))

    def restore(self, strategy):
        with torch.no_grad():
            strategy.learner.layers[-1].weight.copy_(self.saved)


@pytest.mark.parametrize("then", ["store", "store without fingerprint", "discard"])
def test_an_entropy_that_fails_after_training_keeps_the_trained_experience(data, then):
    """The entropy baseline needs the trained task: when it fails, nothing is stored but the error holds
    the trained objective; ``store_trained`` stores it as the experience (same mask and sketch as an
    undisturbed run, entropy NaN) and the strategy carries on; a discarded one can be trained again."""
    bm = benchmark(data)

    def train(strategy, experience):
        RNGManager.set_random_seeds(experience.current_experience)  # Avalanche's data order per experience
        strategy.train(experience)

    reference = new_strategy()
    for experience in bm.train_stream[:2]:
        train(reference, experience)

    poison = PoisonAfterTraining()
    strategy = new_strategy(plugins=[poison])
    before = learner_state(strategy.learner)
    message = r"experience 0 was trained \(20 steps\).*FloatingPointError.*strategy\.store_trained"
    with pytest.raises(TrainedExperienceNotStoredError, match=message) as caught:
        train(strategy, bm.train_stream[0])
    err = caught.value
    assert isinstance(err, TrainedTaskNotStoredError) and isinstance(err.__cause__, FloatingPointError)
    assert learner_state(strategy.learner) == before  # nothing stored
    assert strategy.module.objective is None and strategy.trained_experiences == 0
    assert err.config == MASK and err.task_labels == {0} and err.history.steps == 20
    assert math.isnan(err.fingerprint.entropy)
    poison.restore(strategy)
    strategy.plugins = [p for p in strategy.plugins if p is not poison]
    if then.startswith("store"):
        record = strategy.store_trained(err, fingerprint=then == "store")
        assert record.name == "experience 0" and strategy.task_records == [record]
        if then == "store":
            stored = strategy.learner.fingerprints["experience 0"]
            expected = reference.learner.fingerprints["experience 0"]
            assert torch.equal(stored.mean, expected.mean) and torch.equal(stored.var, expected.var)
            assert math.isnan(stored.entropy) and math.isfinite(expected.entropy)
        else:
            assert strategy.learner.fingerprints == {}
        with pytest.raises(RuntimeError, match="already committed"):
            strategy.store_trained(err)
    else:
        err.objective.discard()
        train(strategy, bm.train_stream[0])
    assert strategy.module.task_for_label(0) == "experience 0" and strategy.trained_experiences == 1
    train(strategy, bm.train_stream[1])  # the next experience is the second basis mask, as in the reference
    for ours, theirs in zip(strategy.learner.layers, reference.learner.layers):
        assert torch.equal(ours.masks(), theirs.masks())
    assert list(strategy.learner.tasks) == list(reference.learner.tasks)


def test_store_trained_refuses_what_is_not_its_own(data):
    strategy, other = new_strategy(plugins=[PoisonAfterTraining()]), new_strategy()
    with pytest.raises(TrainedExperienceNotStoredError) as caught:
        strategy.train(benchmark(data).train_stream[0])
    with pytest.raises(ValueError, match="trained on another learner than this strategy's"):
        other.store_trained(caught.value)
    with pytest.raises(TypeError, match="takes a TrainedExperienceNotStoredError, got ValueError"):
        strategy.store_trained(ValueError("x"))
    assert other.learner.num_tasks == 0 and strategy.learner.num_tasks == 0
