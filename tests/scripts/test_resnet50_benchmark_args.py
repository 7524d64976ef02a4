"""benchmarks/resnet50.py refuses a batch and image size that training BatchNorm cannot run."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "resnet50.py"


def test_one_value_per_channel_is_refused_before_anything_runs():
    # batch 1 at 32 px leaves ResNet-50's last stage 1x1: BatchNorm raised deep in the first step
    run = subprocess.run([sys.executable, str(SCRIPT), "--batch", "1", "--size", "32"], capture_output=True, text=True)
    assert run.returncode == 2
    assert "--batch >= 2 or --size >= 33" in run.stderr
