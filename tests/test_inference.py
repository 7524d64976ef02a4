"""Task inference without labels (impresslearn.inference): scores, methods, fingerprints, errors."""

import math
import re
import warnings

import pytest
import torch

from impresslearn import ImpressLearner, TrainConfig
from impresslearn import inference
from impresslearn.inference import (TaskFingerprint, TaskInference, infer_task, infer_task_name, task_entropy,
                                    task_fingerprint)
from impresslearn.models import create_model
from impresslearn.scenarios import BatchLoader, create_scenario

ALPHA_CFG = TrainConfig(epochs=2, lr=0.05, optimizer="adam", momentum=0.9)
MASK_CFG = TrainConfig(epochs=2, lr=0.1)


def _loader(ds, batch_size=32, seed=0):
    return BatchLoader(ds, batch_size=batch_size, shuffle=True, seed=seed)


@pytest.fixture(scope="module")
def mixed():
    """Synthetic data, tiny LeNet: 3 basis tasks, 13 random masks, one new and one hybrid task."""
    sc = create_scenario("synthetic", num_tasks=5, train_size=256, test_size=128, seed=0)
    torch.manual_seed(0)
    learner = ImpressLearner(create_model("lenet300", num_classes=10, seed=0, hidden=[32, 16]), density=0.3)
    for t in range(3):
        learner.learn_basis_mask(f"t{t}", _loader(sc.task(t).train, seed=t), MASK_CFG)
    learner.add_random_masks(13, seed=0)
    learner.learn_alpha("t3", _loader(sc.task(3).train, seed=3), ALPHA_CFG)
    learner.learn_alpha("t4", _loader(sc.task(4).train, seed=4), ALPHA_CFG, hybrid=True)
    batches = [sc.task(t).test.inputs[:64] for t in range(5)]
    fingerprints = {f"t{t}": task_fingerprint(BatchLoader(sc.task(t).train, batch_size=128), learner=learner,
                                              name=f"t{t}") for t in range(5)}  # fmt: skip
    return sc, learner, batches, fingerprints


def _entropy_alone(learner, name, x):
    logits = learner.predict(name, x)
    logp = torch.log_softmax(logits, 1)
    return -(logp.exp() * logp).sum(1)


# ----------------------------------------------------------------------------- result and methods


@pytest.mark.parametrize("method", inference.METHODS)
def test_every_method_returns_scores_for_every_candidate(mixed, method):
    sc, learner, batches, fps = mixed
    res = infer_task(learner, batches[0], method=method, fingerprints=fps)
    assert isinstance(res, TaskInference) and res.method == method
    assert res.candidates == tuple(learner.tasks) and len(res.scores) == 5
    assert all(math.isfinite(s) for s in res.scores)
    best = max(range(5), key=lambda j: res.scores[j])
    assert res.task == res.candidates[best] and res.ranking()[0][0] == res.task
    assert res.runner_up != res.task and res.margin >= 0.0 and 0.0 <= res.confidence <= 1.0
    assert infer_task_name(learner, batches[0], method=method, fingerprints=fps) == res.task
    with pytest.raises(AttributeError):
        res.task = "other"  # frozen


# not "calibrated": on these weak synthetic tasks (own entropy ~2 nats) subtracting the baseline
# lets the alpha task t3 outscore t0; the benchmark measures it on Fashion-MNIST
@pytest.mark.parametrize("method", ["oneshot", "binary", "iterative", "exhaustive", "fingerprint"])
def test_basis_tasks_are_found(mixed, method):
    sc, learner, batches, fps = mixed
    for t in range(3):
        res = infer_task(learner, batches[t], method=method, fingerprints=fps)
        assert res.task == f"t{t}", (method, t, res.ranking())


def test_exhaustive_scores_are_each_tasks_own_entropy(mixed):
    """The batched forward (bmm over stacked weights, hybrid last layer included) equals each task alone."""
    sc, learner, batches, fps = mixed
    x = batches[3]
    res = infer_task(learner, x, method="exhaustive")
    want = torch.tensor([-_entropy_alone(learner, n, x).mean().item() for n in learner.tasks])
    torch.testing.assert_close(torch.tensor(res.scores), want, rtol=1e-4, atol=1e-5)
    # chunks of one task give the same entropies as one chunk of all five
    small = inference.exhaustive_entropies(learner, x, list(learner.tasks), chunk_bytes=1)
    torch.testing.assert_close(small, inference.exhaustive_entropies(learner, x, list(learner.tasks)))


def test_exhaustive_per_mask_route_when_tasks_outnumber_masks():
    """T > K: the first layer is computed once per mask and mixed per task; same entropies as each task alone."""
    learner = ImpressLearner(create_model("lenet300", num_classes=10, seed=0, hidden=[32, 16]), density=0.3)
    learner.add_random_masks(3, seed=0)
    g = torch.Generator().manual_seed(0)
    for t in range(7):
        learner.register_task(f"n{t}", torch.rand(3 if t % 2 else 2, 3, generator=g))  # K_t = 2 pads with zeros
    x = torch.randn(16, 1, 28, 28, generator=g)
    names = list(learner.tasks)
    runner = inference._ExhaustiveForward(learner, x, len(names), inference.EXHAUSTIVE_CHUNK_BYTES)
    assert runner.per_mask == {0: True, 1: False, 2: False}  # eligible: the first layer only
    want = torch.stack([_entropy_alone(learner, n, x) for n in names])
    # all 7 tasks in one chunk, then one task per chunk (8 KB: room for Z[3, 16, 32], not for a task's weights)
    for chunk_bytes in (inference.EXHAUSTIVE_CHUNK_BYTES, 8192):
        got = inference.exhaustive_entropies(learner, x, names, chunk_bytes=chunk_bytes)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_exhaustive_on_a_conv_net_uses_each_tasks_bn_slot():
    sc = create_scenario("synthetic", num_tasks=2, train_size=128, test_size=64, seed=0)
    model = create_model("resnet18_cifar", num_classes=10, in_channels=1, width=4, blocks=[1, 1, 1, 1], seed=0)
    learner = ImpressLearner(model, density=0.3)
    learner.learn_basis_mask("a", _loader(sc.task(0).train, 64), TrainConfig(epochs=1, lr=0.05))
    learner.learn_alpha("b", _loader(sc.task(1).train, 64), ALPHA_CFG)
    x = next(iter(BatchLoader(sc.task(0).test, batch_size=16)))[0]
    got = inference.exhaustive_entropies(learner, x, ["a", "b"])
    want = torch.stack([_entropy_alone(learner, n, x) for n in ("a", "b")])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_calibrated_subtracts_each_tasks_own_entropy(mixed):
    sc, learner, batches, fps = mixed
    raw = infer_task(learner, batches[1], method="exhaustive")
    cal = infer_task(learner, batches[1], method="calibrated", fingerprints=fps)
    shift = torch.tensor([fps[n].entropy for n in learner.tasks])
    torch.testing.assert_close(torch.tensor(cal.scores), torch.tensor(raw.scores) + shift, rtol=1e-5, atol=1e-5)
    assert all(fps[n].entropy >= 0.0 for n in learner.tasks)


def test_binary_winner_scores_highest_and_runner_up_is_the_last_eliminated(mixed):
    sc, learner, batches, fps = mixed
    res = infer_task(learner, batches[2], method="binary")
    a, e = inference.stacked_coefficients(learner, list(learner.tasks))
    # the pair of the last round, recomputed: the runner-up is the one the last GN step dropped
    pair = [res.candidates.index(res.task), res.candidates.index(res.runner_up)]
    with torch.enable_grad():
        grad = inference._entropy_grad(learner, batches[2], a[pair], e[pair] if e is not None else None)
    assert grad[0] <= grad[1]


def test_gn_scores_are_minus_the_entropy_gradient(mixed):
    sc, learner, batches, fps = mixed
    res = infer_task(learner, batches[0], method="oneshot")
    a, e = inference.stacked_coefficients(learner, list(learner.tasks))
    with torch.enable_grad():
        grad = inference._entropy_grad(learner, batches[0], a, e)
    torch.testing.assert_close(torch.tensor(res.scores), -grad)


def test_confidence_is_the_share_preferring_the_pick_to_the_runner_up(mixed):
    sc, learner, batches, fps = mixed
    x = batches[0]
    res = infer_task(learner, x, method="exhaustive")
    h_best, h_second = _entropy_alone(learner, res.task, x), _entropy_alone(learner, res.runner_up, x)
    assert res.confidence == pytest.approx((h_best < h_second).float().mean().item())
    # a batch drawn half from t0 and half from t1 is less sure than a pure t0 batch
    mixed_batch = torch.cat([batches[0][:32], batches[1][:32]])
    assert infer_task(learner, mixed_batch, method="fingerprint", fingerprints=fps).confidence < infer_task(
        learner, x, method="fingerprint", fingerprints=fps).confidence  # fmt: skip


def test_default_uses_fingerprints_when_every_candidate_has_one(mixed):
    sc, learner, batches, fps = mixed
    assert infer_task(learner, batches[0], fingerprints=fps).method == "fingerprint"
    partial = {n: fp for n, fp in fps.items() if n != "t4"}
    assert infer_task(learner, batches[0], fingerprints=partial, candidates=["t0", "t1"]).method == "fingerprint"
    # without fingerprints: exhaustive among basis tasks only, binary once alpha tasks are candidates
    with pytest.warns(UserWarning, match="have no fingerprint"):  # some have one: not silent
        assert infer_task(learner, batches[0], fingerprints=partial).method == "binary"
    # learn_* stored the learner's own fingerprints: the default reads them
    assert set(learner.fingerprints) == set(learner.tasks)
    assert infer_task(learner, batches[0]).method == "fingerprint"
    own, learner.fingerprints = learner.fingerprints, {}
    try:
        assert infer_task(learner, batches[0]).method == "binary"
        assert infer_task(learner, batches[0], candidates=["t0", "t1", "t2"]).method == "exhaustive"
    finally:
        learner.fingerprints = own


def test_candidates_restrict_the_choice(mixed):
    sc, learner, batches, fps = mixed
    res = infer_task(learner, batches[0], method="exhaustive", candidates=["t1", "t2"])
    assert res.candidates == ("t1", "t2") and res.task in ("t1", "t2")
    one = infer_task(learner, batches[0], method="oneshot", candidates=["t2"])
    assert one.task == "t2" and one.confidence == 1.0 and one.margin == 0.0 and one.runner_up is None


# ----------------------------------------------------------------------------- grad modes and state


@pytest.mark.parametrize("method", inference.METHODS)
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_works_under_no_grad_and_inference_mode(mixed, method, mode):
    sc, learner, batches, fps = mixed
    want = infer_task(learner, batches[1], method=method, fingerprints=fps)
    inference._FINGERPRINT_CACHE.clear()  # stack the fingerprints again, inside the mode
    ctx = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with ctx:
        x = batches[1].clone()  # under inference_mode: an inference tensor
        got = infer_task(learner, x, method=method, fingerprints=fps)
    assert got.task == want.task
    torch.testing.assert_close(torch.tensor(got.scores), torch.tensor(want.scores))


def test_inference_leaves_the_bound_task_and_train_mode_alone(mixed):
    sc, learner, batches, fps = mixed
    x = batches[4]
    before = learner.predict("t4", x)  # binds t4 (hybrid) and its BN slot
    sources = [layer.source for layer in learner.layers]
    for method in ("binary", "exhaustive"):
        infer_task(learner, x, method=method)
    assert [layer.source for layer in learner.layers] == sources
    assert all("forward" not in vars(m) for m in learner.model.modules())  # no patched forward left behind
    with torch.no_grad():
        assert torch.equal(learner.model(x), before)
    learner.model.train()  # a user's loop in training mode stays in it
    try:
        infer_task(learner, x, method="oneshot")
        assert learner.model.training
    finally:
        learner.model.eval()


# ----------------------------------------------------------------------------- fingerprints


def test_fingerprint_is_small_and_finds_tasks_by_input_statistics():
    g = torch.Generator().manual_seed(0)
    means = torch.randn(20, 1, 8, 8, generator=g)
    train = [means[t] + torch.randn(500, 1, 8, 8, generator=g) for t in range(20)]
    fps = [task_fingerprint(x, sketch_dim=16, seed=3) for x in train]
    assert fps[0].nbytes == 4 * 16 + 4 and fps[0].mean.dtype == torch.float16
    for t in range(20):
        ll = inference.fingerprint_log_likelihoods(means[t] + torch.randn(64, 1, 8, 8, generator=g), fps)
        assert int(ll.mean(1).argmax()) == t
    raw = task_fingerprint(train[0], sketch_dim=None)
    assert raw.mean.shape == (64,) and raw.nbytes == 4 * 64 + 4
    torch.testing.assert_close(raw.mean.float(), train[0].flatten(1).mean(0), atol=2e-3, rtol=1e-3)


def test_fingerprint_reads_loaders_and_caps_examples():
    x = torch.randn(300, 1, 4, 4)
    loader = [(x[i : i + 100], torch.zeros(100)) for i in range(0, 300, 100)]
    capped = task_fingerprint(loader, sketch_dim=None, max_examples=150)
    torch.testing.assert_close(capped.mean.float(), x[:150].flatten(1).mean(0), atol=2e-3, rtol=1e-3)


def test_fingerprint_errors(mixed):
    sc, learner, batches, fps = mixed
    with pytest.raises(ValueError, match="no fingerprint"):
        infer_task(learner, batches[0], method="fingerprint", fingerprints={"t0": fps["t0"]})
    other = {n: task_fingerprint(batches[0], sketch_dim=8) for n in learner.tasks}
    other["t0"] = task_fingerprint(batches[0], sketch_dim=8, seed=1)
    with pytest.raises(ValueError, match="different sketches"):
        infer_task(learner, batches[0], method="fingerprint", fingerprints=other)
    no_entropy = {n: task_fingerprint(batches[0], sketch_dim=8) for n in learner.tasks}
    with pytest.raises(ValueError, match="entropy baseline"):
        infer_task(learner, batches[0], method="calibrated", fingerprints=no_entropy)
    with pytest.raises(ValueError, match="input features"):
        inference.fingerprint_log_likelihoods(torch.randn(4, 10), [fps["t0"]])
    with pytest.raises(ValueError, match="sketch_dim"):
        task_fingerprint(batches[0], sketch_dim=0)
    with pytest.raises(ValueError, match="at least 2"):
        task_fingerprint(batches[0][:1])
    with pytest.raises(ValueError, match="shape"):
        TaskFingerprint(torch.zeros(3), torch.ones(4), input_size=10, sketch_dim=4, seed=0)


def test_fingerprint_arguments_are_checked():
    x = torch.randn(16, 1, 4, 4)
    for bad in (-5, 0, 1, True, 2.0):  # -5 used to read all but the last 5 inputs, 0 "an empty batch"
        with pytest.raises(ValueError, match="max_examples must be an int >= 2 or None"):
            task_fingerprint(x, max_examples=bad)
    for bad in (-1, 2**63, 1.5, True):
        with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\*\*63\)"):
            task_fingerprint(x, seed=bad)
    assert task_fingerprint(x, seed=2**63 - 1, max_examples=2).seed == 2**63 - 1
    with pytest.raises(ValueError, match="no fingerprints"):
        inference.fingerprint_log_likelihoods(x, [])
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        inference.fingerprint_log_likelihoods(nan, [task_fingerprint(x, sketch_dim=4)])


@pytest.mark.parametrize("scale, what", [(1e4, "65504"), (1e-5, "6e-8")])
def test_inputs_whose_moments_do_not_fit_fp16_are_refused(scale, what):
    """The moments are stored in fp16: a variance above 65504 used to become inf (a fingerprint that
    matched nothing and that a checkpoint refuses), one below 6e-8 zero (an unclear error)."""
    x = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * scale
    with pytest.raises(ValueError, match=f"do not fit the fingerprint's fp16.*{what}.*normalise"):
        task_fingerprint(x)
    assert task_fingerprint(x / scale).var.isfinite().all()
    with pytest.raises(ValueError, match="var must be finite"):
        TaskFingerprint(torch.zeros(4), torch.full((4,), float("inf")), input_size=16, sketch_dim=4, seed=0)


def test_auto_warns_when_only_some_candidates_have_a_fingerprint(mixed):
    """A task stored without a fingerprint makes 'auto' fall back to GN for every candidate set
    holding it: it says so, naming the tasks, rather than pick silently by another method."""
    sc, learner, batches, fps = mixed
    partial = {n: fp for n, fp in fps.items() if n != "t4"}
    with pytest.warns(UserWarning, match=r"1 of 5 candidates have no fingerprint \(\['t4'\]\), so 'binary'"):
        assert infer_task(learner, batches[0], fingerprints=partial).method == "binary"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every candidate with one, none at all, or an explicit method: no warning
        assert infer_task(learner, batches[0], fingerprints=fps).method == "fingerprint"
        assert infer_task(learner, batches[0], fingerprints={}).method == "binary"
        assert infer_task(learner, batches[0], "binary", fingerprints=partial).method == "binary"


def test_auto_s_warning_points_at_the_callers_line(mixed):
    """The fallback warning names the user's line, through infer_task or learner.infer_task (Python's
    filter shows it once per line and message: a line inside the package would stand for every caller)."""
    sc, learner, batches, fps = mixed
    partial = {n: fp for n, fp in fps.items() if n != "t4"}
    with pytest.warns(UserWarning, match="have no fingerprint") as direct:
        infer_task(learner, batches[0], fingerprints=partial)
    own, learner.fingerprints = learner.fingerprints, partial
    try:
        with pytest.warns(UserWarning, match="have no fingerprint") as through_learner:
            learner.infer_task(batches[0])
    finally:
        learner.fingerprints = own
    assert [w.filename for w in direct] == [w.filename for w in through_learner] == [__file__]


def test_a_batch_mixing_two_tasks_gets_one_pick_and_a_coin_flip_confidence(mixed):
    """Documented: a batch is taken to come from one task; an even mix of two is flagged by its confidence."""
    sc, learner, batches, fps = mixed
    pure = infer_task(learner, batches[0], method="fingerprint", fingerprints=fps)
    even = infer_task(learner, torch.cat([batches[0][:32], batches[1][:32]]), method="fingerprint", fingerprints=fps)
    # measured on this fixture: 0.91 for the pure batch (single synthetic examples are ~90% separable), 0.55 for the mix
    assert pure.confidence >= 0.85
    assert even.task in ("t0", "t1") and {even.task, even.runner_up} == {"t0", "t1"}
    assert 0.4 <= even.confidence <= 0.6, even.confidence


def test_integer_arguments_follow_the_package_rule(mixed):
    """Any integer type is accepted, a bool never (True passed as 1 before)."""
    import numpy as np

    sc, learner, batches, _ = mixed
    with pytest.raises(ValueError, match="sketch_dim must be an int >= 1"):
        task_fingerprint(batches[0], sketch_dim=True)
    fp = task_fingerprint(batches[0], sketch_dim=np.int64(8))
    assert fp.sketch_dim == 8 and type(fp.sketch_dim) is int
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        infer_task(learner, batches[0], method="iterative", steps=True)
    picked = infer_task(learner, batches[0], method="iterative", steps=np.int64(2))
    assert picked == infer_task(learner, batches[0], method="iterative", steps=2)


def test_fingerprint_of_a_task_bound_by_a_callable_equals_the_stored_tasks(mixed):
    """``bind`` measures a task that is not stored yet (a commit measures before it changes the learner)."""
    sc, learner, batches, _ = mixed
    x = sc.task(3).train.inputs[:200]
    by_name = task_fingerprint(x, learner=learner, name="t3")
    by_bind = task_fingerprint(x, learner=learner, bind=lambda: learner.bind_task("t3"))
    assert torch.equal(by_bind.mean, by_name.mean) and by_bind.entropy == by_name.entropy
    assert by_bind.entropy != task_fingerprint(x, learner=learner, name="t0").entropy  # the binding counts
    for bad in (dict(name="t3", bind=lambda: None), dict(bind=lambda: None, learner=None), dict(name="t3")):
        with pytest.raises(ValueError, match="give learner with name or bind"):
            task_fingerprint(x, **bad)


def test_the_entropy_alone_is_the_fingerprints_entropy_and_a_non_finite_one_is_refused(mixed):
    """task_entropy is the part of a fingerprint that needs the task (learn_* measure it after training,
    the sketch before): with the sketch of the same inputs it makes task_fingerprint's result. NaN logits
    refuse it (task_fingerprint stored their NaN entropy as 'not measured')."""
    from dataclasses import replace

    sc, learner, _, _ = mixed
    x = sc.task(3).train.inputs[:200]
    whole = task_fingerprint(x, learner=learner, name="t3")
    parts = replace(task_fingerprint(x), entropy=task_entropy(learner, BatchLoader(sc.task(3).train, batch_size=64),
                                                              name="t3", max_examples=200))  # fmt: skip
    assert torch.equal(parts.mean, whole.mean) and torch.equal(parts.var, whole.var)
    assert math.isclose(parts.entropy, whole.entropy, rel_tol=1e-6)  # float32 sums of other batches
    assert task_entropy(learner, x, bind=lambda: learner.bind_task("t3")) == task_entropy(learner, x, name="t3")
    diverged = learner.model.register_forward_hook(lambda module, inputs, logits: logits * float("nan"))
    try:
        with pytest.raises(FloatingPointError, match="logits are not finite"):
            task_entropy(learner, x, name="t3")
        with pytest.raises(FloatingPointError, match="logits are not finite"):
            task_fingerprint(x, learner=learner, name="t3")
    finally:
        diverged.remove()
    with pytest.raises(ValueError, match="no examples"):
        task_entropy(learner, [], name="t3")
    with pytest.raises(ValueError, match="change size"):
        task_entropy(learner, [x[:4], x[:4, :, :14]], name="t3")
    with pytest.raises(ValueError, match="needs the learner"):
        task_entropy(None, x, name="t3")
    with pytest.raises(ValueError, match="give learner with name or bind"):
        task_entropy(learner, x)


_RANK_FINGERPRINT = """
import sys
import torch
import torch.distributed as dist
from impresslearn import ImpressLearner
from impresslearn.inference import task_entropy, task_fingerprint
from impresslearn.models import create_model
from impresslearn.objectives import AlphaObjective

rank, world, rendezvous, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
group = None if world == 1 else dist.group.WORLD
learner = ImpressLearner(create_model("lenet300", num_classes=10, seed=0, hidden=[8, 4]), density=0.3)
learner.add_random_masks(3, seed=0)
learner.register_task("t", torch.full((3, 3), 1 / 3))
x = torch.randn(90, 1, 28, 28, generator=torch.Generator().manual_seed(0))
shard = x if world == 1 else [x[i : i + 10] for i in range(rank * 10, 90, 10 * world)]  # rank 0: 5 batches, rank 1: 4
results = {}


def keep(key, fp):
    results[key] = dict(mean=fp.mean, var=fp.var, entropy=fp.entropy)


# the three public ways in: the function, the learner, an objective's commit from the user's loop
keep("task_fingerprint", task_fingerprint(shard, sketch_dim=16, learner=learner, name="t", process_group=group))
keep("add_fingerprint", learner.add_fingerprint("t", shard, process_group=group))
AlphaObjective(learner).commit("u", fingerprint_inputs=shard, process_group=group)  # alpha = 1/K, as "t"
keep("commit", learner.fingerprints["u"])
# the entropy alone (what learn_* measure after training), by the function and an open objective
results["task_entropy"] = task_entropy(learner, shard, name="t", process_group=group)
objective = AlphaObjective(learner)  # alpha = 1/K, as "t"
results["output_entropy"] = objective.output_entropy(shard, process_group=group)
objective.discard()
if world > 1:  # one rank's shard is bad: every rank raises (before, the others waited forever)
    nan = x[10:20].clone()
    nan[3, 0, 4, 4] = float("nan")
    other = {"nan": dict(inputs=nan), "empty": dict(inputs=[]), "size": dict(inputs=x[10:20, :, :14]),
             "seed": dict(inputs=x[10:20], seed=1)}
    for case, kwargs in other.items():
        kwargs = kwargs if rank == 1 else dict(inputs=x[:10])
        try:
            task_fingerprint(kwargs.pop("inputs"), sketch_dim=16, process_group=group, **kwargs)
            results[case] = None
        except Exception as exc:
            results[case] = f"{type(exc).__name__}: {exc}"
    before = learner.fingerprints["t"]
    try:
        learner.add_fingerprint("t", nan if rank == 1 else x[:10], process_group=group)
        results["learner nan"] = None
    except Exception as exc:
        results["learner nan"] = f"{type(exc).__name__}: {exc}"
    results["learner unchanged"] = learner.fingerprints["t"] is before
torch.save(results, out)
dist.destroy_process_group()
"""


def _run_ranks(tmp_path, world):
    """Run the script above on ``world`` gloo processes; their results, rank by rank."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1")
    rendezvous = tmp_path / f"rendezvous{world}"
    procs = [subprocess.Popen([sys.executable, "-c", _RANK_FINGERPRINT, str(r), str(world), str(rendezvous),
                               str(tmp_path / f"w{world}r{r}.pt")], env=env, stderr=subprocess.PIPE, text=True)
             for r in range(world)]  # fmt: skip
    try:
        for p in procs:
            _, err = p.communicate(timeout=240)  # a rank left waiting in a collective fails here, not forever
            assert p.returncode == 0, err[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [torch.load(tmp_path / f"w{world}r{r}.pt") for r in range(world)]


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("ranks")
    return _run_ranks(tmp_path, 1)[0], _run_ranks(tmp_path, 2)


@pytest.mark.parametrize("way", ["task_fingerprint", "add_fingerprint", "commit"])
def test_fingerprint_sums_the_shards_of_every_rank_when_given_a_process_group(rank_results, way):
    """Under DDP each rank reads its shard; with process_group every rank gets the whole data's
    fingerprint, through the function, ``learner.add_fingerprint`` and an objective's commit."""
    whole, ranks = rank_results
    whole = whole[way]
    for got in (r[way] for r in ranks):
        # the ranks reduce the same sums, so they agree to the bit
        assert torch.equal(got["mean"], ranks[0][way]["mean"]) and torch.equal(got["var"], ranks[0][way]["var"])
        assert got["entropy"] == ranks[0][way]["entropy"]
        # against one process reading everything (one batch of 90, not batches of 10). Measured over
        # 10 data seeds x 3 ways x 2 ranks: the fp16 moments were bit-identical every time, the
        # entropy (float32 per-batch sums, added in another order) at most 5.5e-8 apart relative.
        # Allowed: one fp16 step (2**-10 relative; 6e-8 for subnormals), since the float32 sketch
        # of 90 rows and of 10 may round apart and flip one fp16 rounding; entropy 2e-7 (~4x).
        for key in ("mean", "var"):
            torch.testing.assert_close(got[key], whole[key], rtol=2**-10, atol=6e-8)
        assert math.isclose(got["entropy"], whole["entropy"], rel_tol=2e-7)


@pytest.mark.parametrize("way", ["task_entropy", "output_entropy"])
def test_the_entropy_alone_is_summed_over_the_ranks_too(rank_results, way):
    """The entropy-only pass (no sketch: empty moment sums in the all-reduce) gives every rank the
    whole data's entropy, the one task_fingerprint measures with the sketch (tolerance as above)."""
    whole, ranks = rank_results
    assert math.isclose(whole[way], whole["task_fingerprint"]["entropy"], rel_tol=2e-7)
    for got in (r[way] for r in ranks):
        assert got == ranks[0][way] and math.isclose(got, whole[way], rel_tol=2e-7)


@pytest.mark.parametrize("case, on_rank_1, on_rank_0", [
    ("nan", "ValueError: the batch holds NaN", "RuntimeError: another rank of process_group failed"),
    ("empty", "ValueError: a rank of process_group read no inputs", None),
    ("size", r"ValueError: the ranks of process_group read inputs of different sizes \(392 to 784", None),
    ("seed", "ValueError: the ranks of process_group asked for different sketches", None),
    ("learner nan", "ValueError: the batch holds NaN", "RuntimeError: another rank of process_group failed"),
])  # fmt: skip
def test_a_bad_shard_on_one_rank_raises_on_every_rank(rank_results, case, on_rank_1, on_rank_0):
    """Rank 1 reads a bad shard, rank 0 a good one: both raise, neither waits for the other forever."""
    _, (rank0, rank1) = rank_results
    assert rank1[case] is not None and re.match(on_rank_1, rank1[case]), rank1[case]
    assert rank0[case] is not None and re.match(on_rank_0 or on_rank_1, rank0[case]), rank0[case]
    assert rank0["learner unchanged"] and rank1["learner unchanged"]  # a refused fingerprint replaces nothing


# ----------------------------------------------------------------------------- bad input


def test_bad_input_gives_clear_errors(mixed):
    sc, learner, batches, fps = mixed
    x = batches[0]
    with pytest.raises(ValueError, match="empty"):
        infer_task(learner, x[:0])
    nan = x.clone()
    nan[3, 0, 5, 5] = float("nan")
    for method in ("oneshot", "exhaustive", "fingerprint", "auto"):
        with pytest.raises(ValueError, match="NaN"):
            infer_task(learner, nan, method=method)
    # a batch of another input size than the fingerprints' (the default method reads them)
    with pytest.raises(ValueError, match="196 input features per example but the fingerprints 784"):
        infer_task(learner, torch.randn(4, 1, 14, 14))
    with pytest.raises(KeyError, match="nope"):
        infer_task(learner, x, candidates=["t0", "nope"])
    with pytest.raises(ValueError, match=r"\[.t1.\] more than once"):
        infer_task(learner, x, candidates=["t0", "t1", "t1"])
    with pytest.raises(ValueError, match="candidates is empty"):
        infer_task(learner, x, candidates=[])
    with pytest.raises(TypeError, match="not one string"):
        infer_task(learner, x, candidates="t0")
    with pytest.raises(ValueError, match="method must be .auto. or one of"):
        infer_task(learner, x, method="magic")
    with pytest.raises(TypeError, match="floating point"):
        infer_task(learner, x.long())
    with pytest.raises(ValueError, match="steps"):
        infer_task(learner, x, method="iterative", steps=0)


def test_no_stored_tasks():
    learner = ImpressLearner(create_model("lenet300", num_classes=10, seed=0, hidden=[8, 8]), density=0.3)
    with pytest.raises(ValueError, match="no stored tasks"):
        infer_task(learner, torch.randn(4, 1, 28, 28))


def test_the_fingerprint_examples_script_scores_batches_as_infer_task_does(mixed):
    """scripts/fingerprint_examples.py (behind FINGERPRINT_EXAMPLES) scores every batch size from one
    [T, N] product; each of its batches gets the pick infer_task makes."""
    from scripts.fingerprint_examples import identified

    sc, learner, batches, fps = mixed
    names = list(learner.tasks)
    x = sc.task(1).test.inputs[:96]
    got = identified(x, 1, [fps[n] for n in names], (1, 8, 32))
    for b in (1, 8, 32):
        picks = [infer_task(learner, x[i : i + b], "fingerprint", fingerprints=fps).task for i in range(0, 96, b)]
        assert got[b] == (picks.count("t1"), 96 // b)
