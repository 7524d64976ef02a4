"""Compiles every Triton kernel of impresslearn.kernels for sm_90, no GPU needed.

The interpreter that runs the kernel tests on CPU skips Triton's type checks, layout
and register allocation; this does them (down to ptxas). Run it in a process where
TRITON_INTERPRET is unset (tests/kernels/test_compile.py does)::

    env -u TRITON_INTERPRET python tests/kernels/compile_sm90.py
"""

import os
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from impresslearn.kernels import bank, combine, linear

TARGET = GPUTarget("cuda", 90, 32)


def compile_kernel(fn, signature: dict, constexprs: dict, num_warps: int = 4):
    signature = {**signature, **{name: "constexpr" for name in constexprs}}
    return triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs), target=TARGET,
                          options={"num_warps": num_warps})


def main() -> int:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        sys.exit("unset TRITON_INTERPRET: the interpreter does not compile")
    u8, i32, i64 = "*u8", "i32", "i64"
    compile_kernel(bank._pack_kernel, dict(masks_ptr=u8, bank_ptr=u8, num_masks=i32, n=i32), dict(BLOCK_N=1024))
    compile_kernel(bank._unpack_kernel, dict(bank_ptr=u8, masks_ptr=u8, num_masks=i32, n=i32), dict(BLOCK_N=1024))
    compile_kernel(bank._set_mask_kernel, dict(bank_ptr=u8, mask_ptr=u8, plane=i32, bit=i32, n=i32), dict(BLOCK_N=1024))
    compile_kernel(combine._coeff_table_kernel, dict(alpha_ptr="*fp32", table_ptr="*fp32", num_masks=i32), {})
    tables = dict(bank_ptr=u8, table_ptr="*fp32", alpha_ptr="*fp32")
    gemm_ints = dict(M=i32, N=i32, C=i32, num_weights=i64, num_planes=i32, num_masks=i32)
    for dt in ("*fp32", "*fp16", "*bf16"):
        for use_table in (True, False):
            compile_kernel(
                combine._combine_fwd_kernel,
                dict(w_ptr=dt, **tables, out_ptr=dt, n=i64, num_planes=i32, num_masks=i32),
                dict(USE_TABLE=use_table, BLOCK_N=combine._FWD_BLOCK),
            )
        compile_kernel(
            combine._combine_alpha_grad_kernel,
            dict(grad_ptr=dt, w_ptr=dt, bank_ptr=u8, partial_ptr="*fp32", n=i64, num_planes=i32, num_masks=i32),
            dict(BLOCK_N=combine._BWD_BLOCK),
        )
        blocks = dict(USE_TABLE=True, BLOCK_M=16, BLOCK_N=linear._BLOCK_N, BLOCK_C=linear._BLOCK_C)
        precision = dict(PRECISION="ieee")
        compile_kernel(
            linear._linear_fwd_kernel,
            dict(x_ptr=dt, w_ptr=dt, **tables, out_ptr="*fp32", **gemm_ints, c_per_split=i32),
            {**precision, **blocks},
        )
        compile_kernel(
            linear._linear_grad_x_kernel,
            dict(g_ptr=dt, w_ptr=dt, **tables, out_ptr="*fp32", **gemm_ints, n_per_split=i32),
            {**precision, **blocks},
        )
        compile_kernel(
            linear._linear_grad_params_kernel,
            dict(g_ptr=dt, x_ptr=dt, w_ptr=dt, **tables, grad_w_ptr=dt, partial_ptr="*fp32", **gemm_ints, tiles_c=i32),
            {**precision, **blocks, "WEIGHT_GRAD": True},
        )
    print("compiled every kernel for sm_90")
    return 0


if __name__ == "__main__":
    sys.exit(main())
