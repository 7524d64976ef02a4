"""The accuracy-per-byte frontier on Permuted and Rotated Fashion-MNIST at density 0.1 (issue 14, reduced).

For each seed ``s`` (the new task is permuted task ``1 + s``; the random bank is drawn from
seed ``s``) the script trains, on a training split carved from that task's training set:

- SupSup's point: one edge-popup mask per task (a dedicated mask);
- ImpressLearn with a bank of K random masks (no training, stored as a seed): alpha over it,
  evaluated with its coefficients in fp32, fp16 and bf16 (``impresslearn.banks``).

The last 10,000 training images of each task are the validation split; the learning rate is
chosen on it, never on test data: every candidate is trained on seed 0 and the one with the best
validation accuracy is used for seeds 1 and 2 (test accuracy is recorded for every run but read
only in the report, for the chosen candidate). Bytes per task come from
``impresslearn.accounting`` (the one definition).

Rows are appended to a JSON file as they finish; a rerun skips what is there (it resumes).
Run it niced on a shared machine; ``--report`` prints the table and draws the figure::

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/frontier.py [--train-images 12000] [--ks 10,50,250,500,1000]
    python benchmarks/frontier.py --report --figure docs/results/frontier/frontier.png

The rows behind docs/results.md (Frontier) are docs/results/frontier/frontier.json.

``--scenario rotated`` is the Rotated Fashion-MNIST part: per spacing ``d`` (degrees), K basis
masks trained with edge-popup on tasks at ``0, d, ..., (K-1) d`` (heterogeneous impressions) and,
for seed ``s``, a new task at ``(s + 0.5) d``, half-way between two basis tasks; alpha over the
first K basis masks against SupSup's dedicated mask on that new task, with the same validation
split, candidates and choice as above. Its rows are docs/results/frontier/rotated.json::

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/frontier.py --scenario rotated --spacings 3,12,36 --ks 5,10
    python benchmarks/frontier.py --scenario rotated --report
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch

from impresslearn import ImpressLearner, TrainConfig, accounting
from impresslearn.banks import COEFFICIENT_DTYPES, round_coefficients, stored_bank_bytes
from impresslearn.models import create_model
from impresslearn.scenarios import BatchLoader, InMemoryDataset, create_scenario

DENSITY = 0.1
VALIDATION_IMAGES = 10_000
# The paper's LeNet recipe (RMSprop lr 0.002, Table 3), a smaller RMSprop step and the library's
# default (Adam lr 0.03): alpha starts at 1/K, so the best step may shrink as K grows.
ALPHA_CANDIDATES = [
    TrainConfig(optimizer="rmsprop", lr=0.002, epochs=3),
    TrainConfig(optimizer="rmsprop", lr=0.0005, epochs=3),
    TrainConfig(optimizer="adam", lr=0.03, epochs=3),
]
MASK_CANDIDATES = [
    TrainConfig(optimizer="adam", lr=0.03, epochs=3),  # the library default, chosen on validation for a mask
    TrainConfig(optimizer="rmsprop", lr=0.002, epochs=3),  # paper Table 3
]
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "results" / "frontier" / "frontier.json"


def split(dataset, train_images: int):
    """(train, validation) of a task's training set: the last 10,000 images validate."""
    x, y = dataset.tensors
    cut = len(y) - VALIDATION_IMAGES
    return InMemoryDataset(x[: min(cut, train_images)], y[: min(cut, train_images)]), InMemoryDataset(x[cut:], y[cut:])


def task_loaders(task, train_images: int, seed: int):
    """(train, validation, test) loaders of one task: ``split`` of its training set, then its test set."""
    train, val = split(task.train, train_images)
    return (BatchLoader(train, batch_size=128, shuffle=True, seed=seed), BatchLoader(val, batch_size=1000),
            BatchLoader(task.test, batch_size=1000))  # fmt: skip


def recorder(path: Path, rows: list[dict], settings: dict):
    """``record(row)``: append a row, rewrite the file whole and print the row."""

    def record(row):
        rows.append(row)
        save_rows(path, rows, settings)
        print(json.dumps(row), flush=True)

    return record


def candidate_name(cfg: TrainConfig) -> str:
    return f"{cfg.optimizer} lr {cfg.lr:g}"


def load_rows(path: Path) -> list[dict]:
    return json.loads(path.read_text())["rows"] if path.exists() else []


def save_rows(path: Path, rows: list[dict], settings: dict) -> None:
    """Write the rows whole: a temporary file renamed over the old one (a kill leaves either)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(dict(settings=settings, rows=rows), indent=1))
    os.replace(temporary, path)


def chosen(source: list[dict], candidates: list[TrainConfig], **group) -> TrainConfig | None:
    """The candidate with the best validation accuracy on the first seed of the rows matching
    ``group`` (e.g. method and K); None until every candidate has run on that seed."""
    mine = [r for r in source if all(r.get(key) == value for key, value in group.items())]
    if not mine:
        return None
    seed0 = [r for r in mine if r["seed"] == min(m["seed"] for m in mine)]
    if len(seed0) < len(candidates):
        return None
    best = max(seed0, key=lambda r: r["validation"]["fp32"])["candidate"]
    return next(c for c in candidates if candidate_name(c) == best)


def plan_runs(rows: list[dict], earlier: list[dict] | None, args, candidates: list[TrainConfig], **group):
    """(seed, config) still to run for ``group``: every candidate on the first seed, then the one
    chosen on validation for the other seeds; rows already in ``rows`` are skipped (resume)."""
    if earlier is not None:  # the choice made on another run's validation split, for every seed
        choice = chosen(earlier, candidates, **group)
        if choice is None:
            raise SystemExit(f"{args.choices_from} has not chosen a candidate for {group}")
        candidates = [choice]
    done = {(r["seed"], r["candidate"]) for r in rows if all(r.get(key) == v for key, v in group.items())}
    for seed in args.seeds:
        pool = candidates if seed == args.seeds[0] else [chosen(rows, candidates, **group)]
        for cfg in pool:
            if (seed, candidate_name(cfg)) not in done:
                yield seed, cfg


def run(args) -> None:
    settings = dict(density=DENSITY, train_images=args.train_images, validation_images=VALIDATION_IMAGES,
                    epochs=3, batch_size=128, threads=torch.get_num_threads())  # fmt: skip
    rows = load_rows(args.out)
    sc = create_scenario("permuted_fmnist", num_tasks=2 + max(args.seeds), seed=0)

    def data(seed):
        return task_loaders(sc.task(1 + seed), args.train_images, seed)

    record = recorder(args.out, rows, settings)

    earlier = load_rows(args.choices_from) if args.choices_from else None

    def plan(method, k, candidates):
        return plan_runs(rows, earlier, args, candidates, method=method, K=k)

    for seed, cfg in plan("supsup", 1, MASK_CANDIDATES):
        train, val, test = data(seed)
        learner = ImpressLearner(create_model("lenet300", seed=0), density=DENSITY)
        t0 = time.perf_counter()
        learner.learn_basis_mask("task", train, cfg.replace(seed=seed))
        seconds = time.perf_counter() - t0
        record(dict(method="supsup", K=1, seed=seed, candidate=candidate_name(cfg), seconds=round(seconds, 1),
                    validation={"fp32": learner.evaluate("task", val)},
                    test={"fp32": learner.evaluate("task", test)}))  # fmt: skip
    for k in args.ks:
        for seed, cfg in plan("random", k, ALPHA_CANDIDATES):
            train, val, test = data(seed)
            learner = ImpressLearner(create_model("lenet300", seed=0), density=DENSITY)
            learner.add_random_masks(k, seed=seed)
            t0 = time.perf_counter()
            history = learner.learn_alpha("task", train, cfg.replace(seed=seed))
            seconds = time.perf_counter() - t0
            alpha = history.task.coefficients
            accuracy = {"validation": {}, "test": {}}
            for dtype in COEFFICIENT_DTYPES:
                name = "task" if dtype == "fp32" else f"task {dtype}"
                if dtype != "fp32":
                    learner.register_task(name, round_coefficients(alpha, dtype))
                accuracy["validation"][dtype] = learner.evaluate(name, val)
                accuracy["test"][dtype] = learner.evaluate(name, test)
            record(dict(method="random", K=k, seed=seed, candidate=candidate_name(cfg), seconds=round(seconds, 1),
                        **accuracy))  # fmt: skip


def rotated_angles(spacing: float, k: int, seeds: list[int]) -> tuple[list[float], dict[int, float]]:
    """Basis angles ``0, spacing, ..., (k-1) spacing`` and, per seed ``s``, a new task half-way
    between basis tasks ``s`` and ``s + 1`` (never one of the basis angles)."""
    if max(seeds) + 1 >= k:
        raise SystemExit(f"--ks {k}: a new task of seed {max(seeds)} lies between basis tasks "
                         f"{max(seeds)} and {max(seeds) + 1}; use K > {max(seeds) + 1}")  # fmt: skip
    return [spacing * i for i in range(k)], {seed: spacing * (seed + 0.5) for seed in seeds}


def run_rotated(args) -> None:
    """Rotated Fashion-MNIST: per spacing, K basis masks trained with edge-popup on tasks at
    ``0, spacing, ...`` (heterogeneous impressions), alpha over them on new tasks half-way between
    two basis angles, against SupSup's dedicated mask on the same new tasks.

    The basis masks are trained with the mask candidate chosen on SupSup's validation runs, once per
    spacing (in memory: a resumed run retrains them only if some alpha row is still missing);
    K smaller than the largest is the first K of the same bank.
    """
    settings = dict(scenario="rotated_fmnist", density=DENSITY, train_images=args.train_images,
                    validation_images=VALIDATION_IMAGES, epochs=3, batch_size=128,
                    threads=torch.get_num_threads())  # fmt: skip
    rows = load_rows(args.out)
    earlier = load_rows(args.choices_from) if args.choices_from else None

    record = recorder(args.out, rows, settings)

    def loaders(sc, t, seed):
        return task_loaders(sc.task(t), args.train_images, seed)

    for spacing in args.spacings:
        basis, new = rotated_angles(spacing, max(args.ks), args.seeds)
        angles = basis + [new[seed] for seed in args.seeds]
        sc = create_scenario("rotated_fmnist", num_tasks=len(angles), angles=angles, seed=0)
        new_task = {seed: len(basis) + i for i, seed in enumerate(args.seeds)}
        group = dict(method="supsup", K=1, spacing=spacing)
        for seed, cfg in plan_runs(rows, earlier, args, MASK_CANDIDATES, **group):
            train, val, test = loaders(sc, new_task[seed], seed)
            learner = ImpressLearner(create_model("lenet300", seed=0), density=DENSITY)
            t0 = time.perf_counter()
            learner.learn_basis_mask("task", train, cfg.replace(seed=seed))
            record(dict(group, angle=new[seed], seed=seed, candidate=candidate_name(cfg),
                        seconds=round(time.perf_counter() - t0, 1), validation={"fp32": learner.evaluate("task", val)},
                        test={"fp32": learner.evaluate("task", test)}))  # fmt: skip
        learner = None  # the bank of basis masks, trained on first need
        for k in sorted(args.ks):
            group = dict(method="heterogeneous", K=k, spacing=spacing)
            for seed, cfg in plan_runs(rows, earlier, args, ALPHA_CANDIDATES, **group):
                if learner is None:
                    mask_cfg = chosen(earlier or rows, MASK_CANDIDATES, method="supsup", K=1, spacing=spacing)
                    learner = ImpressLearner(create_model("lenet300", seed=0), density=DENSITY)
                    for t, angle in enumerate(basis):
                        learner.learn_basis_mask(f"basis {angle:g}", loaders(sc, t, 0)[0], mask_cfg.replace(seed=t))
                sub = ImpressLearner(create_model("lenet300", seed=0), density=DENSITY)
                sub.add_masks([layer.masks()[:k] for layer in learner.layers])  # the first K of the bank
                train, val, test = loaders(sc, new_task[seed], seed)
                t0 = time.perf_counter()
                sub.learn_alpha("task", train, cfg.replace(seed=seed))
                record(dict(group, angle=new[seed], seed=seed, candidate=candidate_name(cfg),
                            seconds=round(time.perf_counter() - t0, 1),
                            validation={"fp32": sub.evaluate("task", val)},
                            test={"fp32": sub.evaluate("task", test)}))  # fmt: skip


# ----------------------------------------------------------------------------- report


def task_bytes(method: str, k: int, dtype: str, draws: int) -> int:
    """Bytes one new task stores (LeNet-300-100, no BN), its bank's stored bytes counted in full
    (the worst case: a bank shared by one task; with T tasks it is 1/T of that)."""
    sizes, features = accounting.model_sizes(create_model("lenet300", seed=0))
    if method == "supsup":
        return accounting.supsup_bytes_per_task(sizes, features)
    bank = stored_bank_bytes(sizes, k, [dict(first=0, count=k, seed=0)] * draws)
    return accounting.task_bytes("new", k, sizes, features, coefficient_dtype=dtype).total + bank


def report(args) -> None:
    rows = load_rows(args.out)
    if not rows:
        raise SystemExit(f"{args.out}: no rows yet; run without --report first")
    table = []  # (method, K, dtype, candidate, bytes, mean, sd, n)
    for method in ("supsup", "random"):
        for k in sorted({r["K"] for r in rows if r["method"] == method}):
            mine = [r for r in rows if r["method"] == method and r["K"] == k]
            seed0 = min(r["seed"] for r in mine)
            best = max((r for r in mine if r["seed"] == seed0), key=lambda r: r["validation"]["fp32"])["candidate"]
            chosen = [r for r in mine if r["candidate"] == best]
            for dtype in (("fp32",) if method == "supsup" else tuple(COEFFICIENT_DTYPES)):
                acc = [100 * r["test"][dtype] for r in chosen]
                sd = statistics.stdev(acc) if len(acc) > 1 else float("nan")
                table.append((method, k, dtype, best, task_bytes(method, k, dtype, 1), statistics.mean(acc), sd,
                              len(acc)))  # fmt: skip
    supsup = next((t for t in table if t[0] == "supsup"), None)
    print("| bank | K | coefficients | lr (chosen on validation) | bytes per task | x fewer than SupSup "
          "| test accuracy % (mean +- sd) | seeds |")
    print("|---|---|---|---|---|---|---|---|")
    for method, k, dtype, cand, nbytes, mean, sd, n in table:
        ratio = f"{supsup[4] / nbytes:.1f}" if supsup else "-"
        bank = "SupSup (one mask per task)" if method == "supsup" else "random (stored as its seed)"
        print(f"| {bank} | {k if method != 'supsup' else '-'} | {dtype} | {cand} | {nbytes:,} | {ratio} | "
              f"{mean:.1f} +- {sd:.1f} | {n} |")
    if args.figure:
        draw(table, args.figure)
        print(f"figure: {args.figure}")


def report_rotated(args) -> None:
    """The Rotated table: per spacing, SupSup's row and each K, the candidate chosen on validation."""
    rows = load_rows(args.out)
    if not rows:
        raise SystemExit(f"{args.out}: no rows yet; run with --scenario rotated first")
    sizes, features = accounting.model_sizes(create_model("lenet300", seed=0))
    print("| spacing (degrees) | method | K | lr (chosen on validation) | bytes per new task | bank (stored by the "
          "K basis tasks) | test accuracy % (mean +- sd) | seeds | vs SupSup (points) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for spacing in sorted({r["spacing"] for r in rows}):
        supsup_mean = None
        for method in ("supsup", "heterogeneous"):
            for k in sorted({r["K"] for r in rows if r["method"] == method and r["spacing"] == spacing}):
                mine = [r for r in rows if r["method"] == method and r["K"] == k and r["spacing"] == spacing]
                seed0 = min(r["seed"] for r in mine)
                best = max((r for r in mine if r["seed"] == seed0), key=lambda r: r["validation"]["fp32"])["candidate"]
                acc = [100 * r["test"]["fp32"] for r in mine if r["candidate"] == best]
                mean, sd = statistics.mean(acc), (statistics.stdev(acc) if len(acc) > 1 else float("nan"))
                if method == "supsup":
                    supsup_mean = mean
                    nbytes, bank, label, gap = accounting.supsup_bytes_per_task(sizes, features), "-", "SupSup", "-"
                else:
                    nbytes = accounting.task_bytes("new", k, sizes, features).total
                    bank = f"{k * accounting.mask_bytes(sizes):,}"
                    label = "heterogeneous impressions"
                    gap = "-" if supsup_mean is None else f"{mean - supsup_mean:+.1f}"
                print(f"| {spacing:g} | {label} | {k if method != 'supsup' else '-'} | {best} | {nbytes:,} | {bank} "
                      f"| {mean:.1f} +- {sd:.1f} | {len(acc)} | {gap} |")


def draw(table, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    markers = {"fp32": "o", "fp16": "s", "bf16": "^"}
    for dtype, marker in markers.items():
        pts = [t for t in table if t[0] == "random" and t[2] == dtype]
        if pts:
            ax.errorbar([t[4] for t in pts], [t[5] for t in pts], yerr=[0 if math.isnan(t[6]) else t[6] for t in pts],
                        marker=marker, capsize=3, label=f"random bank, alpha in {dtype}")  # fmt: skip
            for t in pts if dtype == "fp32" else []:
                ax.annotate(f"K={t[1]}", (t[4], t[5]), textcoords="offset points", xytext=(4, -12), fontsize=8)
    for t in table:
        if t[0] == "supsup":
            ax.errorbar([t[4]], [t[5]], yerr=[0 if math.isnan(t[6]) else t[6]], marker="*", markersize=12, color="k",
                        linestyle="none", capsize=3, label="SupSup (dedicated mask)")  # fmt: skip
            ax.axvline(t[4] / 10, color="grey", linestyle=":", label="10x fewer bytes than SupSup")
            ax.axhline(t[5] - 2, color="grey", linestyle="--", label="SupSup - 2 points")
    ax.set_xscale("log")
    ax.set_xlabel("bytes per new task (log scale)")
    ax.set_ylabel("test accuracy on the new task (%)")
    ax.set_title("Permuted Fashion-MNIST, LeNet-300-100, density 0.1")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", choices=("permuted", "rotated"), default="permuted",
                   help="permuted: random banks vs SupSup; rotated: K trained (heterogeneous) impressions vs SupSup")
    p.add_argument("--out", type=Path, default=None,
                   help="results JSON (appended to; resumes); default docs/results/frontier/<frontier|rotated>.json")
    p.add_argument("--train-images", type=int, default=12_000, help="training images per task (the rest is unused)")
    p.add_argument("--ks", type=lambda s: [int(v) for v in s.split(",")], default=None,
                   help="bank sizes; default 10,50,250,500,1000 (permuted), 10 (rotated)")
    p.add_argument("--spacings", type=lambda s: [float(v) for v in s.split(",")], default=[3.0, 12.0],
                   help="rotated: degrees between neighbouring basis tasks")
    p.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    p.add_argument("--choices-from", type=Path, default=None,
                   help="reuse the candidates another results file chose on its validation split (no new choice)")
    p.add_argument("--report", action="store_true", help="print the table (and draw --figure) from --out")
    p.add_argument("--figure", type=Path, default=None)
    args = p.parse_args()
    rotated = args.scenario == "rotated"
    args.out = args.out or (DEFAULT_OUT.with_name("rotated.json") if rotated else DEFAULT_OUT)
    args.ks = args.ks or ([10] if rotated else [10, 50, 250, 500, 1000])
    if args.train_images < 1 or any(k < 1 for k in args.ks) or any(s < 0 for s in args.seeds):
        p.error("--train-images and --ks must be positive, --seeds non-negative")
    if any(not 0 < d < 360 for d in args.spacings):
        p.error("--spacings must lie in (0, 360) degrees")
    if rotated:
        report_rotated(args) if args.report else run_rotated(args)
    else:
        report(args) if args.report else run(args)


if __name__ == "__main__":
    main()
