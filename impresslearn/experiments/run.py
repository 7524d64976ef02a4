"""``impresslearn run CONFIG.yaml``: run an experiment (a sweep) or the parameter accounting.

Results go to ``--out`` (default ``runs/<config name>``): one JSON per finished run under
``runs/``, aggregated ``results.json`` / ``results.csv`` / ``matrices.csv``, and box plots.
Re-running the same command resumes: finished runs are read back, never recomputed (a run
file that does not verify is run again). One runner per output folder: a second one exits
with status 3 and names the process that holds the folder. A bad config or override exits
with status 2 before anything trains.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._config import ConfigError, load_config, read_yaml, resolve_dict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config (see configs/)")
    parser.add_argument("--out", help="output directory (default: runs/<config name>)")
    parser.add_argument("--data-root", help="folder with MNIST / CIFAR-100 / ImageNet in torchvision layout")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (dotted key, YAML value); repeatable")
    parser.add_argument("--quick", action="store_true", help="apply the config's quick: section (a tiny run)")
    parser.add_argument("--max-runs", type=_positive_count, default=None, metavar="N",
                        help="stop after this many new runs (N >= 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default=None, help="ops backend (default: automatic)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs of the sweep and their state")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--no-progress", action="store_true")


def _positive_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def run_accounting_config(path: Path, overrides, quick: bool, out: Path | None, progress: bool) -> Path:
    from ._accounting import accounting_config_from_dict, run_accounting
    from ._sweep import atomic_write_text

    data = resolve_dict(read_yaml(path), overrides, quick)
    try:
        config = accounting_config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    out = out or Path("runs") / config.name
    rows = run_accounting(config, progress=progress)
    atomic_write_text(out / "accounting.json", json.dumps({"experiment": config.name, "kind": "accounting",
                                                           "description": config.description, "rows": rows},
                                                          indent=1))
    return out


def main(args: argparse.Namespace) -> int:
    path = Path(args.config)
    out = Path(args.out) if args.out else None
    try:
        if read_yaml(path).get("kind") == "accounting":
            out = run_accounting_config(path, args.overrides, args.quick, out, not args.no_progress)
            print(f"accounting written to {out / 'accounting.json'}")
            return 0
        config = load_config(path, args.overrides, args.quick)
    except ConfigError as exc:
        print(f"impresslearn run: {exc}", file=sys.stderr)
        return 2
    from ._sweep import OutputFolderLocked, expand, load_finished, run_sweep

    out = out or Path("runs") / config.name
    if args.dry_run:
        runs = expand(config)
        done = sum(load_finished(out, r) is not None for r in runs)
        for r in runs:
            state = "done" if load_finished(out, r) else "todo"
            print(f"{r.run_id}  {state}  {r.label()}")
        print(f"{len(runs)} runs, {done} finished, output {out}")
        return 0
    context = {"data_root": args.data_root, "device": args.device, "backend": args.backend}
    try:
        outcome = run_sweep(config, out, context=context, progress=not args.no_progress, max_runs=args.max_runs)
    except OutputFolderLocked as exc:
        print(f"impresslearn run: {exc}", file=sys.stderr)
        return 3
    if not args.no_plots:
        from ._plots import plot_experiment

        plot_experiment(out)
    print(f"{config.name}: {len(outcome.executed)} runs executed, {len(outcome.skipped)} already done, "
          f"{len(outcome.records)} of {len(expand(config))} finished; results in {out}")
    return 0
