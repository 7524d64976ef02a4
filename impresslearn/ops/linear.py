"""impress_linear and impress_conv2d: a linear or conv layer whose weight is ``combine_masks``.

Equivalent PyTorch::

    w_eff = combine_masks(weight, bank, alpha)
    y = F.linear(x, w_eff)            # or F.conv2d(x, w_eff, ...)

On every backend but one this is exactly that composition (combine, then the
dense GEMM or convolution of PyTorch), so gradients for ``x`` and ``alpha`` come
from the two ops' autograd. The exception is a fused Triton kernel for small
batches on CUDA (``kernels/linear.py``) that builds the weight tile from the bank
inside the GEMM loop and never writes ``W_eff`` to memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _backends
from . import _checks
from ._registry import triton_ops
from .combine import combine_masks

# ----------------------------------------------------------------------------- reference


def impress_linear_reference(x, weight, bank, alpha):
    return F.linear(x, combine_masks(weight, bank, alpha, backend="reference"))


# ----------------------------------------------------------------------------- kernels

_IMPLS = {"reference": impress_linear_reference}
# Rows of x up to which the fused Triton kernel runs; above it combine + cuBLAS wins.
# Why 64: kernels/linear.py (the fused GEMM stays bandwidth-bound up to ~9 (4 + G) rows).
FUSED_MAX_ROWS = 64


def _register_triton(_triton_linear):
    """Registers the fused Triton linear ops; runs at their first use (ops/_registry.py: import cost)."""
    from ..kernels._launch import triton_op  # torch.library.triton_op, opaque under TRITON_INTERPRET

    @triton_op("impresslearn::impress_linear_triton", mutates_args=())
    def _impress_linear_triton(x: torch.Tensor, weight: torch.Tensor, bank: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        return _triton_linear.linear_forward(x, weight, bank, alpha)

    @triton_op("impresslearn::impress_linear_grad_input_triton", mutates_args=())
    def _impress_linear_grad_input_triton(
        grad: torch.Tensor, weight: torch.Tensor, bank: torch.Tensor, alpha: torch.Tensor
    ) -> torch.Tensor:
        return _triton_linear.linear_grad_input(grad, weight, bank, alpha)

    @triton_op("impresslearn::impress_linear_grad_params_triton", mutates_args=())
    def _impress_linear_grad_params_triton(
        grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bank: torch.Tensor, alpha: torch.Tensor,
        weight_grad: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return _triton_linear.linear_grad_params(grad, x, weight, bank, alpha, weight_grad)

    def _linear_setup_context(ctx, inputs, output):
        x, weight, bank, alpha = inputs
        ctx.save_for_backward(x, weight, bank, alpha)

    def _linear_backward(ctx, grad):
        x, weight, bank, alpha = ctx.saved_tensors
        grad = grad.contiguous()
        need_x, need_w, _, need_alpha = ctx.needs_input_grad
        grad_x = grad_w = grad_alpha = None
        if need_x:
            grad_x = _impress_linear_grad_input_triton(grad, weight, bank, alpha)
        if need_w or need_alpha:
            grad_w, grad_alpha = _impress_linear_grad_params_triton(grad, x, weight, bank, alpha, need_w)
            grad_w = grad_w if need_w else None
            grad_alpha = grad_alpha if need_alpha else None
        return grad_x, grad_w, None, grad_alpha

    torch.library.register_autograd(_impress_linear_triton, _linear_backward, setup_context=_linear_setup_context)
    return {"linear": _impress_linear_triton}


_triton = triton_ops("linear", _register_triton)
if _triton is not None:
    _IMPLS["triton"] = _triton.impl("linear")

_backends.register(
    _backends.OpSpec(
        "impress_linear",
        _IMPLS,
        {"triton": (torch.float32, torch.float16, torch.bfloat16)},
        composed="combine_masks on the chosen backend, then PyTorch's GEMM (also on CUDA above the fused row limit)",
    )
)


# ----------------------------------------------------------------------------- functional API


def impress_linear(
    x: torch.Tensor, weight: torch.Tensor, bank: torch.Tensor, alpha: torch.Tensor, *, backend: str | None = None
) -> torch.Tensor:
    """``x @ (weight * sum_k alpha[k] mask_k)^T``; ``weight`` is ``[out, in]``, ``x`` is ``[..., in]``."""
    _checks.check_tensor("x", x, dtypes=_checks.FLOAT_DTYPES, min_ndim=1, contiguous=False)
    _checks.check_tensor("weight", weight, dtypes=_checks.FLOAT_DTYPES, ndim=2)
    _checks.check_tensor("alpha", alpha, dtypes=_checks.FLOAT_DTYPES, ndim=1)  # its values: combine checks
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x has {x.shape[-1]} features but the weight expects {weight.shape[1]}")
    rows = x.numel() // max(1, x.shape[-1])
    fusable = 1 <= rows <= FUSED_MAX_ROWS and x.dtype == weight.dtype and alpha.dtype != torch.float64
    if "triton" in _IMPLS and fusable:
        try:
            name = _backends.select("impress_linear", x.device, backend, weight.dtype)
        except _backends.BackendUnavailable:
            name = None  # combine_masks below raises for a backend that cannot run at all
        if name == "triton":
            _checks.check_combine_inputs(weight, bank, alpha)  # what combine_masks checks on the composed path
            _checks.check_same_device(x=x, weight=weight)
            y = _IMPLS["triton"](x.reshape(rows, x.shape[-1]).contiguous(), weight, bank, alpha.float())
            return y.view(*x.shape[:-1], weight.shape[0])
    return F.linear(x, combine_masks(weight, bank, alpha, backend=backend))


def impress_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bank: torch.Tensor,
    alpha: torch.Tensor,
    *,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    backend: str | None = None,
) -> torch.Tensor:
    """``conv2d(x, weight * sum_k alpha[k] mask_k)``: combine, then PyTorch's convolution (cuDNN on GPU)."""
    _checks.check_tensor("x", x, dtypes=_checks.FLOAT_DTYPES, contiguous=False)
    if x.dim() not in (3, 4):
        raise ValueError(f"x must be [C, H, W] or [N, C, H, W], got shape {tuple(x.shape)}")
    _checks.check_tensor("weight", weight, dtypes=_checks.FLOAT_DTYPES, ndim=4)
    groups = _checks.check_int("groups", groups, minimum=1)
    stride, dilation = _conv_pair("stride", stride, minimum=1), _conv_pair("dilation", dilation, minimum=1)
    padding = _conv_pair("padding", padding, minimum=0)
    w_eff = combine_masks(weight, bank, alpha, backend=backend)
    return F.conv2d(x, w_eff, None, stride, padding, dilation, groups)


def _conv_pair(name: str, value, *, minimum: int):
    """An int or a pair of ints (numpy integers too), as F.conv2d takes; padding may also be a string."""
    if name == "padding" and isinstance(value, str):
        return value
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        return tuple(_checks.check_int(name, v, minimum=minimum) for v in value)
    return _checks.check_int(name, value, minimum=minimum)
