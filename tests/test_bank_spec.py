"""Random banks stored as their seeds, coefficients in fp32 / fp16 / bf16, and their accounting (issue 14.1)."""

import pytest
import torch

from impresslearn import ImpressLearner, TrainConfig, accounting, banks
from impresslearn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from impresslearn.config import ConfigError
from impresslearn.learner_io import FORMAT_VERSION, learner_tensors_and_metadata
from impresslearn.models import create_model
from impresslearn.scenarios import BatchLoader, create_scenario

DENSITY = 0.1
pytestmark = pytest.mark.filterwarnings("ignore:.*optimiser steps:UserWarning")  # tiny data on purpose


def _lenet(seed=0):
    return create_model("lenet300", num_classes=10, seed=seed, hidden=[32, 16])


@pytest.fixture(scope="module")
def task_data():
    sc = create_scenario("synthetic", num_tasks=1, train_size=256, test_size=128, seed=0)
    task = sc.task(0)
    x = torch.stack([task.test[i][0] for i in range(64)])
    return BatchLoader(task.train, batch_size=64, shuffle=True, seed=0), x


def _random_bank_learner(task_data, count=250, coefficient_dtype="fp32"):
    learner = ImpressLearner(_lenet(), density=DENSITY, coefficient_dtype=coefficient_dtype)
    learner.add_random_masks(count, seed=11)
    train, _ = task_data
    learner.learn_alpha("new", train, TrainConfig(epochs=1, lr=0.01))
    return learner


@pytest.fixture(scope="module")
def k250(task_data):
    return _random_bank_learner(task_data)


def test_a_bank_of_250_random_masks_costs_no_disk(k250, tmp_path):
    path = tmp_path / "k250.safetensors"
    k250.save(path)
    in_memory = sum(layer.bank.numel() for layer in k250.layers)
    assert in_memory == 32 * sum(layer.weight.numel() for layer in k250.layers)  # 824 kB of planes
    coefficients = 250 * k250.num_layers * 4
    # header (JSON: the draw, 250 mask owners, the task) + 3 kB of coefficients; no mask bits
    assert path.stat().st_size < coefficients + 8_000, path.stat().st_size
    tensors, meta = load_checkpoint(path)
    assert meta["learner_version"] == FORMAT_VERSION == 3
    assert all(tensors[f"layers.{i}.bank"].numel() == 0 for i in range(k250.num_layers))
    assert meta["random_masks"] == [dict(first=0, count=250, seed=11)]


def test_round_trip_redraws_the_same_bank_and_predictions_are_bit_identical(k250, task_data, tmp_path):
    _, x = task_data
    path = tmp_path / "k250.safetensors"
    k250.save(path)
    loaded = ImpressLearner.load(path)
    for a, b in zip(k250.layers, loaded.layers):
        assert torch.equal(a.bank, b.bank) and a.num_masks == b.num_masks == 250
    assert loaded.state_sha256() == k250.state_sha256()
    assert torch.equal(loaded.predict("new", x), k250.predict("new", x))


def test_a_tampered_seed_is_refused_by_the_bank_hash(k250, tmp_path):
    tensors, meta = banks.compact_checkpoint(k250, *learner_tensors_and_metadata(k250), FORMAT_VERSION)
    meta["random_masks"][0]["seed"] = 12  # valid checksums: only the meaning changed
    save_checkpoint(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(CheckpointError, match="hashes to .* a seed, the density"):
        ImpressLearner.load(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["random_masks"].append(dict(first=200, count=10, seed=3)), "overlap or reach past"),
    (lambda m: m["random_masks"][0].update(count=0), "random_masks is not a list"),
    (lambda m: m.update(coefficient_dtype="fp8"), "coefficient_dtype"),
])  # fmt: skip
def test_load_refuses_random_draws_that_do_not_describe_the_bank(k250, tmp_path, edit, message):
    tensors, meta = banks.compact_checkpoint(k250, *learner_tensors_and_metadata(k250), FORMAT_VERSION)
    edit(meta)
    save_checkpoint(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(CheckpointError, match=message):
        ImpressLearner.load(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("first_random", [5, 0])  # trained masks amid random ones, or first (whole planes)
def test_a_mixed_bank_stores_only_its_trained_masks(task_data, tmp_path, first_random):
    learner = ImpressLearner(_lenet(), density=DENSITY)
    if first_random:
        learner.add_random_masks(first_random, seed=1)
    generator = torch.Generator().manual_seed(0)
    hand = [torch.rand(3, layer.weight.numel(), generator=generator) < 0.2 for layer in learner.layers]
    at = list(range(first_random, first_random + 3))
    assert learner.add_masks(hand) == at  # masks not drawn from a seed: stored bit by bit
    learner.add_random_masks(14 - first_random, seed=2)  # shares the trained masks' plane
    learner.register_task("t", torch.rand(17, learner.num_layers))
    learner.save(tmp_path / "mixed.safetensors")
    tensors, _ = load_checkpoint(tmp_path / "mixed.safetensors")
    for i, layer in enumerate(learner.layers):
        assert tensors[f"layers.{i}.bank"].shape == (1, layer.weight.numel())  # 3 masks: one plane, not 3
        assert not (tensors[f"layers.{i}.bank"] >> 3).any()  # no random mask's bits in the file
    loaded = ImpressLearner.load(tmp_path / "mixed.safetensors")
    for a, b, h in zip(learner.layers, loaded.layers, hand):
        assert torch.equal(a.bank, b.bank)
        assert torch.equal(b.masks()[at[0] : at[-1] + 1].reshape(3, -1), h)
    _, x = task_data
    assert torch.equal(loaded.predict("t", x), learner.predict("t", x))
    stored = accounting.storage_report(learner)["stored_bank_bytes"]
    sizes, _ = accounting.model_sizes(learner.model)
    draws = 2 if first_random else 1
    assert stored == 3 * accounting.mask_bytes(sizes) + draws * banks.RANDOM_DRAW_BYTES + banks.BANK_HASH_BYTES


def test_version_2_checkpoints_with_full_banks_still_load(k250, tmp_path):
    tensors, meta = learner_tensors_and_metadata(k250)  # format 2: every bank plane written out
    assert meta["learner_version"] == 2
    save_checkpoint(tmp_path / "v2.safetensors", tensors, meta)
    loaded = ImpressLearner.load(tmp_path / "v2.safetensors")
    assert loaded.state_sha256() == k250.state_sha256() and loaded.coefficient_dtype == "fp32"


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_coefficients_are_what_is_evaluated_saved_and_counted(task_data, dtype, tmp_path):
    _, x = task_data
    learner = _random_bank_learner(task_data, count=20, coefficient_dtype=dtype)
    a = learner.tasks["new"].coefficients
    assert a.dtype == torch.float32 and torch.equal(a, a.to(banks.COEFFICIENT_DTYPES[dtype]).float())
    learner.save(tmp_path / "h.safetensors")
    tensors, meta = load_checkpoint(tmp_path / "h.safetensors")
    assert tensors["tasks.0.coefficients"].dtype == banks.COEFFICIENT_DTYPES[dtype]
    loaded = ImpressLearner.load(tmp_path / "h.safetensors")
    assert loaded.coefficient_dtype == dtype
    assert torch.equal(loaded.predict("new", x), learner.predict("new", x))
    b = learner.bytes_per_task("new")
    assert b.coefficients == 2 * 20 * learner.num_layers  # half of fp32's 4 bytes
    assert b.bank_share == banks.RANDOM_DRAW_BYTES + banks.BANK_HASH_BYTES  # the whole bank is one seed


def test_bytes_per_task_amortise_the_bank_and_add_up_to_the_report(task_data):
    train, _ = task_data
    learner = ImpressLearner(_lenet(), density=DENSITY)
    learner.learn_basis_mask("basis", train, TrainConfig(epochs=1, lr=0.1))
    learner.add_random_masks(6, seed=4)
    learner.register_task("n1", torch.rand(7, learner.num_layers))
    learner.register_task("n2", torch.rand(7, learner.num_layers))
    sizes, _ = accounting.model_sizes(learner.model)
    shared = banks.RANDOM_DRAW_BYTES + banks.BANK_HASH_BYTES  # the basis mask is the basis task's own
    per_task = {name: learner.bytes_per_task(name) for name in learner.tasks}
    assert per_task["basis"].mask_bits == accounting.mask_bytes(sizes)
    # byte counts carrying thirds of the shared bank: summed in another order they differ by
    # float rounding (measured 4.5e-13 B on 3,716 B), never by a byte's fraction as a miscount would
    float_rounding = {"abs": 1e-9, "rel": 0}
    assert all(b.bank_share == pytest.approx(shared / 3, **float_rounding) for b in per_task.values())
    assert per_task["n1"].total == pytest.approx(4 * 7 * 3 + shared / 3, **float_rounding)
    report = learner.storage_report()
    assert report["total_bytes"] == pytest.approx(sum(b.total for b in per_task.values()), **float_rounding)
    assert report["stored_bank_bytes"] == accounting.mask_bytes(sizes) + shared


def test_coefficient_dtype_errors_are_clear():
    with pytest.raises(ConfigError, match=r"coefficient_dtype: must be one of \('fp32', 'fp16', 'bf16'\), got 'half'"):
        ImpressLearner(_lenet(), coefficient_dtype="half")
    with pytest.raises(ValueError, match="do not fit fp16"):
        banks.round_coefficients(torch.tensor([[1e6]]), "fp16")
    # bf16 keeps 8 significant bits: 1e6 = 0b11110100_001001000000 rounds down to 244 * 2**12
    assert banks.round_coefficients(torch.tensor([[1e6]]), "bf16").item() == 244 * 2**12
