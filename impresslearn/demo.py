"""``python -m impresslearn demo``: ImpressLearn on Permuted Fashion-MNIST with LeNet-300-100.

By default the new tasks follow the named preset ``random500-fp16`` (``impresslearn.presets``:
500 random masks at density 0.1, alpha trained with RMSprop lr 0.0005 for 3 epochs, stored in
fp16), on 12,000 training images per task (the reduction its frontier point was measured on) so
that the demo stays a first command; ``--train-subset 0`` trains on all 60,000 images (the full
recipe), ``--preset none`` builds the bank from ``--random-masks`` and trains alpha with Adam.

1. a few basis tasks, each learned as a binary mask with edge-popup (SupSup);
2. random masks next to them (a mixture bank: permuted tasks share little structure);
3. a few new tasks, each learned as alpha[K, d] over that bank (paper Eq. 1-2);
4. evaluation with the task label, the incorrect-mask check, task inference without labels
   (the tasks' input fingerprints, ``infer_task``'s default, over all stored tasks) and bytes
   per task next to SupSup;
5. a checkpoint under ``runs/demo/`` reloaded to identical predictions.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

DEFAULT_OUT = Path("runs/demo")
DEFAULT_PRESET = "random500-fp16"
# Without a preset (--preset none): a bank of the basis masks and 45 random masks, alpha with Adam.
CUSTOM_DEFAULTS = dict(random_masks=45, alpha_lr=0.05, alpha_epochs=3)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("sizes")
    g.add_argument("--basis-tasks", type=int, default=3, help="tasks learned as edge-popup masks (default 3)")
    g.add_argument("--new-tasks", type=int, default=3, help="tasks learned as alpha over the bank (default 3)")
    g.add_argument("--random-masks", type=int, default=None,
                   help="random masks added to the bank (only with --preset none; default 45)")
    g.add_argument("--train-subset", type=int, default=12_000,
                   help="training images per task (default 12000; 0: all 60000, the full recipe)")
    g.add_argument("--test-subset", type=int, default=0, help="test images per task (default 0: all 10000)")
    g.add_argument("--mask-epochs", type=int, default=2)
    g.add_argument("--alpha-epochs", type=int, default=None, help="default: the preset's (3)")
    g.add_argument("--batch-size", type=int, default=128)
    t = parser.add_argument_group("method")
    t.add_argument("--density", type=float, default=0.1, help="mask density s (default 0.1)")
    t.add_argument("--mask-lr", type=float, default=0.01, help="Adam lr for edge-popup scores")
    t.add_argument("--alpha-lr", type=float, default=None, help="Adam lr for alpha (only with --preset none; default 0.05)")
    t.add_argument("--lam", type=float, default=0.0, help="lambda of Eq. 2")
    t.add_argument("--seed", type=int, default=0, help="backbone, permutations, scores and data order")
    t.add_argument("--backend", default=None, help="ops backend (default: automatic)")
    t.add_argument("--preset", default=DEFAULT_PRESET,
                   help=f"the named recipe for new tasks (impresslearn.presets; default {DEFAULT_PRESET}): sets the "
                   "random masks, the density, alpha's optimiser, lr and epochs, and stores coefficients in its "
                   "dtype; 'none': --random-masks, --density and Adam at --alpha-lr, fp32 coefficients")  # fmt: skip
    parser.add_argument("--data-root", default=None, help="folder with FashionMNIST/raw (default: the Debian files)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the checkpoint goes (default runs/demo)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _fmt_bytes(n: float) -> str:
    return f"{n / 1024:.2f} KiB" if n >= 1024 else f"{n:.0f} B"


def main(args: argparse.Namespace) -> int:
    from .config import TrainConfig
    from .learner import ImpressLearner
    from .models import create_model
    from .scenarios import BatchLoader, DataNotFoundError, create_scenario
    from .tasks import granularity_words

    from .presets import get_preset

    try:
        preset = None if args.preset in (None, "none") else get_preset(args.preset)
    except KeyError as exc:
        raise SystemExit(f"demo: {exc.args[0]}") from None
    if preset is not None:
        clashing = [f"--{flag.replace('_', '-')}" for flag in ("random_masks", "alpha_lr")
                    if getattr(args, flag) is not None]  # fmt: skip
        if clashing or args.density != preset.density:
            flags = ", ".join(clashing + ([] if args.density == preset.density else ["--density"]))
            raise SystemExit(f"demo: {flags} would change the preset {preset.name}; add --preset none to set them")
        args.random_masks, args.alpha_epochs = preset.random_masks, args.alpha_epochs or preset.alpha.epochs
    else:
        for flag, value in CUSTOM_DEFAULTS.items():
            if getattr(args, flag) is None:
                setattr(args, flag, value)
    if args.basis_tasks < 1 or args.new_tasks < 0 or args.random_masks < 0 or args.alpha_epochs < 1:
        raise SystemExit("demo: need --basis-tasks >= 1, --new-tasks >= 0, --random-masks >= 0, --alpha-epochs >= 1")
    num_tasks = args.basis_tasks + args.new_tasks
    try:
        sc = create_scenario(
            "permuted_fmnist", num_tasks=num_tasks, root=args.data_root, seed=args.seed,
            train_subset=args.train_subset or None, test_subset=args.test_subset or None,
        )  # fmt: skip
        sc.task(0)
    except DataNotFoundError as exc:
        print(f"demo: {exc}")
        return 2
    torch.manual_seed(args.seed)
    model = create_model("lenet300", num_classes=sc.num_classes, seed=args.seed)
    learner = ImpressLearner(model, density=args.density, backend=args.backend, progress=not args.no_progress,
                             coefficient_dtype=preset.coefficient_dtype if preset else "fp32")  # fmt: skip
    mask_cfg = TrainConfig(epochs=args.mask_epochs, lr=args.mask_lr, optimizer="adam", momentum=0.9, seed=args.seed)
    granularity = preset.granularity if preset else "layer"  # of the new tasks' coefficients
    if preset is not None:
        alpha_cfg = preset.alpha.replace(epochs=args.alpha_epochs, lam=args.lam, seed=args.seed)
    else:
        alpha_cfg = TrainConfig(epochs=args.alpha_epochs, lr=args.alpha_lr, optimizer="adam", momentum=0.9,
                                lam=args.lam, seed=args.seed)  # fmt: skip

    def train(t):
        return BatchLoader(sc.task(t).train, batch_size=args.batch_size, shuffle=True, seed=args.seed * 1000 + t)

    tests = [BatchLoader(sc.task(t).test, batch_size=500) for t in range(num_tasks)]
    names = [sc.task(t).name for t in range(num_tasks)]
    recipe = (f"preset {preset.name} ({preset.alpha.optimizer} lr {preset.alpha.lr:g}, {args.alpha_epochs} epochs, "
              f"{preset.coefficient_dtype} coefficients {granularity_words(granularity)})"
              if preset else f"no preset (adam lr {args.alpha_lr:g})")  # fmt: skip
    print(f"Permuted Fashion-MNIST, LeNet-300-100, density {args.density}: {args.basis_tasks} basis tasks, "
          f"{args.random_masks} random masks, {args.new_tasks} new tasks; "
          f"{len(sc.task(0).train)} train / {len(sc.task(0).test)} test images per task; new tasks: {recipe}")  # fmt: skip

    timings = {}
    start = time.perf_counter()
    for t in range(args.basis_tasks):
        learner.learn_basis_mask(names[t], train(t), mask_cfg)
    timings["edge-popup masks"] = time.perf_counter() - start
    if args.random_masks:
        learner.add_random_masks(args.random_masks, seed=args.seed)
    start = time.perf_counter()
    for t in range(args.basis_tasks, num_tasks):
        learner.learn_alpha(names[t], train(t), alpha_cfg, granularity=granularity)
    timings["alpha tasks"] = time.perf_counter() - start

    # -- evaluation -------------------------------------------------------------------------
    rows = []
    gn_hits = gn_total = 0
    for t, name in enumerate(names):
        rec = learner.tasks[name]
        acc = learner.evaluate(name, tests[t])
        own = rec.mask_index
        # incorrect mask: the basis masks of other tasks, each alone, on this task
        others = [k for k, owner in enumerate(learner.mask_owners) if owner is not None and owner != name]
        wrong = sum(learner.evaluate_mask(k, tests[t]) for k in others) / len(others) if others else float("nan")
        hits = total = 0
        for x, _ in BatchLoader(sc.task(t).test, batch_size=128):
            hits += learner.infer_task(x) == name
            total += 1
        gn_hits += hits
        gn_total += total
        b = learner.bytes_per_task(name)
        rows.append((name, rec.kind, acc, wrong, hits / total, b["total"], b["supsup"], own))

    print()
    header = f"| {'task':<20} | {'kind':<5} | {'acc (label)':>11} | {'incorrect mask':>14} | {'task found':>13} | {'bytes/task':>11} | {'SupSup':>10} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name, kind, acc, wrong, gn, nbytes, supsup, _ in rows:
        print(
            f"| {name:<20} | {kind:<5} | {acc:>11.3f} | {wrong:>14.3f} | {gn:>13.1%} | "
            f"{_fmt_bytes(nbytes):>11} | {_fmt_bytes(supsup):>10} |"
        )
    report = learner.storage_report(new_task_granularity=granularity)
    print()
    print(f"task inference without labels (input fingerprints, over all {learner.num_tasks} tasks, batches of 128): "
          f"{gn_hits}/{gn_total} = {gn_hits / gn_total:.1%}")  # fmt: skip
    print(f"storage: bank {_fmt_bytes(report['bank_bytes'])} in memory (K = {report['num_masks']} masks x "
          f"{report['num_layers']} layers, 1 bit per weight), {_fmt_bytes(report['stored_bank_bytes'])} stored "
          f"(random masks as their seed), coefficients {_fmt_bytes(report['coefficient_bytes'])} "
          f"({report['coefficient_dtype']}); "
          f"total {_fmt_bytes(report['total_bytes'])} vs SupSup {_fmt_bytes(report['supsup_total_bytes'])} "
          f"for {report['num_tasks']} tasks ({report['compression']:.2f}x); a new task adds "
          f"{_fmt_bytes(report['new_task_bytes'])} vs SupSup's "
          f"{_fmt_bytes(report['supsup_bytes_per_task'])}")  # fmt: skip
    print("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))

    # -- checkpoint ---------------------------------------------------------------------------
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "learner.safetensors"
    learner.save(path)
    loaded = ImpressLearner.load(path, backend=args.backend)
    x = next(iter(tests[0]))[0][:256]
    same = all(torch.equal(loaded.predict(n, x), learner.predict(n, x)) for n in names)
    print(f"checkpoint: {path} ({_fmt_bytes(path.stat().st_size)}); reloaded predictions identical: {same}")
    return 0 if same else 1
