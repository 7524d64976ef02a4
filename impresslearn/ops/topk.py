"""topk_mask: the edge-popup mask, the ``k`` largest ``|scores|``.

Equivalent PyTorch (the reference below)::

    order = torch.sort(scores.abs().flatten(), descending=True, stable=True).indices
    mask = torch.zeros(n, dtype=torch.bool); mask[order[:k]] = True

Exactly ``k`` ones. Ties break towards the lower flat index on every backend
(the stable sort keeps equal keys in index order). ``-0.0`` and ``0.0`` tie.
Scores must be finite: a NaN has no place in the order, so the functional API
refuses NaN and +-inf (ValueError) on every backend.

``topk_mask_into_`` writes the mask straight into plane ``index // 8``, bit
``index % 8`` of a byte-plane bank (docs/design.md, Formats), which is how edge-popup
stores a finished basis mask.

Order in this file: reference, kernel registration (C++ in ``csrc/cpu/topk.cpp``,
CUDA in ``csrc/cuda/topk.cu``), functional API, the edge-popup autograd function.
"""

from __future__ import annotations

import torch

from .. import _backends
from . import _checks
from ._registry import compiled_op
from .bank import set_mask_reference_

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------- reference


def topk_mask_reference(scores: torch.Tensor, k: int) -> torch.Tensor:
    flat = scores.reshape(-1).abs()
    order = torch.sort(flat, descending=True, stable=True).indices
    mask = torch.zeros(flat.shape[0], dtype=torch.bool, device=scores.device)
    mask[order[:k]] = True
    return mask


def topk_mask_into_reference_(bank: torch.Tensor, index: int, scores: torch.Tensor, k: int) -> None:
    set_mask_reference_(bank, index, topk_mask_reference(scores, k))


# ----------------------------------------------------------------------------- kernels
# Each kernel backend provides, on flat scores[n]:
#   topk_mask_<b>(scores, k) -> bool[n]
#   topk_mask_into_<b>(bank(a!), index, scores, k) -> ()

_MASK = {"reference": topk_mask_reference}
_INTO = {"reference": topk_mask_into_reference_}

for _backend in ("cpp", "cuda"):
    if compiled_op(f"topk_mask_{_backend}") is None:
        continue

    @torch.library.register_fake(f"impresslearn::topk_mask_{_backend}")
    def _(scores, k):
        return torch.empty(scores.shape, dtype=torch.bool, device=scores.device)

    @torch.library.register_fake(f"impresslearn::topk_mask_into_{_backend}")
    def _(bank, index, scores, k):
        return None

    _MASK[_backend] = getattr(torch.ops.impresslearn, f"topk_mask_{_backend}")
    _INTO[_backend] = getattr(torch.ops.impresslearn, f"topk_mask_into_{_backend}")

_DTYPES = {b: KERNEL_DTYPES for b in ("cpp", "cuda")}
_backends.register(_backends.OpSpec("topk_mask", _MASK, _DTYPES))
_backends.register(_backends.OpSpec("topk_mask_into", _INTO, _DTYPES))


# ----------------------------------------------------------------------------- functional API


def _check_scores(scores: torch.Tensor, k: int) -> int:
    """Checks scores and k; returns k as a Python int."""
    _checks.check_tensor("scores", scores, dtypes=_checks.FLOAT_DTYPES)
    if scores.numel() < 1:
        raise ValueError("scores must have at least one element")
    k = _checks.check_int("k", k)
    if not 1 <= k <= scores.numel():
        raise ValueError(f"k must be in [1, {scores.numel()}] for {scores.numel()} scores, got {k}")
    _checks.check_finite("scores", scores)
    return k


def topk_mask(scores: torch.Tensor, k: int, *, backend: str | None = None) -> torch.Tensor:
    """bool mask shaped like ``scores`` with exactly ``k`` ones at the largest ``|scores|``."""
    k = _check_scores(scores, k)
    impl = _backends.dispatch("topk_mask", scores.device, backend, scores.dtype)
    return impl(scores.reshape(-1), k).view(scores.shape)


def topk_mask_into_(
    bank: torch.Tensor, index: int, scores: torch.Tensor, k: int, *, backend: str | None = None
) -> torch.Tensor:
    """Write ``topk_mask(scores, k)`` as mask ``index`` of ``bank`` in place; returns ``bank``."""
    k = _check_scores(scores, k)
    _checks.check_bank(bank, n=scores.numel())
    _checks.check_same_device(bank=bank, scores=scores)
    index = _checks.check_mask_index(index, bank.shape[0] * 8, allow_append=False)
    impl = _backends.dispatch("topk_mask_into", scores.device, backend, scores.dtype)
    impl(bank, index, scores.reshape(-1), k)
    return bank


class _EdgePopup(torch.autograd.Function):
    """W' = W * topk(|S|, k); straight-through: dL/dS = (dL/dW' * W) * sign(S)."""

    @staticmethod
    def forward(ctx, weight, scores, k, backend):
        mask = topk_mask(scores, k, backend=backend)
        ctx.save_for_backward(weight, scores)
        return weight * mask

    @staticmethod
    def backward(ctx, grad):
        weight, scores = ctx.saved_tensors
        return None, grad * weight * torch.sign(scores), None, None


def edge_popup_weight(
    weight: torch.Tensor, scores: torch.Tensor, density: float, *, backend: str | None = None
) -> torch.Tensor:
    """The masked weight of edge-popup (Ramanujan et al. 2019), differentiable in ``scores``."""
    _checks.check_tensor("weight", weight, dtypes=_checks.FLOAT_DTYPES, contiguous=False)
    _checks.check_tensor("scores", scores, dtypes=_checks.FLOAT_DTYPES)
    if scores.shape != weight.shape:
        raise ValueError(f"scores have shape {tuple(scores.shape)} but weight has {tuple(weight.shape)}")
    k = _checks.keep_count(weight.numel(), density)
    return _EdgePopup.apply(weight, scores, k, backend)
