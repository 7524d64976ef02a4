"""combine: the alpha-weighted sum of a layer's basis masks, times its weight.

Paper Eq. 1 for one layer ``i``::

    W_eff = W * sum_k alpha[k] * B[k]          # B = unpack(bank) as float, [K, n]
    grad_alpha[k] = sum_j grad_j * W_j * B[k, j]
    grad_W = grad * sum_k alpha[k] * B[k]      # = combine(grad, bank, alpha)

Equivalent PyTorch in two lines (the reference below)::

    coeff = alpha @ unpack_masks(bank, K).float()
    w_eff = weight * coeff.view_as(weight)

Kernels accumulate in fp32 (up to 250 terms per weight) and accept fp32, fp16 and
bf16 weights; alpha is fp32 (float64 goes to the reference, e.g. for gradcheck).

Order in this file: reference, kernel registration (C++ in ``csrc/cpu/combine.cpp``,
Triton in ``kernels/combine.py``), autograd, functional API.
"""

from __future__ import annotations

import torch

from .. import _backends
from . import _checks
from ._registry import compiled_op, triton_ops
from .bank import unpack_masks_reference

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Tolerances for tests against a float64 evaluation of the formula, per weight dtype.
TOLERANCES = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
    torch.float64: dict(atol=1e-12, rtol=1e-12),
}


# ----------------------------------------------------------------------------- reference


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def combine_masks_reference(weight: torch.Tensor, bank: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Dense reference: unpacks the whole bank to float, [K, n] (the memory the kernels save)."""
    dtype = _compute_dtype(weight, alpha)
    masks = unpack_masks_reference(bank, alpha.shape[0]).to(dtype)
    coeff = alpha.to(dtype) @ masks
    return (weight.reshape(-1).to(dtype) * coeff).to(weight.dtype).view_as(weight)


def combine_masks_alpha_grad_reference(
    grad: torch.Tensor, weight: torch.Tensor, bank: torch.Tensor, num_masks: int
) -> torch.Tensor:
    """grad_alpha[k] = sum_j grad_j W_j bit_k(j), dense: B_float @ (grad * W)."""
    dtype = _compute_dtype(grad, weight)
    masks = unpack_masks_reference(bank, num_masks).to(dtype)
    return masks @ (grad.reshape(-1).to(dtype) * weight.reshape(-1).to(dtype))


# ----------------------------------------------------------------------------- kernels
# Each kernel backend provides two ops on flat tensors:
#   combine_masks_<b>(weight[n], bank[G, n], alpha fp32[K]) -> W_eff[n] (weight's dtype)
#   combine_masks_alpha_grad_<b>(grad[n], weight[n], bank[G, n], num_masks) -> fp32[K]

_FWD = {}
_BWD = {}

if compiled_op("combine_masks_cpp") is not None:

    @torch.library.register_fake("impresslearn::combine_masks_cpp")
    def _(weight, bank, alpha):
        return torch.empty_like(weight)

    @torch.library.register_fake("impresslearn::combine_masks_alpha_grad_cpp")
    def _(grad, weight, bank, num_masks):
        return weight.new_empty((num_masks,), dtype=torch.float32)

    # register_autograd wants the OpOverload (.default), not the overload packet
    _FWD["cpp"] = torch.ops.impresslearn.combine_masks_cpp.default
    _BWD["cpp"] = torch.ops.impresslearn.combine_masks_alpha_grad_cpp.default


def _register_triton(_triton_combine):
    """Registers the Triton combine ops; runs at their first use (ops/_registry.py: import cost)."""
    from ..kernels._launch import triton_op  # torch.library.triton_op, opaque under TRITON_INTERPRET

    @triton_op("impresslearn::combine_masks_triton", mutates_args=())
    def _combine_masks_triton(weight: torch.Tensor, bank: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        return _triton_combine.combine_masks(weight, bank, alpha)

    @triton_op("impresslearn::combine_masks_alpha_grad_triton", mutates_args=())
    def _combine_masks_alpha_grad_triton(
        grad: torch.Tensor, weight: torch.Tensor, bank: torch.Tensor, num_masks: int
    ) -> torch.Tensor:
        return _triton_combine.combine_masks_alpha_grad(grad, weight, bank, num_masks)

    fwd, bwd = _combine_masks_triton, _combine_masks_alpha_grad_triton
    torch.library.register_autograd(fwd, _make_backward(fwd, bwd), setup_context=_setup_context)
    return {"fwd": fwd, "bwd": bwd}


_triton = triton_ops("combine", _register_triton)


# ----------------------------------------------------------------------------- autograd


def _setup_context(ctx, inputs, output):
    weight, bank, alpha = inputs
    ctx.save_for_backward(weight, bank, alpha)


def _make_backward(fwd, bwd):
    def backward(ctx, grad):
        weight, bank, alpha = ctx.saved_tensors
        grad = grad.contiguous()
        grad_weight = grad_alpha = None
        if ctx.needs_input_grad[0]:
            grad_weight = fwd(grad, bank, alpha)  # elementwise: grad * coeff
        if ctx.needs_input_grad[2]:
            grad_alpha = bwd(grad, weight, bank, alpha.shape[0]).to(alpha.dtype)
        return grad_weight, None, grad_alpha

    return backward


for _name, _fwd in _FWD.items():
    torch.library.register_autograd(_fwd, _make_backward(_fwd, _BWD[_name]), setup_context=_setup_context)

if _triton is not None:  # after the loop above: the Triton autograd is registered at load
    _FWD["triton"] = _triton.impl("fwd")
    _BWD["triton"] = _triton.impl("bwd")

_IMPLS = {"reference": combine_masks_reference, **_FWD}
_ALPHA_GRAD_IMPLS = {"reference": combine_masks_alpha_grad_reference, **_BWD}
_DTYPES = {b: KERNEL_DTYPES for b in ("cpp", "triton")}
_backends.register(_backends.OpSpec("combine_masks", _IMPLS, _DTYPES))
_backends.register(_backends.OpSpec("combine_masks_alpha_grad", _ALPHA_GRAD_IMPLS, _DTYPES))


# ----------------------------------------------------------------------------- functional API


def _check(weight: torch.Tensor, bank: torch.Tensor, alpha: torch.Tensor) -> None:
    _checks.check_tensor("weight", weight, dtypes=_checks.FLOAT_DTYPES)
    _checks.check_bank(bank, n=weight.numel())
    _checks.check_alpha(alpha, bank)
    _checks.check_same_device(weight=weight, bank=bank, alpha=alpha)
    _checks.check_finite("alpha", alpha)


def combine_masks(
    weight: torch.Tensor, bank: torch.Tensor, alpha: torch.Tensor, *, backend: str | None = None
) -> torch.Tensor:
    """``weight * sum_k alpha[k] * mask_k``, shaped like ``weight``; differentiable in weight and alpha.

    ``weight``: any shape, ``n`` elements; ``bank``: ``uint8[ceil(K/8), n]``; ``alpha``: ``[K]``.
    """
    _check(weight, bank, alpha)
    dtype = torch.float64 if torch.float64 in (weight.dtype, alpha.dtype) else weight.dtype
    name = _backends.select("combine_masks", weight.device, backend, dtype)
    if name == "reference":
        return combine_masks_reference(weight, bank, alpha)
    out = _IMPLS[name](weight.reshape(-1), bank, alpha.float() if alpha.dtype != torch.float32 else alpha)
    return out.view_as(weight)


def combine_masks_alpha_grad(
    grad: torch.Tensor, weight: torch.Tensor, bank: torch.Tensor, num_masks: int, *, backend: str | None = None
) -> torch.Tensor:
    """``grad_alpha[k] = sum_j grad_j * weight_j * mask_k[j]`` as fp32 ``[K]`` (float64 on the reference)."""
    _checks.check_tensor("grad", grad, dtypes=_checks.FLOAT_DTYPES)
    _checks.check_tensor("weight", weight, dtypes=_checks.FLOAT_DTYPES)
    if grad.shape != weight.shape:
        raise ValueError(f"grad has shape {tuple(grad.shape)} but weight has {tuple(weight.shape)}")
    num_masks = _checks.check_int("num_masks", num_masks, minimum=1)
    _checks.check_bank(bank, num_masks, n=weight.numel())
    _checks.check_same_device(grad=grad, weight=weight, bank=bank)
    dtype = torch.float64 if torch.float64 in (weight.dtype, grad.dtype) else weight.dtype
    impl = _backends.dispatch("combine_masks_alpha_grad", weight.device, backend, dtype)
    return impl(grad.reshape(-1), weight.reshape(-1), bank, num_masks)
