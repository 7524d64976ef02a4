"""The C++ kernels' ISA dispatch: IMPRESSLEARN_CPU_ISA picks the loops, every ISA gives the same bits.

The variable is read once per process, so each ISA runs in a subprocess. ISAs this
processor lacks are skipped with the reason (ctest's test_combine_avx512_emulated runs
the AVX-512 loops on SIMDe instead).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import pytest

from impresslearn import _extension, info

pytestmark = pytest.mark.skipif(not _extension.has_cpu_kernels(), reason="impresslearn._C has no C++ kernels")

# Forward (fp32 and bf16 weights) and alpha gradient on a bank of K = 37 masks over
# 3 pairs of 2048-weight blocks and a partial block, digested to one line.
_SCRIPT = r"""
import hashlib, torch
from impresslearn.ops import pack_masks
torch.set_num_threads(2)
g = torch.Generator().manual_seed(0)
n, k = 3 * 4096 + 1001, 37
bank = pack_masks(torch.rand(k, n, generator=g) < 0.3)
alpha = torch.randn(k, generator=g)
weight, grad = torch.randn(n, generator=g), torch.randn(n, generator=g)
ops = torch.ops.impresslearn
outs = [ops.combine_masks_cpp(weight, bank, alpha), ops.combine_masks_cpp(weight.bfloat16(), bank, alpha),
        ops.combine_masks_alpha_grad_cpp(grad, weight, bank, k)]
import impresslearn._C as C
print(C.cpu_isa(), hashlib.sha256(b"".join(o.view(torch.uint8).numpy().tobytes() for o in outs)).hexdigest())
"""


@functools.lru_cache(maxsize=None)
def _run(isa: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, IMPRESSLEARN_CPU_ISA=isa, OMP_NUM_THREADS="2")
    return subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=300)


def _supported() -> list[str]:
    return list(_extension.extension().cpu_isas())


def test_active_isa_is_one_this_cpu_runs_and_info_names_it():
    ext = _extension.extension()
    assert "portable" in _supported()
    if "IMPRESSLEARN_CPU_ISA" not in os.environ:
        assert ext.cpu_isa() == _supported()[-1]  # automatic: the widest
    assert f"cpu kernels ISA: {ext.cpu_isa()} " in info.report()


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_every_isa_gives_the_portable_bits(isa):
    if isa not in _supported():
        pytest.skip(f"this CPU cannot run the {isa} loops (it has: {_extension.extension().cpu_features()})")
    results = {}
    for name in ("portable", isa):
        done = _run(name)
        assert done.returncode == 0, done.stderr
        ran, digest = done.stdout.split()
        assert ran == name
        results[name] = digest
    assert results[isa] == results["portable"]


def test_unusable_isa_is_a_value_error_naming_the_variable():
    done = _run("sse9")
    assert done.returncode != 0
    assert "ValueError" in done.stderr and "IMPRESSLEARN_CPU_ISA=sse9 is not an ISA" in done.stderr
    missing = [isa for isa in ("avx2", "avx512") if isa not in _supported()]
    if not missing:
        pytest.skip("this CPU runs every ISA: none to refuse")
    done = _run(missing[0])
    assert done.returncode != 0
    assert f"IMPRESSLEARN_CPU_ISA={missing[0]} but this processor cannot run it" in done.stderr


def test_combine_cpp_autograd_runs_in_cpp_and_matches_the_reference():
    """combine_masks_cpp's autograd is csrc/bindings.cpp's (no Python call per forward and
    backward: the small-K step's overhead), and its gradients are the reference's."""
    import torch

    from impresslearn.ops import pack_masks
    from impresslearn.ops.combine import combine_masks_reference

    for op in ("combine_masks_cpp", "combine_masks_rows_cpp"):  # both combine ops' autograd is C++
        dump = torch._C._dispatch_dump(f"impresslearn::{op}")
        autograd = [line for line in dump.splitlines() if line.startswith("Autograd[alias]:")]
        assert len(autograd) == 1 and "bindings.cpp" in autograd[0], dump
    g = torch.Generator().manual_seed(3)
    n, k = 3000, 13
    bank = pack_masks(torch.rand(k, n, generator=g) < 0.4)
    grad_out = torch.randn(n, generator=g)
    results = []
    for fn in (torch.ops.impresslearn.combine_masks_cpp, combine_masks_reference):
        weight = torch.randn(n, generator=torch.Generator().manual_seed(4)).requires_grad_()
        alpha = torch.rand(k, generator=torch.Generator().manual_seed(5)).requires_grad_()
        fn(weight, bank, alpha).backward(grad_out)
        results.append((weight.grad, alpha.grad))
    (w_cpp, a_cpp), (w_ref, a_ref) = results
    torch.testing.assert_close(w_cpp, w_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a_cpp, a_ref, rtol=1e-5, atol=1e-5)  # measured: 1.7e-5 off at |a| = 68
