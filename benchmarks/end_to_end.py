"""End-to-end timings of the method (docs/design.md, Targets), each ratio measured in one run.

    python benchmarks/end_to_end.py            # LeNet-300-100, K = 250, batch 128
    python benchmarks/end_to_end.py --quick    # small K and few steps: a smoke run

1. Alpha-training step (forward, backward, RMSprop step of paper Eq. 1-2) of
   LeNet-300-100 with K = 250 basis masks at batch 128: the reference backend against
   the automatic one (the C++ kernels on CPU), time per step and peak memory.
   Target: >= 5x faster, peak memory >= 10x lower.
2. Task inference (SupSup's one-shot GN) with T = 10 and T = 1000 stored tasks at a
   fixed K: the superposition is one combine of alpha' = A^T beta per layer, so
   T = 1000 should cost <= 1.2x T = 10.

Each measurement runs in a fresh subprocess so that its peak resident memory
belongs to it alone; the peak of a step is the high-water mark (VmHWM, reset just
before the steps) minus the resident size before them (the model, the bank and the
data are allocated first).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from resnet50 import peak_rss_bytes, reset_peak_rss, rss_bytes  # noqa: E402  (the same memory probes)


def _rss_mib() -> float:
    return rss_bytes() / 2**20


def _peak_mib() -> float:
    return peak_rss_bytes() / 2**20


def _learner(num_masks: int, backend: str | None):
    from impresslearn import ImpressLearner
    from impresslearn.models import create_model

    model = create_model("lenet300", num_classes=10, seed=0)
    learner = ImpressLearner(model, density=0.1, backend=backend)
    learner.add_random_masks(num_masks, seed=0)
    return learner


def worker_alpha_step(backend: str | None, num_masks: int, batch: int, steps: int, repeats: int) -> dict:
    from impresslearn import TrainConfig

    learner = _learner(num_masks, backend)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(batch, 1, 28, 28, generator=g), torch.randint(0, 10, (batch,), generator=g)) for _ in range(steps)]
    cfg = TrainConfig(epochs=1, lr=0.002, optimizer="rmsprop", seed=0)
    before = _rss_mib()
    reset_peak_rss()  # the high-water mark from here on belongs to the steps
    times = []
    for r in range(repeats + 1):  # the first round warms up allocators and caches
        t0 = time.perf_counter()
        learner.learn_alpha(f"task{r}", batches, cfg)
        if r:
            times.append((time.perf_counter() - t0) / steps)
    return dict(step_s=statistics.median(times), step_p20=min(times), step_p80=max(times),
                peak_step_mib=max(0.0, _peak_mib() - before), rss_before_mib=before)


def worker_gn(backend: str | None, num_masks: int, num_tasks: int, batch: int, repeats: int) -> dict:
    learner = _learner(num_masks, backend)
    g = torch.Generator().manual_seed(1)
    for t in range(num_tasks):
        alpha = torch.rand(num_masks, learner.num_layers, generator=g)
        learner.register_task(f"t{t}", alpha / alpha.sum(dim=0, keepdim=True))
    x = torch.randn(batch, 1, 28, 28, generator=g)
    # one-shot GN, named: the default ('auto') would pick binary GN here (no fingerprints)
    learner.infer_task(x, method="oneshot")  # warm-up; also builds the stacked A[T, K, d] once
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        learner.infer_task(x, method="oneshot")
        times.append(time.perf_counter() - t0)
    times.sort()
    return dict(infer_s=statistics.median(times), infer_p20=times[len(times) // 5], infer_p80=times[(4 * len(times)) // 5])


def _run_worker(args: list[str]) -> dict:
    env = dict(os.environ)
    out = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="K = 16, few steps: seconds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.worker is not None:
        kind, backend, *rest = args.worker
        backend = None if backend == "auto" else backend
        nums = [int(v) for v in rest]
        result = worker_alpha_step(backend, *nums) if kind == "alpha" else worker_gn(backend, *nums)
        print(json.dumps(result))
        return 0

    k = 16 if args.quick else 250
    steps, repeats = (3, 2) if args.quick else (10, 3)
    from impresslearn import backends
    from impresslearn import ops  # noqa: F401  (registers the ops)

    auto = backends.select("combine_masks", "cpu")
    print(f"# end to end: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {args.threads}, automatic combine backend on cpu: {auto}")
    rows = []

    print(f"\nalpha-training step, LeNet-300-100, K = {k}, batch 128 (median of {repeats} x {steps} steps)")
    step = {}
    for backend in ("reference", "auto"):
        step[backend] = _run_worker(["alpha", backend, str(k), "128", str(steps), str(repeats)])
        r = step[backend]
        print(f"  {backend:<10} {r['step_s'] * 1e3:9.2f} ms/step  (p20 {r['step_p20'] * 1e3:.2f}, p80 "
              f"{r['step_p80'] * 1e3:.2f})  peak of the step {r['peak_step_mib']:8.1f} MiB")
        rows.append(dict(case="alpha_step", backend=backend, k=k, **r))
    speed = step["reference"]["step_s"] / step["auto"]["step_s"]
    memory = step["reference"]["peak_step_mib"] / max(step["auto"]["peak_step_mib"], 1e-3)
    print(f"  speedup {speed:.2f}x (target >= 5x), peak memory {memory:.1f}x lower (target >= 10x)")

    tasks = (10, 100) if args.quick else (10, 1000)
    print(f"\ntask inference (one-shot GN), LeNet-300-100, K = {k}, batch 128")
    gn = {}
    for t in tasks:
        gn[t] = _run_worker(["gn", "auto", str(k), str(t), "128", "5" if args.quick else "15"])
        print(f"  T = {t:<5} {gn[t]['infer_s'] * 1e3:9.2f} ms  (p20 {gn[t]['infer_p20'] * 1e3:.2f}, "
              f"p80 {gn[t]['infer_p80'] * 1e3:.2f})")
        rows.append(dict(case="gn_infer", backend="auto", k=k, tasks=t, **gn[t]))
    ratio = gn[tasks[1]]["infer_s"] / gn[tasks[0]]["infer_s"]
    print(f"  T = {tasks[1]} costs {ratio:.2f}x T = {tasks[0]} (target <= 1.2x)")

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ("end_to_end_quick.json" if args.quick else "end_to_end.json")
    path.write_text(json.dumps(dict(rows=rows, alpha_speedup=speed, alpha_memory_ratio=memory, gn_ratio=ratio), indent=2))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
