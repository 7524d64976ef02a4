"""benchmarks/kernels.py, the issue-16 benchmark: one --quick run of the combine cases checks
that it prints each ratio against its reference and the forward's share of the dense
bandwidth, and writes the JSON and CSV named by machine family with the CPU model and ISA,
so results from different machines are compared like with like."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from impresslearn import _extension

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "kernels.py"

pytestmark = pytest.mark.skipif(not _extension.has_cpu_kernels(), reason="impresslearn._C has no C++ kernels")


def _kernels_module():
    spec = importlib.util.spec_from_file_location("impresslearn_bench_kernels_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_machine_family_names_vendor_and_isa():
    family = _kernels_module().machine_family
    assert family("AuthenticAMD", "avx2") == "amd_avx2"
    assert family("GenuineIntel", "avx512") == "intel_avx512"
    assert family("Weird Vendor/1", "portable") == "weird-vendor-1_portable"  # safe in a file name


def test_quick_run_prints_ratios_and_records_the_machine(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("IMPRESSLEARN_CPU_ISA", None)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--only", "combine", "--out", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    isa = _extension.extension().cpu_isa()
    assert f"  cpu_isa: {isa}\n" in out
    assert "cpp: " in out and "x vs dense (target 10x: " in out and "x vs dense (target 8x: " in out
    assert "of dense's bandwidth (p20 " in out and "(target 70%: " in out

    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and files[0].startswith("kernels_quick_") and files[0].endswith(".csv"), files
    record = json.loads((tmp_path / files[1]).read_text())
    machine = record["environment"]
    assert files[1] == f"kernels_quick_{machine['machine_family']}.json"
    assert machine["cpu_isa"] == isa and machine["machine_family"].endswith("_" + isa)
    assert machine["cpu"] and len(machine["cpu_family_model_stepping"]) == 3 and machine["threads"] == 1
    assert len(machine["loadavg_at_start"]) == 3 and len(machine["loadavg_at_end"]) == 3
    rows = {(r["case"], r["impl"]): r for r in record["rows"]}
    assert set(rows) == {("combine_fwd", "dense"), ("combine_fwd", "cpp"),
                         ("combine_alpha_grad", "dense"), ("combine_alpha_grad", "cpp")}
    forward = rows[("combine_fwd", "cpp")]
    assert forward["speedup_vs[dense]"] > 0 and forward["bandwidth_vs[dense]"] > 0
    assert rows[("combine_alpha_grad", "cpp")]["speedup_vs[dense]"] > 0
    with open(tmp_path / files[0], newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 and "bandwidth_vs[dense]" in table[0]
