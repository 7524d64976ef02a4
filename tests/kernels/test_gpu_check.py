"""``make gpu-check`` (scripts/gpu_check.py) stops at once, with a reason, where no GPU is visible."""

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"


def test_gpu_check_without_a_gpu_fails_fast_and_says_why(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, even on a GPU host
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "needs an NVIDIA GPU" in done.stderr and "Nothing was run" in done.stderr
    assert not (tmp_path / "report.md").exists()
