"""Experiments of the paper: YAML configs, sweeps with resumable runs, plots and reports.

``impresslearn run configs/<name>.yaml`` runs a sweep (``run.py``); ``impresslearn report``
renders results into markdown (``report.py``). The pieces:

``_config``      frozen, validated dataclasses loaded from YAML with overrides
``_sweep``       expansion into runs with stable ids, atomic per-run results, resume, CSV/JSON
``_runner``      one run with the real learner and data; the shared mask cache
``_accounting``  paper Table 2 computed from real model objects
``_plots``       the paper's box plots
"""

from ._config import (
    BASIS_KINDS,
    PAPER_DENSITIES,
    BasisSpec,
    ConfigError,
    EvalSpec,
    ExperimentConfig,
    ModelSpec,
    ScenarioSpec,
    ValidationSpec,
    config_from_dict,
    load_config,
    stable_hash,
)
from ..config import TrainConfig  # noqa: I001 (mask_train / alpha_train sections)
from ._sweep import RunSpec, expand, run_sweep

__all__ = [
    "BASIS_KINDS",
    "PAPER_DENSITIES",
    "BasisSpec",
    "ConfigError",
    "EvalSpec",
    "ExperimentConfig",
    "ModelSpec",
    "RunSpec",
    "ScenarioSpec",
    "TrainConfig",
    "ValidationSpec",
    "config_from_dict",
    "expand",
    "load_config",
    "run_sweep",
    "stable_hash",
]
