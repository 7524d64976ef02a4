"""Fused impress_linear: ``y = x @ W_eff^T`` with ``W_eff`` built tile by tile from the bank.

``W_eff = W * sum_k alpha[k] B[k]`` (paper Eq. 1), ``W`` is ``[N, C]`` (out, in
features), ``x`` is ``[M, C]``. The reference is ``F.linear(x, combine_masks(W, bank,
alpha))``. Each kernel forms the ``W_eff`` tile it needs inside its GEMM loop from
``W``, the bank bytes and the 256-entry coefficient tables of ``kernels/combine.py``;
``W_eff`` is never written to memory.

Why only for small batches (``impresslearn.ops.linear.FUSED_MAX_ROWS``): at ``M``
rows the GEMM does ``2M`` flops per weight. The fused kernel moves ``4 + G`` bytes
per fp32 weight (W and G bank planes); combine + cuBLAS moves ``4 + G + 4`` (combine
reads W and the bank, writes W_eff) plus ``4`` (the GEMM reads W_eff back). While
the fused kernel is bandwidth-bound it saves those 8 bytes; it stops being so when
``2M / (4 + G)`` flops per byte passes the device's balance (H100, fp32 without
TF32: ~60 TFLOP/s over ~3.3 TB/s, ~18 flop/B), i.e. at ``M ~ 9 (4 + G)``: 45 rows at
K = 8, 325 at K = 256. cuBLAS then wins with its tuned tiles. ``M <= 64`` is inside
that bound for K >= 16 and within 1.5x of it at K = 8, and one ``BLOCK_M = 64``
row block covers the whole batch, so each ``W_eff`` tile is built exactly once.

Backward (``g = dL/dy``, ``[M, N]``):

* ``grad_x = g @ W_eff``: the same on-the-fly tiles, contracted over ``N`` (the forward's
  kernel, ``_linear_split_k_kernel``, with ``GRAD_INPUT``);
* ``dW_eff = g^T x`` tile by tile (never stored); ``grad_alpha[k] = sum dW_eff * W *
  bit_k`` reduced per tile into a ``[tiles, K]`` fp32 buffer summed by ``torch.sum``
  (no atomics: deterministic); ``grad_W = dW_eff * c`` only when asked for.

Small batches leave few output tiles (``N / BLOCK_N``) for a GPU of 132 SMs, so the
forward and ``grad_x`` split their contraction into ``split`` slices that write fp32
partial results summed by ``torch.sum`` (split-K without atomics).

fp32 tiles use ``tl.dot(..., input_precision="ieee")`` unless PyTorch allows TF32 for
fp32 matmuls (``torch.backends.cuda.matmul.fp32_precision == "tf32"``, which is what
``F.linear`` follows); fp16/bf16 tiles go to the tensor cores with fp32 accumulation.

Grid: the long axis (output tiles along N for the forward, along C for ``grad_x``, all
weight tiles for the weight gradients) is axis x, which allows 2**31 - 1 programs;
axes y (row blocks) and z (split-K slices) allow 65535, far above what they get.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..ops import _checks
from ._launch import FLOAT_DTYPES, MAX_GRID, check_interpretable, launch
from .combine import check_alpha, coefficient_table, mask_coefficients, reduce_bits_into

# Tiles and warps chosen from ptxas reports (tests/kernels/compile_targets.py
# --resources; no GPU was at hand to time them). With BLOCK_C = 64 the forward used
# 255 registers and spilled 128-760 bytes per thread at 4 warps; BLOCK_C = 32 fixed
# that for C a multiple of 16, but where C is not (LeNet's 300 -> 100 layer: the loads
# cannot be vectorised and every element keeps its own 64-bit address) the three
# kernels still used 128-202 registers at 4 warps and grad_x spilled 8-24 bytes (also
# at the fc layer, 16 x 2048 -> 1000, fp32). 8 warps spread each 64 x 32 weight tile
# over twice the threads: on sm_90, 80-119 registers and no spills at those shapes
# (fc: 40-61), so more warps stay resident to hide the bank and table loads, which is
# what a bandwidth-bound kernel needs. Retune with benchmarks/gpu_cases.py on a GPU.
_BLOCK_N = 64
_BLOCK_C = 32
_MAX_BLOCK_M = 64
_NUM_WARPS = 8


@triton.jit
def _weff_tile(
    w_ptr, bank_ptr, table_ptr, alpha_ptr, rows, cols, N, C, num_weights, num_planes, num_masks,
    DTYPE: tl.constexpr, USE_TABLE: tl.constexpr,
):
    """W_eff[rows, cols] as a [len(rows), len(cols)] tile of DTYPE (zero outside W)."""
    offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
    ok = (rows[:, None] < N) & (cols[None, :] < C)
    coeff = mask_coefficients(bank_ptr, table_ptr, alpha_ptr, offs, ok, num_weights, num_planes, num_masks, USE_TABLE)
    w = tl.load(w_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    return (w * coeff).to(DTYPE)


@triton.jit
def _linear_split_k_kernel(
    a_ptr, w_ptr, bank_ptr, table_ptr, alpha_ptr, out_ptr, M, N, C, num_weights, num_planes, num_masks, per_split,
    GRAD_INPUT: tl.constexpr, PRECISION: tl.constexpr, USE_TABLE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """``a`` [M, R] contracted with W_eff over R, slice ``split`` of R only (fp32 partials):

    forward: out[split, m, n] = sum_{c in slice split} x[m, c] W_eff[n, c]  (a = x, R = C, O = N);
    grad_x (GRAD_INPUT): out[split, m, c] = sum_{n in slice split} g[m, n] W_eff[n, c]  (a = g, R = N, O = C).
    Axis 0 of the grid walks the output columns O in blocks of BLOCK_O; R goes by BLOCK_R.
    """
    if GRAD_INPUT:
        O, R = C, N
    else:
        O, R = N, C
    pid_o, pid_m, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ro = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    acc = tl.zeros((BLOCK_M, BLOCK_O), dtype=tl.float32)
    r_begin = split * per_split
    for r0 in range(r_begin, tl.minimum(r_begin + per_split, R), BLOCK_R):
        rr = r0 + tl.arange(0, BLOCK_R)
        a = tl.load(a_ptr + rm.to(tl.int64)[:, None] * R + rr[None, :],
                    mask=(rm[:, None] < M) & (rr[None, :] < R), other=0.0)
        if GRAD_INPUT:  # the tile W_eff[rr, ro] as stored: [BLOCK_R, BLOCK_O]
            weff = _weff_tile(w_ptr, bank_ptr, table_ptr, alpha_ptr, rr, ro, N, C, num_weights, num_planes,
                              num_masks, a.dtype, USE_TABLE)
        else:  # W_eff[ro, rr] transposed to [BLOCK_R, BLOCK_O]
            weff = tl.trans(_weff_tile(w_ptr, bank_ptr, table_ptr, alpha_ptr, ro, rr, N, C, num_weights, num_planes,
                                       num_masks, a.dtype, USE_TABLE))
        acc = tl.dot(a, weff, acc, input_precision=PRECISION)
    out = out_ptr + split.to(tl.int64) * M * O + rm.to(tl.int64)[:, None] * O + ro[None, :]
    tl.store(out, acc, mask=(rm[:, None] < M) & (ro[None, :] < O))


@triton.jit
def _linear_grad_params_kernel(
    g_ptr, x_ptr, w_ptr, bank_ptr, table_ptr, alpha_ptr, grad_w_ptr, partial_ptr,
    M, N, C, num_weights, num_planes, num_masks, tiles_c,
    PRECISION: tl.constexpr, USE_TABLE: tl.constexpr, WEIGHT_GRAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """For one [BLOCK_N, BLOCK_C] tile: dW_eff = g^T x; partial[tile, k] = sum dW_eff W bit_k;
    grad_w = dW_eff * c when WEIGHT_GRAD."""
    tile = tl.program_id(0)
    pid_n, pid_c = tile // tiles_c, tile % tiles_c
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rc = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        rm = m0 + tl.arange(0, BLOCK_M)
        g_t = tl.load(g_ptr + rm.to(tl.int64)[None, :] * N + rn[:, None],
                      mask=(rm[None, :] < M) & (rn[:, None] < N), other=0.0)
        x = tl.load(x_ptr + rm.to(tl.int64)[:, None] * C + rc[None, :],
                    mask=(rm[:, None] < M) & (rc[None, :] < C), other=0.0)
        acc = tl.dot(g_t, x, acc, input_precision=PRECISION)
    offs = rn.to(tl.int64)[:, None] * C + rc[None, :]
    ok = (rn[:, None] < N) & (rc[None, :] < C)
    w = tl.load(w_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    if WEIGHT_GRAD:
        coeff = mask_coefficients(bank_ptr, table_ptr, alpha_ptr, offs, ok, num_weights, num_planes, num_masks, USE_TABLE)
        tl.store(grad_w_ptr + offs, (acc * coeff).to(grad_w_ptr.dtype.element_ty), mask=ok)
    reduce_bits_into(partial_ptr + tile.to(tl.int64) * num_masks, acc * w, bank_ptr, offs, ok,
                     num_weights, num_planes, num_masks)


# ----------------------------------------------------------------------------- host launchers
# impresslearn.ops.linear checks the inputs with messages for users; the launchers
# repeat what the kernels assume, since torch.ops.impresslearn.*_triton can be called
# directly: x [M, C] and weight [N, C] contiguous, one dtype among fp32/fp16/bf16
# (tl.dot takes two operands of one type); bank uint8[ceil(K/8), N*C]; alpha fp32[K];
# one device.


def _check_matrix(name: str, t: torch.Tensor, rows: int | None = None, cols: int | None = None) -> None:
    _checks.check_tensor(name, t, dtypes=FLOAT_DTYPES, ndim=2)
    if (rows is not None and t.shape[0] != rows) or (cols is not None and t.shape[1] != cols):
        want = f"[{rows if rows is not None else '*'}, {cols if cols is not None else '*'}]"
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {want}")


def _check_weight(weight: torch.Tensor, bank: torch.Tensor, alpha: torch.Tensor) -> None:
    _check_matrix("weight", weight)
    _checks.check_bank(bank, n=weight.numel())
    check_alpha(alpha, bank)


def tf32_allowed() -> bool:
    """Whether PyTorch lets fp32 matmuls on CUDA use TF32, by the current API.

    ``torch.backends.cuda.matmul.fp32_precision`` resolves the global setting
    (``torch.backends.fp32_precision``) and the legacy ``allow_tf32`` flag; reading
    ``allow_tf32`` itself raises once the new API has set 'tf32' (torch >= 2.9).
    """
    return torch.backends.cuda.matmul.fp32_precision == "tf32"


def _precision(dtype: torch.dtype, device: torch.device) -> str:
    # the interpreter (CPU tensors) computes tl.dot in fp32 whatever it is told
    if dtype == torch.float32 and device.type == "cuda" and tf32_allowed():
        return "tf32"
    return "ieee"


def _block_m(rows: int) -> int:
    return max(16, min(_MAX_BLOCK_M, triton.next_power_of_2(max(1, rows))))


def _splits(output_tiles: int, reduction: int, block: int, device: torch.device, split: int | None) -> int:
    """Slices of the contraction so that about two programs run per SM (1 off the GPU)."""
    steps = triton.cdiv(reduction, block)
    if split is None:
        if device.type != "cuda":
            return 1
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        split = triton.cdiv(2 * sms, max(1, output_tiles))
    return max(1, min(split, steps, MAX_GRID[2]))


def _sum_splits(partial: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    out = partial[0] if partial.shape[0] == 1 else partial.sum(dim=0)
    return out.to(dtype)


def _split_k_product(name: str, a, weight, bank, alpha, *, grad_input: bool, use_table: bool, split: int | None):
    """``a`` [M, R] contracted with W_eff [N, C] over R by :func:`_linear_split_k_kernel`: [M, O] in a's dtype.

    Forward: a = x, R = C, O = N. grad_x (``grad_input``): a = grad, R = N, O = C.
    """
    _check_weight(weight, bank, alpha)
    n, c = weight.shape
    reduced, kept = (n, c) if grad_input else (c, n)
    _check_matrix(name, a, cols=reduced)
    _checks.check_same_dtype(**{name: a}, weight=weight)
    check_interpretable(**{name: a}, weight=weight)
    m = a.shape[0]
    block_r, block_o = (_BLOCK_N, _BLOCK_C) if grad_input else (_BLOCK_C, _BLOCK_N)
    planes = bank.shape[0]
    block_m = _block_m(m)
    tiles = triton.cdiv(m, block_m) * triton.cdiv(kept, block_o)
    split = _splits(tiles, reduced, block_r, a.device, split)
    per_split = triton.cdiv(triton.cdiv(reduced, split), block_r) * block_r
    split = triton.cdiv(reduced, per_split)
    partial = torch.empty((split, m, kept), dtype=torch.float32, device=a.device)
    table = coefficient_table(alpha, planes)
    grid = (triton.cdiv(kept, block_o), triton.cdiv(m, block_m), split)
    launch(
        _linear_split_k_kernel, grid, a, weight, bank, table, alpha, partial, m, n, c, n * c, planes, alpha.shape[0],
        per_split, GRAD_INPUT=grad_input, PRECISION=_precision(a.dtype, a.device), USE_TABLE=use_table,
        BLOCK_M=block_m, BLOCK_O=block_o, BLOCK_R=block_r, num_warps=_NUM_WARPS,
    )
    return _sum_splits(partial, a.dtype)


def linear_forward(x, weight, bank, alpha, *, use_table: bool = True, split: int | None = None):
    """x [M, C] @ W_eff^T -> [M, N] in x's dtype."""
    return _split_k_product("x", x, weight, bank, alpha, grad_input=False, use_table=use_table, split=split)


def linear_grad_input(grad, weight, bank, alpha, *, use_table: bool = True, split: int | None = None):
    """grad [M, N] @ W_eff -> [M, C] in grad's dtype."""
    return _split_k_product("grad", grad, weight, bank, alpha, grad_input=True, use_table=use_table, split=split)


def linear_grad_params(grad, x, weight, bank, alpha, weight_grad: bool, *, use_table: bool = True):
    """(grad_weight [N, C] or an empty tensor, grad_alpha fp32[K]) from grad [M, N] and x [M, C]."""
    _check_weight(weight, bank, alpha)
    _check_matrix("grad", grad, cols=weight.shape[0])
    _check_matrix("x", x, rows=grad.shape[0], cols=weight.shape[1])
    _checks.check_same_dtype(grad=grad, x=x)
    check_interpretable(grad=grad, x=x, weight=weight)
    m, n = grad.shape
    c = x.shape[1]
    planes = bank.shape[0]
    k = alpha.shape[0]
    tiles_c = triton.cdiv(c, _BLOCK_C)
    tiles = triton.cdiv(n, _BLOCK_N) * tiles_c
    partial = torch.empty((tiles, k), dtype=torch.float32, device=x.device)
    grad_w = torch.empty_like(weight) if weight_grad else weight.new_empty((0,))
    table = coefficient_table(alpha, planes)
    launch(
        _linear_grad_params_kernel, (tiles,), grad, x, weight, bank, table, alpha, grad_w, partial,
        m, n, c, n * c, planes, k, tiles_c,
        PRECISION=_precision(x.dtype, x.device), USE_TABLE=use_table, WEIGHT_GRAD=weight_grad,
        BLOCK_M=_block_m(m), BLOCK_N=_BLOCK_N, BLOCK_C=_BLOCK_C, num_warps=_NUM_WARPS,
    )
    return grad_w, partial.sum(dim=0)
