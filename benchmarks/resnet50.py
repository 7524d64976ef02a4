"""ResNet-50 with K byte-packed masks: one alpha step per backend, time and peak memory.

    python benchmarks/resnet50.py                      # K=250 on the kernels, K=32 on all (for ratios)
    python benchmarks/resnet50.py --masks 250 --ref-masks 16 --steps 5 --json runs/resnet50.json

An alpha step is what phase 2 of ``scripts/train_imagenet.py`` repeats: bind ``alpha[K, d]``,
forward a batch (default 2 x 3 x 224 x 224) through the masked ResNet-50, cross-entropy,
backward (grad_alpha through every layer's combine), one Adam step.

Every (backend, K) case runs in a fresh subprocess, so its peak memory is its own: on CPU
the peak RSS is reset just before the steps (``/proc/self/clear_refs``) and read back from
``VmHWM`` (``ru_maxrss`` where that is impossible); on GPU ``torch.cuda.max_memory_allocated``.

The bank: the learner's own ``add_random_masks`` draws one mask (exactly ``k_i`` ones per
layer); the other K-1 are rotations of it along the weight axis (same counts), so the bank
fills in seconds instead of the minutes that K top-k selections over 25.5M scores take here. The kernels' cost does
not depend on which bits are set (table look-ups and a histogram per byte), so neither do
the timings.

The reference backend unpacks every bank to float and keeps it for the backward of
``alpha @ B``: ``K x 25.5M x 4`` bytes (25.5 GB at K=250), more than this machine's memory.
It runs at ``--ref-masks`` instead, next to the kernels at the same K, for the ratio.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- memory probes


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter to the current RSS (Linux >= 4.0); False if impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    kib = _status_kib("VmHWM")
    if kib is None:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib * 1024


def rss_bytes() -> int:
    return (_status_kib("VmRSS") or 0) * 1024


def mem_available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# ----------------------------------------------------------------------------- one case (subprocess)


def fill_bank_(learner, num_masks: int, seed: int) -> None:
    """K random masks at the learner's density: one from the learner, the rest its rotations (module doc)."""
    import torch

    from impresslearn.ops import num_planes

    learner.add_random_masks(1, seed=seed)  # exactly k_i ones per layer
    planes = num_planes(num_masks)
    for layer in learner.layers:
        first = layer.bank[0] & 1  # mask 0 as 0/1 bytes
        n = first.numel()
        bank = torch.zeros(planes, n, dtype=torch.uint8, device=first.device)
        for m in range(num_masks):
            # a rotation keeps the count of ones: every mask still has exactly k_i
            bank[m // 8] |= torch.roll(first, shifts=(m * 7919) % n) << (m % 8)
        layer.load_banks_(bank, num_masks, layer.extra_bank, layer.num_extra)
    learner.mask_owners = [None] * num_masks


def run_case(backend: str, num_masks: int, args) -> dict:
    import torch
    from impresslearn import ImpressLearner
    from impresslearn.models import create_model
    from impresslearn.objectives import AlphaObjective

    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    t0 = time.perf_counter()
    model = create_model("resnet50", num_classes=1000, seed=0)
    learner = ImpressLearner(model, density=args.density, device=device, backend=backend)
    fill_bank_(learner, num_masks, seed=1)
    setup_s = time.perf_counter() - t0
    k, d = learner.num_masks, learner.num_layers
    bank_bytes = sum(layer.bank.numel() for layer in learner.layers)

    objective = AlphaObjective(learner)  # alpha[K, d] = 1/K; reserves the new task's BN slot
    alpha = objective.alpha
    optimizer = torch.optim.Adam(objective.parameters(), lr=2.5e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=g).to(device)
    y = torch.randint(0, 1000, (args.batch,), generator=g).to(device)

    def step():
        loss = objective(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        peak_how = "torch.cuda.max_memory_allocated"
    else:
        base = rss_bytes()
        peak_how = "VmHWM after clear_refs" if reset_peak_rss() else "ru_maxrss (whole process)"
    times = []
    for i in range(args.warmup + args.steps):
        t = time.perf_counter()
        step()
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else peak_rss_bytes()
    assert torch.isfinite(alpha).all() and alpha.grad is not None
    times.sort()
    return dict(
        backend=backend, masks=k, layers=d, weights=sum(layer.weight.numel() for layer in learner.layers),
        batch=args.batch, size=args.size, device=str(device), threads=torch.get_num_threads(),
        setup_s=round(setup_s, 2), median_s=statistics.median(times), min_s=times[0], max_s=times[-1], steps=len(times),
        bank_bytes=bank_bytes, baseline_bytes=base, peak_bytes=peak, step_bytes=max(0, peak - base), peak_how=peak_how,
    )  # fmt: skip


# ----------------------------------------------------------------------------- driver


def available_backends(device: str) -> dict[str, str | None]:
    """backend -> None if the combine op runs there, else why not."""
    from impresslearn import backends
    from impresslearn.ops import combine  # noqa: F401  (registers the op)

    out = {}
    for b in backends.BACKENDS:  # families: reference, cpp, gpu
        reason = backends.backend_reason(b, device, op="combine_masks")
        if b == "gpu" and device == "cpu" and reason is None:
            reason = "runs on CPU only in the Triton interpreter, a correctness tool (minutes per step)"
        out[b] = reason
    return out


def plan(args) -> tuple[list[tuple[str, int]], list[dict]]:
    n = 25_502_912  # conv + linear weights of torchvision's ResNet-50 (1000 classes)
    ref_bytes = args.masks * n * 4
    avail = mem_available_bytes()
    cases, skipped = [], []
    for backend, reason in available_backends(args.device).items():
        if reason is not None:
            skipped.append(dict(backend=backend, masks=args.masks, reason=reason))
            continue
        if backend == "reference":
            if avail is not None and ref_bytes > avail:
                skipped.append(dict(backend=backend, masks=args.masks, reason=(
                    f"unpacks the banks to float and keeps them for the backward: K x n x 4 = {ref_bytes / 1e9:.1f} GB "
                    f"> {avail / 1e9:.1f} GB available; run at K={args.ref_masks} instead")))  # fmt: skip
            else:
                cases.append((backend, args.masks))
        else:
            cases.append((backend, args.masks))
        if args.ref_masks and args.ref_masks != args.masks:
            cases.append((backend, args.ref_masks))
    return sorted(set(cases), key=lambda c: (-c[1], c[0])), skipped


def fmt_mb(b: float) -> str:
    return f"{b / 2**20:,.0f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--masks", type=int, default=250, help="K of the headline cases")
    p.add_argument("--ref-masks", type=int, default=32, help="a K the reference fits at (0: none)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=3, help="timed steps per case")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    p.add_argument("--json", type=Path, default=None, help="write the rows here too")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: "backend:K" in a subprocess
    args = p.parse_args()
    # ResNet-50's last stage is size/32 per side; training-mode BatchNorm needs >1 value per channel.
    if args.batch * math.ceil(args.size / 32) ** 2 < 2:
        p.error("training BatchNorm needs more than one value per channel: --batch >= 2 or --size >= 33")
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"

    if args.case:
        backend, k = args.case.split(":")
        print("RESULT " + json.dumps(run_case(backend, int(k), args)), flush=True)
        return 0

    import torch

    cases, skipped = plan(args)
    print(f"ResNet-50 alpha step: batch {args.batch} x 3 x {args.size} x {args.size}, density {args.density}, "
          f"{args.steps} timed steps after {args.warmup} warm-up")  # fmt: skip
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else f", {torch.get_num_threads()} threads")
          + "; the machine may be shared: timings are noisy")  # fmt: skip
    rows = []
    for backend, k in cases:
        cmd = [sys.executable, __file__, "--case", f"{backend}:{k}", "--batch", str(args.batch), "--size", str(args.size),
               "--density", str(args.density), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--device", args.device]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
            skipped.append(dict(backend=backend, masks=k, reason=f"failed (exit {proc.returncode}): {tail[0][:200]}"))
            print(f"  {backend} K={k}: failed: {tail[0][:200]}")
            continue
        row = json.loads(line[len("RESULT ") :])
        rows.append(row)
        print(f"  {backend} K={k}: {row['median_s']:.3f} s/step, peak {fmt_mb(row['peak_bytes'])} MiB", flush=True)

    print()
    print("| backend | K | bank MiB | step median s (min-max) | peak MiB | step's own MiB | peak measured by |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['masks']} | {fmt_mb(r['bank_bytes'])} | {r['median_s']:.3f} ({r['min_s']:.3f}-{r['max_s']:.3f}) "
              f"| {fmt_mb(r['peak_bytes'])} | {fmt_mb(r['step_bytes'])} | {r['peak_how']} |")  # fmt: skip
    for s in skipped:
        print(f"| {s['backend']} | {s['masks']} | skipped: {s['reason']} | | | | |")
    by = {(r["backend"], r["masks"]): r for r in rows}
    ratios = []
    for (b, k), r in by.items():
        ref = by.get(("reference", k))
        if ref is not None and b != "reference":
            ratios.append(dict(backend=b, masks=k, speedup=ref["median_s"] / r["median_s"],
                               step_memory_ratio=ref["step_bytes"] / max(1, r["step_bytes"]),
                               peak_memory_ratio=ref["peak_bytes"] / max(1, r["peak_bytes"])))  # fmt: skip
    for q in ratios:
        print(f"{q['backend']} vs reference at K={q['masks']}: {q['speedup']:.2f}x faster, "
              f"step memory {q['step_memory_ratio']:.1f}x lower, process peak {q['peak_memory_ratio']:.1f}x lower")
    n = rows[0]["weights"] if rows else 25_502_912
    print(f"banks at K={args.masks}: {n:,} weights x ceil({args.masks}/8) = {n * -(-args.masks // 8):,} bytes "
          f"({n * -(-args.masks // 8) / 1e9:.3f} GB, {n * -(-args.masks // 8) / 2**30:.3f} GiB); "
          f"SupSup's fp32 masks: {args.masks * n * 4 / 1e9:.1f} GB")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(rows=rows, skipped=skipped, ratios=ratios), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
