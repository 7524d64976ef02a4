"""Triton kernels for byte-plane mask banks: pack, unpack, replace one mask.

Format (docs/design.md, Formats): ``bank[g, j]`` bit ``b`` is mask ``8g + b`` at weight ``j``;
unused bits are 0. The reference is ``impresslearn.ops.bank.*_reference``.

All three kernels are pure data movement (a byte in, a byte out per weight and
plane), so they are written for coalesced loads along the contiguous weight axis
and a large ``BLOCK_N``; nothing here is worth tuning further. Offsets are int64:
``K * n`` exceeds 2**31 for large banks (250 masks of a 25M-weight layer).

bool tensors are passed as their uint8 view (same bytes, 0 or 1), which keeps
Triton's ``i1`` pointer handling out of the picture.

The weight blocks go on grid axis x (up to 2**31 - 1 programs): axis y allows only
65535, which ``cdiv(n, 1024)`` passes at 67M weights (one ResNet-50 conv is 2.4M, but
a bank of a large language-model layer is not). The planes (at most 32) go on y.

Integer arguments may arrive as compile-time constants: Triton specialises an int
equal to 1 into a constexpr (no ``.to``, no tensor methods), so no kernel here calls a
method on an int argument; int64 arithmetic comes from int64 program ids or from
offsets the host computes (a Python int above 2**31 is passed as i64).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..ops import _checks
from ._launch import launch

_BLOCK_N = 1024


@triton.jit
def _pack_kernel(masks_ptr, bank_ptr, num_masks, n, BLOCK_N: tl.constexpr):
    """bank[g, j] = sum_b masks[8g + b, j] << b, for one plane g and BLOCK_N weights."""
    cols = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    g = tl.program_id(1).to(tl.int64)
    bits = tl.arange(0, 8)
    rows = g * 8 + bits
    ok = (rows[:, None] < num_masks) & (cols[None, :] < n)
    m = tl.load(masks_ptr + rows[:, None] * n + cols[None, :], mask=ok, other=0)
    shifted = (m.to(tl.int32) & 1) << bits[:, None]
    byte = tl.sum(shifted, axis=0)
    tl.store(bank_ptr + g * n + cols, byte.to(tl.uint8), mask=cols < n)


@triton.jit
def _unpack_kernel(bank_ptr, masks_ptr, num_masks, n, BLOCK_N: tl.constexpr):
    """masks[8g + b, j] = (bank[g, j] >> b) & 1, for one plane g and BLOCK_N weights."""
    cols = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    g = tl.program_id(1).to(tl.int64)
    byte = tl.load(bank_ptr + g * n + cols, mask=cols < n, other=0).to(tl.int32)
    bits = tl.arange(0, 8)
    rows = g * 8 + bits
    m = (byte[None, :] >> bits[:, None]) & 1
    ok = (rows[:, None] < num_masks) & (cols[None, :] < n)
    tl.store(masks_ptr + rows[:, None] * n + cols[None, :], m.to(tl.uint8), mask=ok)


@triton.jit
def _set_mask_kernel(bank_ptr, mask_ptr, plane_offset, bit, n, BLOCK_N: tl.constexpr):
    """bank[plane, j] = (bank[plane, j] & ~(1 << bit)) | (mask[j] << bit): other bits intact.

    ``plane_offset = plane * n`` comes from the host: Triton passes it as i64 when it
    exceeds int32, and as a constexpr when it is 1 (``plane.to(tl.int64)`` on a plane
    of 1 failed to compile: a constexpr has no ``.to``).
    """
    cols = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = cols < n
    row = bank_ptr + plane_offset + cols
    byte = tl.load(row, mask=ok, other=0).to(tl.int32)
    m = tl.load(mask_ptr + cols, mask=ok, other=0).to(tl.int32) & 1
    byte = (byte & ~(1 << bit)) | (m << bit)
    tl.store(row, byte.to(tl.uint8), mask=ok)


# ----------------------------------------------------------------------------- host launchers
# impresslearn.ops.bank checks the inputs with messages for users; the launchers repeat
# what the kernels assume (dtype, shape, contiguity, one device), because the registered
# ops torch.ops.impresslearn.*_triton can be called directly (the benchmarks do): a
# strided tensor would otherwise be read as if it were contiguous, silently.


def pack_masks(masks: torch.Tensor) -> torch.Tensor:
    """bool[K, n] -> uint8[ceil(K/8), n]."""
    _checks.check_masks(masks)
    k, n = masks.shape
    planes = (k + 7) // 8
    bank = torch.empty((planes, n), dtype=torch.uint8, device=masks.device)
    grid = (triton.cdiv(n, _BLOCK_N), planes)
    launch(_pack_kernel, grid, masks.view(torch.uint8), bank, k, n, BLOCK_N=_BLOCK_N)
    return bank


def unpack_masks(bank: torch.Tensor, num_masks: int) -> torch.Tensor:
    """uint8[G, n] -> bool[num_masks, n] (the first ``num_masks`` masks)."""
    _checks.check_bank(bank, num_masks)
    planes, n = bank.shape
    masks = torch.empty((num_masks, n), dtype=torch.bool, device=bank.device)
    grid = (triton.cdiv(n, _BLOCK_N), planes)
    launch(_unpack_kernel, grid, bank, masks.view(torch.uint8), num_masks, n, BLOCK_N=_BLOCK_N)
    return masks


def set_mask_(bank: torch.Tensor, index: int, mask: torch.Tensor) -> None:
    """Write bool[n] ``mask`` as mask ``index`` of ``bank`` in place."""
    _checks.check_bank(bank, n=mask.shape[0] if mask.dim() == 1 else None)
    _checks.check_tensor("mask", mask, dtypes=(torch.bool,), ndim=1)
    _checks.check_mask_index(index, 8 * bank.shape[0], allow_append=False)
    n = bank.shape[1]
    plane, bit = divmod(index, 8)
    grid = (triton.cdiv(n, _BLOCK_N),)
    launch(_set_mask_kernel, grid, bank, mask.view(torch.uint8), plane * n, bit, n, BLOCK_N=_BLOCK_N)
