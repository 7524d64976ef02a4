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
from .combine import combine_masks

# ----------------------------------------------------------------------------- reference


def impress_linear_reference(x, weight, bank, alpha):
    return F.linear(x, combine_masks(weight, bank, alpha, backend="reference"))


# ----------------------------------------------------------------------------- kernels

_IMPLS = {"reference": impress_linear_reference}
_FUSED_MAX_BATCH = 0  # rows of x up to which the fused kernel runs; set with the kernel

_backends.register(_backends.OpSpec("impress_linear", _IMPLS, {"cuda": ("triton",)}))


# ----------------------------------------------------------------------------- functional API


def impress_linear(
    x: torch.Tensor, weight: torch.Tensor, bank: torch.Tensor, alpha: torch.Tensor, *, backend: str | None = None
) -> torch.Tensor:
    """``x @ (weight * sum_k alpha[k] mask_k)^T``; ``weight`` is ``[out, in]``, ``x`` is ``[..., in]``."""
    _checks.check_tensor("x", x, dtypes=_checks.FLOAT_DTYPES, contiguous=False)
    _checks.check_tensor("weight", weight, dtypes=_checks.FLOAT_DTYPES, ndim=2)
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x has {x.shape[-1]} features but the weight expects {weight.shape[1]}")
    rows = x.numel() // max(1, x.shape[-1])
    if "triton" in _IMPLS and rows <= _FUSED_MAX_BATCH:
        try:
            name = _backends.select("impress_linear", x.device, backend, weight.dtype)
        except _backends.BackendUnavailable:
            name = None
        if name == "triton":
            return _IMPLS["triton"](x, weight, bank, alpha)
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
    _checks.check_tensor("weight", weight, dtypes=_checks.FLOAT_DTYPES, ndim=4)
    w_eff = combine_masks(weight, bank, alpha, backend=backend)
    return F.conv2d(x, w_eff, None, stride, padding, dilation, groups)
