"""The Triton kernels compile for real GPU targets (sm_80, sm_90) as their launchers call them, without a GPU.

tests/kernels/compile_targets.py records every launcher's launches on meta tensors at
shapes where Triton specialises integer arguments (1 becomes a constexpr, multiples of
16 get divisibility hints) and compiles each down to a cubin. A kernel that calls a
tensor method on an int argument (``plane.to(tl.int64)`` in set_mask_ did) compiles
under the interpreter and with i32 signatures, and fails here.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")


def test_triton_kernels_compile_for_sm80_and_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("compile_targets.py")
    done = subprocess.run(
        [sys.executable, str(script), "--targets", "80,90"], env=env, capture_output=True, text=True, timeout=1800
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert "for sm_80, sm_90" in summary, summary
    for kernel in ("_pack_kernel", "_unpack_kernel", "_set_mask_kernel", "_coeff_table_kernel", "_combine_fwd_kernel",
                   "_combine_alpha_grad_kernel", "_combine_rows_fwd_kernel", "_combine_rows_alpha_grad_kernel",
                   "_linear_split_k_kernel", "_linear_grad_params_kernel"):
        assert kernel in summary, summary
