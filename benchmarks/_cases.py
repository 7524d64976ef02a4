"""The benchmark case type shared by kernels.py (CPU rows) and gpu_cases.py (GPU rows)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Case:
    """One benchmark: inputs built once by ``setup``, then every implementation timed on them."""

    name: str
    sizes: dict
    setup: Callable[[], Any]
    reference: Callable[[Any], Any]
    candidates: dict[str, Callable[[Any], Any]]
    baselines: dict[str, Callable[[Any], Any]] = field(default_factory=dict)
    # bytes each implementation must move at least (by name; "*" for any other)
    bytes_moved: Callable[[Any], dict[str, int]] | dict[str, int] | int = 0
    reference_name: str = "reference"
    target: str = ""
    # speedups the case should reach: {(candidate, reference or baseline name): ratio}
    targets: dict[tuple[str, str], float] = field(default_factory=dict)
    # share of another implementation's bandwidth (GB/s of its own bytes_moved) a
    # candidate should reach: {(candidate, other): fraction}
    bandwidth_targets: dict[tuple[str, str], float] = field(default_factory=dict)
    repeats: int = 10
    device: str = "cpu"
