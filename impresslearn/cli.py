"""The ``impresslearn`` command line (also ``python -m impresslearn``).

Each subcommand lives in its own module, which defines ``add_arguments(parser)``
and ``main(args)``; this file only wires them up and imports a module when its
subcommand runs, so ``impresslearn info`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# subcommand -> (module, one-line help)
SUBCOMMANDS = {
    "demo": ("impresslearn.demo", "a real continual-learning run on Permuted Fashion-MNIST (the README's main job)"),
    "run": ("impresslearn.experiments.run", "run the experiment (or sweep) of a YAML config"),
    "report": ("impresslearn.experiments.report", "render results into markdown tables and plots"),
    "info": ("impresslearn.info", "every op and backend: available, or why not"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="impresslearn", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        module = _import(module_name) if _wanted(name) else None
        if module is not None and hasattr(module, "add_arguments"):
            module.add_arguments(p)
    return parser


def _wanted(name: str) -> bool:
    # Import only the module of the subcommand being run (or all, for --help).
    argv = sys.argv[1:]
    return name in argv or not any(a in SUBCOMMANDS for a in argv)


def _import(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    args = build_parser().parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    module = _import(args._module)
    if module is None:
        print(f"impresslearn {args.command}: not available in this build", file=sys.stderr)
        return 2
    result = module.main(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
