"""Byte-plane mask banks: pack, unpack, and add or replace one mask.

Format (docs/design.md, Formats): the bank of a layer with ``n`` weights and ``K`` masks is
``uint8[ceil(K/8), n]``; bit ``b`` of byte ``[g, j]`` is mask ``8g + b`` at flat weight
index ``j``; unused bits are 0. Equivalent PyTorch::

    bits = masks.view(-1, 8, n) (zero-padded to a multiple of 8 masks)
    bank = sum_b bits[:, b, :] << b

Order in this file: reference, kernel registration (C++ in ``csrc/cpu/bank.cpp``,
Triton in ``kernels/bank.py``), functional API.
"""

from __future__ import annotations

import torch

from .. import _backends
from . import _checks
from ._checks import num_planes
from ._registry import compiled_op, triton_ops

_SHIFTS = torch.arange(8, dtype=torch.uint8)


# ----------------------------------------------------------------------------- reference


def pack_masks_reference(masks: torch.Tensor) -> torch.Tensor:
    k, n = masks.shape
    padded = torch.zeros(num_planes(k) * 8, n, dtype=torch.uint8, device=masks.device)
    padded[:k] = masks
    bits = padded.view(-1, 8, n) << _SHIFTS.to(masks.device).view(1, 8, 1)
    return bits.sum(dim=1, dtype=torch.uint8)


def unpack_masks_reference(bank: torch.Tensor, num_masks: int) -> torch.Tensor:
    g, n = bank.shape
    bits = (bank.view(g, 1, n) >> _SHIFTS.to(bank.device).view(1, 8, 1)) & 1
    return bits.view(g * 8, n)[:num_masks].bool()


def set_mask_reference_(bank: torch.Tensor, index: int, mask: torch.Tensor) -> None:
    plane, bit = divmod(index, 8)
    cleared = bank[plane] & (~(1 << bit) & 0xFF)
    bank[plane] = cleared | (mask.to(torch.uint8) << bit)


# ----------------------------------------------------------------------------- kernels

_IMPLS_PACK = {"reference": pack_masks_reference}
_IMPLS_UNPACK = {"reference": unpack_masks_reference}
_IMPLS_SET = {"reference": set_mask_reference_}

if compiled_op("pack_masks_cpp") is not None:

    @torch.library.register_fake("impresslearn::pack_masks_cpp")
    def _(masks):
        return masks.new_empty((num_planes(masks.shape[0]), masks.shape[1]), dtype=torch.uint8)

    @torch.library.register_fake("impresslearn::unpack_masks_cpp")
    def _(bank, num_masks):
        return bank.new_empty((num_masks, bank.shape[1]), dtype=torch.bool)

    @torch.library.register_fake("impresslearn::set_mask_cpp")
    def _(bank, index, mask):
        return None

    _IMPLS_PACK["cpp"] = torch.ops.impresslearn.pack_masks_cpp
    _IMPLS_UNPACK["cpp"] = torch.ops.impresslearn.unpack_masks_cpp
    _IMPLS_SET["cpp"] = torch.ops.impresslearn.set_mask_cpp


def _register_triton(_triton_bank):
    """Registers the Triton bank ops; runs at their first use (ops/_registry.py: import cost)."""
    from ..kernels._launch import triton_op  # torch.library.triton_op, opaque under TRITON_INTERPRET

    @triton_op("impresslearn::pack_masks_triton", mutates_args=())
    def _pack_masks_triton(masks: torch.Tensor) -> torch.Tensor:
        return _triton_bank.pack_masks(masks)

    @triton_op("impresslearn::unpack_masks_triton", mutates_args=())
    def _unpack_masks_triton(bank: torch.Tensor, num_masks: int) -> torch.Tensor:
        return _triton_bank.unpack_masks(bank, num_masks)

    @triton_op("impresslearn::set_mask_triton", mutates_args=("bank",))
    def _set_mask_triton(bank: torch.Tensor, index: int, mask: torch.Tensor) -> None:
        _triton_bank.set_mask_(bank, index, mask)

    return {"pack": _pack_masks_triton, "unpack": _unpack_masks_triton, "set": _set_mask_triton}


_triton = triton_ops("bank", _register_triton)
if _triton is not None:
    _IMPLS_PACK["triton"] = _triton.impl("pack")
    _IMPLS_UNPACK["triton"] = _triton.impl("unpack")
    _IMPLS_SET["triton"] = _triton.impl("set")

_backends.register(_backends.OpSpec("pack_masks", _IMPLS_PACK))
_backends.register(_backends.OpSpec("unpack_masks", _IMPLS_UNPACK))
_backends.register(_backends.OpSpec("set_mask", _IMPLS_SET))


# ----------------------------------------------------------------------------- functional API


def pack_masks(masks: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Pack ``bool[K, n]`` masks into a ``uint8[ceil(K/8), n]`` byte-plane bank."""
    _checks.check_masks(masks)
    return _backends.dispatch("pack_masks", masks.device, backend)(masks)


def unpack_masks(bank: torch.Tensor, num_masks: int, *, backend: str | None = None) -> torch.Tensor:
    """Unpack the first ``num_masks`` masks of a bank into ``bool[K, n]``."""
    num_masks = _checks.check_int("num_masks", num_masks, minimum=1)
    _checks.check_bank(bank, num_masks)
    return _backends.dispatch("unpack_masks", bank.device, backend)(bank, num_masks)


def set_mask_(bank: torch.Tensor, index: int, mask: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Write ``mask`` (bool[n]) as mask ``index`` of ``bank`` in place; returns ``bank``.

    ``index`` may be any slot of the existing planes (< 8 * planes); to add a mask
    past them use :func:`append_mask`.
    """
    _checks.check_bank(bank)
    _checks.check_tensor("mask", mask, dtypes=(torch.bool,), ndim=1)
    _checks.check_same_device(bank=bank, mask=mask)
    if mask.shape[0] != bank.shape[1]:
        raise ValueError(f"mask has {mask.shape[0]} elements but the bank covers {bank.shape[1]} weights")
    index = _checks.check_mask_index(index, bank.shape[0] * 8, allow_append=False)
    _backends.dispatch("set_mask", bank.device, backend)(bank, index, mask)
    return bank


def grow_bank(bank: torch.Tensor, num_masks: int) -> torch.Tensor:
    """The bank with room for mask number ``num_masks``: a new zero plane every 8 masks, else itself."""
    num_masks = _checks.check_int("num_masks", num_masks, minimum=0)
    _checks.check_bank(bank, num_masks if num_masks > 0 else None)
    if num_masks % 8 == 0:
        bank = torch.cat([bank, bank.new_zeros(1, bank.shape[1])])
    return bank


def append_mask(bank: torch.Tensor, num_masks: int, mask: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Add ``mask`` as mask number ``num_masks``; returns the bank, grown by a plane if full.

    Adding a mask rewrites one plane; a new plane is allocated only every 8 masks.
    """
    num_masks = _checks.check_int("num_masks", num_masks, minimum=0)
    return set_mask_(grow_bank(bank, num_masks), num_masks, mask, backend=backend)
