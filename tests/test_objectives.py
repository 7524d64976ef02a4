"""The training objectives in a user's own loop: DDP, autocast, gradient accumulation, bad input."""

import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist

from impresslearn import ImpressLearner, TrainConfig
from impresslearn.models import create_model
from impresslearn.objectives import MIN_TRAINING_STEPS, AlphaObjective, EdgePopupObjective, eq2_penalty
from impresslearn.scenarios import BatchLoader, create_scenario

pytestmark = pytest.mark.filterwarnings("ignore:.*optimiser steps:UserWarning")

ADAM = TrainConfig(epochs=1, lr=0.05, optimizer="adam")


def _learner(masks=6, density=0.3):
    learner = ImpressLearner(create_model("lenet300", num_classes=10, seed=0, hidden=[32, 16]), density=density)
    if masks:
        learner.add_random_masks(masks, seed=0)
    return learner


def _data(n=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.fixture
def gloo_group():
    """A one-process gloo group: DDP runs its real code path (bucketing, all-reduce hooks)."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_alpha_objective_owns_only_alpha_and_wraps_in_ddp(gloo_group):
    x, y = _data()
    results = []
    for wrap in (False, True):
        learner = _learner()
        objective = AlphaObjective(learner, lam=0.01)
        assert [n for n, _ in objective.named_parameters()] == ["alpha"]
        assert list(objective.buffers()) == []  # the banks are never broadcast by DDP
        module = torch.nn.parallel.DistributedDataParallel(objective) if wrap else objective
        optimizer = torch.optim.Adam(objective.parameters(), lr=0.05)
        for step in range(4):
            loss = module(x[step * 32 : (step + 1) * 32], y[step * 32 : (step + 1) * 32])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        rec = objective.commit("t")
        results.append(rec.coefficients)
        assert learner.tasks["t"].kind == "new" and learner.num_tasks == 1
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=1e-6)
    assert not torch.equal(results[0], torch.full_like(results[0], 1 / 6))  # alpha trained


def test_gradient_accumulation_equals_the_full_batch():
    x, y = _data(64)
    learner = _learner()
    objective = AlphaObjective(learner, lam=0.01)
    objective(x, y).backward()
    full = objective.alpha.grad.clone()
    objective.alpha.grad = None
    for half in (slice(0, 32), slice(32, 64)):
        (objective(x[half], y[half]) / 2).backward()  # CE is a mean: two halves, each weighted 1/2
    torch.testing.assert_close(objective.alpha.grad, full, rtol=1e-5, atol=1e-7)


def test_cpu_autocast_bf16_trains_alpha_and_a_mask():
    x, y = _data(64)
    learner = _learner(masks=0)
    for objective in (EdgePopupObjective(learner, seed=1), None):
        if objective is None:
            objective = AlphaObjective(learner)
        optimizer = torch.optim.Adam(objective.parameters(), lr=0.01)
        before = [p.detach().clone() for p in objective.parameters()]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = objective(x, y)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)  # CE in fp32 under autocast
        loss.backward()
        optimizer.step()
        assert any(not torch.equal(b, p) for b, p in zip(before, objective.parameters()))
        objective.commit(f"t{learner.num_tasks}")
    assert [r.kind for r in learner.tasks.values()] == ["basis", "new"]


def test_eq2_penalty_and_the_hybrid_column_cut():
    alpha = torch.tensor([[0.5, 1.0, 3.0], [0.5, 1.0, 3.0]])
    assert float(eq2_penalty(alpha, 2.0)) == pytest.approx(2.0 * (0 + 1 + 25))
    assert float(eq2_penalty(alpha, 2.0, num_layers=2)) == pytest.approx(2.0 * 1)
    learner = _learner()
    hybrid = AlphaObjective(learner, lam=1.0, hybrid=True)
    with torch.no_grad():
        hybrid.alpha[:, -1] = 100.0  # the last column is not alpha-driven in a hybrid task
    assert float(hybrid.penalty().detach()) == pytest.approx(0.0, abs=1e-6)


def test_an_objective_opened_later_supersedes_an_earlier_one():
    learner = _learner()
    first = EdgePopupObjective(learner)
    second = AlphaObjective(learner)
    with pytest.raises(RuntimeError, match="another objective"):
        first.commit("a")
    with pytest.raises(RuntimeError, match="another objective"):
        first(*_data(8))
    assert learner.num_masks == 6  # refused before its mask reached the bank
    second.commit("b")
    assert list(learner.tasks) == ["b"]


def test_diverged_alpha_is_refused_and_nothing_is_stored():
    learner = _learner()
    x, y = _data(64)
    objective = AlphaObjective(learner)
    with torch.no_grad():
        objective.alpha[2, 1] = float("nan")
    with pytest.raises(FloatingPointError, match="not finite"):
        objective.commit("nan task")
    assert learner.num_tasks == 0
    loader = BatchLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        learner.learn_alpha("huge lr", loader, TrainConfig(lr=1e30, optimizer="sgd", momentum=0.0))
    assert learner.num_tasks == 0 and "huge lr" not in learner.tasks


def test_empty_batches_are_refused():
    learner = _learner()
    empty = [(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long))] * 3
    with pytest.raises(ValueError, match="empty"):
        learner.learn_alpha("e", empty, ADAM)
    with pytest.raises(ValueError, match="empty"):
        learner.learn_basis_mask("m", empty, ADAM)
    assert learner.num_tasks == 0 and learner.num_masks == 6


def test_too_few_steps_warns_and_enough_do_not():
    learner = _learner()
    x, y = _data(MIN_TRAINING_STEPS * 2)
    few = BatchLoader(torch.utils.data.TensorDataset(x[:64], y[:64]), batch_size=32)
    with pytest.warns(UserWarning, match="optimiser steps"):
        learner.learn_alpha("few", few, ADAM)
    enough = BatchLoader(torch.utils.data.TensorDataset(x, y), batch_size=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        history = learner.learn_alpha("enough", enough, ADAM)
    assert history.steps == MIN_TRAINING_STEPS


def test_history_and_task_labelled_batches():
    sc = create_scenario("synthetic", num_tasks=1, train_size=256, test_size=128, seed=0)
    learner = _learner()
    train = [(x, y, torch.zeros_like(y)) for x, y in BatchLoader(sc.task(0).train, batch_size=32)]  # (x, y, t)
    val = BatchLoader(sc.task(0).test, batch_size=64)
    history = learner.learn_alpha("n", train, TrainConfig(epochs=3, lr=0.05, optimizer="adam"), val_loader=val)
    assert len(history.loss) == 3 and history.steps == 24 and len(history.val_accuracy) == 3
    assert history.loss[-1] < history.loss[0]
    assert history.val_accuracy[-1] == pytest.approx(learner.evaluate("n", val))
    assert history.task is learner.tasks["n"]
    # (x, y, t) batches are read as (x, y): the same accuracy (> 0 held for any accuracy of a trained task)
    assert learner.evaluate("n", train) == learner.evaluate("n", [(x, y) for x, y, _ in train])


def test_integer_arguments_accept_numpy_and_refuse_floats():
    learner = _learner(masks=0)
    assert learner.add_random_masks(np.int64(2), seed=np.int32(5)) == [0, 1]
    loader = [_data(32)[:2]]
    assert learner.evaluate_mask(np.int64(1), loader) == learner.evaluate_mask(1, loader)  # not just "in [0, 1]"
    with pytest.raises(TypeError, match="mask_index"):
        learner.evaluate_mask(1.0, loader)
    with pytest.raises(TypeError, match="count"):
        learner.add_random_masks(2.0)
    with pytest.raises(IndexError, match="mask_index 2 out of range"):
        learner.evaluate_mask(np.int64(2), loader)


@pytest.mark.parametrize("progress", [False, True])
def test_fit_starts_one_iteration_of_the_loader_per_epoch(progress):
    """fit handed the loader to tqdm.auto, whose __init__ calls iter() and whose loop calls it again:
    every epoch started a second, unused iterator (a DataLoader's worker processes) and moved
    BatchLoader's epoch counter by two, so its epochs used orders 1, 3, 5, ..."""
    from impresslearn.objectives import fit

    sc = create_scenario("synthetic", num_tasks=1, train_size=128, test_size=32, seed=0)
    loader = BatchLoader(sc.task(0).train, batch_size=32, shuffle=True, seed=0)
    started = []

    class Counting:
        def __len__(self):
            return len(loader)

        def __iter__(self):
            started.append(loader.epoch)
            return iter(loader)

    objective = AlphaObjective(_learner())
    try:
        history = fit(objective, Counting(), TrainConfig(epochs=3, lr=0.05, optimizer="adam"), progress=progress)
    finally:
        objective.discard()
    assert started == [0, 1, 2] and loader.epoch == 3 and history.steps == 12


def test_the_too_few_steps_warning_points_at_the_users_line():
    """fit's warning names the caller's line whether the user calls fit or learn_* (which reach fit
    through the learner's own frames), not a line inside the package."""
    from impresslearn.objectives import fit

    learner = _learner()
    few = [_data(32)[:2]]
    objective = AlphaObjective(learner)
    try:
        with pytest.warns(UserWarning, match="optimiser steps") as direct:
            fit(objective, few, ADAM)
    finally:
        objective.discard()
    with pytest.warns(UserWarning, match="optimiser steps") as through_learner:
        learner.learn_alpha("few", few, ADAM)
    assert [w.filename for w in direct] == [w.filename for w in through_learner] == [__file__]
