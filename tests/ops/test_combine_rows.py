"""combine_masks_rows: coefficients per block of output channels, reference and cpp backends.

Compared with a float64 evaluation of the formula on odd shapes (channels not a multiple of
the block, blocks of weights not multiples of 8 or of the kernels' 2048-weight blocks); the
cpp forward is bit-identical to the per-layer combine_masks when every column is the same,
for every ISA this CPU runs (IMPRESSLEARN_CPU_ISA, one subprocess each) and thread count.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import pytest
import torch

from impresslearn import BackendUnavailable, _extension, ops
from impresslearn.ops.bank import pack_masks_reference
from impresslearn.ops.combine import TOLERANCES
from tests.conftest import TRITON_DEVICE

needs_cpp = pytest.mark.skipif(not _extension.has_cpu_kernels(), reason="impresslearn._C has no C++ kernels")
BACKENDS = ("reference", pytest.param("cpp", marks=needs_cpp))
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# (weight shape, K, channels per block): one channel, blocks that split the channels unevenly,
# a conv weight, a group longer than the kernels' 2048-weight blocks, one block for all
SHAPES = [((7, 13), 9, 1), ((10, 100), 7, 3), ((37, 13), 250, 5), ((6, 3, 3, 3), 8, 4), ((5, 3001), 17, 2),
          ((4, 50), 1, 4), ((3, 4099), 64, 1)]  # fmt: skip


def _case(shape, k, block, dtype=torch.float32, seed=0, p=0.3):
    g = torch.Generator().manual_seed(seed)
    n = torch.Size(shape).numel()
    masks = torch.rand(k, n, generator=g) < p
    columns = -(-shape[0] // block)
    alpha = (torch.rand(k, columns, generator=g) * 2 - 0.5) / k
    weight = torch.randn(shape, generator=g).to(dtype)
    return masks, pack_masks_reference(masks), alpha, weight


def _formula(weight, masks, alpha, block):
    """W_eff in float64 from the unpacked masks, channel by channel (never from the code under test)."""
    channels = weight.shape[0]
    m = masks.double().view(masks.shape[0], channels, -1)
    w = weight.double().reshape(channels, -1)
    rows = [w[c] * (alpha[:, c // block].double() @ m[:, c]) for c in range(channels)]
    return torch.stack(rows).view(weight.shape)


def _grad_formula(grad, weight, masks, k, block):
    channels = weight.shape[0]
    m = masks.double().view(k, channels, -1)
    u = (grad.double() * weight.double()).reshape(channels, -1)
    out = torch.zeros(k, -(-channels // block), dtype=torch.float64)
    for c in range(channels):
        out[:, c // block] += m[:, c] @ u[c]
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,k,block", SHAPES)
def test_forward_matches_float64_formula(backend, dtype, shape, k, block):
    masks, bank, alpha, weight = _case(shape, k, block, dtype, seed=k)
    out = ops.combine_masks_rows(weight, bank, alpha, block, backend=backend)
    assert out.shape == weight.shape and out.dtype == dtype
    torch.testing.assert_close(out.double(), _formula(weight, masks, alpha, block), **TOLERANCES[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,k,block", SHAPES)
def test_alpha_grad_matches_float64_formula(backend, shape, k, block):
    masks, bank, _, weight = _case(shape, k, block, seed=k + 1)
    grad = torch.randn(shape)
    got = ops.combine_masks_rows_alpha_grad(grad, weight, bank, k, block, backend=backend)
    want = _grad_formula(grad, weight, masks, k, block)
    scale = want.abs().max().item() + 1e-6
    torch.testing.assert_close(got.double() / scale, want / scale, atol=1e-5, rtol=0)


@needs_cpp
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,k,block", SHAPES[:4])
def test_autograd_cpp_matches_reference(dtype, shape, k, block):
    _, bank, alpha, weight = _case(shape, k, block, dtype, seed=3)
    upstream = torch.randn(shape).to(dtype)
    grads = {}
    for backend in ("reference", "cpp"):
        w, a = weight.clone().requires_grad_(), alpha.clone().requires_grad_()
        ops.combine_masks_rows(w, bank, a, block, backend=backend).backward(upstream)
        grads[backend] = (w.grad, a.grad)
    (w_ref, a_ref), (w_cpp, a_cpp) = grads["reference"], grads["cpp"]
    assert w_cpp.dtype == dtype and a_cpp.dtype == torch.float32 and a_cpp.shape == alpha.shape
    torch.testing.assert_close(w_cpp, w_ref, **TOLERANCES[dtype])
    scale = a_ref.abs().max().item() + 1e-6
    torch.testing.assert_close(a_cpp / scale, a_ref / scale, atol=2e-5, rtol=0)


@pytest.mark.parametrize("shape,k,block", [((7, 5), 9, 1), ((5, 2, 2, 2), 3, 2)])
def test_gradcheck_reference_float64(shape, k, block):
    _, bank, alpha, weight = _case(shape, k, block)
    w, a = weight.double().requires_grad_(), alpha.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda w, a: ops.combine_masks_rows(w, bank, a, block, backend="reference"), (w, a))


@needs_cpp
def test_cpp_gradient_is_the_reference_gradient_checked_in_float64():
    """The cpp kernel's alpha gradient against finite differences of the float64 reference."""
    shape, k, block = (6, 40), 11, 4
    _, bank, alpha, weight = _case(shape, k, block, seed=5)
    upstream = torch.randn(shape)
    a = alpha.clone().requires_grad_()
    ops.combine_masks_rows(weight, bank, a, block, backend="cpp").backward(upstream)
    a64 = alpha.double().requires_grad_()
    ops.combine_masks_rows(weight.double(), bank, a64, block, backend="reference").backward(upstream.double())
    torch.testing.assert_close(a.grad.double(), a64.grad, atol=1e-5, rtol=1e-5)


@needs_cpp
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,k,block", SHAPES)
def test_equal_columns_give_the_per_layer_bits(dtype, shape, k, block):
    _, bank, alpha, weight = _case(shape, k, block, dtype, seed=7)
    column = alpha[:, 0].contiguous()
    same = column[:, None].expand_as(alpha).contiguous()
    rows = ops.combine_masks_rows(weight, bank, same, block, backend="cpp")
    assert torch.equal(rows, ops.combine_masks(weight, bank, column, backend="cpp"))


@needs_cpp
def test_grad_of_equal_columns_sums_to_the_per_layer_grad():
    shape, k, block = (9, 700), 37, 2
    _, bank, alpha, weight = _case(shape, k, block, seed=11)
    grad = torch.randn(shape)
    rows = ops.combine_masks_rows_alpha_grad(grad, weight, bank, k, block, backend="cpp")
    layer = ops.combine_masks_alpha_grad(grad, weight, bank, k, backend="cpp")
    torch.testing.assert_close(rows.double().sum(dim=1), layer.double(), atol=1e-4, rtol=1e-5)


@needs_cpp
def test_cpp_is_identical_for_one_and_two_threads():
    shape, k, block = (300, 237), 250, 1
    _, bank, alpha, weight = _case(shape, k, block)
    grad = torch.randn(shape)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            forward = ops.combine_masks_rows(weight, bank, alpha, block, backend="cpp")
            results.append((forward, ops.combine_masks_rows_alpha_grad(grad, weight, bank, k, block, backend="cpp")))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


# The rows op forward (fp32, bf16) and gradient under one ISA, and whether the forward with
# equal columns equals combine_masks, digested to one line.
_ISA_SCRIPT = r"""
import hashlib, torch
from impresslearn import ops
from impresslearn.ops import pack_masks
torch.set_num_threads(2)
g = torch.Generator().manual_seed(0)
c, l, k, block = 23, 611, 37, 3
bank = pack_masks(torch.rand(k, c * l, generator=g) < 0.3)
alpha = torch.randn(k, -(-c // block), generator=g)
weight, grad = torch.randn(c, l, generator=g), torch.randn(c, l, generator=g)
outs = [ops.combine_masks_rows(weight, bank, alpha, block, backend="cpp"),
        ops.combine_masks_rows(weight.bfloat16(), bank, alpha, block, backend="cpp"),
        ops.combine_masks_rows_alpha_grad(grad, weight, bank, k, block, backend="cpp")]
same = alpha[:, :1].expand_as(alpha).contiguous()
equal = torch.equal(ops.combine_masks_rows(weight, bank, same, block, backend="cpp"),
                    ops.combine_masks(weight, bank, alpha[:, 0].contiguous(), backend="cpp"))
import impresslearn._C as C
print(C.cpu_isa(), equal, hashlib.sha256(b"".join(o.view(torch.uint8).numpy().tobytes() for o in outs)).hexdigest())
"""


@functools.lru_cache(maxsize=None)
def _run(isa: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, IMPRESSLEARN_CPU_ISA=isa, OMP_NUM_THREADS="2")
    return subprocess.run([sys.executable, "-c", _ISA_SCRIPT], env=env, capture_output=True, text=True, timeout=300)


@needs_cpp
@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_every_isa_gives_the_portable_bits(isa):
    supported = list(_extension.extension().cpu_isas())
    if isa not in supported:
        pytest.skip(f"this CPU cannot run the {isa} loops (it has: {_extension.extension().cpu_features()})")
    results = {}
    for name in ("portable", isa):
        done = _run(name)
        assert done.returncode == 0, done.stderr
        ran, equal, digest = done.stdout.split()
        assert ran == name and equal == "True"
        results[name] = digest
    assert results[isa] == results["portable"]


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_is_refused_by_name(backend):
    _, bank, alpha, weight = _case((10, 3), 9, 4)  # 3 columns
    with pytest.raises(ValueError, match=r"alpha has 2 columns but a weight of 10 output channels in blocks of 4"):
        ops.combine_masks_rows(weight, bank, alpha[:, :2].contiguous(), 4, backend=backend)
    with pytest.raises(ValueError, match="disagree on K"):
        ops.combine_masks_rows(weight, bank, alpha[:8].contiguous(), 4, backend=backend)
    with pytest.raises(ValueError, match="alpha must be 2-D"):
        ops.combine_masks_rows(weight, bank, alpha[:, 0].contiguous(), 4, backend=backend)
    with pytest.raises(ValueError, match="block must be >= 1"):
        ops.combine_masks_rows(weight, bank, alpha, 0, backend=backend)
    with pytest.raises(TypeError, match="block must be an integer"):
        ops.combine_masks_rows(weight, bank, alpha, 4.0, backend=backend)
    with pytest.raises(ValueError, match="covers 30 weights"):
        ops.combine_masks_rows(torch.randn(10, 4), bank, alpha, 4, backend=backend)
    with pytest.raises(ValueError, match="alpha must be finite"):
        ops.combine_masks_rows(weight, bank, alpha.clone().fill_(float("nan")), 4, backend=backend)
    with pytest.raises(TypeError, match="weight must have dtype"):
        ops.combine_masks_rows(weight.int(), bank, alpha, 4, backend=backend)
    with pytest.raises(ValueError, match="planes"):
        ops.combine_masks_rows_alpha_grad(weight, weight, bank, 17, 4, backend=backend)
    with pytest.raises(ValueError, match="grad has shape"):
        ops.combine_masks_rows_alpha_grad(weight[:5], weight, bank, 9, 4, backend=backend)


@needs_cpp
def test_cpp_kernel_checks_memory_safety_itself():
    _, bank, alpha, weight = _case((10, 3), 9, 4)
    op = torch.ops.impresslearn.combine_masks_rows_cpp
    with pytest.raises(RuntimeError, match="alpha"):
        op(weight.reshape(-1), bank, alpha[:, :2].contiguous(), 12)  # 30 weights in groups of 12: 3 columns
    with pytest.raises(RuntimeError, match="group_len"):
        op(weight.reshape(-1), bank, alpha, 0)
    with pytest.raises(RuntimeError, match="planes"):
        torch.ops.impresslearn.combine_masks_rows_alpha_grad_cpp(weight.reshape(-1), weight.reshape(-1), bank, 17, 12)


def test_float64_goes_to_the_reference_and_cpp_refuses_it():
    _, bank, alpha, weight = _case((6, 5), 9, 2)
    assert ops.combine_masks_rows(weight.double(), bank, alpha.double(), 2).dtype == torch.float64
    if _extension.has_cpu_kernels():
        with pytest.raises(BackendUnavailable, match="float64"):
            ops.combine_masks_rows(weight.double(), bank, alpha, 2, backend="cpp")


@needs_cpp
@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck(dtype):
    _, bank, alpha, weight = _case((9, 5), 9, 2, dtype)
    flat = weight.reshape(-1)
    grad = torch.randn(45).to(dtype)
    torch.library.opcheck(torch.ops.impresslearn.combine_masks_rows_cpp.default,
                          (flat.requires_grad_(), bank, alpha, 10))  # fmt: skip
    torch.library.opcheck(torch.ops.impresslearn.combine_masks_rows_alpha_grad_cpp.default,
                          (grad, flat.detach(), bank, 9, 10))  # fmt: skip


# ----------------------------------------------------------------------------- Triton (kernels/combine.py)
# Interpreted on CPU tensors where there is no GPU, compiled on CUDA tensors where there is
# one (tests/conftest.py); small shapes for the interpreter.

TRITON_SHAPES = [((7, 13), 9, 1), ((10, 100), 7, 3), ((6, 3, 3, 3), 8, 4), ((3, 1100), 17, 1)]


def _needs_triton():
    pytest.importorskip("triton")
    from impresslearn.ops._registry import triton_load_reason

    reason = triton_load_reason()
    if reason is not None:
        pytest.skip(reason)


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16))
@pytest.mark.parametrize("shape,k,block", TRITON_SHAPES)
def test_triton_forward_and_alpha_grad_match_float64(dtype, shape, k, block):
    _needs_triton()
    masks, bank, alpha, weight = _case(shape, k, block, dtype, seed=k)
    device = TRITON_DEVICE
    out = ops.combine_masks_rows(weight.to(device), bank.to(device), alpha.to(device), block, backend="gpu")
    torch.testing.assert_close(out.cpu().double(), _formula(weight, masks, alpha, block), **TOLERANCES[dtype])
    grad = torch.randn(shape).to(dtype)
    got = ops.combine_masks_rows_alpha_grad(grad.to(device), weight.to(device), bank.to(device), k, block,
                                            backend="gpu")  # fmt: skip
    want = _grad_formula(grad, weight, masks, k, block)
    scale = want.abs().max().item() + 1e-6
    torch.testing.assert_close(got.cpu().double() / scale, want / scale, atol=1e-4, rtol=0)


def test_triton_autograd_matches_reference():
    _needs_triton()
    shape, k, block = (10, 100), 7, 3
    _, bank, alpha, weight = _case(shape, k, block, seed=2)
    upstream = torch.randn(shape)
    grads = {}
    for backend, device in (("reference", "cpu"), ("gpu", TRITON_DEVICE)):
        w = weight.clone().to(device).requires_grad_()
        a = alpha.clone().to(device).requires_grad_()
        ops.combine_masks_rows(w, bank.to(device), a, block, backend=backend).backward(upstream.to(device))
        grads[backend] = (w.grad.cpu(), a.grad.cpu())
    torch.testing.assert_close(grads["gpu"][0], grads["reference"][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads["gpu"][1], grads["reference"][1], atol=1e-4, rtol=1e-5)


def test_triton_launcher_checks_the_layout():
    _needs_triton()
    from impresslearn.kernels import combine as kc

    _, bank, alpha, weight = _case((10, 3), 9, 4)
    with pytest.raises(ValueError, match=r"alpha must be fp32\[K, 3\]"):
        kc.combine_masks_rows(weight.reshape(-1), bank, alpha[:, :2].contiguous(), 12)
    with pytest.raises(ValueError, match="group_len must be >= 1"):
        kc.combine_masks_rows(weight.reshape(-1), bank, alpha, 0)
