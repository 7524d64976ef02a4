"""The backend rule (impresslearn/_backends.py): argument, then environment, then automatic."""

import logging

import pytest
import torch

from impresslearn import BackendUnavailable, _backends, ops


def test_explicit_argument_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("IMPRESSLEARN_BACKEND", "cpp")
    assert _backends.select("pack_masks", "cpu", "reference") == "reference"
    assert _backends.select("pack_masks", "cpu") == "cpp"


def test_environment_variable_is_an_explicit_choice(monkeypatch):
    monkeypatch.setenv("IMPRESSLEARN_BACKEND", "reference")
    assert _backends.select("combine_masks", "cpu") == "reference"
    monkeypatch.setenv("IMPRESSLEARN_BACKEND", "cuda")
    with pytest.raises(BackendUnavailable, match="cuda"):
        ops.pack_masks(torch.ones(2, 3, dtype=torch.bool))
    monkeypatch.setenv("IMPRESSLEARN_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="unknown backend 'nonsense'"):
        ops.pack_masks(torch.ones(2, 3, dtype=torch.bool))


def test_automatic_prefers_the_kernel_and_falls_back_to_the_reference():
    assert _backends.select("combine_masks", "cpu") == "cpp"
    # float64 has no kernel: the reference serves it, silently (gradcheck needs it)
    assert _backends.select("combine_masks", "cpu", dtype=torch.float64) == "reference"
    with pytest.raises(BackendUnavailable, match="float64"):
        _backends.select("combine_masks", "cpu", "cpp", dtype=torch.float64)


def test_automatic_fallback_logs_once(monkeypatch, caplog):
    spec = _backends.OpSpec("probe_op", {"reference": lambda: None, "cuda": lambda: None}, {"cpu": ("cuda",)})
    monkeypatch.setitem(_backends.REGISTRY, "probe_op", spec)
    monkeypatch.setattr(_backends, "_warned", set())
    with caplog.at_level(logging.INFO, logger="impresslearn"):
        assert _backends.select("probe_op", "cpu") == "reference"
        assert _backends.select("probe_op", "cpu") == "reference"
    skipped = [r for r in caplog.records if "probe_op: backend cuda skipped" in r.getMessage()]
    assert len(skipped) == 1


def test_explicit_backend_the_op_lacks_names_what_it_has():
    with pytest.raises(BackendUnavailable, match="topk_mask has no triton implementation"):
        ops.topk_mask(torch.randn(10), 3, backend="triton")


def test_every_op_has_a_reference():
    with pytest.raises(ValueError, match="reference"):
        _backends.OpSpec("broken", {"cpp": lambda: None}, {})
    for spec in _backends.REGISTRY.values():
        assert "reference" in spec.impls


def test_info_lists_every_op_and_backend():
    from impresslearn import info

    text = info.report()
    for name in ("pack_masks", "unpack_masks", "set_mask", "combine_masks", "topk_mask", "impress_linear"):
        assert name in text
    block = text[text.index("\npack_masks") + 1 :].split("\n")[1:5]
    assert [line.split()[0] for line in block] == ["reference", "cpp", "triton", "cuda"]
    assert "cpp       available on CPU tensors" in block[1]
    assert "triton    available on CPU tensors (interpreted)" in block[2]  # tests run with TRITON_INTERPRET=1
