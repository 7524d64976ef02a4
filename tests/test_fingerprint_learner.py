"""The learner's task fingerprints: computed when a task is learned or committed, saved and
reloaded with their checks, counted per task, and what ``infer_task`` uses by default."""

import math
import warnings

import pytest
import torch

from impresslearn import ImpressLearner, TrainConfig
from impresslearn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from impresslearn.inference import TaskFingerprint, infer_task, task_fingerprint
from impresslearn.learner import FINGERPRINT_EXAMPLES
from impresslearn.models import create_model
from impresslearn.objectives import AlphaObjective, fit
from impresslearn.scenarios import BatchLoader, create_scenario
from tests.test_learner import _tiny_lenet, permuted_fmnist_or_skip

# tiny synthetic tasks train in a few steps: fit's "too few steps" warning is expected here
pytestmark = pytest.mark.filterwarnings("ignore:.*optimiser steps")

MASK_CFG = TrainConfig(epochs=1, lr=0.1, batch_size=32)
ALPHA_CFG = TrainConfig(epochs=1, lr=0.05, optimizer="adam", momentum=0.9, batch_size=32)
SKETCH_BYTES = 4 * 64 + 4  # the default sketch: 64 fp16 means and variances and one fp32 entropy


def _loader(ds, seed=0, batch_size=32):
    return BatchLoader(ds, batch_size=batch_size, shuffle=True, seed=seed)


class CountingLoader:
    """A loader that counts the examples drawn from it (training epochs and the fingerprint pass)."""

    def __init__(self, loader):
        self.loader, self.drawn = loader, 0

    def __iter__(self):
        for x, y in self.loader:
            self.drawn += x.shape[0]
            yield x, y


@pytest.fixture(scope="module")
def synthetic():
    sc = create_scenario("synthetic", num_tasks=4, train_size=256, test_size=128, seed=0)
    torch.manual_seed(0)
    learner = ImpressLearner(_tiny_lenet(), density=0.3)
    learner.learn_basis_mask("t0", _loader(sc.task(0).train, 0), MASK_CFG)
    learner.learn_basis_mask("t1", _loader(sc.task(1).train, 1), MASK_CFG)
    learner.add_random_masks(6, seed=0)
    learner.learn_alpha("t2", _loader(sc.task(2).train, 2), ALPHA_CFG)
    learner.learn_alpha("t3", _loader(sc.task(3).train, 3), ALPHA_CFG, hybrid=True)
    batches = {f"t{t}": sc.task(t).test.inputs[:64] for t in range(4)}
    return sc, learner, batches


# ----------------------------------------------------------------------------- computed when learned


def test_learned_tasks_get_fingerprints(synthetic):
    sc, learner, batches = synthetic
    assert [learner.tasks[n].kind for n in learner.tasks] == ["basis", "basis", "new", "hybrid"]
    assert set(learner.fingerprints) == set(learner.tasks)
    for name, fp in learner.fingerprints.items():
        assert isinstance(fp, TaskFingerprint) and fp.sketch_dim == 64 and fp.input_size == 28 * 28
        assert fp.mean.dtype == fp.var.dtype == torch.float16 and fp.nbytes == SKETCH_BYTES
        assert math.isfinite(fp.entropy) and fp.entropy >= 0, name  # the calibrated method's baseline
    # the default method reads them, and each task's own test batch is matched to it
    for name, x in batches.items():
        res = infer_task(learner, x)
        assert res.method == "fingerprint" and res.task == name
        assert learner.infer_task(x) == name


def test_fingerprint_reads_at_most_fingerprint_examples_inputs():
    sc = create_scenario("synthetic", num_tasks=2, train_size=256, test_size=64, seed=0)
    learner = ImpressLearner(_tiny_lenet(), density=0.3, fingerprint_examples=64)
    loader = CountingLoader(_loader(sc.task(0).train))
    learner.learn_basis_mask("a", loader, MASK_CFG)
    # two batches of 32 for the sketch before training, one epoch, two batches for the entropy after
    assert loader.drawn == 64 + 256 + 64
    assert "a" in learner.fingerprints

    off = ImpressLearner(_tiny_lenet(), density=0.3, fingerprint_examples=0)
    off.learn_basis_mask("a", _loader(sc.task(0).train), MASK_CFG)
    assert off.fingerprints == {} and off.bytes_per_task("a").fingerprint == 0
    assert FINGERPRINT_EXAMPLES == 8192
    with pytest.raises(ValueError, match="fingerprint_examples"):
        ImpressLearner(_tiny_lenet(), density=0.3, fingerprint_examples=-1)


def test_add_fingerprint_and_commit_from_a_users_own_loop():
    sc = create_scenario("synthetic", num_tasks=3, train_size=256, test_size=64, seed=0)
    learner = ImpressLearner(_tiny_lenet(), density=0.3)
    learner.add_random_masks(8, seed=0)
    inputs = sc.task(0).train.inputs

    # the user's loop: commit with fingerprint_inputs
    objective = AlphaObjective(learner)
    optimizer = torch.optim.Adam(objective.parameters(), lr=0.05)
    for x, y in _loader(sc.task(0).train):
        loss = objective(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    objective.commit("own", fingerprint_inputs=_loader(sc.task(0).train))
    assert learner.fingerprints["own"].nbytes == SKETCH_BYTES

    # committed without: no fingerprint until add_fingerprint; the default then falls back to GN
    objective = AlphaObjective(learner)
    fit(objective, _loader(sc.task(1).train), ALPHA_CFG)
    objective.commit("later")
    assert "later" not in learner.fingerprints
    assert infer_task(learner, sc.task(1).test.inputs[:32]).method == "binary"
    fp = learner.add_fingerprint("later", sc.task(1).train.inputs, max_examples=100)
    expected = task_fingerprint(sc.task(1).train.inputs[:100], learner=learner, name="later")
    assert torch.equal(fp.mean, expected.mean) and torch.equal(fp.var, expected.var)
    assert fp.entropy == pytest.approx(expected.entropy)
    assert infer_task(learner, sc.task(1).test.inputs[:32]).method == "fingerprint"

    with pytest.raises(KeyError, match="no task named"):
        learner.add_fingerprint("missing", inputs)
    other_sketch = task_fingerprint(inputs, sketch_dim=16)
    with pytest.raises(ValueError, match="does not match the stored ones"):
        learner.add_fingerprint("own", other_sketch)
    with pytest.raises(ValueError, match="at least 2 examples"):
        learner.add_fingerprint("own", inputs[:1])
    assert learner.fingerprints["own"].sketch_dim == 64  # the refused ones changed nothing


def test_bytes_per_task_count_the_fingerprint(synthetic):
    sc, learner, _ = synthetic
    report = learner.storage_report()
    assert report["fingerprint_bytes"] == 4 * SKETCH_BYTES
    per_task = [learner.bytes_per_task(n) for n in learner.tasks]
    assert all(b.fingerprint == SKETCH_BYTES for b in per_task)
    for b in per_task:
        assert b.total == pytest.approx(b.mask_bits + b.coefficients + b.bn_stats + b.bank_share + SKETCH_BYTES)
    assert sum(b.total for b in per_task) == pytest.approx(report["total_bytes"])
    # a new task learned the same way stores a fingerprint too
    assert report["new_task_bytes"] == learner.bytes_per_task("t2").coefficients + SKETCH_BYTES


# ----------------------------------------------------------------------------- saved and loaded


def test_save_load_keeps_fingerprints_and_the_same_picks(synthetic, tmp_path):
    sc, learner, batches = synthetic
    path = tmp_path / "learner.safetensors"
    learner.save(path)
    loaded = ImpressLearner.load(path)
    assert set(loaded.fingerprints) == set(learner.fingerprints)
    for name, fp in learner.fingerprints.items():
        got = loaded.fingerprints[name]
        assert torch.equal(got.mean, fp.mean) and torch.equal(got.var, fp.var) and got.same_sketch(fp)
        assert got.entropy == torch.tensor(fp.entropy, dtype=torch.float32).item()  # stored as fp32
    for x in batches.values():
        a, b = infer_task(learner, x), infer_task(loaded, x)
        assert a.method == b.method == "fingerprint" and a.task == b.task
        assert a.scores == pytest.approx(b.scores)
    assert loaded.storage_report()["fingerprint_bytes"] == learner.storage_report()["fingerprint_bytes"]


def test_checkpoints_without_fingerprints_load_with_none(synthetic, tmp_path):
    sc, learner, batches = synthetic
    path = tmp_path / "learner.safetensors"
    learner.save(path)
    tensors, meta = load_checkpoint(path)
    # as written before fingerprints existed: no fingerprint tensors, keys or sketch
    tensors = {k: v for k, v in tensors.items() if not k.startswith("fingerprints.")}
    meta = dict(meta, tasks=[{k: v for k, v in t.items() if k != "fingerprint"} for t in meta["tasks"]])
    del meta["fingerprint_sketch"]
    old = tmp_path / "old.safetensors"
    save_checkpoint(old, tensors, meta)
    loaded = ImpressLearner.load(old)
    assert loaded.fingerprints == {} and list(loaded.tasks) == list(learner.tasks)
    assert infer_task(loaded, batches["t0"]).method == "binary"  # GN, as before


def _damaged(learner, tmp_path, change):
    path = tmp_path / "learner.safetensors"
    learner.save(path)
    tensors, meta = load_checkpoint(path)
    change(tensors, meta)
    bad = tmp_path / "bad.safetensors"
    save_checkpoint(bad, tensors, meta)
    return bad


def _set(key, value):
    def change(tensors, meta):
        tensors[key] = value

    return change


@pytest.mark.parametrize(
    "change, message",
    [
        (_set("fingerprints.2.mean", torch.full((64,), float("nan"), dtype=torch.float16)), "not finite"),
        (_set("fingerprints.0.var", torch.full((64,), float("inf"), dtype=torch.float16)), "not finite"),
        (_set("fingerprints.1.var", torch.zeros(64, dtype=torch.float16)), "variance is <= 0"),
        (_set("fingerprints.3.mean", torch.zeros(63, dtype=torch.float16)), "are not fp16 \\[64\\]"),
        (_set("fingerprints.3.var", torch.ones(64, dtype=torch.float32)), "are not fp16 \\[64\\]"),
        (_set("fingerprints.2.entropy", torch.tensor([-1.0])), "entropy"),
        (_set("fingerprints.2.entropy", torch.tensor([1.0, 2.0])), "entropy"),
        (lambda tensors, meta: tensors.pop("fingerprints.1.var"), "missing entry"),
        (lambda tensors, meta: meta["fingerprint_sketch"].update(sketch_dim=32), "are not fp16 \\[32\\]"),
        (lambda tensors, meta: meta.update(fingerprint_sketch=None), "fingerprint_sketch"),
        (lambda tensors, meta: meta["fingerprint_sketch"].update(seed="zero"), "fingerprint_sketch"),
        (lambda tensors, meta: meta["tasks"][0].update(fingerprint="yes"), "not true/false"),
    ],
)
def test_a_damaged_or_mismatched_fingerprint_is_refused_at_load(synthetic, tmp_path, change, message):
    sc, learner, _ = synthetic
    with pytest.raises(CheckpointError, match=message):
        ImpressLearner.load(_damaged(learner, tmp_path, change))


# ----------------------------------------------------------------------------- where GN fails


def test_fingerprints_identify_alpha_task_batches_where_gn_fails():
    """Permuted Fashion-MNIST, 2000 images per task: GN names the basis tasks but not one batch
    of the alpha tasks (issue 13: 0%); the fingerprints the learner stored name all of them."""
    sc = permuted_fmnist_or_skip(4, train_subset=2000, test_subset=512)
    torch.manual_seed(0)
    learner = ImpressLearner(create_model("lenet300", seed=0, hidden=[64, 32]), density=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in range(2):
            learner.learn_basis_mask(f"t{t}", _loader(sc.task(t).train, t), MASK_CFG)
        learner.add_random_masks(6, seed=0)
        for t in (2, 3):
            learner.learn_alpha(f"t{t}", _loader(sc.task(t).train, t), ALPHA_CFG)
    hits = {m: [0] * 4 for m in ("auto", "oneshot", "binary")}
    for t in range(4):
        for x in sc.task(t).test.inputs.split(128):  # 4 batches of 128 per task
            for method in hits:
                hits[method][t] += learner.infer_task(x, method=method) == f"t{t}"
    assert hits["auto"] == [4, 4, 4, 4], hits
    assert hits["oneshot"][2:] == hits["binary"][2:] == [0, 0], hits  # GN never finds the alpha tasks


@pytest.mark.filterwarnings("ignore:No loggers specified")
def test_avalanche_task_free_evaluation_uses_the_experiences_fingerprints():
    """Each committed experience stores its fingerprint; task-free evaluation then names the
    alpha experience's batches too (the README example's GN found none of them)."""
    pytest.importorskip("avalanche", reason="the Avalanche extra is not installed")
    from avalanche.benchmarks import tensors_benchmark
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training.plugins import EvaluationPlugin

    from impresslearn.integrations.avalanche import ImpressLearnStrategy

    sc = create_scenario("synthetic", num_tasks=3, train_size=256, test_size=128, seed=0)
    bm = tensors_benchmark(train_tensors=[sc.task(t).train.tensors for t in range(3)],
                           test_tensors=[sc.task(t).test.tensors for t in range(3)], task_labels=[0, 1, 2])  # fmt: skip
    learner = ImpressLearner(_tiny_lenet(), density=0.3, fingerprint_examples=128)
    strategy = ImpressLearnStrategy(learner=learner, basis_experiences=2, random_masks=6, mask_train=MASK_CFG,
                                    alpha_train=ALPHA_CFG, task_free=True, eval_mb_size=64,
                                    evaluator=EvaluationPlugin(accuracy_metrics(experience=True), loggers=[]))  # fmt: skip
    for experience in bm.train_stream:
        strategy.train(experience)
    names = [f"experience {t}" for t in range(3)]
    assert list(learner.tasks) == names and set(learner.fingerprints) == set(names)
    assert learner.tasks["experience 2"].kind == "new"
    for t, experience in enumerate(bm.test_stream):
        strategy.module.last_inferred = []
        strategy.eval([experience])
        assert strategy.module.last_inferred == [names[t]] * 2  # both batches of 64
    x = sc.task(2).test.inputs[:64]
    assert infer_task(learner, x).method == "fingerprint"
