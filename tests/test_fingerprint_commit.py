"""A commit that stores a fingerprint measures it before it changes the learner, and the learner's
state hash covers the fingerprints (they decide what the default task inference picks)."""

import pytest
import torch

from impresslearn import ImpressLearner
from impresslearn.inference import task_fingerprint
from impresslearn.models import create_model
from impresslearn.objectives import AlphaObjective, EdgePopupObjective


def _learner():
    learner = ImpressLearner(create_model("lenet300", num_classes=10, seed=0, hidden=[16, 8]), density=0.3)
    learner.add_random_masks(4, seed=0)
    return learner


def _inputs(n=64, seed=0):
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def _state(learner):
    """What a commit changes: masks, tasks, fingerprints, hash (banks, tasks, BN), extra banks."""
    extra = [layer.extra_bank.clone() for layer in learner.layers]
    return (learner.num_masks, list(learner.tasks), dict(learner.fingerprints), learner.state_sha256()), extra


def _same(a, b):
    return a[0] == b[0] and len(a[1]) == len(b[1]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))


@pytest.mark.parametrize("make", [
    lambda learner: EdgePopupObjective(learner, seed=1),
    lambda learner: AlphaObjective(learner),
    lambda learner: AlphaObjective(learner, hybrid=True),
], ids=["edge_popup", "alpha", "hybrid"])  # fmt: skip
@pytest.mark.parametrize("bad, error, match", [
    (_inputs(1), ValueError, "at least 2 examples"),  # too few to fingerprint
    # the model cannot read them: the op or the forward refuses
    (torch.randn(8, 3, 5, 5), (ValueError, RuntimeError), "75 features|shapes cannot be multiplied"),
], ids=["one_example", "wrong_shape"])  # fmt: skip
def test_a_commit_refused_by_its_fingerprint_inputs_leaves_the_learner_unchanged(make, bad, error, match):
    learner = _learner()
    objective = make(learner)
    before = _state(learner)
    with pytest.raises(error, match=match):
        objective.commit("t", fingerprint_inputs=bad)
    assert _same(_state(learner), before)  # no mask appended, no task, no fingerprint
    rec = objective.commit("t", fingerprint_inputs=_inputs())  # the objective is still open
    assert list(learner.tasks) == ["t"] and "t" in learner.fingerprints and rec.name == "t"


def test_a_fingerprint_of_another_sketch_refuses_the_commit_before_it_stores():
    learner = _learner()
    learner.register_task("first", torch.full((4, 3), 0.25))
    learner.add_fingerprint("first", task_fingerprint(_inputs(), sketch_dim=8))
    objective = AlphaObjective(learner)
    before = _state(learner)
    with pytest.raises(ValueError, match="could not be compared"):
        objective.commit("t", fingerprint_inputs=task_fingerprint(_inputs(), sketch_dim=16))
    assert _same(_state(learner), before)


def test_the_fingerprint_measured_at_commit_is_the_stored_tasks():
    learner = _learner()
    x = _inputs()
    for objective, name in ((EdgePopupObjective(learner, seed=1), "mask"), (None, "alpha")):
        objective = objective or AlphaObjective(learner)
        with torch.no_grad():
            for p in objective.parameters():
                p.add_(torch.randn_like(p))  # away from the initial values
        objective.commit(name, fingerprint_inputs=x)
        again = task_fingerprint(x, learner=learner, name=name, max_examples=learner.fingerprint_examples)
        committed = learner.fingerprints[name]
        assert torch.equal(committed.mean, again.mean) and torch.equal(committed.var, again.var)
        assert committed.entropy == pytest.approx(again.entropy, rel=1e-6)


def test_the_state_hash_covers_fingerprints_and_survives_save_and_load(tmp_path):
    learner = _learner()
    learner.register_task("t", torch.full((4, 3), 0.25))
    without = learner.state_sha256()
    learner.add_fingerprint("t", _inputs())
    with_one = learner.state_sha256()
    assert with_one != without
    learner.add_fingerprint("t", _inputs(seed=1))  # another fingerprint, same tasks and banks
    assert learner.state_sha256() not in (without, with_one)
    learner.save(tmp_path / "l.safetensors")
    loaded = ImpressLearner.load(tmp_path / "l.safetensors")
    assert loaded.state_sha256() == learner.state_sha256()
    del loaded.fingerprints["t"]
    assert loaded.state_sha256() == without  # a learner without fingerprints hashes as before them
