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
# registered with the backends by _register_ops (below the autograd).

if compiled_op("combine_masks_cpp") is not None:

    @torch.library.register_fake("impresslearn::combine_masks_cpp")
    def _(weight, bank, alpha):
        return torch.empty_like(weight)

    @torch.library.register_fake("impresslearn::combine_masks_alpha_grad_cpp")
    def _(grad, weight, bank, num_masks):
        return weight.new_empty((num_masks,), dtype=torch.float32)


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

    @triton_op("impresslearn::combine_masks_rows_triton", mutates_args=())
    def _combine_masks_rows_triton(
        weight: torch.Tensor, bank: torch.Tensor, alpha: torch.Tensor, group_len: int
    ) -> torch.Tensor:
        return _triton_combine.combine_masks_rows(weight, bank, alpha, group_len)

    @triton_op("impresslearn::combine_masks_rows_alpha_grad_triton", mutates_args=())
    def _combine_masks_rows_alpha_grad_triton(
        grad: torch.Tensor, weight: torch.Tensor, bank: torch.Tensor, num_masks: int, group_len: int
    ) -> torch.Tensor:
        return _triton_combine.combine_masks_rows_alpha_grad(grad, weight, bank, num_masks, group_len)

    fwd, bwd = _combine_masks_triton, _combine_masks_alpha_grad_triton
    rows_fwd, rows_bwd = _combine_masks_rows_triton, _combine_masks_rows_alpha_grad_triton
    for f, b in ((fwd, bwd), (rows_fwd, rows_bwd)):
        torch.library.register_autograd(f, _make_backward(f, b), setup_context=_setup_context)
    # keyed by op name, as _register_ops looks them up
    return {
        "combine_masks": fwd, "combine_masks_alpha_grad": bwd,
        "combine_masks_rows": rows_fwd, "combine_masks_rows_alpha_grad": rows_bwd,
    }


_triton = triton_ops("combine", _register_triton)


# ----------------------------------------------------------------------------- autograd


# The Triton ops' autograd (the C++ ops have theirs in csrc/bindings.cpp, the same steps): one
# for the per-layer ops (weight, bank, alpha) and the rows ops (the same plus group_len); the
# non-tensor arguments after alpha are handed on to fwd and bwd unchanged.


def _setup_context(ctx, inputs, output):
    weight, bank, alpha, *extra = inputs
    ctx.save_for_backward(weight, bank, alpha)
    ctx.extra = tuple(extra)


def _make_backward(fwd, bwd):
    def backward(ctx, grad):
        weight, bank, alpha = ctx.saved_tensors
        grad = grad.contiguous()
        grad_weight = grad_alpha = None
        if ctx.needs_input_grad[0]:
            grad_weight = fwd(grad, bank, alpha, *ctx.extra)  # elementwise: grad * coeff
        if ctx.needs_input_grad[2]:
            grad_alpha = bwd(grad, weight, bank, alpha.shape[0], *ctx.extra).to(alpha.dtype)
        return (grad_weight, None, grad_alpha) + (None,) * len(ctx.extra)

    return backward


_DTYPES_BY_KERNEL = {b: KERNEL_DTYPES for b in ("cpp", "triton")}


def _register_ops(name: str, reference, alpha_grad_reference) -> tuple[dict, dict]:
    """Registers op ``name`` and ``<name>_alpha_grad`` with the backends; returns their implementation tables.

    Each has its dense reference, the C++ kernels ``<op>_cpp`` where the extension defines
    them, and the Triton ops of :func:`_register_triton` where Triton can exist.
    """
    impls, alpha_grad_impls = {"reference": reference}, {"reference": alpha_grad_reference}
    if compiled_op(f"{name}_cpp") is not None:
        # both C++ ops have their autograd in C++ (csrc/bindings.cpp): no Python call per step
        fwd = getattr(torch.ops.impresslearn, f"{name}_cpp").default
        bwd = getattr(torch.ops.impresslearn, f"{name}_alpha_grad_cpp").default
        impls["cpp"], alpha_grad_impls["cpp"] = fwd, bwd
    if _triton is not None:  # their autograd is registered with them, at first use
        impls["triton"], alpha_grad_impls["triton"] = _triton.impl(name), _triton.impl(f"{name}_alpha_grad")
    _backends.register(_backends.OpSpec(name, impls, _DTYPES_BY_KERNEL))
    _backends.register(_backends.OpSpec(f"{name}_alpha_grad", alpha_grad_impls, _DTYPES_BY_KERNEL))
    return impls, alpha_grad_impls


# combine_masks_alpha_grad calls through _backends.dispatch: only the forward table is kept
_IMPLS, _ = _register_ops("combine_masks", combine_masks_reference, combine_masks_alpha_grad_reference)


# ----------------------------------------------------------------------------- functional API


def combine_masks(
    weight: torch.Tensor, bank: torch.Tensor, alpha: torch.Tensor, *, backend: str | None = None
) -> torch.Tensor:
    """``weight * sum_k alpha[k] * mask_k``, shaped like ``weight``; differentiable in weight and alpha.

    ``weight``: any shape, ``n`` elements; ``bank``: ``uint8[ceil(K/8), n]``; ``alpha``: ``[K]``.
    """
    _checks.check_combine_inputs(weight, bank, alpha)
    dtype = torch.float64 if torch.float64 in (weight.dtype, alpha.dtype) else weight.dtype
    name = _backends.select("combine_masks", weight.device, backend, dtype)
    if name == "reference":
        return combine_masks_reference(weight, bank, alpha)
    out = _IMPLS[name](weight.reshape(-1), bank, alpha.float() if alpha.dtype != torch.float32 else alpha)
    return out.view_as(weight)


def _check_alpha_grad(
    grad: torch.Tensor, weight: torch.Tensor, bank: torch.Tensor, num_masks: int, *, min_ndim: int | None = None
) -> int:
    """Checks an alpha-grad op's inputs (per layer, or rows with ``min_ndim=1``); returns ``num_masks`` as an int."""
    _checks.check_tensor("grad", grad, dtypes=_checks.FLOAT_DTYPES)
    _checks.check_tensor("weight", weight, dtypes=_checks.FLOAT_DTYPES, min_ndim=min_ndim)
    if grad.shape != weight.shape:
        raise ValueError(f"grad has shape {tuple(grad.shape)} but weight has {tuple(weight.shape)}")
    num_masks = _checks.check_int("num_masks", num_masks, minimum=1)
    _checks.check_bank(bank, num_masks, n=weight.numel())
    _checks.check_same_device(grad=grad, weight=weight, bank=bank)
    return num_masks


def combine_masks_alpha_grad(
    grad: torch.Tensor, weight: torch.Tensor, bank: torch.Tensor, num_masks: int, *, backend: str | None = None
) -> torch.Tensor:
    """``grad_alpha[k] = sum_j grad_j * weight_j * mask_k[j]`` as fp32 ``[K]`` (float64 on the reference)."""
    num_masks = _check_alpha_grad(grad, weight, bank, num_masks)
    dtype = torch.float64 if torch.float64 in (weight.dtype, grad.dtype) else weight.dtype
    impl = _backends.dispatch("combine_masks_alpha_grad", weight.device, backend, dtype)
    return impl(grad.reshape(-1), weight.reshape(-1), bank, num_masks)


# ============================================================================= rows
# combine_masks_rows: coefficients per block of output channels (docs/design.md, Notation,
# "Coefficient granularity"). The weight is [C, ...] (output channels first, as nn.Linear and
# nn.Conv2d store it), alpha is [K, R] with R = ceil(C / block), and channels
# [r * block, (r + 1) * block) use column r::
#
#     coeff[c, :] = alpha[:, c // block] @ B[:, c, :]          # B = unpack(bank), [K, C, L]
#     w_eff = weight * coeff.view_as(weight)
#
# Same order as above: reference, kernels (C++ in csrc/cpu/combine_rows.cpp, Triton in
# kernels/combine.py; registered, autograd included, by _register_ops as the per-layer ones),
# functional API.


def _rows_layout(weight: torch.Tensor, block: int) -> tuple[int, int, int]:
    """(channels C, weights per channel L, column count R) of a ``[C, ...]`` weight in blocks of ``block``."""
    channels = weight.shape[0]
    return channels, weight.numel() // channels, -(-channels // block)


def _per_channel(alpha: torch.Tensor, block: int, channels: int) -> torch.Tensor:
    """``alpha[K, R]`` repeated to one column per channel, ``[K, C]``."""
    return alpha.repeat_interleave(block, dim=1)[:, :channels]


def combine_masks_rows_reference(
    weight: torch.Tensor, bank: torch.Tensor, alpha: torch.Tensor, block: int
) -> torch.Tensor:
    """Dense reference: unpacks the bank to float ``[K, C, L]`` and mixes each channel with its column."""
    dtype = _compute_dtype(weight, alpha)
    channels, per_channel, _ = _rows_layout(weight, block)
    masks = unpack_masks_reference(bank, alpha.shape[0]).to(dtype).view(-1, channels, per_channel)
    coeff = torch.einsum("kc,kcl->cl", _per_channel(alpha.to(dtype), block, channels), masks)
    return (weight.reshape(channels, per_channel).to(dtype) * coeff).to(weight.dtype).view_as(weight)


def combine_masks_rows_alpha_grad_reference(
    grad: torch.Tensor, weight: torch.Tensor, bank: torch.Tensor, num_masks: int, block: int
) -> torch.Tensor:
    """``grad_alpha[k, r] = sum over channels c of block r, weights l: grad W B[k, c, l]``, dense."""
    dtype = _compute_dtype(grad, weight)
    channels, per_channel, columns = _rows_layout(weight, block)
    masks = unpack_masks_reference(bank, num_masks).to(dtype).view(num_masks, channels, per_channel)
    u = (grad.reshape(channels, per_channel).to(dtype) * weight.reshape(channels, per_channel).to(dtype))
    per_channel_grad = torch.einsum("kcl,cl->kc", masks, u)
    column_of = torch.arange(channels, device=weight.device) // block
    out = per_channel_grad.new_zeros(num_masks, columns)
    return out.index_add_(1, column_of, per_channel_grad)


# Kernels on flat tensors, as the per-layer ones; the block becomes a group of flat weights:
#   combine_masks_rows_<b>(weight[n], bank[G, n], alpha fp32[K, R], group_len) -> W_eff[n]
#   combine_masks_rows_alpha_grad_<b>(grad[n], weight[n], bank[G, n], num_masks, group_len) -> fp32[K, R]
# with group_len = block * L and R = ceil(n / group_len).

if compiled_op("combine_masks_rows_cpp") is not None:

    @torch.library.register_fake("impresslearn::combine_masks_rows_cpp")
    def _(weight, bank, alpha, group_len):
        return torch.empty_like(weight)

    @torch.library.register_fake("impresslearn::combine_masks_rows_alpha_grad_cpp")
    def _(grad, weight, bank, num_masks, group_len):
        return weight.new_empty((num_masks, -(-weight.shape[0] // group_len)), dtype=torch.float32)


_ROWS_IMPLS, _ROWS_ALPHA_GRAD_IMPLS = _register_ops(
    "combine_masks_rows", combine_masks_rows_reference, combine_masks_rows_alpha_grad_reference
)


def _check_rows(weight: torch.Tensor, bank: torch.Tensor, alpha: torch.Tensor, block: int) -> int:
    """Checks the rows op's inputs (names the argument at fault); returns ``block`` as an int."""
    _checks.check_tensor("weight", weight, dtypes=_checks.FLOAT_DTYPES, min_ndim=1)
    if weight.numel() == 0:
        raise ValueError(f"weight must have at least one element, got shape {tuple(weight.shape)}")
    block = _checks.check_int("block", block, minimum=1)
    _checks.check_bank(bank, n=weight.numel())
    _checks.check_alpha(alpha, bank, ndim=2)
    channels, _, columns = _rows_layout(weight, block)
    if alpha.shape[1] != columns:
        raise ValueError(
            f"alpha has {alpha.shape[1]} columns but a weight of {channels} output channels in blocks of {block} "
            f"needs ceil({channels}/{block}) = {columns}"
        )
    _checks.check_same_device(weight=weight, bank=bank, alpha=alpha)
    _checks.check_finite("alpha", alpha)
    return block


def combine_masks_rows(
    weight: torch.Tensor, bank: torch.Tensor, alpha: torch.Tensor, block: int = 1, *, backend: str | None = None
) -> torch.Tensor:
    """``weight * sum_k alpha[k, c // block] * mask_k`` per output channel ``c``; differentiable in weight and alpha.

    ``weight``: ``[C, ...]`` with ``n`` elements; ``bank``: ``uint8[ceil(K/8), n]``; ``alpha``:
    ``[K, ceil(C / block)]``, one column per block of ``block`` output channels (the last block
    may be shorter). With every column equal to a vector ``a``, the cpp kernel gives the bits of
    ``combine_masks(weight, bank, a)``. Equivalent PyTorch::

        coeff = torch.einsum("kc,kcl->cl", alpha.repeat_interleave(block, 1)[:, :C], masks.view(K, C, -1))
        w_eff = weight * coeff.view_as(weight)
    """
    block = _check_rows(weight, bank, alpha, block)
    dtype = torch.float64 if torch.float64 in (weight.dtype, alpha.dtype) else weight.dtype
    name = _backends.select("combine_masks_rows", weight.device, backend, dtype)
    if name == "reference":
        return combine_masks_rows_reference(weight, bank, alpha, block)
    group_len = block * (weight.numel() // weight.shape[0])
    alpha32 = alpha.float() if alpha.dtype != torch.float32 else alpha
    return _ROWS_IMPLS[name](weight.reshape(-1), bank, alpha32.contiguous(), group_len).view_as(weight)


def combine_masks_rows_alpha_grad(
    grad: torch.Tensor, weight: torch.Tensor, bank: torch.Tensor, num_masks: int, block: int = 1, *,
    backend: str | None = None,
) -> torch.Tensor:  # fmt: skip
    """``grad_alpha[k, r] = sum over the weights j of channel block r: grad_j weight_j mask_k[j]``, fp32 ``[K, R]``."""
    num_masks = _check_alpha_grad(grad, weight, bank, num_masks, min_ndim=1)
    block = _checks.check_int("block", block, minimum=1)
    dtype = torch.float64 if torch.float64 in (weight.dtype, grad.dtype) else weight.dtype
    name = _backends.select("combine_masks_rows_alpha_grad", weight.device, backend, dtype)
    if name == "reference":
        return combine_masks_rows_alpha_grad_reference(grad, weight, bank, num_masks, block)
    group_len = block * (weight.numel() // weight.shape[0])
    return _ROWS_ALPHA_GRAD_IMPLS[name](grad.reshape(-1), weight.reshape(-1), bank, num_masks, group_len)
