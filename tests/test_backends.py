"""The backend rule (impresslearn/_backends.py): argument, then environment, then automatic;
a backend name selects one kernel family on every op; Triton loads lazily, its mode decided once."""

import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from impresslearn import BackendUnavailable, _backends, _extension, ops
from impresslearn.ops import _registry


def test_explicit_argument_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("IMPRESSLEARN_BACKEND", "cpp")
    assert _backends.select("pack_masks", "cpu", "reference") == "reference"
    assert _backends.select("pack_masks", "cpu") == "cpp"


def test_environment_variable_is_an_explicit_choice(monkeypatch):
    monkeypatch.setenv("IMPRESSLEARN_BACKEND", "reference")
    assert _backends.select("combine_masks", "cpu") == "reference"
    monkeypatch.setenv("IMPRESSLEARN_BACKEND", "cpp")
    with pytest.raises(BackendUnavailable, match="cpp kernels run on CPU tensors, got meta"):
        ops.pack_masks(torch.ones(2, 3, dtype=torch.bool, device="meta"))
    monkeypatch.setenv("IMPRESSLEARN_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="unknown backend 'nonsense'; choose one of 'reference', 'cpp', 'gpu'"):
        ops.pack_masks(torch.ones(2, 3, dtype=torch.bool))


def test_automatic_prefers_the_kernel_and_falls_back_to_the_reference():
    assert _backends.select("combine_masks", "cpu") == "cpp"
    assert _backends.select("combine_masks", "cuda") == "triton"  # the device's family: gpu
    assert _backends.select("topk_mask", "cuda") == ("cuda" if _extension.has_cuda_kernels() else "reference")
    # float64 has no kernel: the reference serves it, silently (gradcheck needs it)
    assert _backends.select("combine_masks", "cpu", dtype=torch.float64) == "reference"
    with pytest.raises(BackendUnavailable, match="float64"):
        _backends.select("combine_masks", "cpu", "cpp", dtype=torch.float64)


def test_automatic_fallback_logs_once(monkeypatch, caplog):
    spec = _backends.OpSpec("probe_op", {"reference": lambda: None, "cpp": lambda: None})
    monkeypatch.setitem(_backends.REGISTRY, "probe_op", spec)
    monkeypatch.setattr(_backends, "_warned", set())
    monkeypatch.setattr(_extension, "has_cpu_kernels", lambda: False)
    with caplog.at_level(logging.INFO, logger="impresslearn"):
        assert _backends.select("probe_op", "cpu") == "reference"
        assert _backends.select("probe_op", "cpu") == "reference"
    skipped = [r for r in caplog.records if "probe_op: cpp kernel skipped" in r.getMessage()]
    assert len(skipped) == 1
    with pytest.raises(BackendUnavailable, match="without CPU kernels"):
        _backends.select("probe_op", "cpu", "cpp")  # explicit: raises instead


def test_a_choice_is_decided_once_per_key_and_follows_the_environment_and_the_registry(monkeypatch):
    """select() runs on every op call; deciding anew costs 15-19 us against 1-3.4 us cached (scripts/dispatch_overhead.py)."""
    decided = []
    decide = _backends._decide
    monkeypatch.setattr(_backends, "_decide", lambda *args: decided.append(args[1:]) or decide(*args))
    monkeypatch.setattr(_backends, "_selected", {})
    monkeypatch.delenv("IMPRESSLEARN_BACKEND", raising=False)
    cpu = torch.device("cpu")
    spec = _backends.OpSpec("probe_cached", {"reference": lambda: None, "cpp": lambda: None})
    monkeypatch.setitem(_backends.REGISTRY, "probe_cached", spec)
    for _ in range(3):
        assert _backends.select("probe_cached", cpu, dtype=torch.float32) == "cpp"
    assert decided == [(cpu, None, torch.float32)]
    monkeypatch.setenv("IMPRESSLEARN_BACKEND", "reference")  # the environment is read on every call
    assert _backends.select("probe_cached", cpu, dtype=torch.float32) == "reference"
    assert _backends.select("probe_cached", cpu, "cpp", dtype=torch.float32) == "cpp"  # the argument still wins
    monkeypatch.delenv("IMPRESSLEARN_BACKEND")
    assert _backends.select("probe_cached", cpu, dtype=torch.float32) == "cpp"
    assert _backends.select("probe_cached", cpu, dtype=torch.float64) == "cpp"  # another dtype: its own decision
    assert len(decided) == 4
    # an op registered anew (another spec under the same name) is decided anew
    _backends.register(_backends.OpSpec("probe_cached", {"reference": lambda: None}))
    assert _backends.select("probe_cached", cpu, dtype=torch.float32) == "reference"
    # refusals are not cached: the second call raises the same way
    for _ in range(2):
        with pytest.raises(BackendUnavailable, match="cpp kernels run on CPU tensors, got cuda"):
            _backends.select("probe_cached", "cuda:0", "cpp")
    assert len(decided) == 7
    _backends.clear_selection_cache()
    assert _backends.select("probe_cached", cpu, dtype=torch.float32) == "reference" and len(decided) == 8


def test_a_compiled_op_keeps_one_graph_while_the_choice_cache_fills():
    """Dynamo guards on the globals a trace reads: a cache filled during or after the trace recompiled."""
    from torch._dynamo.utils import counters

    _, bank, weight, alpha = _combine_problem()
    step = lambda weight, alpha: ops.combine_masks(weight, bank, alpha) * 2  # noqa: E731
    torch._dynamo.reset()
    counters.clear()
    _backends.clear_selection_cache()
    compiled = torch.compile(step, backend="eager")
    for i in range(3):
        compiled(weight, alpha + i)
        step(weight, alpha + i)  # the eager call fills the cache between compiled calls
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])


def _combine_problem(k=9, n=37):
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(k, n, generator=g) < 0.3
    return masks, ops.pack_masks(masks, backend="reference"), torch.randn(n, generator=g), torch.rand(k, generator=g)


def test_every_op_has_a_reference_and_only_known_kernels():
    with pytest.raises(ValueError, match="reference"):
        _backends.OpSpec("broken", {"cpp": lambda: None})
    with pytest.raises(ValueError, match="unknown kernel 'gpu'"):
        _backends.OpSpec("broken", {"reference": lambda: None, "gpu": lambda: None})
    for spec in _backends.REGISTRY.values():
        assert "reference" in spec.impls


# ----------------------------------------------------------------------------- one name, one family


def test_a_backend_name_selects_the_same_family_on_every_op():
    """issue 11.3: "triton" failed in topk (no Triton topk), "cuda" would fail in combine."""
    reference = {"reference": lambda: None}
    triton_only = _backends.OpSpec("probe_triton", {**reference, "triton": lambda: None, "cpp": lambda: None})
    cuda_only = _backends.OpSpec("probe_cuda", {**reference, "cuda": lambda: None, "cpp": lambda: None})
    for alias in ("gpu", "triton", "cuda"):
        assert triton_only.member(alias, "cuda") == "triton"  # "cuda" no longer fails where the kernel is Triton
        assert cuda_only.member(alias, "cuda") == "cuda"  # nor "triton" where it is CUDA
        assert triton_only.member(alias, "cpu") == "triton" and cuda_only.member(alias, "cpu") == "reference"
    for spec in (triton_only, cuda_only):
        assert spec.member("cpp", "cpu") == "cpp" and spec.member("cpp", "cuda") is None
        assert spec.member("reference", "cuda") == "reference"
    for name, spec in _backends.REGISTRY.items():
        if spec.composed is None:
            assert spec.member("cpp", "cpu") == "cpp", name
        gpu = "triton" if "triton" in spec.impls else "cuda" if "cuda" in spec.impls else None
        for alias in ("gpu", "triton", "cuda"):
            assert spec.member(alias, "cuda") == gpu, name
    # the real ops: combine's GPU kernel is Triton, topk's is CUDA (when _C was built with it)
    assert _backends.select("combine_masks", "cuda", "cuda") == "triton"
    if _extension.has_cuda_kernels():
        assert _backends.select("topk_mask", "cuda", "triton") == "cuda"
    else:
        with pytest.raises(BackendUnavailable, match="cuda: impresslearn._C was built without CUDA kernels"):
            _backends.select("topk_mask", "cuda", "triton")


def test_the_gpu_family_on_cpu_runs_interpreted_triton_and_references_elsewhere():
    assert _registry.triton_interpreted()  # tests/conftest.py sets TRITON_INTERPRET=1
    for alias in ("gpu", "triton", "cuda"):
        assert _backends.select("combine_masks", "cpu", alias) == "triton"
        assert _backends.select("topk_mask", "cpu", alias) == "reference"
    scores = torch.randn(50)
    assert torch.equal(ops.topk_mask(scores, 7, backend="triton"), ops.topk_mask(scores, 7, backend="reference"))


def test_unknown_and_misplaced_backends_say_why():
    with pytest.raises(ValueError, match="unknown backend 'fortran'"):
        _backends.select("combine_masks", "cpu", "fortran")
    with pytest.raises(TypeError, match="backend must be a string"):
        _backends.select("combine_masks", "cpu", 3)
    with pytest.raises(BackendUnavailable, match="cpp kernels run on CPU tensors, got cuda"):
        _backends.select("combine_masks", "cuda", "cpp")
    with pytest.raises(BackendUnavailable, match=r"impress_linear has no kernel in backend cpp"):
        _backends.select("impress_linear", "cpu", "cpp")  # composed there: combine_masks on cpp + GEMM
    assert _backends.backend_reason("gpu", "meta") == "the gpu kernels do not run on meta tensors"
    assert _backends.backend_reason("cpp", "cuda") == "cpp kernels run on CPU tensors, got cuda"  # its kernel's rule
    assert _backends.backend_reason("reference", "meta") is None
    assert _backends.backend_reason("cpp", "cpu", op="combine_masks") is None


# ----------------------------------------------------------------------------- a learner per family


def _available_families():
    params = []
    for family in _backends.BACKENDS:
        reason = _backends.family_reason(family, "cpu")
        marks = [pytest.mark.skip(reason=f"backend {family} unavailable here: {reason}")] if reason else []
        params.append(pytest.param(family, marks=marks, id=family))
    return params


def _run_learner(backend, monkeypatch):
    """basis mask, random masks, an alpha task and task inference, recording which kernels ran."""
    from impresslearn import ImpressLearner, TrainConfig
    from impresslearn.models import create_model
    from impresslearn.scenarios import BatchLoader, create_scenario

    used = set()
    select = _backends.select

    def spy(op, device, backend=None, dtype=None):
        kernel = select(op, device, backend, dtype)
        used.add((op, kernel))
        return kernel

    monkeypatch.setattr(_backends, "select", spy)
    scenario = create_scenario("synthetic", num_tasks=2, train_size=128, test_size=64, seed=0)
    model = create_model("lenet300", num_classes=10, seed=0, hidden=[24, 12])
    learner = ImpressLearner(model, density=0.2, backend=backend)
    cfg = TrainConfig(epochs=1, lr=0.05, optimizer="adam", seed=0)
    first, second = scenario.task(0), scenario.task(1)
    learner.learn_basis_mask(first.name, BatchLoader(first.train, batch_size=64, shuffle=True, seed=0), cfg)
    learner.add_random_masks(8, seed=0)
    learner.learn_alpha(second.name, BatchLoader(second.train, batch_size=64, shuffle=True, seed=1), cfg)
    x, _ = next(iter(BatchLoader(first.test, batch_size=32)))
    inferred = learner.infer_task(x, method="oneshot")  # GN runs the kernels; the default reads fingerprints
    monkeypatch.setattr(_backends, "select", select)
    banks = [layer.bank.clone() for layer in learner.layers]
    return banks, learner.tasks[second.name].coefficients.detach().clone(), inferred, used


@pytest.mark.filterwarnings("ignore:.*optimiser steps")  # a few steps: this checks kernels, not accuracy
@pytest.mark.parametrize("backend", _available_families())
def test_a_learner_runs_end_to_end_on_every_available_backend(backend, monkeypatch):
    banks, alpha, inferred, used = _run_learner(backend, monkeypatch)
    assert {kernel for _, kernel in used} <= set(_backends.family_kernels(backend, "cpu")), used
    assert any(kernel == _backends.family_kernels(backend, "cpu")[0] for _, kernel in used), used
    if backend == "reference":
        return
    ref_banks, ref_alpha, ref_inferred, _ = _run_learner("reference", monkeypatch)
    assert all(torch.equal(a, b) for a, b in zip(banks, ref_banks))  # masks are bit-exact
    # Two Adam steps on kernels that sum in another order than the reference: measured at most
    # 5.2e-8 on |alpha| <= 0.21 (cpp under avx2 and portable, interpreted Triton 3.0e-8; 1 and 2
    # threads), a few fp32 ulps. 1e-6 leaves 20x for other ISAs' summation orders.
    torch.testing.assert_close(alpha, ref_alpha, atol=1e-6, rtol=0)
    assert inferred == ref_inferred


# ----------------------------------------------------------------------------- lazy Triton, one mode

# The snippets below check a combine of K = 9 coefficients from torch.rand (none negative) against
# the reference. Each side sums the 9 products in fp32 in its own order (at most K - 1 roundings,
# each relative to the sum, as no term is negative) and multiplies by W (one more), so the two
# differ by at most 2K unit roundoffs of the reference: rtol = 18 * 2**-24 = 1.07e-6, atol = 0.
# Measured under the interpreter: bit-identical on 300 seeds (both sum k = 0..8 in order).
COMBINE_OF_9_TOLERANCE = f"rtol={2 * 9 * 2**-24!r}, atol=0"


def _python(code: str, **env) -> str:
    environ = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "IMPRESSLEARN_BACKEND")}
    environ.update(env, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=environ, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_import_loads_neither_triton_nor_inductor():
    """Registering the Triton ops at import cost ~2 s (torch._inductor); they load at first use."""
    out = _python("""
        import sys
        import torch
        import impresslearn
        from impresslearn import ops
        bank = ops.pack_masks(torch.ones(3, 10, dtype=torch.bool))     # the CPU kernels need neither
        ops.combine_masks(torch.randn(10), bank, torch.rand(3))
        print(sorted(m for m in ("triton", "torch._inductor", "torch._dynamo") if m in sys.modules))
    """)
    assert out.strip() == "[]"


def test_interpreter_mode_is_decided_when_the_triton_kernels_first_load():
    """Setting TRITON_INTERPRET after import works (kernels load at first use); changing it later
    changes nothing: dispatch asks the loaded kernels, never the environment again."""
    out = _python(f"""
        import os
        import torch
        from impresslearn import ops, _backends
        from impresslearn.ops import _registry
        os.environ["TRITON_INTERPRET"] = "1"     # after import, before the first Triton use
        w, m, a = torch.randn(40), torch.rand(9, 40) < 0.5, torch.rand(9)
        bank = ops.pack_masks(m, backend="gpu")
        got = ops.combine_masks(w, bank, a, backend="gpu")
        torch.testing.assert_close(got, ops.combine_masks(w, bank, a, backend="reference"), {COMBINE_OF_9_TOLERANCE})
        os.environ["TRITON_INTERPRET"] = "0"
        assert _registry.triton_interpreted() and _backends.select("combine_masks", "cpu", "gpu") == "triton"
        print("ok")
    """)
    assert out.strip() == "ok"
    out = _python("""
        import os
        import torch
        from impresslearn import BackendUnavailable, ops
        try:
            ops.combine_masks(torch.randn(8), torch.zeros(1, 8, dtype=torch.uint8), torch.rand(1), backend="gpu")
        except BackendUnavailable as exc:
            print(exc)
        os.environ["TRITON_INTERPRET"] = "1"     # too late: the kernels loaded compiled
        try:
            ops.pack_masks(torch.ones(1, 8, dtype=torch.bool), backend="gpu")
        except BackendUnavailable as exc:
            print(exc)
    """)
    lines = out.strip().splitlines()
    assert len(lines) == 2 and all("TRITON_INTERPRET was not 1 when they loaded" in line for line in lines), out


def test_the_first_triton_use_may_be_inside_torch_compile():
    """The lazy load happens while Dynamo traces; it must neither break the trace nor the result."""
    out = _python(f"""
        import torch
        from impresslearn import ops
        from impresslearn.ops import _registry
        w, m, a = torch.randn(40), torch.rand(9, 40) < 0.5, torch.rand(9)
        bank = ops.pack_masks(m, backend="reference")
        assert not _registry.triton_loaded()
        f = torch.compile(lambda w, a: ops.combine_masks(w, bank, a, backend="gpu") * 2, backend="eager")
        got = f(w, a)
        assert _registry.triton_loaded()
        torch.testing.assert_close(got, 2 * ops.combine_masks(w, bank, a, backend="reference"), {COMBINE_OF_9_TOLERANCE})
        print("ok")
    """, TRITON_INTERPRET="1")
    assert out.strip() == "ok"


# ----------------------------------------------------------------------------- info


def test_info_lists_every_op_and_backend():
    from impresslearn import info

    text = info.report()
    for name in ("pack_masks", "unpack_masks", "set_mask", "combine_masks", "topk_mask", "impress_linear"):
        assert name in text
    assert "triton: kernels loaded, interpreted" in text  # tests run with TRITON_INTERPRET=1
    block = text[text.index("\npack_masks") + 1 :].split("\n")[1:4]
    assert [line.split()[0] for line in block] == ["reference", "cpp", "gpu"]
    assert block[1].split(None, 1)[1] == "cpu tensors: C++ kernel"
    assert block[2].split(None, 1)[1].startswith("cpu tensors: Triton kernel, Triton interpreter only; cuda tensors:")
    topk = text[text.index("\ntopk_mask ") + 1 :].split("\n")[3]
    assert "cpu tensors: reference (topk_mask has no Triton kernel; its GPU kernel is CUDA)" in topk
