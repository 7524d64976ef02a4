"""The Avalanche strategy on an offline benchmark built from Fashion-MNIST tensors (a few hundred
images per experience): Avalanche's metrics see the training loss and accuracy, evaluation with
task labels matches the learner's own, task-free evaluation uses ``infer_task`` (the experiences'
fingerprints), checkpointing resumes."""

import re
from pathlib import Path

import pytest
import torch
from avalanche.benchmarks import tensors_benchmark
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
from avalanche.training.plugins import EvaluationPlugin

from impresslearn import ImpressLearner, TrainConfig
from impresslearn.integrations.avalanche import ImpressLearnStrategy
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


def new_strategy(**kwargs):
    learner = ImpressLearner(create_model("lenet300", num_classes=10, seed=0, hidden=[64, 32]), density=0.2)
    kwargs.setdefault("evaluator", EvaluationPlugin(accuracy_metrics(epoch=True, experience=True),
                                                    loss_metrics(epoch=True, experience=True), loggers=[]))
    return ImpressLearnStrategy(learner=learner, basis_experiences=2, random_masks=6, mask_train=MASK, alpha_train=ALPHA,
                                **kwargs)


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
