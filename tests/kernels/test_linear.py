"""Fused Triton impress_linear (kernels/linear.py): forward, grad_x, grad_alpha, grad_weight.

Compared with a float64 evaluation of ``x @ (W * alpha @ B)^T``. A kernel may err at
most twice as much as PyTorch's own composition (combine + F.linear) in the same
dtype, plus the dtype's atol (flash-attention's rule). Runs on CPU tensors
under TRITON_INTERPRET=1 where there is no GPU, compiled on CUDA tensors where there is
one (tests/conftest.py); ``test_gpu_*`` adds bf16 and batch sizes around the
fused/cuBLAS threshold on a CUDA device.
"""

import pytest
import torch
import torch.nn.functional as F

from impresslearn import ops
from impresslearn.ops import linear as linear_op
from impresslearn.ops.bank import pack_masks_reference
from impresslearn.ops.combine import TOLERANCES
from tests.conftest import TRITON_DEVICE, TRITON_ON_CPU

kl = pytest.importorskip("impresslearn.kernels.linear")

# (rows, out N, in C, K): N and C not multiples of 8/32/64; C = 70 spans three C-blocks;
# large K gets a single weight tile (interpreter speed)
CASES = [(1, 13, 9, 1), (3, 37, 45, 7), (16, 33, 70, 8), (5, 20, 30, 9), (2, 5, 7, 64), (2, 5, 7, 250)]
DTYPES = (torch.float32, torch.float16)
gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or TRITON_ON_CPU, reason="needs a CUDA device and compiled kernels (TRITON_INTERPRET=0)"
)
# on a GPU host every test here runs the compiled kernels on CUDA tensors (tests/conftest.py)
pytestmark = [] if TRITON_ON_CPU else [pytest.mark.gpu]


@pytest.fixture
def fused_calls(monkeypatch):
    """Rows of every call of the fused op made through impress_linear."""
    calls = []
    fused = linear_op._IMPLS["triton"]

    def spy(x, *args):
        calls.append(x.shape[0])
        return fused(x, *args)

    monkeypatch.setitem(linear_op._IMPLS, "triton", spy)
    return calls


def _problem(m, n, c, k, dtype, device=TRITON_DEVICE, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(k, n * c, generator=g) < 0.3
    weight = (torch.randn(n, c, generator=g) / c**0.5).to(dtype)
    alpha = torch.randn(k, generator=g) / k**0.5
    x = torch.randn(m, c, generator=g).to(dtype)
    grad = torch.randn(m, n, generator=g).to(dtype)
    bank = pack_masks_reference(masks)
    return [t.to(device) for t in (masks, weight, bank, alpha, x, grad)]


def _exact(masks, weight, alpha, x, grad):
    """float64 forward and the three gradients by autograd."""
    w = weight.double().requires_grad_()
    a = alpha.double().requires_grad_()
    xx = x.double().requires_grad_()
    coeff = (a @ masks.double()).view_as(w)
    y = xx @ (w * coeff).T
    y.backward(grad.double())
    return y.detach(), xx.grad, w.grad, a.grad


def _pytorch(masks, weight, bank, alpha, x, grad):
    """The unfused composition in the kernel's dtype: combine (reference) then F.linear."""
    w = weight.clone().requires_grad_()
    a = alpha.clone().requires_grad_()
    xx = x.clone().requires_grad_()
    y = F.linear(xx, ops.combine_masks(w, bank, a, backend="reference"))
    y.backward(grad)
    return y.detach(), xx.grad, w.grad, a.grad


def _no_worse_than_pytorch(actual, baseline, exact, dtype, what):
    atol = TOLERANCES[dtype]["atol"]
    err = (actual.double().cpu() - exact.cpu()).abs().max().item()
    base = (baseline.double().cpu() - exact.cpu()).abs().max().item()
    assert err <= 2 * base + atol, f"{what}: error {err:.3g} vs PyTorch's {base:.3g} ({dtype})"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,c,k", CASES)
def test_forward_and_gradients(m, n, c, k, dtype, fused_calls):
    masks, weight, bank, alpha, x, grad = _problem(m, n, c, k, dtype, seed=m + n + c + k)
    exact = _exact(masks, weight, alpha, x, grad)
    base = _pytorch(masks, weight, bank, alpha, x, grad)

    w = weight.clone().requires_grad_()
    a = alpha.clone().requires_grad_()
    xx = x.clone().requires_grad_()
    y = ops.impress_linear(xx, w, bank, a, backend="triton")
    assert fused_calls == [m]  # the fused kernel ran, not combine + F.linear
    assert y.dtype == dtype and y.shape == (m, n)
    y.backward(grad)
    for name, got, ref, ex in zip(("y", "grad_x", "grad_weight", "grad_alpha"), (y, xx.grad, w.grad, a.grad), base, exact):
        assert got.shape == ex.shape, name
        # grad_alpha is fp32 whatever the weight dtype: the fp32 tolerance applies
        _no_worse_than_pytorch(got, ref, ex, torch.float32 if name == "grad_alpha" else dtype, name)


def test_leading_dims_and_alpha_only_gradient():
    masks, weight, bank, alpha, x, grad = _problem(6, 11, 19, 9, torch.float32, seed=4)
    a = alpha.clone().requires_grad_()
    y = ops.impress_linear(x.view(2, 3, 19), weight, bank, a, backend="triton")  # weight frozen: no grad_w
    assert y.shape == (2, 3, 11)
    y.backward(grad.view(2, 3, 11))
    exact = _exact(masks, weight, alpha, x, grad)
    torch.testing.assert_close(y.view(6, 11).double(), exact[0], **TOLERANCES[torch.float32])
    torch.testing.assert_close(a.grad.double(), exact[3], **TOLERANCES[torch.float32])


@pytest.mark.parametrize("use_table", (True, False))
def test_split_contraction_and_shift_and_mask(use_table):
    # split-K partial sums (what the GPU picks for small batches) and both coefficient paths
    masks, weight, bank, alpha, x, grad = _problem(3, 70, 130, 9, torch.float32, seed=7)
    exact = _exact(masks, weight, alpha, x, grad)
    tol = TOLERANCES[torch.float32]
    torch.testing.assert_close(kl.linear_forward(x, weight, bank, alpha, use_table=use_table, split=2).double(), exact[0], **tol)
    torch.testing.assert_close(kl.linear_grad_input(grad, weight, bank, alpha, use_table=use_table, split=2).double(), exact[1], **tol)
    grad_w, grad_alpha = kl.linear_grad_params(grad, x, weight, bank, alpha, True, use_table=use_table)
    torch.testing.assert_close(grad_w.double(), exact[2], **tol)
    torch.testing.assert_close(grad_alpha.double(), exact[3], **tol)


def test_grad_params_without_weight_grad_returns_empty():
    _, weight, bank, alpha, x, grad = _problem(2, 5, 7, 3, torch.float32)
    grad_w, grad_alpha = kl.linear_grad_params(grad, x, weight, bank, alpha, False)
    assert grad_w.numel() == 0 and grad_alpha.shape == (3,)


def test_large_batch_goes_through_combine_and_is_still_right(monkeypatch):
    masks, weight, bank, alpha, x, grad = _problem(linear_op.FUSED_MAX_ROWS + 1, 9, 10, 9, torch.float32, seed=2)

    def fail(*args):
        raise AssertionError("the fused kernel ran above FUSED_MAX_ROWS")

    monkeypatch.setitem(linear_op._IMPLS, "triton", fail)
    y = ops.impress_linear(x, weight, bank, alpha, backend="triton")
    torch.testing.assert_close(y.double(), _exact(masks, weight, alpha, x, grad)[0], **TOLERANCES[torch.float32])


def test_bad_input_is_caught_before_the_kernel():
    _, weight, bank, alpha, x, _ = _problem(2, 5, 7, 9, torch.float32)
    with pytest.raises(ValueError, match="disagree on K"):
        ops.impress_linear(x, weight, bank, alpha[:8].contiguous(), backend="triton")
    with pytest.raises(ValueError, match="features"):
        ops.impress_linear(x[:, :6], weight, bank, alpha, backend="triton")
    with pytest.raises(ValueError, match="weights"):
        ops.impress_linear(x, weight, bank[:, :34].contiguous(), alpha, backend="triton")
    with pytest.raises(ValueError, match="alpha must be finite"):  # the composed path's check, on the fused one
        ops.impress_linear(x, weight, bank, torch.full_like(alpha, float("nan")), backend="triton")
    with pytest.raises(ValueError, match=r"tensors must have one device: weight \S+, bank meta, alpha \S+$"):
        ops.impress_linear(x, weight, bank.to("meta"), alpha, backend="triton")


def test_opcheck():
    ops.load_triton_ops()  # registered lazily, at first use; torch.ops.* needs them now
    _, weight, bank, alpha, x, grad = _problem(2, 5, 7, 9, torch.float32)
    torch.library.opcheck(torch.ops.impresslearn.impress_linear_triton, (x, weight, bank, alpha))
    torch.library.opcheck(
        torch.ops.impresslearn.impress_linear_triton,
        (x.clone().requires_grad_(), weight.clone().requires_grad_(), bank, alpha.clone().requires_grad_()),
    )
    torch.library.opcheck(torch.ops.impresslearn.impress_linear_grad_input_triton, (grad, weight, bank, alpha))
    torch.library.opcheck(
        torch.ops.impresslearn.impress_linear_grad_params_triton, (grad, x, weight, bank, alpha, True)
    )


# ----------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
@pytest.mark.parametrize("m", (1, 7, 64, 65, 256))
def test_gpu_against_pytorch(m, dtype):
    masks, weight, bank, alpha, x, grad = _problem(m, 300, 784, 250, dtype, device="cuda", seed=m)
    exact = _exact(masks, weight, alpha, x, grad)
    base = _pytorch(masks, weight, bank, alpha, x, grad)
    w = weight.clone().requires_grad_()
    a = alpha.clone().requires_grad_()
    xx = x.clone().requires_grad_()
    y = ops.impress_linear(xx, w, bank, a)  # automatic: fused up to FUSED_MAX_ROWS rows
    y.backward(grad)
    for name, got, ref, ex in zip(("y", "grad_x", "grad_weight", "grad_alpha"), (y, xx.grad, w.grad, a.grad), base, exact):
        _no_worse_than_pytorch(got, ref, ex, torch.float32 if name == "grad_alpha" else dtype, name)
