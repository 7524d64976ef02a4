"""combine_masks / combine_masks_alpha_grad on the reference and cpp backends.

Every backend is compared with a float64 evaluation of paper Eq. 1 on odd shapes,
with the per-dtype tolerances of ``impresslearn.ops.combine.TOLERANCES``; gradients
go through autograd and are compared with the reference backend's. (The triton
backend is tested in tests/kernels/.)
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from impresslearn import BackendUnavailable, ops
from impresslearn.ops.bank import pack_masks_reference, unpack_masks_reference
from impresslearn.ops.combine import TOLERANCES, combine_masks_reference

BACKENDS = ("reference", "cpp")
KS = (1, 7, 8, 9, 64, 250)
NS = (1, 13, 1000, 4099)  # not multiples of 8, of the 2048-weight blocks, or of SIMD width
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _case(k, n, dtype=torch.float32, seed=0, p=0.3):
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(k, n, generator=g) < p
    bank = pack_masks_reference(masks)
    # alpha as training leaves it: around 1/K, with both signs
    alpha = (torch.rand(k, generator=g) * 2 - 0.5) / k
    weight = torch.randn(n, generator=g).to(dtype)
    return masks, bank, alpha, weight


def _formula(weight, masks, alpha):
    """W_eff in float64 from the unpacked masks (never from the code under test)."""
    return weight.double() * (alpha.double() @ masks.double())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("n", NS)
def test_forward_matches_float64_formula(backend, dtype, k, n):
    masks, bank, alpha, weight = _case(k, n, dtype, seed=k * 131 + n)
    out = ops.combine_masks(weight, bank, alpha, backend=backend)
    assert out.dtype == dtype and out.shape == weight.shape
    torch.testing.assert_close(out.double(), _formula(weight, masks, alpha), **TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_cpp_forward_keeps_the_weight_shape(dtype):
    masks, bank, alpha, weight = _case(9, 6 * 5 * 3 * 3, dtype)
    weight = weight.view(6, 5, 3, 3)  # a conv weight
    out = ops.combine_masks(weight, bank, alpha, backend="cpp")
    assert out.shape == (6, 5, 3, 3)
    torch.testing.assert_close(out.double(), _formula(weight.reshape(-1), masks, alpha).view(6, 5, 3, 3), **TOLERANCES[dtype])


def test_bits_past_k_are_ignored():
    """Unused bits of the last plane are 0 by format; a bank that breaks it still combines only K masks."""
    masks, bank, alpha, weight = _case(9, 1000)
    dirty = bank.clone()
    dirty[1] |= 0b11111110  # masks 9..15 do not exist
    want = _formula(weight, masks, alpha)
    for backend in BACKENDS:
        out = ops.combine_masks(weight, dirty, alpha, backend=backend)
        torch.testing.assert_close(out.double(), want, **TOLERANCES[torch.float32])
        grad = ops.combine_masks_alpha_grad(torch.ones(1000), weight, dirty, 9, backend=backend)
        torch.testing.assert_close(grad.double(), masks.double() @ weight.double(), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("n", NS)
def test_alpha_grad_matches_float64_formula(backend, k, n):
    masks, bank, alpha, weight = _case(k, n, seed=k + 17 * n)
    grad = torch.randn(n)
    got = ops.combine_masks_alpha_grad(grad, weight, bank, k, backend=backend)
    assert got.shape == (k,) and got.dtype == torch.float32
    terms = masks.double() * (grad.double() * weight.double())
    # fp32 sums of up to n terms: the error scales with sum |terms|, not with the result
    scale = terms.abs().sum(dim=1)
    err = (got.double() - terms.sum(dim=1)).abs()
    assert bool((err <= 1e-6 * scale + 1e-6).all()), (err / scale.clamp_min(1e-30)).max()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", (1, 9, 250))
@pytest.mark.parametrize("n", (13, 4099))
def test_autograd_matches_reference(dtype, k, n):
    _, bank, alpha, weight = _case(k, n, dtype, seed=k + n)
    upstream = torch.randn(n).to(dtype)
    grads = {}
    for backend in BACKENDS:
        w = weight.clone().requires_grad_()
        a = alpha.clone().requires_grad_()
        ops.combine_masks(w, bank, a, backend=backend).backward(upstream)
        grads[backend] = (w.grad, a.grad)
    (w_ref, a_ref), (w_cpp, a_cpp) = grads["reference"], grads["cpp"]
    assert w_cpp.dtype == dtype and a_cpp.dtype == torch.float32
    torch.testing.assert_close(w_cpp, w_ref, **TOLERANCES[dtype])
    # grad_alpha sums n products; relative to the magnitude of the largest entry
    scale = a_ref.abs().max().item() + 1e-6
    torch.testing.assert_close(a_cpp / scale, a_ref / scale, atol=1e-5, rtol=0)


def test_gradcheck_reference_float64():
    _, bank, alpha, weight = _case(9, 23)
    w = weight.double().requires_grad_()
    a = alpha.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda w, a: ops.combine_masks(w, bank, a, backend="reference"), (w, a))


def test_float64_goes_to_reference_automatically_and_cpp_refuses_it():
    _, bank, alpha, weight = _case(9, 23)
    out = ops.combine_masks(weight.double(), bank, alpha.double())
    assert out.dtype == torch.float64
    with pytest.raises(BackendUnavailable, match="float64"):
        ops.combine_masks(weight.double(), bank, alpha, backend="cpp")


def test_cpp_forward_is_identical_for_one_and_two_threads():
    _, bank, alpha, weight = _case(250, 70001)
    grad = torch.randn(70001)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        out1 = ops.combine_masks(weight, bank, alpha, backend="cpp")
        ga1 = ops.combine_masks_alpha_grad(grad, weight, bank, 250, backend="cpp")
        torch.set_num_threads(2)
        out2 = ops.combine_masks(weight, bank, alpha, backend="cpp")
        ga2 = ops.combine_masks_alpha_grad(grad, weight, bank, 250, backend="cpp")
    finally:
        torch.set_num_threads(before)
    assert torch.equal(out1, out2)
    assert torch.equal(ga1, ga2)  # fixed blocks, reduced in block order


@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, 70), n=st.integers(1, 600), seed=st.integers(0, 2**16))
def test_cpp_random_shapes(k, n, seed):
    masks, bank, alpha, weight = _case(k, n, seed=seed, p=0.5)
    out = ops.combine_masks(weight, bank, alpha, backend="cpp")
    torch.testing.assert_close(out.double(), _formula(weight, masks, alpha), **TOLERANCES[torch.float32])


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_raises_before_the_kernel(backend):
    _, bank, alpha, weight = _case(9, 10)
    with pytest.raises(ValueError, match="disagree on K"):
        ops.combine_masks(weight, bank, alpha[:8].contiguous(), backend=backend)  # 8 masks need 1 plane, bank has 2
    with pytest.raises(ValueError, match="disagree on K"):
        ops.combine_masks(weight, bank, torch.ones(17), backend=backend)
    with pytest.raises(TypeError, match="weight must have dtype"):
        ops.combine_masks(weight.int(), bank, alpha, backend=backend)
    with pytest.raises(TypeError, match="alpha must have dtype"):
        ops.combine_masks(weight, bank, alpha.int(), backend=backend)
    with pytest.raises(TypeError, match="bank must have dtype uint8"):
        ops.combine_masks(weight, bank.int(), alpha, backend=backend)
    with pytest.raises(ValueError, match="contiguous"):
        ops.combine_masks(torch.randn(10, 2)[:, 0], bank, alpha, backend=backend)
    with pytest.raises(ValueError, match="contiguous"):
        ops.combine_masks(weight, torch.zeros(10, 2, dtype=torch.uint8).t(), alpha, backend=backend)
    with pytest.raises(ValueError, match="covers 10 weights"):
        ops.combine_masks(torch.randn(11), bank, alpha, backend=backend)
    with pytest.raises(ValueError, match="one device"):
        ops.combine_masks(weight, bank, alpha.to("meta"), backend=backend)
    with pytest.raises(ValueError, match="planes"):
        ops.combine_masks_alpha_grad(weight, weight, bank, 17, backend=backend)
    with pytest.raises(ValueError, match="shape"):
        ops.combine_masks_alpha_grad(weight[:5], weight, bank, 9, backend=backend)


def test_cpp_kernel_checks_memory_safety_itself():
    """The registered op refuses what would read out of bounds even when called directly."""
    _, bank, alpha, weight = _case(9, 10)
    op = torch.ops.impresslearn.combine_masks_cpp
    with pytest.raises(RuntimeError, match="bank"):
        op(torch.randn(11), bank, alpha)
    with pytest.raises(RuntimeError, match="disagree"):
        op(weight, bank, torch.ones(17))
    with pytest.raises(RuntimeError, match="float32, float16 or bfloat16"):
        op(weight.double(), bank, alpha)
    with pytest.raises(RuntimeError, match="planes"):
        torch.ops.impresslearn.combine_masks_alpha_grad_cpp(weight, weight, bank, 17)


# ----------------------------------------------------------------------------- torch.library


@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck(dtype):
    _, bank, alpha, weight = _case(9, 37, dtype)
    grad = torch.randn(37).to(dtype)
    torch.library.opcheck(torch.ops.impresslearn.combine_masks_cpp.default, (weight.requires_grad_(), bank, alpha))
    torch.library.opcheck(torch.ops.impresslearn.combine_masks_alpha_grad_cpp.default, (grad, weight.detach(), bank, 9))


def test_reference_is_the_dense_formula():
    masks, bank, alpha, weight = _case(11, 5)
    assert torch.equal(unpack_masks_reference(bank, 11), masks)
    torch.testing.assert_close(combine_masks_reference(weight.double(), bank, alpha.double()), _formula(weight, masks, alpha))
