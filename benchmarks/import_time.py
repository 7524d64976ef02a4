"""Import cost: ``import impresslearn`` against ``import torch`` alone (target: <= 0.5 s more).

Each sample is a fresh interpreter, so nothing is cached in-process; the two imports
alternate, so a load spike on a shared machine hits both. Prints the median and
p20/p80 of each, the median of the per-pair differences (the figure the target is
about), and the modules that the package's import must not pull in (Triton and
torch._inductor load at the first Triton op, not at import).

    python benchmarks/import_time.py            # 9 pairs
    python benchmarks/import_time.py --runs 21  # tighter quantiles
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

TARGET_S = 0.5

# what one sample measures, in a fresh interpreter: wall time of the import statements alone
# wall time, and this process's CPU time (user + sys), which a busy shared machine disturbs far less
_PROBE = """
import json, sys, time
cpu = time.process_time
t0, c0 = time.perf_counter(), cpu()
import torch
t1 = time.perf_counter()
{extra}
t2, c2 = time.perf_counter(), cpu()
heavy = [m for m in ("triton", "torch._inductor", "torch._dynamo") if m in sys.modules]
where = sys.modules["impresslearn"].__file__ if "impresslearn" in sys.modules else None
print(json.dumps(dict(torch_s=t1 - t0, total_s=t2 - t0, cpu_s=c2 - c0, heavy=heavy, where=where)))
"""


def sample(with_package: bool) -> dict:
    code = _PROBE.format(extra="import impresslearn" if with_package else "")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # run outside the repository so the current folder cannot shadow the installed package (or PYTHONPATH)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=tempfile.gettempdir())
    return json.loads(out.stdout.strip().splitlines()[-1])


def _quantiles(values: list[float]) -> str:
    q = statistics.quantiles(values, n=5) if len(values) > 1 else [values[0]] * 4
    return f"median {statistics.median(values):.3f} s  (p20 {q[0]:.3f}, p80 {q[3]:.3f})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="pairs of fresh interpreters (default 9)")
    parser.add_argument("--json", help="also write the samples and summary to this file")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")

    import torch  # only for the versions line

    print(f"python {sys.version.split()[0]}  torch {torch.__version__}  cpus {os.cpu_count()}  "
          f"load {os.getloadavg()[0]:.2f}  pairs {args.runs}")
    sample(False)  # warm the OS file cache once, for both
    torch_only, package, deltas, cpu_deltas, heavy = [], [], [], [], set()
    for _ in range(args.runs):
        bare = sample(False)
        full = sample(True)
        torch_only.append(bare["total_s"])
        package.append(full["total_s"])
        deltas.append(full["total_s"] - bare["total_s"])
        cpu_deltas.append(full["cpu_s"] - bare["cpu_s"])
        heavy.update(full["heavy"])
    extra, extra_cpu = statistics.median(deltas), statistics.median(cpu_deltas)
    print(f"package imported from        {os.path.dirname(full['where'])}")
    print(f"import torch                 wall {_quantiles(torch_only)}")
    print(f"import torch, impresslearn   wall {_quantiles(package)}")
    print(f"impresslearn's own cost      wall: median of pair differences {extra:.3f} s; "
          f"CPU time: {extra_cpu:.3f} s  (target <= {TARGET_S} s: {'met' if extra <= TARGET_S else 'NOT met'})")
    print(f"ratio (with / without)       {statistics.median(package) / statistics.median(torch_only):.2f}x")
    print(f"heavy modules after import   {sorted(heavy) or 'none'} (triton, torch._inductor, torch._dynamo)")
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1):
        print(f"note: load {load:.1f} on {os.cpu_count()} CPUs: the wall figures measure contention as much as "
              "the imports; the CPU-time difference is the steadier guide here")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(torch_s=torch_only, package_s=package, delta_s=deltas, cpu_delta_s=cpu_deltas,
                           heavy=sorted(heavy)), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
