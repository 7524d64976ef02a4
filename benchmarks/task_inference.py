"""Task inference without labels: identification rate, accuracy with the inferred task, time per batch.

    nice python benchmarks/task_inference.py --quick      # a smoke run: a couple of minutes once trained
    nice python benchmarks/task_inference.py              # the full table (trains once, then cached)

Scenarios (Fashion-MNIST, LeNet-300-100, density 0.1):

- **Permuted.** 10 basis tasks learned as edge-popup masks, 90 random masks (K = 100), 250
  new tasks learned as alpha over the bank (paper Eq. 1-2). Candidate sets of T tasks:
  *basis rows*: the 10 basis tasks plus T - 10 others; *alpha rows*: min(T, 250) alpha tasks
  plus the rest. T = 1000 adds 740 distractor tasks that are not trained: each reuses a
  trained alpha matrix with its mask rows shuffled (a different network, no training cost)
  and is given a permutation of its own, whose fingerprint comes from that permutation's
  images. Only trained tasks' batches are scored, so a distractor can only be a wrong pick.
- **Rotated.** 30 basis tasks at 12 degree spacing (0..348); candidate sets with spacings
  12 (T = 30), 24 (T = 15) and 36 degrees (T = 10). Every method and default was tuned on
  Permuted only, so Rotated is the held-out check.

Per (scenario, rows, T, method): the share of test batches of 128 whose task is named
correctly, the accuracy of the predictions made with the inferred task, and the median wall
and CPU time per batch. Trained learners and fingerprints are cached (``--cache``), so a rerun
only measures. Rows go to ``--out`` (JSON) as they are measured; ``--report`` turns saved runs
into the tables of docs/results.md and, with ``--plot``, its figure. The runs behind that page:

    nice python benchmarks/task_inference.py --only permuted --sizes 10 1000 --max-tasks-evaluated 25 \
        --out benchmarks/results/task_inference_permuted_a.json     # and --sizes 100 250 (_b)
    nice python benchmarks/task_inference.py --only rotated ...     # _rotated_a/_b/_c.json
    nice python benchmarks/task_inference.py --only permuted --timing-only --sketch-dims 64 \
        --methods oneshot binary iterative exhaustive fingerprint --out .../task_inference_timing.json
    nice python benchmarks/task_inference.py --only permuted --fingerprint-sweep --out .../task_inference_fingerprint_sweep.json
    python benchmarks/task_inference.py --report benchmarks/results/task_inference_*.json --plot docs/results/task_inference.png
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from impresslearn import ImpressLearner, TrainConfig  # noqa: E402
from impresslearn import inference  # noqa: E402
from impresslearn.models import create_model  # noqa: E402
from impresslearn.scenarios import BatchLoader, create_scenario  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BATCH = 128


# ----------------------------------------------------------------------------- building (cached)


TRAIN_BATCH = 64  # 4000 images give 63 steps per mask or alpha task


def _loader(ds, seed):
    return BatchLoader(ds, batch_size=TRAIN_BATCH, shuffle=True, seed=seed)


def _save(learner: ImpressLearner, path: Path, extra: dict) -> None:
    """Banks and task coefficients through the public API (independent of the checkpoint format)."""
    state = dict(
        masks=[layer.masks().cpu() for layer in learner.layers],
        tasks=[(n, r.kind, r.coefficients.cpu()) for n, r in learner.tasks.items()],
        **extra,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").rename(path)


def _load(path: Path, density: float, seed: int) -> tuple[ImpressLearner, dict]:
    state = torch.load(path, weights_only=False)
    learner = ImpressLearner(create_model("lenet300", seed=seed), density=density)
    learner.add_masks(state["masks"])
    for name, kind, a in state["tasks"]:
        learner.register_task(name, a, kind=kind)
    return learner, state


def _learn_masks(learner: ImpressLearner, sc, tasks, seed: int) -> None:
    mask_cfg = TrainConfig(epochs=1, lr=0.01, optimizer="adam", momentum=0.9, seed=seed)
    for t in tasks:
        learner.learn_basis_mask(sc.task(t).name, _loader(sc.task(t).train, t), mask_cfg)


def _cached_or_trained(path: Path, args, train) -> tuple[ImpressLearner, dict]:
    """The learner cached at ``path``, else a fresh one ``train(learner, start)`` fills, then saved."""
    if path.exists():
        return _load(path, args.density, args.seed)
    torch.manual_seed(args.seed)
    learner = ImpressLearner(create_model("lenet300", seed=args.seed), density=args.density)
    start = time.perf_counter()
    train(learner, start)
    state = dict(train_seconds=time.perf_counter() - start)
    _save(learner, path, state)
    return learner, state


def build_permuted(args) -> tuple[ImpressLearner, dict, object]:
    total = args.basis + args.alpha + args.distractors
    sc = create_scenario("permuted_fmnist", num_tasks=total, seed=args.seed, train_subset=args.train_subset,
                         test_subset=args.test_subset, cache_size=2)  # fmt: skip
    path = args.cache / f"permuted_b{args.basis}_r{args.random}_a{args.alpha}_n{args.train_subset}_s{args.seed}.pt"

    def train(learner, start):
        alpha_cfg = TrainConfig(epochs=1, lr=0.05, optimizer="adam", momentum=0.9, seed=args.seed)
        _learn_masks(learner, sc, range(args.basis), args.seed)
        learner.add_random_masks(args.random, seed=args.seed)
        for t in range(args.basis, args.basis + args.alpha):
            learner.learn_alpha(sc.task(t).name, _loader(sc.task(t).train, t), alpha_cfg)
            if (t - args.basis) % 25 == 0:
                print(f"  permuted: {t + 1}/{args.basis + args.alpha} tasks trained, "
                      f"{time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip

    learner, state = _cached_or_trained(path, args, train)
    # distractors: a trained alpha matrix with its mask rows shuffled (not trained, see the docstring)
    g = torch.Generator().manual_seed(args.seed + 1)
    alpha_names = [sc.task(t).name for t in range(args.basis, args.basis + args.alpha)]
    for j, t in enumerate(range(args.basis + args.alpha, total)):
        src = learner.tasks[alpha_names[j % len(alpha_names)]].coefficients
        learner.register_task(sc.task(t).name, src[torch.randperm(src.shape[0], generator=g)])
    return learner, state, sc


def build_rotated(args) -> tuple[ImpressLearner, dict, object]:
    sc = create_scenario("rotated_fmnist", num_tasks=args.rotated, seed=args.seed, train_subset=args.train_subset,
                         test_subset=args.test_subset, angles=[args.spacing * t for t in range(args.rotated)],
                         cache_size=2)  # fmt: skip
    path = args.cache / f"rotated_{args.rotated}x{args.spacing}_n{args.train_subset}_s{args.seed}.pt"
    learner, state = _cached_or_trained(
        path, args, lambda learner, start: _learn_masks(learner, sc, range(args.rotated), args.seed)
    )
    return learner, state, sc


def fingerprints_for(learner, sc, names, trained: set, path: Path, sketch_dims, images: int) -> dict:
    """``{sketch_dim: {name: TaskFingerprint}}`` from each task's first ``images`` training images (cached).

    The entropy baseline (for ``calibrated``) is measured with the first sketch size and only
    for trained tasks: a forward per image, where the input statistics need none.
    """
    cached = torch.load(path, weights_only=False) if path.exists() else {}
    changed = False
    for t, name in names:  # tasks outside, sizes inside: each task's images are built once
        for i, m in enumerate(sketch_dims):
            table = cached.setdefault(m, {})
            if name in table:
                continue
            x = sc.task(t).train.inputs[:images]
            with_entropy = dict(learner=learner, name=name) if i == 0 and name in trained else {}
            table[name] = inference.task_fingerprint(x, sketch_dim=m, seed=0, **with_entropy)
            changed = True
    if changed:
        torch.save(cached, path)
    return cached


# ----------------------------------------------------------------------------- measuring


def test_batches(sc, t: int, count: int):
    ds = sc.task(t).test
    out = []
    for x, y in BatchLoader(ds, batch_size=BATCH):
        if x.shape[0] == BATCH:
            out.append((x, y))
        if len(out) == count:
            break
    return out


def measure(learner, sc, evaluated: list[tuple[int, str]], candidates: list[str], method: str, fps, batches_per_task):
    hits = total = 0
    correct = seen = 0
    times, cpu_times = [], []  # CPU time: on a shared machine wall time counts other jobs' time slices
    confidences = {True: [], False: []}
    for t, name in evaluated:
        for x, y in test_batches(sc, t, batches_per_task):
            start, start_cpu = time.perf_counter(), time.process_time()
            res = inference.infer_task(learner, x, method=method, candidates=candidates, fingerprints=fps)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - start_cpu)
            ok = res.task == name
            hits += ok
            total += 1
            confidences[ok].append(res.confidence)
            correct += int((learner.predict(res.task, x).argmax(1) == y).sum())
            seen += y.numel()
    return dict(
        found=hits, batches=total, rate=hits / total, accuracy=correct / seen,
        ms_per_batch=1000 * statistics.median(times), cpu_ms_per_batch=1000 * statistics.median(cpu_times),
        confidence_right=statistics.mean(confidences[True]) if confidences[True] else None,
        confidence_wrong=statistics.mean(confidences[False]) if confidences[False] else None,
    )  # fmt: skip


def own_accuracy(learner, sc, evaluated, batches_per_task) -> float:
    correct = seen = 0
    for t, name in evaluated:
        for x, y in test_batches(sc, t, batches_per_task):
            correct += int((learner.predict(name, x).argmax(1) == y).sum())
            seen += y.numel()
    return correct / seen


def spread(items: list, count: int) -> list:
    """``count`` items evenly spread over ``items`` (all when count >= len)."""
    if count >= len(items):
        return list(items)
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def report(paths: list[Path], plot: Path | None) -> str:
    """Markdown tables (identification, accuracy, ms per batch) of saved runs, and a PNG."""
    everything = [r for path in paths for r in json.loads(path.read_text())["rows"]]
    rows = [r for r in everything if r["tasks"] != "timing" and "batch" not in r and not r.get("fingerprint_only")]
    alone = [r for r in everything if r.get("fingerprint_only")]
    for r in rows:  # runs before the label named the raw-pixel sketch
        r["method"] = "fingerprint m=raw" if r["method"] == "fingerprint" else r["method"]
    timing = [r for r in everything if r["tasks"] == "timing"]
    for r in timing:
        r["method"] = "fingerprint m=64" if r["method"] == "fingerprint" else r["method"]
    sweep = [r for r in everything if "batch" in r]
    groups: dict[tuple, dict] = {}
    for r in rows:
        groups.setdefault((r["scenario"], r["tasks"]), {}).setdefault(r["method"], {})[r["T"]] = r
    lines = []
    for (scenario, kind), by_method in groups.items():
        sizes = sorted({t for m in by_method.values() for t in m})
        label_acc = {t: next(m[t] for m in by_method.values() if t in m)["task_label_accuracy"] for t in sizes}
        lines.append(f"**{scenario}, {kind} tasks** (accuracy with the task label: "
                     + ", ".join(f"{label_acc[t]:.3f} at T = {t}" for t in sizes) + ")")  # fmt: skip
        lines.append("")
        lines.append("| method | " + " | ".join(f"T = {t}: found, acc, ms" for t in sizes) + " |")
        lines.append("|---|" + "---|" * len(sizes))
        for method, by_t in by_method.items():
            cells = []
            for t in sizes:
                r = by_t.get(t)
                cells.append("-" if r is None else f"{r['found']}/{r['batches']} = {r['rate']:.0%}, {r['accuracy']:.3f}, "
                             f"{r['ms_per_batch']:.0f}")  # fmt: skip
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    if timing:
        sizes = sorted({r["T"] for r in timing})
        cpu = {}
        for r in timing:
            cpu.setdefault(r["method"], {})[r["T"]] = r["cpu_ms_per_batch"]
        lines.append("**CPU ms per batch of 128** (one thread; median of a few Permuted basis batches)")
        lines.append("")
        lines.append("| method | " + " | ".join(f"T = {t}" for t in sizes) + " | T = 1000 / T = 10 |")
        lines.append("|---|" + "---|" * (len(sizes) + 1))
        for method, by_t in cpu.items():
            ratio = by_t[max(sizes)] / by_t[min(sizes)] if min(sizes) in by_t and max(sizes) in by_t else float("nan")
            lines.append(f"| {method} | " + " | ".join(f"{by_t[t]:.1f}" if t in by_t else "-" for t in sizes)
                         + f" | {ratio:.2f}x |")  # fmt: skip
        lines.append("")
    if alone:
        scenarios = list(dict.fromkeys(r["scenario"] for r in alone))
        lines.append("**The fingerprint alone** (no network needed), 2 test batches of 128 per task")
        lines.append("")
        lines.append("| sketch | bytes per task | " + " | ".join(f"{sc} (T = {next(r['T'] for r in alone if r['scenario'] == sc)})"
                                                          for sc in scenarios) + " |")  # fmt: skip
        lines.append("|---|---|" + "---|" * len(scenarios))
        cells: dict[tuple, dict] = {}
        for r in alone:
            cells.setdefault((r["method"], r["extra_bytes_per_task"]), {})[r["scenario"]] = r
        for (method, nbytes), by_sc in cells.items():
            lines.append(f"| {method} | {nbytes} | " + " | ".join(
                f"{by_sc[sc]['found']}/{by_sc[sc]['batches']} = {by_sc[sc]['rate']:.0%}" if sc in by_sc else "-"
                for sc in scenarios) + " |")  # fmt: skip
        lines.append("")
    if sweep:
        batches = sorted({r["batch"] for r in sweep})
        lines.append(f"**Fingerprint by batch size**: {sweep[0]['T']} stored tasks, every alpha task's test images "
                     "cut into batches of b (up to 8 per task)")  # fmt: skip
        lines.append("")
        lines.append("| sketch | bytes per task | " + " | ".join(f"b = {b}" for b in batches) + " |")
        lines.append("|---|---|" + "---|" * len(batches))
        by_method: dict[str, dict] = {}
        for r in sweep:
            by_method.setdefault((r["method"], r["extra_bytes_per_task"]), {})[r["batch"]] = r
        for (method, nbytes), by_b in by_method.items():
            lines.append(f"| {method} | {nbytes} | "
                         + " | ".join(f"{by_b[b]['found']}/{by_b[b]['batches']} = {by_b[b]['rate']:.1%}" for b in batches)
                         + " |")  # fmt: skip
        lines.append("")
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        for ax, key in zip(axes[:2], [("permuted", "basis"), ("permuted", "alpha")]):
            for method, by_t in groups.get(key, {}).items():
                ts = sorted(by_t)
                ax.plot(ts, [100 * by_t[t]["rate"] for t in ts], marker="o", label=method)
            ax.set(xscale="log", xlabel="stored tasks T", ylabel="batches identified (%)", ylim=(-3, 103),
                   title=f"Permuted Fashion-MNIST, {key[1]} tasks")  # fmt: skip
        axes[1].legend(fontsize=7)
        times: dict[str, dict] = {}
        for r in timing or [r for r in rows if r["scenario"] == "permuted"]:
            times.setdefault(r["method"], {})[r["T"]] = r["cpu_ms_per_batch"] if timing else r["ms_per_batch"]
        for method, by_t in times.items():
            ts = sorted(by_t)
            axes[2].plot(ts, [by_t[t] for t in ts], marker="o", label=method)
        axes[2].set(xscale="log", yscale="log", xlabel="stored tasks T", ylabel="ms per batch of 128 (median)",
                    title="CPU time per batch, one thread" if timing else "Wall time per batch (shared CPU)")
        axes[2].legend(fontsize=7)  # fmt: skip
        fig.tight_layout()
        plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(plot, dpi=110)
    return "\n".join(lines)


def fingerprint_scenarios(args) -> list[dict]:
    """The fingerprint alone (it needs no trained network) on scenarios where inputs differ less:
    Split Fashion-MNIST (5 tasks of 2 classes) and Rotated at spacings below the 12 degrees above."""
    cases = [("split 2 classes", create_scenario("split_fmnist", num_tasks=5, seed=args.seed,
                                                 train_subset=args.train_subset, test_subset=args.test_subset))]
    for spacing in (1.0, 3.0, 6.0):
        cases.append((f"rotated {spacing:g}deg", create_scenario(
            "rotated_fmnist", num_tasks=30, seed=args.seed, train_subset=args.train_subset,
            test_subset=args.test_subset, angles=[spacing * t for t in range(30)], cache_size=2)))
    rows = []
    for label, sc in cases:
        tasks = list(range(sc.num_tasks))
        for m in args.sketch_dims:
            fps = [inference.task_fingerprint(sc.task(t).train.inputs[: args.fingerprint_images], sketch_dim=m)
                   for t in tasks]  # fmt: skip
            found = total = 0
            for t in tasks:
                for x, _ in test_batches(sc, t, args.batches_per_task):
                    found += int(inference.fingerprint_log_likelihoods(x, fps).mean(1).argmax()) == t
                    total += 1
            rows.append(dict(scenario=label, tasks="basis", T=len(tasks), method=f"fingerprint m={m or 'raw'}",
                             found=found, batches=total, rate=found / total, extra_bytes_per_task=fps[0].nbytes,
                             fingerprint_only=True))  # fmt: skip
            print(f"  {label:<16} T={len(tasks):<3} fingerprint m={m or 'raw':<4} found {found}/{total} = "
                  f"{found / total:.1%}", flush=True)  # fmt: skip
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--basis", type=int, default=10, help="permuted basis tasks (edge-popup masks)")
    p.add_argument("--random", type=int, default=90, help="random masks added to the bank")
    p.add_argument("--alpha", type=int, default=250, help="permuted new tasks learned as alpha")
    p.add_argument("--rotated", type=int, default=30, help="rotated basis tasks")
    p.add_argument("--spacing", type=float, default=12.0, help="degrees between rotated tasks")
    p.add_argument("--rotated-steps", type=int, nargs="+", default=[1, 2, 3],
                   help="rotated candidate sets: every step-th task (spacing * step degrees)")
    p.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 250, 1000], help="candidate set sizes T")
    p.add_argument("--methods", nargs="+", default=list(inference.METHODS))
    p.add_argument("--sketch-dims", type=int, nargs="+", default=[16, 64, 0], help="fingerprint sizes (0: raw pixels)")
    p.add_argument("--train-subset", type=int, default=4000)
    p.add_argument("--test-subset", type=int, default=512)
    p.add_argument("--fingerprint-images", type=int, default=1000)
    p.add_argument("--batches-per-task", type=int, default=2)
    p.add_argument("--max-tasks-evaluated", type=int, default=50,
                   help="alpha tasks whose batch is scored per row (one batch each)")
    p.add_argument("--slow-limit", type=int, default=250,
                   help="above this T, exhaustive/binary/iterative score only --slow-tasks batches")
    p.add_argument("--slow-tasks", type=int, default=5)
    p.add_argument("--calibrated-limit", type=int, default=100, help="largest T for the calibrated method")
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, default=Path("/tmp/impresslearn_task_inference"))
    p.add_argument("--out", type=Path, default=RESULTS / "task_inference.json")
    p.add_argument("--report", type=Path, nargs="+", default=None, help="print tables of saved JSON runs, measure nothing")
    p.add_argument("--plot", type=Path, default=None, help="with --report: write the figure here (PNG)")
    p.add_argument("--only", choices=["permuted", "rotated"], default=None)
    p.add_argument("--timing-only", action="store_true", help="permuted: CPU ms per batch of every method and T")
    p.add_argument("--timing-batches", type=int, default=3)
    p.add_argument("--fingerprint-scenarios", action="store_true",
                   help="the fingerprint alone on Split and on Rotated at 1, 3 and 6 degrees (no training)")
    p.add_argument("--fingerprint-sweep", action="store_true",
                   help="permuted: fingerprint identification of every alpha task by batch size (1..128)")
    p.add_argument("--build-only", action="store_true", help="train and cache the learners, measure nothing")
    p.add_argument("--quick", action="store_true", help="3 basis, 10 random, 20 alpha, 6 rotated tasks, T <= 30")
    args = p.parse_args()
    if args.report:
        print(report(args.report, args.plot))
        return 0
    warnings.filterwarnings("ignore", message=".*optimiser steps")  # the quick run trains on purpose briefly
    if args.quick:
        args.basis, args.random, args.alpha, args.rotated, args.spacing = 3, 10, 20, 6, 12.0
        args.sizes, args.train_subset, args.test_subset = [10, 30], 1000, 256
        args.fingerprint_images, args.batches_per_task, args.max_tasks_evaluated = 500, 1, 10
        args.sketch_dims = [64]
        args.out = args.cache / "task_inference_quick.json"  # a smoke run: not a result to keep
    args.distractors = max(0, max(args.sizes) - args.basis - args.alpha)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    rows = []

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(dict(torch=torch.__version__, threads=torch.get_num_threads(), rows=rows), indent=1))

    def run_rows(scenario, learner, sc, fps_by_dim, row_kind, evaluated, candidates, batches_per_task, every=None):
        """``every``: all the tasks to score with the fingerprint (it costs microseconds a batch)."""
        t_size = len(candidates)
        acc_true = own_accuracy(learner, sc, evaluated, batches_per_task)
        for method in args.methods:
            dims = args.sketch_dims if method in ("fingerprint", "calibrated") else ["none"]
            if method == "calibrated":
                dims = dims[:1]
                baselines = [fps_by_dim[dims[0]][n].entropy for n in candidates]
                if t_size > args.calibrated_limit or not all(math.isfinite(h) for h in baselines):
                    continue  # costs what exhaustive costs; distractors have no baseline
            scored, per_task = evaluated, batches_per_task
            if method in ("exhaustive", "binary", "iterative") and t_size > args.slow_limit:
                scored, per_task = spread(evaluated, args.slow_tasks), 1  # a few batches: time and a rough rate
            if method == "fingerprint" and every is not None:
                scored, per_task = every, args.batches_per_task
            for m in dims:
                fps = fps_by_dim[m] if m != "none" else None
                r = measure(learner, sc, scored, candidates, method, fps, per_task)
                label = method if method != "fingerprint" else f"fingerprint m={m or 'raw'}"
                nbytes = next(iter(fps.values())).nbytes if fps and method in ("fingerprint", "calibrated") else 0
                label_acc = acc_true if scored is evaluated else own_accuracy(learner, sc, scored, per_task)
                row = dict(scenario=scenario, tasks=row_kind, T=t_size, method=label, task_label_accuracy=label_acc,
                           extra_bytes_per_task=nbytes, **r)  # fmt: skip
                rows.append(row)
                save()
                conf = f"{row['confidence_right'] or 0:.2f}/{row['confidence_wrong'] or 0:.2f}"
                print(f"  {scenario:<10} {row_kind:<6} T={t_size:<5} {label:<20} found {r['found']:>4}/{r['batches']:<4}"
                      f" = {r['rate']:6.1%}  acc {r['accuracy']:.3f} (label {label_acc:.3f})  {r['ms_per_batch']:8.1f} ms"
                      f"  conf right/wrong {conf}", flush=True)  # fmt: skip

    args.cache.mkdir(parents=True, exist_ok=True)
    dims = [None if m == 0 else m for m in args.sketch_dims]
    args.sketch_dims = dims
    if args.fingerprint_scenarios:
        rows.extend(fingerprint_scenarios(args))
        save()
        return 0
    if args.only in (None, "permuted"):
        learner, state, sc = build_permuted(args)
        if args.build_only:
            learner = None
    if args.only in (None, "permuted") and not args.build_only:
        names = list(learner.tasks)
        print(f"permuted: K = {learner.num_masks}, {len(names)} stored tasks "
              f"({args.basis} basis, {args.alpha} alpha, {args.distractors} distractors)", flush=True)  # fmt: skip
        trained = set(names[: args.basis + args.alpha])
        fps = fingerprints_for(learner, sc, list(enumerate(names)), trained,
                               args.cache / f"permuted_fp_{args.alpha}_{args.train_subset}_{args.fingerprint_images}.pt",
                               dims, args.fingerprint_images)  # fmt: skip
        basis = list(enumerate(names[: args.basis]))
        if args.fingerprint_sweep:  # identification of alpha tasks among all T by batch size and sketch size
            alpha_tasks = list(enumerate(names))[args.basis : args.basis + args.alpha]
            sizes = (1, 4, 16, 64, 128)
            hits = {(m, b): [0, 0] for m in args.sketch_dims for b in sizes}
            for t, name in alpha_tasks:
                x = sc.task(t).test.inputs[:BATCH]
                for m in args.sketch_dims:
                    for b in sizes:
                        for start in range(0, min(BATCH, 8 * b), b):
                            res = inference.infer_task(learner, x[start : start + b], "fingerprint", names, fingerprints=fps[m])
                            hits[m, b][0] += res.task == name
                            hits[m, b][1] += 1
            for (m, b), (h, n) in hits.items():
                nbytes = next(iter(fps[m].values())).nbytes
                rows.append(dict(scenario="permuted", tasks="alpha", T=len(names), method=f"fingerprint m={m or 'raw'}",
                                 batch=b, found=h, batches=n, rate=h / n, extra_bytes_per_task=nbytes))  # fmt: skip
                print(f"  fingerprint m={m or 'raw':<4} ({nbytes:>5} B/task) batch {b:>3}: {h}/{n} = {h / n:.1%} "
                      f"among T = {len(names)}", flush=True)  # fmt: skip
            save()
            return 0
        if args.timing_only:  # CPU time per batch only: a few basis batches, every method, every T
            for t_size in args.sizes:
                for method in args.methods:
                    if method == "calibrated" and t_size > args.basis + args.alpha:
                        continue  # distractors have no entropy baseline
                    m = args.sketch_dims[0] if method in ("fingerprint", "calibrated") else "none"
                    r = measure(learner, sc, spread(basis, args.timing_batches), names[:t_size], method,
                                fps[m] if m != "none" else None, 1)  # fmt: skip
                    rows.append(dict(scenario="permuted", tasks="timing", T=t_size, method=method, **r))
                    save()
                    print(f"  timing T={t_size:<5} {method:<12} {r['cpu_ms_per_batch']:9.1f} ms CPU "
                          f"({r['ms_per_batch']:9.1f} ms wall)", flush=True)  # fmt: skip
            return 0
        alphas = list(enumerate(names))[args.basis : args.basis + args.alpha]
        for t_size in args.sizes:
            if t_size >= args.basis:
                cands = names[:t_size]
                run_rows("permuted", learner, sc, fps, "basis", basis, cands, args.batches_per_task)
            cands = names[args.basis : args.basis + t_size]
            if len(cands) < t_size:
                cands = cands + names[: t_size - len(cands)]
            members = [a for a in alphas if a[1] in set(cands)]
            run_rows("permuted", learner, sc, fps, "alpha", spread(members, args.max_tasks_evaluated), cands, 1, members)
    if args.only in (None, "rotated"):
        learner, state, sc = build_rotated(args)
    if args.only in (None, "rotated") and not args.build_only:
        names = list(learner.tasks)
        fps = fingerprints_for(learner, sc, list(enumerate(names)), set(names),
                               args.cache / f"rotated_fp_{args.rotated}x{args.spacing}_{args.train_subset}.pt",
                               dims, args.fingerprint_images)  # fmt: skip
        for step in args.rotated_steps:
            chosen = list(enumerate(names))[::step]
            run_rows(f"rotated {args.spacing * step:g}deg", learner, sc, fps, "basis", chosen, [n for _, n in chosen],
                     args.batches_per_task)  # fmt: skip
    save()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
