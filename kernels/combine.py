"""Triton kernels for combine: ``W_eff = W * sum_k alpha[k] B[k]`` and its alpha gradient.

Paper Eq. 1 for one layer; the bank is byte planes (docs/design.md, Formats): bit ``b`` of
``bank[g, j]`` is mask ``8g + b`` at weight ``j``. The reference is
``impresslearn.ops.combine.combine_masks_reference``.

Forward: the per-weight coefficient ``c_j = sum_g T[g, bank[g, j]]`` with a 256-entry
table per plane, ``T[g, v] = sum_b alpha[8g + b] * ((v >> b) & 1)``.

Why a table and not shift-and-mask (``sum_b alpha[8g+b] * ((byte >> b) & 1)``):
the kernel reads ``G = ceil(K/8)`` bank bytes plus the weight and writes ``W_eff``
(fp32: ``G + 8`` bytes per weight), so at small K it is memory-bound whichever way
the coefficient is formed, and at large K it is bound by the instructions spent per
bank byte. Per byte, shift-and-mask issues 8 x (and, compare, select, add), about 32
instructions; the table issues one address computation, one gather and one add.
The tables take ``G`` KiB (32 KiB at K = 256) and every program reads the same ones,
so the gathers hit L1 (256 KiB per H100 SM), never DRAM; a warp's 32 random bytes
touch at most 8 of a table's 128-byte lines. Estimate on an H100 at K = 256
(about 15 DRAM bytes per SM clock): DRAM needs ~40 B / 15 = 2.7 clocks per weight
per SM, shift-and-mask ~32 x 32 / 128 lanes = 8 clocks, the table ~8 L1 wavefronts
x 32 / 32 lanes = 8 clocks worst case, ~3 typical (bytes of a sparse bank repeat).
The table wins or ties everywhere and costs one 256 x G launch to build; the
shift-and-mask path stays selectable (``use_table=False``) so the GPU benchmark
(``benchmarks/gpu_cases.py``) measures the choice instead of trusting the estimate.

Backward: ``grad_alpha[k] = sum_j grad_j W_j bit_k(j)``. Each program reduces one
block of weights to ``K`` fp32 partial sums (a tree sum inside the block), written
to row ``pid`` of a ``[num_programs, K]`` buffer that ``torch.sum`` reduces (again a
tree): no atomics, so the result does not depend on scheduling, and no long serial
fp32 sums. Accumulation is fp32 for fp16/bf16 inputs too.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..ops import _checks
from ._launch import FLOAT_DTYPES, check_interpretable, launch

_FWD_BLOCK = 2048  # 16 weights per thread at 4 warps: 16-byte vector loads of each plane
_BWD_BLOCK = 1024  # 8 fp32 values per thread at 4 warps; [num_programs, K] partials stay small


@triton.jit
def _coeff_table_kernel(alpha_ptr, table_ptr, num_masks):
    """table[g, v] = sum_b alpha[8g + b] * ((v >> b) & 1) for v in 0..255 (alpha past K is 0)."""
    g = tl.program_id(0)
    v = tl.arange(0, 256)
    acc = tl.zeros((256,), dtype=tl.float32)
    for b in tl.static_range(8):
        k = g * 8 + b
        a = tl.load(alpha_ptr + k, mask=k < num_masks, other=0.0).to(tl.float32)
        acc += tl.where(((v >> b) & 1) != 0, a, 0.0)
    tl.store(table_ptr + g * 256 + v, acc)


@triton.jit
def mask_coefficients(bank_ptr, table_ptr, alpha_ptr, offs, ok, n, num_planes, num_masks, USE_TABLE: tl.constexpr):
    """fp32 ``sum_k alpha[k] bit_k(j)`` for the flat weight indices ``offs`` (any shape, int64).

    Shared with the fused linear kernels, which call it on 2-D weight tiles.
    """
    if USE_TABLE:
        coeff = tl.zeros(offs.shape, dtype=tl.float32)
        plane_ptr = bank_ptr  # advanced by n per plane: g * n would overflow int32 past 2**31 bytes
        for g in range(0, num_planes):
            byte = tl.load(plane_ptr + offs, mask=ok, other=0).to(tl.int32)
            plane_ptr += n
            coeff += tl.load(table_ptr + g * 256 + byte)
    else:  # one alpha for every weight: a scalar load per mask
        coeff = _shifted_coefficients(bank_ptr, alpha_ptr, 1, 0, True, offs, ok, n, num_planes, num_masks)
    return coeff


@triton.jit
def _shifted_coefficients(bank_ptr, alpha_ptr, alpha_stride, alpha_column, alpha_ok, offs, ok, n, num_planes,
                         num_masks):
    """fp32 ``sum_k alpha[k * alpha_stride + alpha_column] bit_k(j)`` for the flat weight indices ``offs``,
    by shift and mask.

    Per layer, alpha[K]: stride 1, column 0, ``alpha_ok`` True (one scalar load per mask). The
    rows kernel, alpha[K, R]: stride R, each weight's column, loaded where ``alpha_ok``.
    """
    coeff = tl.zeros(offs.shape, dtype=tl.float32)
    plane_ptr = bank_ptr  # advanced by n per plane: g * n would overflow int32 past 2**31 bytes
    for g in range(0, num_planes):
        byte = tl.load(plane_ptr + offs, mask=ok, other=0).to(tl.int32)
        plane_ptr += n
        for b in tl.static_range(8):
            k = g * 8 + b
            a = tl.load(alpha_ptr + k * alpha_stride + alpha_column, mask=alpha_ok & (k < num_masks),
                        other=0.0).to(tl.float32)
            coeff += tl.where(((byte >> b) & 1) != 0, a, 0.0)
    return coeff


@triton.jit
def _combine_fwd_kernel(
    w_ptr, bank_ptr, table_ptr, alpha_ptr, out_ptr, n, num_planes, num_masks,
    USE_TABLE: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """out[j] = W[j] * c_j for BLOCK_N weights (fp32 math, stored in W's dtype)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = offs < n
    coeff = mask_coefficients(bank_ptr, table_ptr, alpha_ptr, offs, ok, n, num_planes, num_masks, USE_TABLE)
    w = tl.load(w_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, (w * coeff).to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def reduce_bits_into(partial_ptr, gw, bank_ptr, offs, ok, n, num_planes, num_masks):
    """partial[8g + b] = sum of gw where bit b of bank[g, offs] is set (gw, offs, ok: one shape).

    One full-tile reduction per bit keeps the live registers at the tile's size (a
    [tile, 8] product would spill for the 64 x 64 tiles of the fused linear backward).
    Shared with the fused linear backward.
    """
    plane_ptr = bank_ptr  # advanced by n per plane: g * n would overflow int32 past 2**31 bytes
    for g in range(0, num_planes):
        byte = tl.load(plane_ptr + offs, mask=ok, other=0).to(tl.int32)
        plane_ptr += n
        for b in tl.static_range(8):
            k = g * 8 + b
            total = tl.sum(tl.where(((byte >> b) & 1) != 0, gw, 0.0))
            tl.store(partial_ptr + k, total, mask=k < num_masks)


@triton.jit
def _combine_alpha_grad_kernel(
    grad_ptr, w_ptr, bank_ptr, partial_ptr, n, num_planes, num_masks, BLOCK_N: tl.constexpr,
):
    """partial[pid, k] = sum_{j in block pid} grad_j W_j bit_k(j)."""
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = offs < n
    gw = tl.load(grad_ptr + offs, mask=ok, other=0.0).to(tl.float32) * tl.load(
        w_ptr + offs, mask=ok, other=0.0
    ).to(tl.float32)
    reduce_bits_into(partial_ptr + pid * num_masks, gw, bank_ptr, offs, ok, n, num_planes, num_masks)


# ----------------------------------------------------------------------------- host launchers
# impresslearn.ops.combine checks the inputs with messages for users; the launchers
# repeat what the kernels assume, since torch.ops.impresslearn.*_triton can be called
# directly: flat contiguous weight[n] (fp32/fp16/bf16), bank uint8[ceil(K/8), n],
# alpha fp32[K], one device (a strided tensor would be read as contiguous, silently).


def check_alpha(alpha: torch.Tensor, bank: torch.Tensor) -> int:
    """alpha: contiguous fp32[K] with ceil(K/8) == the bank's planes; returns K.

    Layout only: a check of the values would cost a device sync per launch.
    """
    _checks.check_tensor("alpha", alpha, dtypes=(torch.float32,), ndim=1)
    k = alpha.shape[0]
    if k < 1 or _checks.num_planes(k) != bank.shape[0]:
        raise ValueError(f"bank and alpha disagree on K: alpha has {k} coefficients, the bank {bank.shape[0]} byte planes")
    return k


def _check_flat(name: str, t: torch.Tensor, bank: torch.Tensor) -> None:
    _checks.check_tensor(name, t, dtypes=FLOAT_DTYPES, ndim=1)
    _checks.check_bank(bank, n=t.shape[0])


def _check_alpha_grad_args(grad: torch.Tensor, weight: torch.Tensor, bank: torch.Tensor, num_masks: int) -> tuple:
    """The alpha-gradient launchers' checks (per layer and rows); returns the bank's (planes, n)."""
    _check_flat("grad", grad, bank)
    _check_flat("weight", weight, bank)
    _checks.check_bank(bank, num_masks)
    check_interpretable(grad=grad, weight=weight)
    return bank.shape


def coefficient_table(alpha: torch.Tensor, num_planes: int) -> torch.Tensor:
    """fp32[G, 256]: the partial sum of each plane's 8 coefficients for every byte value.

    ``alpha`` is one its callers (the launchers here and in linear.py) have checked
    against the bank with :func:`check_alpha`, so ``num_planes`` is ceil(K / 8).
    """
    table = torch.empty((num_planes, 256), dtype=torch.float32, device=alpha.device)
    launch(_coeff_table_kernel, (num_planes,), alpha, table, alpha.shape[0])
    return table


def combine_masks(weight: torch.Tensor, bank: torch.Tensor, alpha: torch.Tensor, use_table: bool = True) -> torch.Tensor:
    """weight[n] * (alpha @ unpack(bank)) -> [n] in weight's dtype."""
    _check_flat("weight", weight, bank)
    check_alpha(alpha, bank)
    check_interpretable(weight=weight)
    planes, n = bank.shape
    out = torch.empty_like(weight)
    if n == 0:
        return out
    table = coefficient_table(alpha, planes)
    grid = (triton.cdiv(n, _FWD_BLOCK),)
    launch(
        _combine_fwd_kernel, grid, weight, bank, table, alpha, out, n, planes, alpha.shape[0],
        USE_TABLE=use_table, BLOCK_N=_FWD_BLOCK, num_warps=4,
    )
    return out


def combine_masks_alpha_grad(
    grad: torch.Tensor, weight: torch.Tensor, bank: torch.Tensor, num_masks: int
) -> torch.Tensor:
    """fp32[K]: grad_alpha[k] = sum_j grad_j weight_j bit_k(j)."""
    planes, n = _check_alpha_grad_args(grad, weight, bank, num_masks)
    if n == 0:
        return torch.zeros((num_masks,), dtype=torch.float32, device=weight.device)
    programs = triton.cdiv(n, _BWD_BLOCK)
    partial = torch.empty((programs, num_masks), dtype=torch.float32, device=weight.device)
    launch(
        _combine_alpha_grad_kernel, (programs,), grad, weight, bank, partial, n, planes, num_masks,
        BLOCK_N=_BWD_BLOCK, num_warps=4,
    )
    return partial.sum(dim=0)


# ----------------------------------------------------------------------------- rows
# combine_masks_rows (impresslearn.ops.combine): alpha[K, R] with one column per group of
# group_len flat weights (a block of output channels), W_eff[j] = W[j] * sum_k alpha[k, j //
# group_len] bit_k(j). No table here: a table per group and plane (G KiB per group) would be
# as large as the bank for one channel of a few hundred weights; each weight instead gathers
# its group's coefficient per bit (the gathers of one program hit the same one or two columns,
# so they stay in L1).


@triton.jit
def _combine_rows_fwd_kernel(
    w_ptr, bank_ptr, alpha_ptr, out_ptr, n, num_planes, num_masks, num_groups, group_len, BLOCK_N: tl.constexpr,
):
    """out[j] = W[j] * sum_k alpha[k, j // group_len] bit_k(j) for BLOCK_N weights (fp32 math)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = offs < n
    column = offs // group_len
    coeff = _shifted_coefficients(bank_ptr, alpha_ptr, num_groups, column, ok, offs, ok, n, num_planes, num_masks)
    w = tl.load(w_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, (w * coeff).to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _combine_rows_alpha_grad_kernel(
    grad_ptr, w_ptr, bank_ptr, partial_ptr, n, num_planes, num_masks, group_len, chunks, BLOCK_N: tl.constexpr,
):
    """partial[r * chunks + c, k] = sum over chunk c of group r (axis 0: r, axis 1: c) of grad_j W_j bit_k(j)."""
    r = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64)
    offs = r * group_len + c * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = offs < tl.minimum((r + 1) * group_len, n)
    gw = tl.load(grad_ptr + offs, mask=ok, other=0.0).to(tl.float32) * tl.load(
        w_ptr + offs, mask=ok, other=0.0
    ).to(tl.float32)
    reduce_bits_into(partial_ptr + (r * chunks + c) * num_masks, gw, bank_ptr, offs, ok, n, num_planes, num_masks)


def _rows_groups(n: int, group_len: int) -> int:
    group_len = _checks.check_int("group_len", group_len, minimum=1)
    return -(-n // group_len)


def combine_masks_rows(weight: torch.Tensor, bank: torch.Tensor, alpha: torch.Tensor, group_len: int) -> torch.Tensor:
    """weight[n] * (sum_k alpha[k, j // group_len] bit_k(j)) -> [n] in weight's dtype; alpha fp32[K, R]."""
    _check_flat("weight", weight, bank)
    planes, n = bank.shape
    groups = _rows_groups(n, group_len)
    _checks.check_tensor("alpha", alpha, dtypes=(torch.float32,), ndim=2)
    k = alpha.shape[0]
    if k < 1 or _checks.num_planes(k) != planes or alpha.shape[1] != groups:
        raise ValueError(f"alpha must be fp32[K, {groups}] with ceil(K/8) = {planes}, got {tuple(alpha.shape)}")
    check_interpretable(weight=weight)
    out = torch.empty_like(weight)
    if n == 0:
        return out
    launch(
        _combine_rows_fwd_kernel, (triton.cdiv(n, _FWD_BLOCK),), weight, bank, alpha, out, n, planes, k, groups,
        group_len, BLOCK_N=_FWD_BLOCK, num_warps=4,
    )  # fmt: skip
    return out


def combine_masks_rows_alpha_grad(
    grad: torch.Tensor, weight: torch.Tensor, bank: torch.Tensor, num_masks: int, group_len: int
) -> torch.Tensor:
    """fp32[K, R]: grad_alpha[k, r] = sum over group r of grad_j weight_j bit_k(j)."""
    planes, n = _check_alpha_grad_args(grad, weight, bank, num_masks)
    groups = _rows_groups(n, group_len)
    if n == 0:
        return torch.zeros((num_masks, groups), dtype=torch.float32, device=weight.device)
    chunks = triton.cdiv(min(group_len, n), _BWD_BLOCK)
    partial = torch.empty((groups * chunks, num_masks), dtype=torch.float32, device=weight.device)
    launch(
        _combine_rows_alpha_grad_kernel, (groups, chunks), grad, weight, bank, partial, n, planes, num_masks,
        group_len, chunks, BLOCK_N=_BWD_BLOCK, num_warps=4,
    )  # fmt: skip
    return partial.view(groups, chunks, num_masks).sum(dim=1).t().contiguous()
