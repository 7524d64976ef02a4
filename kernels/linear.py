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

* ``grad_x = g @ W_eff``: the same on-the-fly tiles, contracted over ``N``;
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
def _linear_fwd_kernel(
    x_ptr, w_ptr, bank_ptr, table_ptr, alpha_ptr, out_ptr, M, N, C, num_weights, num_planes, num_masks, c_per_split,
    PRECISION: tl.constexpr, USE_TABLE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """out[split, m, n] = sum_{c in slice split} x[m, c] W_eff[n, c]  (fp32 partials)."""
    pid_n, pid_m, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    c_begin = split * c_per_split
    for c0 in range(c_begin, tl.minimum(c_begin + c_per_split, C), BLOCK_C):
        rc = c0 + tl.arange(0, BLOCK_C)
        x = tl.load(x_ptr + rm.to(tl.int64)[:, None] * C + rc[None, :],
                    mask=(rm[:, None] < M) & (rc[None, :] < C), other=0.0)
        weff = _weff_tile(w_ptr, bank_ptr, table_ptr, alpha_ptr, rn, rc, N, C, num_weights, num_planes, num_masks,
                          x.dtype, USE_TABLE)
        acc = tl.dot(x, tl.trans(weff), acc, input_precision=PRECISION)
    out = out_ptr + split.to(tl.int64) * M * N + rm.to(tl.int64)[:, None] * N + rn[None, :]
    tl.store(out, acc, mask=(rm[:, None] < M) & (rn[None, :] < N))


@triton.jit
def _linear_grad_x_kernel(
    g_ptr, w_ptr, bank_ptr, table_ptr, alpha_ptr, out_ptr, M, N, C, num_weights, num_planes, num_masks, n_per_split,
    PRECISION: tl.constexpr, USE_TABLE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """out[split, m, c] = sum_{n in slice split} g[m, n] W_eff[n, c]  (fp32 partials)."""
    pid_c, pid_m, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rc = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    n_begin = split * n_per_split
    for n0 in range(n_begin, tl.minimum(n_begin + n_per_split, N), BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        g = tl.load(g_ptr + rm.to(tl.int64)[:, None] * N + rn[None, :],
                    mask=(rm[:, None] < M) & (rn[None, :] < N), other=0.0)
        weff = _weff_tile(w_ptr, bank_ptr, table_ptr, alpha_ptr, rn, rc, N, C, num_weights, num_planes, num_masks,
                          g.dtype, USE_TABLE)
        acc = tl.dot(g, weff, acc, input_precision=PRECISION)
    out = out_ptr + split.to(tl.int64) * M * C + rm.to(tl.int64)[:, None] * C + rc[None, :]
    tl.store(out, acc, mask=(rm[:, None] < M) & (rc[None, :] < C))


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


def _check_same_dtype(**tensors: torch.Tensor) -> None:
    dtypes = {name: t.dtype for name, t in tensors.items()}
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{n} {str(d).replace('torch.', '')}" for n, d in dtypes.items())
        raise TypeError(f"the fused linear kernels take one dtype for all of: {listed}")


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


def linear_forward(x, weight, bank, alpha, *, use_table: bool = True, split: int | None = None):
    """x [M, C] @ W_eff^T -> [M, N] in x's dtype."""
    _check_weight(weight, bank, alpha)
    _check_matrix("x", x, cols=weight.shape[1])
    _check_same_dtype(x=x, weight=weight)
    check_interpretable(x=x, weight=weight)
    m, c = x.shape
    n = weight.shape[0]
    planes = bank.shape[0]
    block_m = _block_m(m)
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, _BLOCK_N)
    split = _splits(tiles, c, _BLOCK_C, x.device, split)
    per_split = triton.cdiv(triton.cdiv(c, split), _BLOCK_C) * _BLOCK_C
    split = triton.cdiv(c, per_split)
    partial = torch.empty((split, m, n), dtype=torch.float32, device=x.device)
    table = coefficient_table(alpha, planes)
    grid = (triton.cdiv(n, _BLOCK_N), triton.cdiv(m, block_m), split)
    launch(
        _linear_fwd_kernel, grid, x, weight, bank, table, alpha, partial, m, n, c, n * c, planes, alpha.shape[0], per_split,
        PRECISION=_precision(x.dtype, x.device), USE_TABLE=use_table,
        BLOCK_M=block_m, BLOCK_N=_BLOCK_N, BLOCK_C=_BLOCK_C, num_warps=_NUM_WARPS,
    )
    return _sum_splits(partial, x.dtype)


def linear_grad_input(grad, weight, bank, alpha, *, use_table: bool = True, split: int | None = None):
    """grad [M, N] @ W_eff -> [M, C] in grad's dtype."""
    _check_weight(weight, bank, alpha)
    _check_matrix("grad", grad, cols=weight.shape[0])
    _check_same_dtype(grad=grad, weight=weight)
    check_interpretable(grad=grad, weight=weight)
    m, n = grad.shape
    c = weight.shape[1]
    planes = bank.shape[0]
    block_m = _block_m(m)
    tiles = triton.cdiv(m, block_m) * triton.cdiv(c, _BLOCK_C)
    split = _splits(tiles, n, _BLOCK_N, grad.device, split)
    per_split = triton.cdiv(triton.cdiv(n, split), _BLOCK_N) * _BLOCK_N
    split = triton.cdiv(n, per_split)
    partial = torch.empty((split, m, c), dtype=torch.float32, device=grad.device)
    table = coefficient_table(alpha, planes)
    grid = (triton.cdiv(c, _BLOCK_C), triton.cdiv(m, block_m), split)
    launch(
        _linear_grad_x_kernel, grid, grad, weight, bank, table, alpha, partial, m, n, c, n * c, planes, alpha.shape[0],
        per_split, PRECISION=_precision(grad.dtype, grad.device), USE_TABLE=use_table,
        BLOCK_M=block_m, BLOCK_N=_BLOCK_N, BLOCK_C=_BLOCK_C, num_warps=_NUM_WARPS,
    )
    return _sum_splits(partial, grad.dtype)


def linear_grad_params(grad, x, weight, bank, alpha, weight_grad: bool, *, use_table: bool = True):
    """(grad_weight [N, C] or an empty tensor, grad_alpha fp32[K]) from grad [M, N] and x [M, C]."""
    _check_weight(weight, bank, alpha)
    _check_matrix("grad", grad, cols=weight.shape[0])
    _check_matrix("x", x, rows=grad.shape[0], cols=weight.shape[1])
    _check_same_dtype(grad=grad, x=x)
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
