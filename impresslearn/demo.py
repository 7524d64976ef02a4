"""``python -m impresslearn demo``: ImpressLearn on Permuted Fashion-MNIST with LeNet-300-100.

1. a few basis tasks, each learned as a binary mask with edge-popup (SupSup);
2. a few random masks next to them (a mixture bank: permuted tasks share little structure);
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("sizes")
    # Defaults: about 2 minutes on 2 CPU cores with the C++ kernels (full data, 50 masks).
    g.add_argument("--basis-tasks", type=int, default=5, help="tasks learned as edge-popup masks (default 5)")
    g.add_argument("--new-tasks", type=int, default=5, help="tasks learned as alpha over the bank (default 5)")
    g.add_argument("--random-masks", type=int, default=45, help="random masks added to the bank (default 45)")
    g.add_argument("--train-subset", type=int, default=0, help="training images per task (default 0: all 60000)")
    g.add_argument("--test-subset", type=int, default=0, help="test images per task (default 0: all 10000)")
    g.add_argument("--mask-epochs", type=int, default=2)
    g.add_argument("--alpha-epochs", type=int, default=3)
    g.add_argument("--batch-size", type=int, default=128)
    t = parser.add_argument_group("method")
    t.add_argument("--density", type=float, default=0.1, help="mask density s (default 0.1)")
    t.add_argument("--mask-lr", type=float, default=0.01, help="Adam lr for edge-popup scores")
    t.add_argument("--alpha-lr", type=float, default=0.05, help="Adam lr for alpha")
    t.add_argument("--lam", type=float, default=0.0, help="lambda of Eq. 2")
    t.add_argument("--seed", type=int, default=0, help="backbone, permutations, scores and data order")
    t.add_argument("--backend", default=None, help="ops backend (default: automatic)")
    t.add_argument("--preset", default=None, help="a named recipe for new tasks (impresslearn.presets, e.g. "
                   "random500-fp16): sets --random-masks, --density, alpha's optimiser and lr, and stores "
                   "coefficients in its dtype")  # fmt: skip
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

    if args.basis_tasks < 1 or args.new_tasks < 0 or args.random_masks < 0:
        raise SystemExit("demo: need --basis-tasks >= 1, --new-tasks >= 0, --random-masks >= 0")
    from .presets import get_preset

    try:
        preset = get_preset(args.preset) if args.preset else None
    except KeyError as exc:
        raise SystemExit(f"demo: {exc.args[0]}") from None
    if preset is not None:
        args.random_masks, args.density = preset.random_masks, preset.density
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
    alpha_cfg = TrainConfig(
        epochs=args.alpha_epochs, lr=args.alpha_lr, optimizer="adam", momentum=0.9, lam=args.lam, seed=args.seed
    )
    if preset is not None:
        alpha_cfg = preset.alpha.replace(epochs=args.alpha_epochs, lam=args.lam, seed=args.seed)

    def train(t):
        return BatchLoader(sc.task(t).train, batch_size=args.batch_size, shuffle=True, seed=args.seed * 1000 + t)

    tests = [BatchLoader(sc.task(t).test, batch_size=500) for t in range(num_tasks)]
    names = [sc.task(t).name for t in range(num_tasks)]
    print(f"Permuted Fashion-MNIST, LeNet-300-100, density {args.density}: {args.basis_tasks} basis tasks, "
          f"{args.random_masks} random masks, {args.new_tasks} new tasks; "
          f"{len(sc.task(0).train)} train / {len(sc.task(0).test)} test images per task")  # fmt: skip

    timings = {}
    start = time.perf_counter()
    for t in range(args.basis_tasks):
        learner.learn_basis_mask(names[t], train(t), mask_cfg)
    timings["edge-popup masks"] = time.perf_counter() - start
    if args.random_masks:
        learner.add_random_masks(args.random_masks, seed=args.seed)
    start = time.perf_counter()
    for t in range(args.basis_tasks, num_tasks):
        learner.learn_alpha(names[t], train(t), alpha_cfg)
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
    report = learner.storage_report()
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
