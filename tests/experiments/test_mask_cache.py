"""The sweep's mask cache: safetensors + checksum (no pickle), damaged entries retrained, and a key
that holds what decides a mask bit for bit (thread count included)."""

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from impresslearn.experiments import config_from_dict, expand
from impresslearn.experiments._runner import (
    MASK_CACHE_SUFFIX,
    MaskCacheError,
    RunContext,
    read_mask_entry,
    write_mask_entry,
)


def _entry(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"masks": [torch.rand(6, 5, generator=g) < 0.3, torch.rand(11, generator=g) < 0.5],
            "accuracy": 0.8125, "task": 3, "popup_seed": 7}


def _same(a, b):
    return (a["accuracy"], a["task"], a["popup_seed"]) == (b["accuracy"], b["task"], b["popup_seed"]) and all(
        torch.equal(x, y) for x, y in zip(a["masks"], b["masks"], strict=True))


def test_entry_round_trips_as_safetensors(tmp_path):
    from safetensors import safe_open

    path = tmp_path / f"k{MASK_CACHE_SUFFIX}"
    write_mask_entry(path, "k", _entry())
    assert _same(read_mask_entry(path, "k"), _entry())
    with safe_open(str(path), framework="pt") as f:  # a plain safetensors file: no pickle anywhere
        assert sorted(f.keys()) == ["mask.0", "mask.1"]
    with pytest.raises(MaskCacheError, match="not the mask cache entry of key other"):
        read_mask_entry(path, "other")


_REFERENCE = {}


def _reference_file(tmp_path_factory):
    if "bytes" not in _REFERENCE:
        path = tmp_path_factory.mktemp("ref") / "k.safetensors"
        write_mask_entry(path, "k", _entry())
        _REFERENCE["bytes"] = path.read_bytes()
    return _REFERENCE["bytes"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_any_one_bit_flip_is_detected_or_harmless(tmp_path_factory, position, bit):
    data = bytearray(_reference_file(tmp_path_factory))
    data[int(position * len(data))] ^= 1 << bit
    path = tmp_path_factory.mktemp("flip") / "k.safetensors"
    path.write_bytes(bytes(data))
    try:
        entry = read_mask_entry(path, "k")
    except MaskCacheError:
        return
    assert _same(entry, _entry()), "a damaged entry was accepted with other contents"


@pytest.mark.parametrize("damage", ["truncate", "empty", "junk", "mask bit", "pickle"])
def test_damaged_cache_entry_is_retrained_not_trusted(tmp_path, damage, caplog):
    config = config_from_dict({
        "name": "cache", "scenario": {"name": "synthetic", "num_tasks": 2, "train_subset": 64, "test_subset": 32},
        "model": {"name": "lenet300", "kwargs": {"hidden": [16, 8]}}, "basis": {"counts": [1]}, "num_new_tasks": 1,
        "mask_train": {"epochs": 1, "batch_size": 32, "lr": 0.05, "optimizer": "adam"},
        "evaluate": {"new_tasks": False, "incorrect_mask": False}})
    run = expand(config)[0]
    ctx = RunContext(tmp_path)
    first = ctx.mask(run.params, 0, 0.1, 0, 0)
    assert ctx.trained_masks == 1
    (path,) = ctx.cache_dir.glob(f"*{MASK_CACHE_SUFFIX}")
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "empty":
        data = bytearray()
    elif damage == "junk":
        data = bytearray(b"\x00" * 64)
    elif damage == "mask bit":  # flip one mask bit: the file still parses
        data[-1] ^= 1
    else:  # a pickle where the cache file should be: never unpickled
        import pickle

        data = bytearray(pickle.dumps({"masks": [], "accuracy": 1.0}))
    path.write_bytes(bytes(data))
    fresh = RunContext(tmp_path)
    with caplog.at_level("WARNING"):
        again = fresh.mask(run.params, 0, 0.1, 0, 0)
    assert fresh.trained_masks == 1, "the damaged entry must be retrained"
    assert "retraining" in caplog.text
    assert _same(again, first)  # same thread count: retraining gives the same mask bit for bit
    reread = RunContext(tmp_path)
    reread.mask(run.params, 0, 0.1, 0, 0)
    assert reread.trained_masks == 0  # the rewritten entry verifies


def test_mask_key_holds_the_thread_count_backend_and_device(tmp_path):
    params = json.loads(json.dumps(expand(config_from_dict({
        "name": "k", "scenario": {"name": "synthetic", "num_tasks": 2}, "model": {"name": "lenet300"},
        "basis": {"counts": [1]}, "num_new_tasks": 1}))[0].params))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = RunContext(tmp_path).mask_key(params, 0, 0.1, 0, 0)
        torch.set_num_threads(2)
        two = RunContext(tmp_path).mask_key(params, 0, 0.1, 0, 0)
    finally:
        torch.set_num_threads(threads)
    assert one != two
    base = RunContext(tmp_path, backend=None).mask_key(params, 0, 0.1, 0, 0)
    assert base != RunContext(tmp_path, backend="reference").mask_key(params, 0, 0.1, 0, 0)
    assert base != RunContext(tmp_path, device="meta").mask_key(params, 0, 0.1, 0, 0)
    assert base == RunContext(tmp_path / "elsewhere").mask_key(params, 0, 0.1, 0, 0)
