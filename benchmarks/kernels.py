"""Kernel throughput tables (docs/design.md, Targets): each case names its reference,
baselines and candidates; one run times them all on the same machine.

    python benchmarks/kernels.py            # full sizes (docs/design.md, Targets), 2 threads
    python benchmarks/kernels.py --quick    # small sizes, a smoke run of seconds
    python benchmarks/kernels.py --threads 1 --out DIR --only topk

Prints the device, versions, threads, the CPU model and the ISA the C++ kernels
run, then per case and implementation the median, min and p20/p80 time, the bytes
that implementation must move, GB/s, and the speedup over the case's reference and
baselines; for the combine forward also the share of the dense reference's
bandwidth the kernel reaches. Writes the same rows, with the environment, to
DIR/kernels_<family>.csv and .json, one pair per machine family (CPU vendor and
ISA, e.g. kernels_amd_avx2.json; kernels_quick_<family>.* for --quick), so runs on
different machines sit side by side and are compared like with like.

IMPRESSLEARN_CPU_ISA=portable|avx2|avx512 runs the C++ kernels on that ISA's loops
(one process, one ISA): compare the paths of one machine with one run per ISA, each
with --out pointing elsewhere so the family's file keeps the automatic choice.

Implementations are timed round-robin (one call of each per round) so that load
from other processes on a shared machine falls on all of them alike. The process
CPU time of each call (all threads, OpenMP spin-waits included) is reported beside
the wall time: on an oversubscribed machine it tracks the work done better than
the wall clock, which then measures mostly time spent waiting for a core.

GPU rows come from benchmarks/gpu_cases.py (``gpu_cases(quick) -> list``) when that
file exists and CUDA is available. Its objects are read by duck typing: ``name``,
``setup()``, ``reference``, ``baselines``, ``candidates`` (callables that take the
object ``setup()`` returned, or nothing), ``bytes_moved`` (an int, a dict by
implementation name, or a callable of the inputs giving either), optional
``sizes``, ``target``, ``reference_name``, ``repeats``.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import inspect
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _cases import Case  # noqa: E402  (one case type for the CPU and GPU rows)


# ----------------------------------------------------------------------------- CPU cases


def _combine_setup(n: int, k: int, p: float = 0.1):
    def setup():
        from impresslearn.ops.bank import pack_masks_reference, unpack_masks_reference

        g = torch.Generator().manual_seed(0)
        # masks of density p, as edge-popup leaves them (byte statistics matter to the
        # kernels); drawn one row at a time to keep the peak memory at the bool masks
        masks = torch.empty(k, n, dtype=torch.bool)
        for i in range(k):
            torch.lt(torch.rand(n, generator=g), p, out=masks[i])
        bank = pack_masks_reference(masks)
        del masks
        masks_float = unpack_masks_reference(bank, k).float()  # B_float, precomputed once
        return dict(
            bank=bank,
            b_float=masks_float,
            alpha=torch.rand(k, generator=g) / k,
            weight=torch.randn(n, generator=g),
            grad=torch.randn(n, generator=g),
            k=k,
        )

    return setup


def _combine_bytes(n: int, k: int) -> dict[str, int]:
    """Forward: read the weight and the masks, write W_eff. Alpha grad: read grad, weight, masks."""
    planes = (k + 7) // 8
    return {"dense": 4 * k * n + 8 * n, "cpp": planes * n + 8 * n}


def _storage(n: int, k: int) -> dict:
    return dict(bank_MB=round((k + 7) // 8 * n / 1e6, 1), B_float_MB=round(4 * k * n / 1e6, 1))


def _topk_setup(n: int, density: float):
    def setup():
        g = torch.Generator().manual_seed(0)
        bound = 1.0 / np.sqrt(300.0)  # kaiming-uniform scores, as edge-popup initialises them
        scores = (torch.rand(n, generator=g) * 2 - 1) * bound
        k = max(1, int(np.floor(density * n + 0.5)))
        return dict(scores=scores, scores_np=scores.numpy(), k=k, n=n)

    return setup


def _getsubnet(x):
    """SupSup's GetSubnet: sort all |scores|, keep the top k."""
    _, idx = x["scores"].abs().flatten().sort()
    out = torch.zeros(x["n"], dtype=torch.bool)
    out[idx[x["n"] - x["k"] :]] = True
    return out


def _torch_topk(x):
    idx = torch.topk(x["scores"].abs(), x["k"], sorted=False).indices
    out = torch.zeros(x["n"], dtype=torch.bool)
    out[idx] = True
    return out


def _numpy_partition(x):
    """The cheapest numpy route: the k-th largest |x| by introselect, then a compare (ties not broken)."""
    absval = np.abs(x["scores_np"])
    threshold = np.partition(absval, x["n"] - x["k"])[x["n"] - x["k"]]
    return absval >= threshold


def cpu_cases(quick: bool) -> list[Case]:
    n_comb, k_comb = (1 << 16, 64) if quick else (4 * 1024 * 1024, 256)
    n_topk = 1 << 18 if quick else 25_000_000
    ops = torch.ops.impresslearn
    combine_fwd = Case(
        name="combine_fwd",
        sizes=dict(n=n_comb, K=k_comb, **_storage(n_comb, k_comb)),
        setup=_combine_setup(n_comb, k_comb),
        reference=lambda x: (x["alpha"] @ x["b_float"]) * x["weight"],
        reference_name="dense",
        candidates={"cpp": lambda x: ops.combine_masks_cpp(x["weight"], x["bank"], x["alpha"])},
        bytes_moved=_combine_bytes(n_comb, k_comb),
        target=">= 10x dense alpha @ B_float and >= 70% of its bandwidth; bank 32x smaller than B_float",
        targets={("cpp", "dense"): 10.0},
        bandwidth_targets={("cpp", "dense"): 0.70},
        repeats=7 if quick else 15,
    )
    combine_bwd = Case(
        name="combine_alpha_grad",
        sizes=dict(n=n_comb, K=k_comb),
        setup=_combine_setup(n_comb, k_comb),
        reference=lambda x: x["b_float"] @ (x["grad"] * x["weight"]),
        reference_name="dense",
        candidates={"cpp": lambda x: ops.combine_masks_alpha_grad_cpp(x["grad"], x["weight"], x["bank"], x["k"])},
        bytes_moved=_combine_bytes(n_comb, k_comb),
        target=">= 8x dense B_float @ g",
        targets={("cpp", "dense"): 8.0},
        repeats=7 if quick else 15,
    )
    topk = Case(
        name="topk_mask",
        sizes=dict(n=n_topk, density=0.1),
        setup=_topk_setup(n_topk, 0.1),
        reference=_getsubnet,
        reference_name="sort (GetSubnet)",
        baselines={"torch.topk": _torch_topk, "numpy.partition": _numpy_partition},
        candidates={"cpp": lambda x: ops.topk_mask_cpp(x["scores"], x["k"])},
        # read the scores, write a bool mask; the cpp kernel reads the scores twice
        bytes_moved=lambda x: {"cpp": 9 * x["n"], "*": 5 * x["n"]},
        target=">= 30x sort, >= 6x torch.topk, faster than numpy.partition",
        targets={("cpp", "sort (GetSubnet)"): 30.0, ("cpp", "torch.topk"): 6.0, ("cpp", "numpy.partition"): 1.0},
        repeats=5 if quick else 7,
    )
    return [combine_fwd, combine_bwd, topk]


def load_gpu_cases(quick: bool) -> list:
    path = HERE / "gpu_cases.py"
    if not path.exists() or not torch.cuda.is_available():
        return []
    spec = importlib.util.spec_from_file_location("impresslearn_bench_gpu_cases", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.gpu_cases(quick))


# ----------------------------------------------------------------------------- timing


def _call(fn: Callable, inputs: Any) -> Any:
    try:
        takes_input = len(inspect.signature(fn).parameters) > 0
    except (TypeError, ValueError):  # builtins without a signature
        takes_input = True
    return fn(inputs) if takes_input else fn()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _bytes_for(case: Any, inputs: Any, name: str) -> int:
    spec = getattr(case, "bytes_moved", 0)
    if callable(spec):
        spec = spec(inputs)
    if isinstance(spec, dict):
        for key in (name, "*"):
            if key in spec:
                return int(spec[key])
        return 0
    return int(spec or 0)


def run_case(case: Any, quick: bool) -> list[dict]:
    device = getattr(case, "device", "cuda" if case in _GPU else "cpu")
    ref_name = getattr(case, "reference_name", "reference")
    impls = {ref_name: case.reference, **getattr(case, "baselines", {}), **case.candidates}
    repeats = getattr(case, "repeats", 10)
    inputs = case.setup()
    times: dict[str, list[float]] = {name: [] for name in impls}
    cpu: dict[str, list[float]] = {name: [] for name in impls}
    for fn in impls.values():  # warm-up: first-touch allocations, lazy init, caches
        _call(fn, inputs)
    _sync(device)
    for _ in range(repeats):
        for name, fn in impls.items():
            _sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            _call(fn, inputs)
            _sync(device)
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    rows = []
    med = {name: statistics.median(ts) for name, ts in times.items()}
    med_cpu = {name: statistics.median(ts) for name, ts in cpu.items()}
    p20 = {name: float(np.percentile(ts, 20)) for name, ts in times.items()}
    for name, ts in times.items():
        q = np.percentile(ts, [20, 80])
        nbytes = _bytes_for(case, inputs, name)
        role = "reference" if name == ref_name else "candidate" if name in case.candidates else "baseline"
        row = dict(
            case=case.name,
            sizes=json.dumps(getattr(case, "sizes", {}), sort_keys=True),
            impl=name,
            role=role,
            median_ms=med[name] * 1e3,
            min_ms=min(ts) * 1e3,
            p20_ms=q[0] * 1e3,
            p80_ms=q[1] * 1e3,
            bytes=nbytes,
            gb_per_s=nbytes / med[name] / 1e9 if nbytes else float("nan"),
            speedup_vs_reference=med[ref_name] / med[name],
            cpu_ms=med_cpu[name] * 1e3,
            cpu_speedup_vs_reference=med_cpu[ref_name] / med_cpu[name] if med_cpu[name] > 0 else float("nan"),
        )
        if role == "candidate":
            for other in impls:
                if other != name and other not in case.candidates:
                    row[f"speedup_vs[{other}]"] = med[other] / med[name]
                    row[f"p20_speedup_vs[{other}]"] = p20[other] / p20[name]
            for (cand, other), _ in getattr(case, "bandwidth_targets", {}).items():
                if cand != name:
                    continue
                other_bytes = _bytes_for(case, inputs, other)
                # GB/s of this kernel over GB/s of the other, each on its own bytes
                row[f"bandwidth_vs[{other}]"] = (nbytes / med[name]) / (other_bytes / med[other])
                row[f"p20_bandwidth_vs[{other}]"] = (nbytes / p20[name]) / (other_bytes / p20[other])
        rows.append(row)
    del inputs
    return rows


_GPU: list = []


# ----------------------------------------------------------------------------- report


_ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16",
              "amx_tile")


def _cpuinfo() -> dict:
    """The first processor's entry of /proc/cpuinfo (empty where there is none)."""
    info: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    return info


def _cpu_isa() -> tuple[str, list[str]]:
    """The ISA the C++ kernels run and the ones this processor offers (via impresslearn._C)."""
    from impresslearn import backends

    return backends.cpu_isa()


def machine_family(vendor: str, isa: str) -> str:
    """The results file's key: CPU vendor and kernel ISA, e.g. ``amd_avx2``, ``intel_avx512``."""
    vendor = {"AuthenticAMD": "amd", "GenuineIntel": "intel"}.get(vendor, vendor.lower() or platform.machine())
    return "_".join("".join(c if c.isalnum() else "-" for c in part) for part in (vendor, isa))


def _environment(threads: int) -> dict:
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    isa, isas = _cpu_isa()
    env = dict(
        cpu=info.get("model name", platform.processor() or platform.machine()),
        cpu_vendor=info.get("vendor_id", ""),
        cpu_family_model_stepping=[info.get("cpu family", ""), info.get("model", ""), info.get("stepping", "")],
        cpu_isa_flags=[f for f in _ISA_FLAGS if f in flags],
        cpu_isa=isa,
        cpu_isas_supported=isas,
        cpu_isa_env=os.environ.get("IMPRESSLEARN_CPU_ISA", ""),
        machine_family=machine_family(info.get("vendor_id", ""), isa),
        cores=os.cpu_count(),
        threads=threads,
        loadavg_at_start=[round(x, 2) for x in os.getloadavg()],
        python=platform.python_version(),
        torch=torch.__version__,
        numpy=np.__version__,
        openblas_env={k: v for k, v in os.environ.items() if k.startswith("OPENBLAS_")},
    )
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env


def _print_table(case: Any, rows: list[dict]) -> None:
    sizes = ", ".join(f"{k}={v}" for k, v in getattr(case, "sizes", {}).items())
    print(f"\n{case.name} ({sizes})  target: {getattr(case, 'target', '') or '-'}")
    print(
        f"  {'impl':<18}{'median ms':>11}{'min ms':>10}{'p20 ms':>10}{'p80 ms':>10}{'MB moved':>10}{'GB/s':>8}"
        f"{'vs ref':>9}{'cpu ms':>10}{'cpu vs ref':>12}"
    )
    for r in rows:
        gbs = f"{r['gb_per_s']:.1f}" if r["gb_per_s"] == r["gb_per_s"] else "-"
        print(
            f"  {r['impl']:<18}{r['median_ms']:>11.2f}{r['min_ms']:>10.2f}{r['p20_ms']:>10.2f}{r['p80_ms']:>10.2f}"
            f"{r['bytes'] / 1e6:>10.1f}{gbs:>8}{r['speedup_vs_reference']:>8.1f}x"
            f"{r['cpu_ms']:>10.1f}{r['cpu_speedup_vs_reference']:>11.1f}x"
        )
    for r in rows:
        extra = {k[len("speedup_vs[") : -1]: v for k, v in r.items() if k.startswith("speedup_vs[")}
        if not extra:
            continue
        parts = []
        for other, ratio in extra.items():
            want = getattr(case, "targets", {}).get((r["impl"], other))
            mark = "" if want is None else (f" (target {want:g}x: {'met' if ratio >= want else 'MISSED'})")
            parts.append(f"{ratio:.1f}x vs {other}{mark} (p20 {r[f'p20_speedup_vs[{other}]']:.1f}x)")
        print(f"  {r['impl']}: " + "; ".join(parts))
        for (cand, other), want in getattr(case, "bandwidth_targets", {}).items():
            if cand != r["impl"]:
                continue
            share, share_p20 = r[f"bandwidth_vs[{other}]"], r[f"p20_bandwidth_vs[{other}]"]
            print(
                f"  {cand}: {share:.0%} of {other}'s bandwidth (p20 {share_p20:.0%})"
                f" (target {want:.0%}: {'met' if share >= want else 'MISSED'})"
            )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of seconds")
    parser.add_argument("--threads", type=int, default=2, help="torch and kernel threads (default 2)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder for the CSV and JSON")
    parser.add_argument("--only", default="", help="run only cases whose name contains this")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    env = _environment(args.threads)
    print("impresslearn kernel benchmarks" + (" (--quick)" if args.quick else ""))
    for key, value in env.items():
        print(f"  {key}: {value}")
    cases = cpu_cases(args.quick)
    gpu = load_gpu_cases(args.quick)
    _GPU.extend(gpu)
    all_rows = []
    for case in cases + gpu:
        if args.only and args.only not in case.name:
            continue
        rows = run_case(case, args.quick)
        _print_table(case, rows)
        all_rows.extend(rows)

    env["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"\nload average at start {env['loadavg_at_start']}, at end {env['loadavg_at_end']} ({env['cores']} cores)")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = ("kernels_quick_" if args.quick else "kernels_") + env["machine_family"]
    columns = sorted({k for r in all_rows for k in r}, key=lambda k: (k.startswith("speedup_vs["), k))
    base = ["case", "sizes", "impl", "role", "median_ms", "min_ms", "p20_ms", "p80_ms", "bytes", "gb_per_s",
            "speedup_vs_reference", "cpu_ms", "cpu_speedup_vs_reference"]
    columns = base + [c for c in columns if c not in base]
    with open(args.out / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(all_rows)
    (args.out / f"{stem}.json").write_text(json.dumps(dict(environment=env, rows=all_rows), indent=2) + "\n")
    print(f"\nwrote {args.out / (stem + '.csv')} and {args.out / (stem + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
