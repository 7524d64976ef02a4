"""Finer coefficients on the frontier (issue 14, point 3): alpha per layer, per output channel, per block.

Permuted Fashion-MNIST at density 0.1, LeNet-300-100, random banks of K masks (stored as their
seed): the same new tasks, training images, validation split, learning-rate candidates and choice
rule as ``benchmarks/frontier.py`` (whose functions this script calls: ``alpha_row``,
``plan_runs``, ``task_loaders``), with alpha at a finer granularity (``learn_alpha(granularity=)``:
``"channel"`` or a block of output channels). Per-layer rows are the frontier's own
(``docs/results/frontier/frontier.json``); this script adds the finer ones to
``docs/results/frontier/granularity.json`` (rows appended as they finish; a rerun resumes)::

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/frontier_granularity.py --granularities channel 32
    python benchmarks/frontier_granularity.py --report      # the table, per-layer rows included

Bytes per task come from ``impresslearn.accounting`` (``task_bytes`` with the coefficient
columns of the granularity): K x columns x coefficient-dtype bytes, plus the random bank's
seed record (56 B).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import frontier  # noqa: E402  (benchmarks/ is not a package)

from impresslearn import accounting  # noqa: E402
from impresslearn.scenarios import create_scenario  # noqa: E402
from impresslearn.tasks import check_granularity, granularity_words  # noqa: E402
from impresslearn.validation import ALPHA_CANDIDATES, VALIDATION_IMAGES  # noqa: E402

ROOT = frontier.ROOT
OUT = ROOT / "docs" / "results" / "frontier" / "granularity.json"
LAYER_ROWS = ROOT / "docs" / "results" / "frontier" / "frontier.json"
DENSITY = 0.1
TRAIN_IMAGES = 12_000


def run(granularities, ks, seeds, out: Path = OUT, train_images: int = TRAIN_IMAGES, choices_from=None) -> None:
    """Train what ``out`` lacks; with ``choices_from`` (another results file) every seed uses the
    learning rate chosen there on validation (frontier.py's full-budget reruns do the same)."""
    settings = dict(scenario="permuted_fmnist", train_images=train_images, validation_images=VALIDATION_IMAGES,
                    epochs=3, batch_size=128, threads=torch.get_num_threads(), density=DENSITY)  # fmt: skip
    rows = frontier.load_rows(out)
    record = frontier.recorder(out, rows, settings)
    earlier = frontier.load_rows(Path(choices_from)) if choices_from else None
    sc = create_scenario("permuted_fmnist", num_tasks=max(seeds) + 2, seed=0)
    for k in ks:
        for granularity in granularities:
            group = dict(method="random", K=k, density=DENSITY, granularity=granularity)
            for seed, cfg in frontier.plan_runs(rows, seeds, candidates=ALPHA_CANDIDATES, earlier=earlier, **group):
                learner = frontier.new_learner(DENSITY)
                learner.add_random_masks(k, seed=seed)
                loaders = frontier.task_loaders(sc.task(1 + seed), train_images, seed)
                record(frontier.alpha_row(learner, loaders, cfg, seed, **group))


def task_bytes(k: int, dtype: str, granularity) -> int:
    """One new task over a random bank of K (LeNet-300-100): its coefficients plus the bank's seed record."""
    return frontier.task_bytes("random", k, dtype, granularity=granularity)["task"]


def report(ks, dtypes, out: Path = OUT, layer_rows: Path = LAYER_ROWS) -> list[dict]:
    def wanted(k):
        return ks is None or k in ks

    layer = [dict(r, granularity="layer") for r in frontier.load_rows(layer_rows)
             if r["method"] == "random" and r["density"] == DENSITY and wanted(r["K"])]  # fmt: skip
    finer = [r for r in frontier.load_rows(out) if wanted(r["K"])]
    table = frontier.summarise(layer + finer, group_keys=("method", "K", "density", "granularity"))
    # per K: per layer, then blocks from coarse to fine, then per channel
    table.sort(key=lambda e: (e["K"], (1, -e["granularity"]) if isinstance(e["granularity"], int)
                              else (0 if e["granularity"] == "layer" else 2, 0)))  # fmt: skip
    supsup_rows = [r for r in frontier.load_rows(layer_rows) if r["method"] == "supsup" and r["density"] == DENSITY]
    (supsup,) = frontier.summarise(supsup_rows)
    sizes, features = frontier.lenet_sizes()
    supsup_bytes = accounting.supsup_bytes_per_task(sizes, features)
    print("| granularity | K | coefficients | bytes per task | x fewer than SupSup | lr (chosen on validation) "
          "| test accuracy % (mean +- sd) | vs SupSup (points) | seeds |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| SupSup (one mask per task) | - | - | {supsup_bytes:,} | 1.0 | {supsup['candidate']} | "
          f"{supsup['mean']:.1f} +- {supsup['sd']:.1f} | - | {supsup['n']} |")
    for e in table:
        e["bytes"] = task_bytes(e["K"], e["dtype"], e["granularity"])
        if e["dtype"] not in dtypes:
            continue
        print(f"| {granularity_words(e['granularity'])} | {e['K']} | {e['dtype']} | {e['bytes']:,} | {supsup_bytes / e['bytes']:.1f} | "
              f"{e['candidate']} | {e['mean']:.1f} +- {e['sd']:.1f} | {e['mean'] - supsup['mean']:+.1f} | {e['n']} |")
    return table


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--granularities", nargs="+", default=["channel", "32"],
                   help="'channel' or a block size of output channels (ints)")  # fmt: skip
    p.add_argument("--ks", nargs="+", type=int, default=None, help="bank sizes (run: 10 50 250; --report: all)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=OUT, help="results JSON (appended to; resumes)")
    p.add_argument("--train-images", type=int, default=TRAIN_IMAGES, help="training images per task")
    p.add_argument("--choices-from", default=None, help="results JSON whose validation choice of lr every seed uses")
    p.add_argument("--report", action="store_true", help="print the table (per-layer and SupSup rows: --layer-rows)")
    p.add_argument("--layer-rows", type=Path, default=LAYER_ROWS, help="--report: frontier.py's results JSON")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "fp16", "bf16"], help="--report: coefficient dtypes shown")
    args = p.parse_args(argv)
    if args.report:
        report(args.ks, args.dtypes, args.out, args.layer_rows)
        return
    granularities = [check_granularity(int(g) if g.isdigit() else g) for g in args.granularities]
    run(granularities, args.ks or [10, 50, 250], args.seeds, args.out, args.train_images, args.choices_from)


if __name__ == "__main__":
    main()
