"""The package's own scripts and benchmarks use only the public API, and the README's DDP snippet runs."""

from __future__ import annotations

import ast
import re
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("scripts", "benchmarks")
# Private names of the standard library that scripts legitimately call.
STDLIB_PRIVATE = {("os", "_exit"), ("sys", "_getframe")}


def private_accesses(source: str) -> list[tuple[int, str]]:
    """``obj._name`` reads and writes (not dunders, not a class's own ``self._x`` / ``cls._x``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        attr = node.attr
        if not attr.startswith("_") or (attr.startswith("__") and attr.endswith("__")):
            continue
        base = node.value.id if isinstance(node.value, ast.Name) else None
        if base in ("self", "cls") or (base, attr) in STDLIB_PRIVATE:
            continue
        found.append((node.lineno, f"{ast.unparse(node.value)}.{attr}"))
    for node in ast.walk(ast.parse(source)):  # private modules of the package: impresslearn._x
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("impresslearn"):
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("impresslearn")]
        else:
            continue
        found.extend((node.lineno, n) for n in names if any(p.startswith("_") for p in n.split(".")[1:]))
    return sorted(found)


def test_the_checker_finds_private_accesses():
    source = (
        "learner._bind_coefficients(a)\nx = obj.inner._private\nself._ok = 1\nos._exit(1)\ny.__class__\n"
        "from impresslearn import _backends, ops\nimport impresslearn._atomic\nfrom impresslearn.backends import select\n"
    )
    assert private_accesses(source) == [
        (1, "learner._bind_coefficients"),
        (2, "obj.inner._private"),
        (6, "impresslearn._backends"),
        (7, "impresslearn._atomic"),
    ]


@pytest.mark.parametrize("path", sorted(p.relative_to(REPO).as_posix() for d in SCANNED for p in (REPO / d).rglob("*.py")))
def test_scripts_and_benchmarks_touch_no_private_attribute(path):
    found = private_accesses((REPO / path).read_text())
    assert not found, f"{path} reaches into private state: " + ", ".join(f"line {n}: {s}" for n, s in found)


# ----------------------------------------------------------------------------- README


def readme_snippet(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    matching = [b for b in blocks if marker in b]
    assert len(matching) == 1, f"README has {len(matching)} python blocks containing {marker!r}"
    return matching[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.filterwarnings("ignore:.*optimiser steps:UserWarning")
def test_readme_ddp_snippet_runs(monkeypatch):
    """The README's own-loop snippet, as written, on a small learner and synthetic data (one rank)."""
    from impresslearn import ImpressLearner, TrainConfig
    from impresslearn.models import create_model
    from impresslearn.scenarios import BatchLoader, create_scenario

    for key, value in dict(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port())).items():
        monkeypatch.setenv(key, value)
    scenario = create_scenario("synthetic", num_tasks=4, train_size=256, test_size=128, seed=0)
    learner = ImpressLearner(create_model("lenet300", num_classes=10, seed=0, hidden=[32, 16]), density=0.3)
    learner.add_random_masks(8, seed=0)
    namespace = dict(torch=torch, scenario=scenario, learner=learner, BatchLoader=BatchLoader,
                     ImpressLearner=ImpressLearner, TrainConfig=TrainConfig)  # fmt: skip
    try:
        exec(compile(readme_snippet("# Your own training loop"), "README.md", "exec"), namespace)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    rec = learner.tasks["my task"]
    assert rec.kind == "new" and rec.coefficients.shape == (8, 3)
    assert not torch.equal(rec.coefficients, torch.full((8, 3), 1 / 8))  # alpha trained
    assert learner.fingerprints["my task"].nbytes == 4 * 64 + 4  # commit(fingerprint_inputs=) stored it
