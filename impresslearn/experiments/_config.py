"""Experiment configuration: frozen dataclasses validated in ``__post_init__``, loaded from YAML.

A config names the scenario, the model, the densities, seeds and basis kinds/counts to sweep,
one optimiser per phase (paper Table 3: mask learning by edge-popup, alpha learning by Eq. 1-2),
the new tasks' coefficient granularity (``alpha_granularity``) and which evaluations to run.
``load_config(path, overrides=..., quick=...)`` reads the YAML, applies the file's own
``quick:`` section when asked, then ``--set key=value`` overrides
(dotted keys, values parsed as YAML), and builds the dataclasses; any unknown key or bad value
raises ``ConfigError`` naming the key, before anything is trained.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .._integers import is_count
from ..config import (
    ConfigError,
    TrainConfig,
    check_integer,
    check_known_keys,
    check_positive_int,
    check_real,
    require,
)
from ..validation import candidate_name

BASIS_KINDS = ("heterogeneous", "homogeneous", "random", "mixture")
INITS = ("signed_constant", "kaiming_normal")
GN_METHODS = ("oneshot", "binary")
PAPER_DENSITIES = (0.05, 0.08, 0.1, 0.15, 0.2, 0.25, 0.3)


def _set_ints(obj: Any, **values: int | None) -> None:
    """Store validated integers as plain ``int`` (numpy integers in, one JSON form and hash out)."""
    for name, value in values.items():
        object.__setattr__(obj, name, value)


def check_folder_name(value: Any, key: str) -> str:
    """``value`` if it can name a folder under the output root: one plain path component.

    The experiment name becomes ``runs/<name>``; ``..``, ``.``, an absolute path, a separator
    or a control character would put results somewhere else (``..`` wrote into the current
    folder's parent once), so they are refused.
    """
    require(isinstance(value, str) and bool(value), key, f"must be a non-empty string, got {value!r}")
    bad = [c for c in value if c in "/\\" or ord(c) < 32 or ord(c) == 127]
    require(not bad and value not in (".", "..") and value.strip() == value and not value.startswith("-"), key,
            f"must be a single plain folder name (no '/', '\\', '.', '..', control characters, leading '-' or "
            f"surrounding spaces), got {value!r}")
    return value


def _tuple(value: Any, key: str) -> tuple:
    if isinstance(value, (list, tuple)):
        return tuple(value)
    raise ConfigError(f"{key}: must be a list, got {value!r}")


@dataclass(frozen=True)
class ScenarioSpec:
    """Which task sequence, and how much of each task's data (``None``: all of it).

    ``name`` is a registered scenario or the dotted import path of a function or class that
    returns one (your own data: ``impresslearn.scenarios.CustomScenario``); it is called with
    ``num_tasks``, ``seed``, ``root``, ``train_subset``, ``test_subset`` and ``kwargs``.
    """

    name: str
    num_tasks: int
    seed: int = 0
    train_subset: int | None = None
    test_subset: int | None = None
    test_batch_size: int = 1000
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require(isinstance(self.name, str) and bool(self.name), "scenario.name", "must be a non-empty string")
        from ..scenarios import resolve_scenario  # a name or a dotted import path: refused here, not mid-sweep

        try:
            resolve_scenario(self.name)
        except ValueError as exc:
            raise ConfigError(f"scenario.name: {exc}") from None
        _set_ints(
            self,
            num_tasks=check_positive_int(self.num_tasks, "scenario.num_tasks"),
            seed=check_integer(self.seed, "scenario.seed", minimum=0),
            train_subset=check_positive_int(self.train_subset, "scenario.train_subset", allow_none=True),
            test_subset=check_positive_int(self.test_subset, "scenario.test_subset", allow_none=True),
            test_batch_size=check_positive_int(self.test_batch_size, "scenario.test_batch_size"),
        )
        require(isinstance(self.kwargs, Mapping), "scenario.kwargs", "must be a mapping")


@dataclass(frozen=True)
class ModelSpec:
    """A registered model (``impresslearn.models.create_model``) and its backbone init scheme."""

    name: str
    init: str = "signed_constant"
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require(isinstance(self.name, str) and bool(self.name), "model.name", "must be a non-empty string")
        require(self.init in INITS, "model.init", f"must be one of {INITS}, got {self.init!r}")
        require(isinstance(self.kwargs, Mapping), "model.kwargs", "must be a mapping")


@dataclass(frozen=True)
class BasisSpec:
    """The impression sets to sweep: kinds x counts |M|.

    heterogeneous: one mask per basis task (tasks 0..N-1, one seed for the whole set, as the paper);
    homogeneous: N masks of task 0, each with its own popup seed / data order (same backbone);
    random: N uniform random masks at density s (no training);
    mixture: round(N * mixture_homogeneous) homogeneous masks of task 0, the rest heterogeneous.
    """

    kinds: tuple = ("heterogeneous",)
    counts: tuple = (5, 10)
    mixture_homogeneous: float = 0.5
    counts_by_kind: Mapping[str, Any] = field(default_factory=dict)  # per-kind counts, replace ``counts``

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds", _tuple(self.kinds, "basis.kinds"))
        object.__setattr__(self, "counts", _tuple(self.counts, "basis.counts"))
        require(len(self.kinds) > 0, "basis.kinds", "must not be empty")
        for kind in self.kinds:
            require(kind in BASIS_KINDS, "basis.kinds", f"unknown basis kind {kind!r}; choose from {BASIS_KINDS}")
        require(len(set(self.kinds)) == len(self.kinds), "basis.kinds", f"has duplicates: {list(self.kinds)}")
        require(len(self.counts) > 0, "basis.counts", "must not be empty")
        for c in self.counts:
            check_positive_int(c, "basis.counts[]")
        require(isinstance(self.counts_by_kind, Mapping), "basis.counts_by_kind", "must map a kind to a list of counts")
        for kind, counts in self.counts_by_kind.items():
            require(kind in self.kinds, "basis.counts_by_kind", f"{kind!r} is not one of basis.kinds {list(self.kinds)}")
            require(isinstance(counts, (list, tuple)) and len(counts) > 0, f"basis.counts_by_kind.{kind}",
                    "must be a non-empty list")
            for c in counts:
                check_positive_int(c, f"basis.counts_by_kind.{kind}[]")
        object.__setattr__(self, "mixture_homogeneous", check_real(
            self.mixture_homogeneous, "basis.mixture_homogeneous", minimum=0.0, maximum=1.0))

    def counts_for(self, kind: str) -> tuple:
        return tuple(self.counts_by_kind.get(kind, self.counts))

    def heterogeneous_tasks(self, kind: str, count: int) -> int:
        """How many distinct basis tasks (0..n-1) an impression set of this kind and size uses."""
        if kind == "heterogeneous":
            return count
        if kind == "mixture":
            return max(1, count - round(count * self.mixture_homogeneous))
        if kind == "homogeneous":
            return 1
        return 0


@dataclass(frozen=True)
class EvalSpec:
    """Which evaluations run (each is its own kind of run in a sweep)."""

    new_tasks: bool = True        # ImpressLearn accuracy on new tasks per (kind, count)
    supsup: bool = True           # SupSup benchmark: one edge-popup mask per new task
    incorrect_mask: bool = True   # a basis mask evaluated on the new tasks (should be chance)
    basis_gn: bool = False        # fit alpha on unnamed basis tasks: which mask is picked
    basis_gn_max_tasks: int = 25  # paper: tasks 1..min(|M|, 25)
    basis_gn_kinds: tuple = ("heterogeneous",)
    hybrid: bool = False          # also run every impress run with a new mask in the last layer
    gn: bool = False              # GN task inference over many alpha tasks
    gn_num_tasks: int = 250
    gn_basis_count: int = 10
    gn_basis_kind: str = "heterogeneous"
    gn_methods: tuple = ("oneshot",)
    gn_batch_size: int = 128
    gn_batches_per_task: int = 1
    gn_with_supsup: bool = False  # GN among SupSup masks (one per task) too, for Fig. 6
    label_free_matrix: bool = True  # accuracy matrix without task labels (task inferred per batch)
    full_matrix: bool = False     # evaluate every learned task after each new one (R is T x T)
    # The accuracy-per-byte frontier: each impress run also scores its new tasks with their
    # coefficients rounded to every dtype in ``coefficient_dtypes`` (trained in fp32), with the
    # bytes each stores (impresslearn.accounting); the report adds the frontier table and figure.
    frontier: bool = False
    coefficient_dtypes: tuple = ("fp32",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "basis_gn_kinds", _tuple(self.basis_gn_kinds, "evaluate.basis_gn_kinds"))
        object.__setattr__(self, "gn_methods", _tuple(self.gn_methods, "evaluate.gn_methods"))
        object.__setattr__(self, "coefficient_dtypes", _tuple(self.coefficient_dtypes, "evaluate.coefficient_dtypes"))
        from ..banks import COEFFICIENT_DTYPES

        require(len(self.coefficient_dtypes) > 0, "evaluate.coefficient_dtypes", "must not be empty")
        for dtype in self.coefficient_dtypes:
            require(dtype in COEFFICIENT_DTYPES, "evaluate.coefficient_dtypes",
                    f"unknown dtype {dtype!r}; choose from {tuple(COEFFICIENT_DTYPES)}")
        require(len(set(self.coefficient_dtypes)) == len(self.coefficient_dtypes), "evaluate.coefficient_dtypes",
                f"has duplicates: {list(self.coefficient_dtypes)}")
        for name in ("new_tasks", "supsup", "incorrect_mask", "basis_gn", "hybrid", "gn", "gn_with_supsup",
                     "label_free_matrix", "full_matrix", "frontier"):
            require(isinstance(getattr(self, name), bool), f"evaluate.{name}", "must be true or false")
        for name in ("basis_gn_max_tasks", "gn_num_tasks", "gn_basis_count", "gn_batch_size", "gn_batches_per_task"):
            check_positive_int(getattr(self, name), f"evaluate.{name}")
        for kind in self.basis_gn_kinds:
            require(kind in ("heterogeneous", "mixture"), "evaluate.basis_gn_kinds",
                    f"basis-GN needs masks from distinct basis tasks (heterogeneous or mixture), got {kind!r}")
        require(self.gn_basis_kind in BASIS_KINDS, "evaluate.gn_basis_kind",
                f"must be one of {BASIS_KINDS}, got {self.gn_basis_kind!r}")
        for m in self.gn_methods:
            require(m in GN_METHODS, "evaluate.gn_methods", f"unknown method {m!r}; choose from {GN_METHODS}")
        require(self.frontier or self.coefficient_dtypes == ("fp32",), "evaluate.coefficient_dtypes",
                "other dtypes than fp32 are scored only on the frontier; set evaluate.frontier: true")


def _candidates(value: Any, key: str, base: TrainConfig) -> tuple:
    """Candidate overrides of a training phase, each a mapping of TrainConfig keys; each is
    applied to ``base`` here, so a bad candidate is refused by name before anything trains."""
    candidates = _tuple(value, key)
    plain = []
    for i, candidate in enumerate(candidates):
        where = f"{key}[{i}]"
        require(isinstance(candidate, Mapping) and len(candidate) > 0, where,
                f"must be a non-empty mapping of training keys (e.g. {{optimizer: adam, lr: 0.01}}), got {candidate!r}")
        check_known_keys(candidate, TrainConfig.field_names(), where)
        try:
            base.replace(**candidate)
        except ConfigError as exc:
            raise ConfigError(f"{where}.{exc}") from None
        plain.append(dict(sorted(candidate.items())))
    # results name a candidate by optimizer and lr (impresslearn.validation.candidate_name)
    names = [candidate_name(base.replace(**c)) for c in plain]
    require(len(set(names)) == len(names), key,
            f"candidates must differ in optimizer or lr (how results name them), got {names}")
    return tuple(plain)


@dataclass(frozen=True)
class ValidationSpec:
    """Hyperparameters chosen on a validation split carved from each new task's training set.

    The last ``images`` examples of each new task's training set (after ``scenario.train_subset``)
    validate (``impresslearn.validation.validation_split``); every training on a new task
    (SupSup's mask, alpha) uses the rest. Each candidate is a partial override of its phase
    (``alpha_train`` for alpha, ``mask_train`` for SupSup's dedicated mask). The rule is
    ``impresslearn.validation.choose``'s: a run of the first seed trains every candidate and keeps
    the one with the best mean validation accuracy over its new tasks (ties: the first listed);
    the same run of every other seed reuses that choice. The test set is read only for the chosen
    candidate. No candidates: the phase as configured is the only one. Basis masks are trained on
    their own tasks' full training sets (other tasks' data, never a new task's test data).
    """

    images: int
    alpha_candidates: tuple = ()
    mask_candidates: tuple = ()

    def __post_init__(self) -> None:
        _set_ints(self, images=check_positive_int(self.images, "validation.images"))
        object.__setattr__(self, "alpha_candidates", _tuple(self.alpha_candidates, "validation.alpha_candidates"))
        object.__setattr__(self, "mask_candidates", _tuple(self.mask_candidates, "validation.mask_candidates"))


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment of the paper (or its Fashion-MNIST stand-in), a sweep over its axes."""

    name: str
    scenario: ScenarioSpec
    model: ModelSpec
    densities: tuple = (0.1,)
    seeds: tuple = (0,)
    basis: BasisSpec = field(default_factory=BasisSpec)
    num_new_tasks: int = 10
    mask_train: TrainConfig = field(default_factory=TrainConfig)
    alpha_train: TrainConfig = field(default_factory=TrainConfig)
    # The new tasks' alpha (ImpressLearner.learn_alpha's granularity): "layer" (A_t[K, d], the
    # paper's), "channel" or a block of that many output channels (A_t[K, sum_i ceil(C_i / b)]).
    alpha_granularity: str | int = "layer"
    evaluate: EvalSpec = field(default_factory=EvalSpec)
    validation: ValidationSpec | None = None  # None: train on all of a new task's training set, no choice
    description: str = ""
    paper_figure: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "densities", _tuple(self.densities, "densities"))
        object.__setattr__(self, "seeds", _tuple(self.seeds, "seeds"))
        check_folder_name(self.name, "name")
        require(len(self.densities) > 0, "densities", "must not be empty")
        for s in self.densities:
            require(isinstance(s, (int, float)) and not isinstance(s, bool) and 0.0 < s <= 1.0, "densities",
                    f"each density is the fraction of weights kept, in (0, 1]; got {s!r}")
        require(len(set(self.densities)) == len(self.densities), "densities", "has duplicates")
        require(len(self.seeds) > 0, "seeds", "must not be empty")
        for s in self.seeds:
            require(is_count(s), "seeds", f"each seed is a non-negative integer; got {s!r}")
        require(len(set(self.seeds)) == len(self.seeds), "seeds", "has duplicates")
        require(is_count(self.num_new_tasks), "num_new_tasks",
                f"must be a non-negative integer, got {self.num_new_tasks!r}")
        # New tasks follow every basis task of every impression set, so all sets are scored on
        # the same new tasks and a basis task is never also a "new" one.
        needed = self.first_new_task + self.num_new_tasks
        require(needed <= self.scenario.num_tasks, "scenario.num_tasks",
                f"{self.scenario.num_tasks} tasks cannot hold {self.first_new_task} heterogeneous basis tasks "
                f"(largest count in basis.counts) plus num_new_tasks={self.num_new_tasks} new tasks; "
                f"need at least {needed}")
        if self.validation is not None:
            require(isinstance(self.validation, ValidationSpec), "validation", "must be a mapping")
            # Candidates are checked against the phases they override (a bad lr names its place).
            object.__setattr__(self, "validation", dataclasses.replace(
                self.validation,
                alpha_candidates=_candidates(self.validation.alpha_candidates, "validation.alpha_candidates",
                                             self.alpha_train),
                mask_candidates=_candidates(self.validation.mask_candidates, "validation.mask_candidates",
                                            self.mask_train)))
            if self.scenario.train_subset is not None:
                require(self.validation.images < self.scenario.train_subset, "validation.images",
                        f"{self.validation.images} validation images leave none of scenario.train_subset="
                        f"{self.scenario.train_subset} to train on")
        ev = self.evaluate
        from ..tasks import check_granularity

        try:
            object.__setattr__(self, "alpha_granularity", check_granularity(self.alpha_granularity))
        except ValueError as exc:
            raise ConfigError(f"alpha_granularity: {exc}") from None
        if self.alpha_granularity != "layer":
            # these fit or read one coefficient column per layer (impresslearn.inference refuses finer tasks)
            for name, what in (("hybrid", "a hybrid task has per-layer coefficients only"),
                               ("label_free_matrix", "its task inference (GN) reads one column per layer"),
                               ("gn", "GN task inference reads one column per layer"),
                               ("basis_gn", "basis-GN fits alpha per layer")):  # fmt: skip
                require(not getattr(ev, name), f"evaluate.{name}",
                        f"must be false with alpha_granularity {self.alpha_granularity!r} ({what})")
        if ev.frontier:
            require(ev.new_tasks or ev.supsup, "evaluate.frontier", "needs evaluate.new_tasks or evaluate.supsup")
        if ev.gn:
            gn_basis = self.basis.heterogeneous_tasks(ev.gn_basis_kind, ev.gn_basis_count)
            require(ev.gn_num_tasks + gn_basis <= self.scenario.num_tasks, "evaluate.gn_num_tasks",
                    f"GN needs {gn_basis} basis tasks + {ev.gn_num_tasks} alpha tasks but the scenario has "
                    f"only scenario.num_tasks={self.scenario.num_tasks}")
        if ev.new_tasks or ev.supsup or ev.incorrect_mask:
            require(self.num_new_tasks > 0, "num_new_tasks",
                    "must be > 0 when evaluate.new_tasks, supsup or incorrect_mask is on")

    @property
    def first_new_task(self) -> int:
        return max(self.basis.heterogeneous_tasks(k, c) for k in self.basis.kinds for c in self.basis.counts_for(k))

    @property
    def new_task_indices(self) -> tuple:
        return tuple(range(self.first_new_task, self.first_new_task + self.num_new_tasks))

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    def config_hash(self) -> str:
        return stable_hash(self.to_dict())


def _plain(obj: Any) -> Any:
    """Tuples -> lists, mappings -> sorted dicts: one JSON form per value (stable hashes)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def stable_hash(obj: Any, length: int = 12) -> str:
    """SHA-256 of the canonical JSON of ``obj`` (sorted keys, tuples as lists), truncated."""
    text = json.dumps(_plain(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


# ----------------------------------------------------------------------------- loading

_SECTIONS = {
    "scenario": ScenarioSpec,
    "model": ModelSpec,
    "basis": BasisSpec,
    # A training phase (paper Table 3) is the learner's own TrainConfig: a YAML section accepts
    # exactly what ImpressLearner.learn_* accepts.
    "mask_train": TrainConfig,
    "alpha_train": TrainConfig,
    "evaluate": EvalSpec,
    "validation": ValidationSpec,
}
_TOP_LEVEL = {f.name for f in dataclasses.fields(ExperimentConfig)} | {"quick"}


def _build(cls: type, data: Any, key: str):
    if not isinstance(data, Mapping):
        raise ConfigError(f"{key}: must be a mapping, got {data!r}")
    check_known_keys(data, {f.name for f in dataclasses.fields(cls)}, key)
    try:
        return cls(**data)
    except ConfigError as exc:
        # TrainConfig names its own field ("momentum: ..."); the section says where it sits.
        message = str(exc)
        raise ConfigError(message if message.startswith(f"{key}.") else f"{key}.{message}") from None
    except TypeError as exc:  # a missing required field
        raise ConfigError(f"{key}: {exc}") from None


def config_from_dict(data: Mapping[str, Any]) -> ExperimentConfig:
    """Build and validate an ``ExperimentConfig`` from a plain dict (as read from YAML)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config: must be a mapping at the top level, got {type(data).__name__}")
    unknown = sorted(set(data) - _TOP_LEVEL)
    if unknown:
        raise ConfigError(f"config: unknown top-level key(s) {unknown}; known keys: {sorted(_TOP_LEVEL)}")
    for required in ("name", "scenario", "model"):
        if required not in data:
            raise ConfigError(f"{required}: missing (required)")
    kwargs = {k: v for k, v in data.items() if k != "quick"}
    if kwargs.get("validation", ()) is None:  # `validation: null`: no validation split (the default)
        del kwargs["validation"]
    for section, cls in _SECTIONS.items():
        if section in kwargs:
            kwargs[section] = _build(cls, kwargs[section] or {}, section)
    return ExperimentConfig(**kwargs)


def set_dotted(data: dict, key: str, value: Any) -> None:
    """``data['a']['b'] = value`` for ``key='a.b'``; refuses to create unknown sections silently."""
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"alpha_train.lr=0.01"`` -> ``("alpha_train.lr", 0.01)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({exc})") from None
    return key, value


def resolve_dict(data: Mapping[str, Any], overrides: list[str] | tuple = (), quick: bool = False) -> dict:
    """Apply the ``quick:`` section (if asked) and ``--set`` overrides to a raw config dict."""
    data = copy.deepcopy(dict(data))
    quick_section = data.pop("quick", None) or {}
    if quick:
        if not isinstance(quick_section, Mapping):
            raise ConfigError("quick: must be a mapping of dotted keys to values")
        for key, value in quick_section.items():
            set_dotted(data, key, value)
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(data, key, value)
    return data


def read_yaml(path: str | Path) -> dict:
    """The top-level mapping of a YAML config file; ConfigError for anything else.

    Binary junk, text that is not UTF-8, YAML errors and a top level that is not a mapping
    all raise ConfigError naming the file (never a traceback from the parser).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file in UTF-8 ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(path: str | Path, overrides: list[str] | tuple = (), quick: bool = False) -> ExperimentConfig:
    """Read a YAML config, apply quick/overrides, validate. Errors name the file and the key."""
    path = Path(path)
    data = read_yaml(path)
    try:
        return config_from_dict(resolve_dict(data, overrides, quick))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
