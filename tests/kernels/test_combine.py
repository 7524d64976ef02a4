"""Triton combine kernels (kernels/combine.py) against a float64 evaluation of paper Eq. 1.

Runs on CPU tensors under TRITON_INTERPRET=1 where there is no GPU, and compiled on
CUDA tensors where there is one (tests/conftest.py); the ``test_gpu_*`` tests add bf16
and large n on a CUDA device.
"""

import pytest
import torch

from impresslearn import ops
from impresslearn.ops.bank import pack_masks_reference
from impresslearn.ops.combine import TOLERANCES
from tests.conftest import TRITON_DEVICE, TRITON_ON_CPU

kc = pytest.importorskip("impresslearn.kernels.combine")

# n is never a multiple of 8, 32 or a block size; large K gets a small n (interpreter speed)
CASES = [(1, 13), (7, 1001), (8, 2049), (9, 4099), (64, 777), (250, 301)]
DTYPES = (torch.float32, torch.float16)
gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or TRITON_ON_CPU, reason="needs a CUDA device and compiled kernels (TRITON_INTERPRET=0)"
)
# on a GPU host every test here runs the compiled kernels on CUDA tensors (tests/conftest.py)
pytestmark = [] if TRITON_ON_CPU else [pytest.mark.gpu]


def _problem(k, n, dtype, device=TRITON_DEVICE, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(k, n, generator=g) < 0.3
    weight = torch.randn(n, generator=g).to(dtype)
    alpha = torch.randn(k, generator=g)
    grad = torch.randn(n, generator=g).to(dtype)
    bank = pack_masks_reference(masks)
    return [t.to(device) for t in (masks, weight, bank, alpha, grad)]


def _coeff64(masks, alpha):
    return alpha.double() @ masks.double()


def _close(actual, expected, dtype):
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), **TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,n", CASES)
def test_forward_matches_formula(k, n, dtype):
    masks, weight, bank, alpha, _ = _problem(k, n, dtype, seed=k + n)
    out = ops.combine_masks(weight, bank, alpha, backend="triton")
    assert out.dtype == dtype and out.shape == weight.shape
    _close(out, weight.double() * _coeff64(masks, alpha), dtype)


@pytest.mark.parametrize("k,n", [(9, 1001), (250, 301)])
def test_shift_and_mask_path_matches_table_path(k, n):
    # the two ways of forming the coefficient sum the same fp32 terms in a different order
    _, weight, bank, alpha, _ = _problem(k, n, torch.float32, seed=k)
    table = kc.combine_masks(weight, bank, alpha, use_table=True)
    shift = kc.combine_masks(weight, bank, alpha, use_table=False)
    torch.testing.assert_close(shift, table, **TOLERANCES[torch.float32])


def test_coefficient_table_is_the_subset_sums():
    alpha = torch.randn(11, device=TRITON_DEVICE)
    table = kc.coefficient_table(alpha, 2).cpu()
    alpha = alpha.cpu()
    padded = torch.cat([alpha, torch.zeros(5)]).view(2, 8)
    for v in (0, 1, 2, 3, 128, 255, 0b10110101):
        bits = torch.tensor([(v >> b) & 1 for b in range(8)], dtype=torch.float32)
        torch.testing.assert_close(table[:, v], padded @ bits)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,n", CASES)
def test_alpha_grad_matches_formula(k, n, dtype):
    masks, weight, bank, alpha, grad = _problem(k, n, dtype, seed=2 * k + n)
    out = ops.combine_masks_alpha_grad(grad, weight, bank, k, backend="triton")
    assert out.dtype == torch.float32 and out.shape == (k,)
    expected = masks.double() @ (grad.double() * weight.double())
    # fp32 accumulation of fp16 products is exact per term: the fp32 tolerance applies
    _close(out, expected, torch.float32)


def test_alpha_grad_is_deterministic():
    _, weight, bank, alpha, grad = _problem(64, 5000, torch.float32, seed=5)
    first = ops.combine_masks_alpha_grad(grad, weight, bank, 64, backend="triton")
    again = ops.combine_masks_alpha_grad(grad, weight, bank, 64, backend="triton")
    assert torch.equal(first, again)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,n", [(1, 13), (9, 1001), (250, 301)])
def test_autograd_weight_and_alpha(k, n, dtype):
    masks, weight, bank, alpha, grad = _problem(k, n, dtype, seed=3 * k + n)
    weight = weight.view(1, n).requires_grad_()  # a non-flat weight goes through the op's reshape
    alpha = alpha.requires_grad_()
    ops.combine_masks(weight, bank, alpha, backend="triton").backward(grad.view(1, n))
    coeff = _coeff64(masks, alpha.detach())
    _close(weight.grad.view(-1), grad.double() * coeff, dtype)
    _close(alpha.grad, masks.double() @ (grad.double() * weight.detach().double().view(-1)), torch.float32)


def test_opcheck():
    ops.load_triton_ops()  # registered lazily, at first use; torch.ops.* needs them now
    _, weight, bank, alpha, grad = _problem(9, 37, torch.float32)
    torch.library.opcheck(torch.ops.impresslearn.combine_masks_triton, (weight, bank, alpha))
    torch.library.opcheck(torch.ops.impresslearn.combine_masks_alpha_grad_triton, (grad, weight, bank, 9))
    w = weight.clone().requires_grad_()
    a = alpha.clone().requires_grad_()
    torch.library.opcheck(torch.ops.impresslearn.combine_masks_triton, (w, bank, a))


def test_bad_input_is_caught_before_the_kernel():
    _, weight, bank, alpha, _ = _problem(9, 37, torch.float32)
    with pytest.raises(ValueError, match="disagree on K"):
        ops.combine_masks(weight, bank, alpha[:8].contiguous(), backend="triton")
    with pytest.raises(ValueError, match="weights"):
        ops.combine_masks(weight[:36].contiguous(), bank, alpha, backend="triton")
    with pytest.raises(TypeError, match="uint8"):
        ops.combine_masks(weight, bank.int(), alpha, backend="triton")


# ----------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
@pytest.mark.parametrize("k,n", [(1, 13), (9, 100_003), (250, 1_000_003)])
def test_gpu_forward_and_alpha_grad(k, n, dtype):
    masks, weight, bank, alpha, grad = _problem(k, n, dtype, device="cuda", seed=k)
    for use_table in (True, False):
        out = kc.combine_masks(weight, bank, alpha, use_table=use_table)
        _close(out, weight.double() * _coeff64(masks, alpha), dtype)
    got = ops.combine_masks_alpha_grad(grad, weight, bank, k, backend="triton")
    _close(got, masks.double() @ (grad.double() * weight.double()), torch.float32)


def test_bfloat16_under_the_interpreter_is_refused_with_a_reason():
    from impresslearn.kernels._launch import interpreted

    if not interpreted():
        pytest.skip("kernels are compiled here: bfloat16 runs")
    _, weight, bank, alpha, _ = _problem(9, 37, torch.float32)
    with pytest.raises(TypeError, match="interpreter"):
        ops.combine_masks(weight.bfloat16(), bank, alpha, backend="triton")
