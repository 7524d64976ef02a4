"""The accuracy-per-byte frontier on Permuted and Rotated Fashion-MNIST (issue 14, reduced).

A YAML config (``configs/frontier_permuted.yaml``, ``configs/frontier_rotated.yaml``; the fields
are :class:`FrontierConfig`'s) says what to run; command-line flags override single fields::

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/frontier.py configs/frontier_permuted.yaml
    python benchmarks/frontier.py configs/frontier_permuted.yaml --report   # table + figure

Permuted (seed ``s``: the new task is permuted task ``1 + s``; every method sees the same new
task, so the comparison is paired). At every density in ``densities``:

- SupSup's point: one edge-popup mask per new task (a dedicated mask);
- ``random``: alpha over a bank of K uniformly random masks drawn from seed ``s`` (stored as its seed).

At ``density`` only (the paper's three kinds of bank, and their mixture):

- ``heterogeneous``: alpha over the masks of K other permuted tasks (tasks 10, 11, ...), trained
  with edge-popup (each is its basis task's own SupSup mask);
- ``homogeneous``: alpha over K masks of one task (task 10) trained from K score seeds;
- ``mixed``: the first T heterogeneous masks plus K - T random masks drawn from seed ``s``.

Rotated: per spacing ``d`` (degrees), K basis masks trained on tasks at ``0, d, ..., (K-1) d``
(heterogeneous impressions) and, for seed ``s``, a new task at ``(s + 0.5) d``, half-way between
two basis tasks, against SupSup's dedicated mask on that new task; on the same new tasks, alpha
over random banks (``random_ks``; ``finer``: at a finer coefficient granularity) and over mixed
banks (the first T basis masks plus K - T random ones).

Every task's training set is cut by :func:`impresslearn.validation.validation_split`: the last
10,000 images validate, the first ``train_images`` train. The learning rate is chosen on
validation, never on test data (:func:`impresslearn.validation.choose`): every candidate is
trained on the first seed and the one with the best validation accuracy is used for the others.
Alpha is trained in fp32 and evaluated again with its coefficients rounded to fp16 and bf16.
Bytes per task come from ``impresslearn.accounting`` (the one definition; see ``task_bytes``).

Rows are appended to the results JSON as they finish, under a file lock, so a rerun resumes and
two processes may share one file (run disjoint parts with ``--only`` / ``--densities``).
Trained masks are cached under ``runs/frontier_masks/`` so that a resumed run does not retrain them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from filelock import FileLock
from safetensors.torch import load_file, save

from impresslearn import ImpressLearner, accounting
from impresslearn.banks import COEFFICIENT_DTYPES, round_coefficients, stored_bank_bytes
from impresslearn.checkpoint import atomic_write
from impresslearn.config import ConfigError, TrainConfig, check_integer, check_known_keys, check_real
from impresslearn.layers import coefficient_columns
from impresslearn.models import create_model
from impresslearn.scenarios import BatchLoader, create_scenario
from impresslearn.tasks import check_granularity, granularity_words
from impresslearn.validation import (ALPHA_CANDIDATES, MASK_CANDIDATES, VALIDATION_IMAGES, candidate_name, choose,
                                     validation_split)  # fmt: skip

ROOT = Path(__file__).resolve().parents[1]
MASK_CACHE = ROOT / "runs" / "frontier_masks"
BASIS_FIRST_TASK = 10  # Permuted: trained banks use tasks 10, 11, ...; new tasks are 1 + seed < 10
METHODS = {
    "permuted": ("supsup", "random", "heterogeneous", "homogeneous", "mixed"),
    "rotated": ("supsup", "heterogeneous", "random", "mixed"),
}
BANK_LABELS = {
    "supsup": "SupSup (one mask per task)",
    "random": "random (stored as its seed)",
    "heterogeneous": "heterogeneous (K other tasks' masks)",
    "homogeneous": "homogeneous (K masks of one task)",
    "mixed": "mixed (trained + random)",
}


# ----------------------------------------------------------------------------- the config


def _reals(value, key, **bounds) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{key}: must be a non-empty list, got {value!r}")
    return tuple(check_real(v, f"{key}[{i}]", **bounds) for i, v in enumerate(value))


def _ints(value, key, minimum: int, allow_empty: bool = True) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or (not value and not allow_empty):
        raise ConfigError(f"{key}: must be a {'' if allow_empty else 'non-empty '}list, got {value!r}")
    return tuple(check_integer(v, f"{key}[{i}]", minimum=minimum) for i, v in enumerate(value))


@dataclass(frozen=True)
class FrontierConfig:
    """What one frontier run trains; every field is checked here, so bad values fail by name.

    ``densities``: SupSup and random banks at each; ``density``: the trained (heterogeneous,
    homogeneous, mixed) banks and Rotated. ``random_ks`` maps a density to its random-bank sizes
    (``default`` for densities not listed; Rotated: the one at ``density``). ``trained_ks``:
    heterogeneous and homogeneous bank sizes (Rotated: heterogeneous). ``mixed``: ``[trained, K]``
    pairs. ``spacings``: Rotated only. ``finer`` (Rotated only; Permuted has
    ``benchmarks/frontier_granularity.py``): ``[K, granularity]`` pairs, random banks of K masks
    with alpha per ``"channel"`` or per block of that many output channels. ``only``: the methods
    to run (all of the scenario's by default).
    """

    scenario: str = "permuted"
    out: str = "docs/results/frontier/frontier.json"
    figure: str | None = None
    train_images: int = 12_000
    seeds: tuple[int, ...] = (0, 1, 2)
    density: float = 0.1
    densities: tuple[float, ...] = (0.1,)
    random_ks: tuple[tuple[str, tuple[int, ...]], ...] = (("default", (10, 50, 250, 500, 1000)),)
    trained_ks: tuple[int, ...] = ()
    mixed: tuple[tuple[int, int], ...] = ()
    spacings: tuple[float, ...] = ()
    finer: tuple[tuple[int, str | int], ...] = ()
    only: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        def put(name, value):
            object.__setattr__(self, name, value)

        if self.scenario not in METHODS:
            raise ConfigError(f"scenario: must be one of {sorted(METHODS)}, got {self.scenario!r}")
        if not isinstance(self.out, str) or not self.out:
            raise ConfigError(f"out: must be a path, got {self.out!r}")
        if self.figure is not None and not isinstance(self.figure, str):
            raise ConfigError(f"figure: must be a path, got {self.figure!r}")
        put("train_images", check_integer(self.train_images, "train_images", minimum=1))
        put("seeds", _ints(self.seeds, "seeds", minimum=0, allow_empty=False))
        if self.scenario == "permuted" and max(self.seeds) + 1 >= BASIS_FIRST_TASK:
            raise ConfigError(f"seeds: must be < {BASIS_FIRST_TASK - 1} (new task 1 + seed comes before the "
                              f"basis tasks {BASIS_FIRST_TASK}, ...), got {max(self.seeds)}")  # fmt: skip
        bounds = dict(minimum=0, maximum=1, exclusive_minimum=True)
        put("density", check_real(self.density, "density", **bounds))
        put("densities", _reals(self.densities, "densities", **bounds))
        ks = self.random_ks
        if not isinstance(ks, (dict, tuple, list)):
            raise ConfigError(f"random_ks: must map densities (or 'default') to lists of K, got {ks!r}")
        items = ks.items() if isinstance(ks, dict) else ks
        checked = []
        for key, value in items:
            if key != "default":
                key = f"{check_real(key, 'random_ks key', **bounds):g}"
            checked.append((key, _ints(value, f"random_ks[{key}]", minimum=1)))
        put("random_ks", tuple(checked))
        put("trained_ks", _ints(self.trained_ks, "trained_ks", minimum=1))
        pairs = []
        for i, pair in enumerate(self.mixed):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ConfigError(f"mixed[{i}]: must be [trained masks, K], got {pair!r}")
            trained = check_integer(pair[0], f"mixed[{i}][0] (trained masks)", minimum=1)
            k = check_integer(pair[1], f"mixed[{i}][1] (K)", minimum=trained + 1)
            pairs.append((trained, k))
        put("mixed", tuple(pairs))
        if not isinstance(self.finer, (list, tuple)):
            raise ConfigError(f"finer: must be a list of [K, granularity] pairs, got {self.finer!r}")
        finer = []
        for i, pair in enumerate(self.finer):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ConfigError(f"finer[{i}]: must be [K, granularity], got {pair!r}")
            k = check_integer(pair[0], f"finer[{i}][0] (K)", minimum=1)
            try:
                granularity = check_granularity(pair[1])
            except ValueError as exc:
                raise ConfigError(f"finer[{i}][1]: {exc}") from None
            if granularity == "layer":
                raise ConfigError(f"finer[{i}][1]: per-layer random banks are random_ks; give 'channel' or a block")
            finer.append((k, granularity))
        put("finer", tuple(finer))
        if self.finer and self.scenario != "rotated":
            raise ConfigError("finer: Rotated only (Permuted: benchmarks/frontier_granularity.py)")
        put("spacings", _reals(self.spacings, "spacings", minimum=0, maximum=360, exclusive_minimum=True,
                               exclusive_maximum=True) if self.spacings else ())  # fmt: skip
        if self.scenario == "rotated":
            if not self.spacings or not self.trained_ks:
                raise ConfigError("rotated: needs spacings and trained_ks")
            if max(self.seeds) + 1 >= min(self.trained_ks):
                raise ConfigError(f"trained_ks: a new task of seed {max(self.seeds)} lies between basis tasks "
                                  f"{max(self.seeds)} and {max(self.seeds) + 1}; use K > {max(self.seeds) + 1}")  # fmt: skip
        if not isinstance(self.only, (list, tuple)):
            raise ConfigError(f"only: must be a list of methods, got {self.only!r}")
        put("only", tuple(self.only))
        for method in self.only:
            if method not in METHODS[self.scenario]:
                raise ConfigError(f"only: {method!r} is not a {self.scenario} method ({', '.join(METHODS[self.scenario])})")

    def ks_at(self, density: float) -> tuple[int, ...]:
        """Random-bank sizes at ``density``."""
        table = dict(self.random_ks)
        return table.get(f"{density:g}", table.get("default", ()))

    def runs(self, method: str) -> bool:
        return not self.only or method in self.only

    @classmethod
    def from_yaml(cls, path: Path, **overrides) -> FrontierConfig:
        """The config in ``path`` (unknown keys refused by name), with ``overrides`` (not None) on top."""
        if not Path(path).is_file():
            raise ConfigError(f"{path}: no such config file")
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: must be a mapping of fields, got {type(data).__name__}")
        check_known_keys(data, {f.name for f in dataclasses.fields(cls)}, str(path))
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None


# ----------------------------------------------------------------------------- results file


def load_rows(path: Path) -> list[dict]:
    return json.loads(path.read_text())["rows"] if path.exists() else []


def locked(path: Path) -> FileLock:
    """An exclusive lock beside ``path`` (two runs may append to one results file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path.with_name(path.name + ".lock"))


def recorder(path: Path, rows: list[dict], settings: dict):
    """``record(row)``: under the lock, re-read the file (another run may have added rows), append
    the row, write the file whole (``atomic_write``: a reader sees the old file or the new one) and
    refresh ``rows``."""

    def record(row):
        with locked(path):
            rows[:] = load_rows(path) + [row]
            atomic_write(path, json.dumps(dict(settings=settings, rows=rows), indent=1))
        print(json.dumps(row), flush=True)

    return record


def matching(rows: list[dict], **group) -> list[dict]:
    return [r for r in rows if all(r.get(key) == value for key, value in group.items())]


def chosen(rows: list[dict], candidates, **group) -> TrainConfig | None:
    """The candidate chosen on the first seed's validation accuracy for ``group``; None until all ran."""
    return choose(matching(rows, **group), candidates, metric=lambda r: r["validation"]["fp32"])


def plan_runs(rows: list[dict], seeds, candidates, earlier: list[dict] | None = None, **group):
    """(seed, config) still to run for ``group``: every candidate on the first seed, then the one
    chosen on validation for the other seeds; rows already in ``rows`` are skipped (resume).
    With ``earlier`` (another results file's rows) its choice for ``group`` is used for every seed."""
    if earlier is not None:
        choice = chosen(earlier, candidates, **group)
        if choice is None:
            raise SystemExit(f"--choices-from has no choice for {group}")
        candidates = [choice]
    done = {(r["seed"], r["candidate"]) for r in matching(rows, **group)}
    for seed in seeds:
        pool = candidates if seed == seeds[0] else [chosen(rows, candidates, **group)]
        for cfg in pool:
            if (seed, candidate_name(cfg)) not in done:
                yield seed, cfg


def task_loaders(task, train_images: int, seed: int):
    """(train, validation, test) loaders of one task: ``validation_split`` of its training set, then its test set."""
    train, val = validation_split(task.train, VALIDATION_IMAGES, train_images)
    return (BatchLoader(train, batch_size=128, shuffle=True, seed=seed), BatchLoader(val, batch_size=1000),
            BatchLoader(task.test, batch_size=1000))  # fmt: skip


# ----------------------------------------------------------------------------- training


def new_learner(density: float) -> ImpressLearner:
    return ImpressLearner(create_model("lenet300", seed=0), density=density, progress=False)


def train_mask(key: str, density: float, make_loader, cfg: TrainConfig) -> list[torch.Tensor]:
    """An edge-popup mask (bool per layer) for the task behind ``make_loader()``, cached on disk
    under ``key`` (which must name the task, density, candidate, seed and training images); the
    task's data is built only when the mask is not cached."""
    path = MASK_CACHE / f"{key}.safetensors"
    if path.exists():
        stored = load_file(path)
        return [stored[str(i)] for i in range(len(stored))]
    learner = new_learner(density)
    learner.learn_basis_mask("task", make_loader(), cfg)
    masks = [layer.masks()[0] for layer in learner.layers]
    atomic_write(path, save({str(i): m.contiguous() for i, m in enumerate(masks)}), make_parents=True)
    return masks


def alpha_row(learner: ImpressLearner, loaders, cfg: TrainConfig, seed: int, **fields) -> dict:
    """Train alpha over ``learner``'s bank on a new task; accuracy with fp32/fp16/bf16 coefficients.
    A ``granularity`` field (benchmarks/frontier_granularity.py) trains alpha at that granularity."""
    train, val, test = loaders
    t0 = time.perf_counter()
    history = learner.learn_alpha("task", train, cfg.replace(seed=seed), granularity=fields.get("granularity", "layer"))
    seconds = time.perf_counter() - t0
    alpha = history.task.coefficients
    accuracy = {"validation": {}, "test": {}}
    for dtype in COEFFICIENT_DTYPES:
        name = "task" if dtype == "fp32" else f"task {dtype}"
        if dtype != "fp32":
            learner.register_task(name, round_coefficients(alpha, dtype), granularity=history.task.granularity)
        accuracy["validation"][dtype] = learner.evaluate(name, val)
        accuracy["test"][dtype] = learner.evaluate(name, test)
    return dict(fields, seed=seed, candidate=candidate_name(cfg), seconds=round(seconds, 1), **accuracy)


def supsup_row(loaders, cfg: TrainConfig, seed: int, **fields) -> dict:
    """Train SupSup's dedicated mask (at ``fields["density"]``) on a new task."""
    train, val, test = loaders
    learner = new_learner(fields["density"])
    t0 = time.perf_counter()
    learner.learn_basis_mask("task", train, cfg.replace(seed=seed))
    seconds = time.perf_counter() - t0
    return dict(fields, seed=seed, candidate=candidate_name(cfg), seconds=round(seconds, 1),
                validation={"fp32": learner.evaluate("task", val)}, test={"fp32": learner.evaluate("task", test)})  # fmt: skip


def run_permuted(config: FrontierConfig, choices_from: str | None = None) -> None:
    out = ROOT / config.out
    settings = dict(scenario="permuted_fmnist", train_images=config.train_images, validation_images=VALIDATION_IMAGES,
                    epochs=3, batch_size=128, threads=torch.get_num_threads())  # fmt: skip
    rows = load_rows(out)
    record = recorder(out, rows, settings)
    earlier = load_rows(Path(choices_from)) if choices_from else None
    trained_ks = config.trained_ks + tuple(t for t, _ in config.mixed)
    sc = create_scenario("permuted_fmnist", num_tasks=BASIS_FIRST_TASK + max(trained_ks, default=1), seed=0)

    def loaders(t, seed):
        return task_loaders(sc.task(t), config.train_images, seed)

    for density in config.densities:
        if config.runs("supsup"):
            group = dict(method="supsup", K=1, density=density)
            for seed, cfg in plan_runs(rows, config.seeds, earlier=earlier, candidates=MASK_CANDIDATES, **group):
                record(supsup_row(loaders(1 + seed, seed), cfg, seed, **group))
        if config.runs("random"):
            for k in config.ks_at(density):
                group = dict(method="random", K=k, density=density)
                for seed, cfg in plan_runs(rows, config.seeds, earlier=earlier, candidates=ALPHA_CANDIDATES, **group):
                    learner = new_learner(density)
                    learner.add_random_masks(k, seed=seed)
                    record(alpha_row(learner, loaders(1 + seed, seed), cfg, seed, **group))

    density = config.density

    def basis_mask(kind: str, j: int) -> list[torch.Tensor]:
        """Mask j of a trained bank: heterogeneous j = task 10 + j (score seed j); homogeneous
        j = task 10 with score seed j (so mask 0 is the same mask in both), each trained with the
        candidate chosen for SupSup at this density on its validation split."""
        mask_cfg = chosen(rows, MASK_CANDIDATES, method="supsup", K=1, density=density)
        if mask_cfg is None:
            raise SystemExit(f"no SupSup choice at density {density:g} yet: run 'supsup' first")
        task = BASIS_FIRST_TASK + (j if kind == "heterogeneous" else 0)
        key = (f"permuted-task{task}-s{density:g}-{candidate_name(mask_cfg).replace(' ', '_')}-seed{j}"
               f"-n{config.train_images}")  # fmt: skip
        return train_mask(key, density, lambda: loaders(task, j)[0], mask_cfg.replace(seed=j))

    def trained_learner(kind: str, trained: int) -> ImpressLearner:
        learner = new_learner(density)
        masks = [basis_mask(kind, j) for j in range(trained)]
        learner.add_masks([torch.stack([m[i] for m in masks]) for i in range(learner.num_layers)])
        return learner

    for kind in ("heterogeneous", "homogeneous"):
        if config.runs(kind):
            for k in config.trained_ks:
                group = dict(method=kind, K=k, density=density)
                for seed, cfg in plan_runs(rows, config.seeds, earlier=earlier, candidates=ALPHA_CANDIDATES, **group):
                    record(alpha_row(trained_learner(kind, k), loaders(1 + seed, seed), cfg, seed, **group))
    if config.runs("mixed"):
        for trained, k in config.mixed:
            group = dict(method="mixed", K=k, trained=trained, density=density)
            for seed, cfg in plan_runs(rows, config.seeds, earlier=earlier, candidates=ALPHA_CANDIDATES, **group):
                learner = trained_learner("heterogeneous", trained)
                learner.add_random_masks(k - trained, seed=seed)  # the first K - T masks of seed s's random bank
                record(alpha_row(learner, loaders(1 + seed, seed), cfg, seed, **group))


def rotated_angles(spacing: float, k: int, seeds) -> tuple[list[float], dict[int, float]]:
    """Basis angles ``0, spacing, ..., (k-1) spacing`` and, per seed ``s``, a new task half-way
    between basis tasks ``s`` and ``s + 1`` (never one of the basis angles)."""
    return [spacing * i for i in range(k)], {seed: spacing * (seed + 0.5) for seed in seeds}


def run_rotated(config: FrontierConfig, choices_from: str | None = None) -> None:
    """Per spacing, K basis masks trained with edge-popup on tasks at ``0, spacing, ...``
    (heterogeneous impressions), alpha over the first K of them on new tasks half-way between
    two basis angles, against SupSup's dedicated mask on the same new tasks; then, on the same new
    tasks, random banks of K masks drawn from seed ``s`` (per layer, and ``finer``) and mixed
    banks (the first T basis masks and K - T random ones). The basis masks are trained with the
    candidate SupSup chose on validation at that spacing."""
    out = ROOT / config.out
    density = config.density
    settings = dict(scenario="rotated_fmnist", train_images=config.train_images, validation_images=VALIDATION_IMAGES,
                    epochs=3, batch_size=128, threads=torch.get_num_threads())  # fmt: skip
    rows = load_rows(out)
    record = recorder(out, rows, settings)
    earlier = load_rows(Path(choices_from)) if choices_from else None
    basis_tasks = max(config.trained_ks + tuple(t for t, _ in config.mixed))
    for spacing in config.spacings:
        basis, new = rotated_angles(spacing, basis_tasks, config.seeds)
        angles = basis + [new[seed] for seed in config.seeds]
        sc = create_scenario("rotated_fmnist", num_tasks=len(angles), angles=angles, seed=0)
        new_task = {seed: len(basis) + i for i, seed in enumerate(config.seeds)}

        def loaders(t, seed):
            return task_loaders(sc.task(t), config.train_images, seed)

        group = dict(method="supsup", K=1, spacing=spacing, density=density)
        if config.runs("supsup"):
            for seed, cfg in plan_runs(rows, config.seeds, earlier=earlier, candidates=MASK_CANDIDATES, **group):
                record(supsup_row(loaders(new_task[seed], seed), cfg, seed, angle=new[seed], **group))

        def basis_learner(k: int) -> ImpressLearner:
            """A learner whose bank holds the masks of the first k basis tasks (trained once, cached)."""
            mask_cfg = chosen(rows, MASK_CANDIDATES, **group)
            if mask_cfg is None:
                raise SystemExit(f"no SupSup choice at spacing {spacing:g} yet: run 'supsup' first")
            masks = []
            for t, angle in enumerate(basis[:k]):
                key = (f"rotated-{angle:g}deg-s{density:g}-{candidate_name(mask_cfg).replace(' ', '_')}-seed{t}"
                       f"-n{config.train_images}")  # fmt: skip
                masks.append(train_mask(key, density, lambda: loaders(t, 0)[0], mask_cfg.replace(seed=t)))
            learner = new_learner(density)
            learner.add_masks([torch.stack([m[i] for m in masks]) for i in range(learner.num_layers)])
            return learner

        def random_learner(k: int, seed: int) -> ImpressLearner:
            learner = new_learner(density)
            learner.add_random_masks(k, seed=seed)
            return learner

        # (group, bank of a seed) per bank; random rows name their granularity, so per-layer and finer rows differ
        banks = []
        if config.runs("heterogeneous"):
            banks += [(dict(method="heterogeneous", K=k), lambda seed, k=k: basis_learner(k))
                      for k in sorted(config.trained_ks)]  # fmt: skip
        if config.runs("random"):
            banks += [(dict(method="random", K=k, granularity=granularity), lambda seed, k=k: random_learner(k, seed))
                      for k, granularity in [(k, "layer") for k in config.ks_at(density)] + list(config.finer)]  # fmt: skip
        if config.runs("mixed"):
            def mixed_learner(seed, trained, k):
                learner = basis_learner(trained)
                learner.add_random_masks(k - trained, seed=seed)  # the first K - T masks of seed s's random bank
                return learner

            banks += [(dict(method="mixed", K=k, trained=trained), lambda seed, t=trained, k=k: mixed_learner(seed, t, k))
                      for trained, k in config.mixed]  # fmt: skip
        for bank, make_learner in banks:
            kgroup = dict(bank, spacing=spacing, density=density)
            for seed, cfg in plan_runs(rows, config.seeds, earlier=earlier, candidates=ALPHA_CANDIDATES, **kgroup):
                record(alpha_row(make_learner(seed), loaders(new_task[seed], seed), cfg, seed, angle=new[seed], **kgroup))


# ----------------------------------------------------------------------------- report


def lenet_sizes() -> tuple[list[int], list[int]]:
    return accounting.model_sizes(create_model("lenet300", seed=0))


def task_bytes(method: str, k: int, dtype: str, trained: int = 0, granularity="layer") -> dict:
    """Bytes of one new task (LeNet-300-100, no BN) by the one accounting function.

    ``task``: what the new task stores, alpha[K, 3] in ``dtype`` (at a finer ``granularity``,
    alpha[K, columns], ``layers.coefficient_columns``) plus its share of the bank
    masks that no basis task owns, counted in full (a bank shared by one task: the worst case;
    with T tasks it is 1/T of that, the paper's Phi): a random draw is its record and a hash
    (56 B); a homogeneous bank's K - 1 extra masks of one task cost 1 bit per weight each.
    ``basis``: the trained masks that basis tasks own (each a SupSup mask of its task), stored
    anyway by those tasks and not charged to the new task. SupSup's task is its own mask.
    """
    model = create_model("lenet300", seed=0)
    sizes, features = accounting.model_sizes(model)
    mask = accounting.mask_bytes(sizes)
    columns = sum(coefficient_columns(model, granularity))
    if method == "supsup":
        return dict(task=accounting.supsup_bytes_per_task(sizes, features), basis=0)
    trained_masks = {"random": 0, "mixed": trained}.get(method, k)
    owned = {"heterogeneous": k, "homogeneous": 1, "mixed": trained}.get(method, 0)
    draws = [dict(first=trained_masks, count=k - trained_masks, seed=0)] if k > trained_masks else []
    shared = stored_bank_bytes(sizes, k, draws) - owned * mask
    total = accounting.task_bytes("new", k, sizes, features, coefficient_dtype=dtype, bank_share=shared,
                                  num_columns=columns).total
    return dict(task=int(total), basis=owned * mask)


def summarise(rows: list[dict], group_keys=("method", "K", "density", "trained")) -> list[dict]:
    """One entry per group (and coefficient dtype): the candidate chosen on validation (first
    seed) and the test accuracy of its runs, mean and sd over seeds; test is read only here."""
    order = {m: i for i, m in enumerate(BANK_LABELS)}

    def rank(i, v):  # a column may mix numbers and words (granularity: 4, "channel", "layer"): numbers first
        return (0, order.get(v, 0)) if i == 0 else (1, v) if isinstance(v, str) else (0, -1 if v is None else v)

    groups = sorted({tuple(r.get(key) for key in group_keys) for r in rows},
                    key=lambda g: tuple(rank(i, v) for i, v in enumerate(g)))
    table = []
    for values in groups:
        group = dict(zip(group_keys, values))
        mine = matching(rows, **group)
        first = min(r["seed"] for r in mine)
        best = max((r for r in mine if r["seed"] == first), key=lambda r: r["validation"]["fp32"])["candidate"]
        runs = [r for r in mine if r["candidate"] == best]
        for dtype in sorted(runs[0]["test"], key=list(COEFFICIENT_DTYPES).index):
            acc = [100 * r["test"][dtype] for r in runs]
            table.append(dict(group, dtype=dtype, candidate=best, mean=statistics.mean(acc), n=len(acc),
                              sd=statistics.stdev(acc) if len(acc) > 1 else float("nan"),
                              per_seed={r["seed"]: 100 * r["test"][dtype] for r in runs}))  # fmt: skip
    return table


def report_permuted(config: FrontierConfig, figure: Path | None) -> list[dict]:
    """Two tables: every bank kind at ``config.density`` (one row per bank, accuracy with fp32,
    fp16 and bf16 coefficients), then SupSup and random banks at every density (fp16)."""
    rows = load_rows(ROOT / config.out)
    if not rows:
        raise SystemExit(f"{config.out}: no rows yet; run without --report first")
    table = summarise(rows)
    for entry in table:
        entry.update(task_bytes(entry["method"], entry["K"], entry["dtype"], entry.get("trained") or 0))
    supsup = {e["density"]: e for e in table if e["method"] == "supsup"}
    by_dtype = {(e["method"], e["K"], e["density"], e.get("trained"), e["dtype"]): e for e in table}

    def cell(e):
        return f"{e['mean']:.1f} +- {e['sd']:.1f}" if e else "-"

    def bank_k(e):
        if e["method"] == "supsup":
            return "-"
        return f"{e['trained']} + {e['K'] - e['trained']}" if e["method"] == "mixed" else str(e["K"])

    def gap(e):
        ref = supsup.get(e["density"])
        return "-" if not ref or e["method"] == "supsup" else f"{e['mean'] - ref['mean']:+.1f}"

    def ratio(e):
        ref = supsup.get(e["density"])
        if not ref:
            return "-"
        fewer = ref["task"] / e["task"]
        return f"{fewer:.1f}" if fewer >= 0.1 else f"{fewer:.2f}"

    print(f"Density {config.density:g}, every bank kind (bytes: fp32 / fp16 coefficients; 'vs SupSup' and "
          "'x fewer' with fp16):\n")
    print("| bank | K | lr (chosen on validation) | bytes per new task | x fewer than SupSup | trained masks owned by "
          "basis tasks (B) | test accuracy %, fp32 | fp16 | bf16 | vs SupSup (points) | seeds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for e in table:
        if e["density"] != config.density or e["dtype"] not in ("fp32",):
            continue
        key = (e["method"], e["K"], e["density"], e.get("trained"))
        half, bf16 = by_dtype.get(key + ("fp16",)), by_dtype.get(key + ("bf16",))
        shown = half or e
        nbytes = f"{e['task']:,}" + (f" / {half['task']:,}" if half else "")
        print(f"| {BANK_LABELS[e['method']]} | {bank_k(e)} | {e['candidate']} | {nbytes} | {ratio(shown)} | "
              f"{e['basis']:,} | {cell(e)} | {cell(half)} | {cell(bf16)} | {gap(shown)} | {e['n']} |")
    others = sorted({e["density"] for e in table} - {config.density})
    if others:
        print("\nSupSup and random banks at every density (fp16 coefficients):\n")
        print("| density | bank | K | lr (chosen on validation) | bytes per new task | x fewer than SupSup "
              "| test accuracy % (mean +- sd) | vs SupSup (points) | seeds |")
        print("|---|---|---|---|---|---|---|---|---|")
        for e in sorted(table, key=lambda e: e["density"]):
            if e["method"] not in ("supsup", "random") or e["dtype"] != ("fp32" if e["method"] == "supsup" else "fp16"):
                continue
            if e["method"] == "random" and e["K"] not in dict.fromkeys(k for d in others for k in config.ks_at(d)):
                continue
            print(f"| {e['density']:g} | {BANK_LABELS[e['method']]} | {bank_k(e)} | {e['candidate']} | {e['task']:,} "
                  f"| {ratio(e)} | {cell(e)} | {gap(e)} | {e['n']} |")
    if figure:
        draw_permuted(table, config.density, figure)
        print(f"figure: {figure}")
    return table


# Rotated rows are shown with these coefficients: the heterogeneous rows of three spacings were
# scored in fp32 only (fp16 scores the same where both ran); random and mixed banks in fp16.
ROTATED_DTYPES = {"supsup": "fp32", "heterogeneous": "fp32", "random": "fp16", "mixed": "fp16"}


def coefficients_label(dtype: str, granularity) -> str:
    return f"{dtype}, {granularity_words(granularity)}"


def bank_label(e: dict) -> str:
    """How a Rotated row's bank reads in the table and the figure."""
    if e["method"] == "mixed":
        return f"mixed ({e['trained']} basis + {e['K'] - e['trained']} random)"
    return {"supsup": "SupSup", "heterogeneous": "heterogeneous impressions"}.get(e["method"], BANK_LABELS[e["method"]])


def report_rotated(config: FrontierConfig, figure: Path | None) -> list[dict]:
    rows = load_rows(ROOT / config.out)
    if not rows:
        raise SystemExit(f"{config.out}: no rows yet; run without --report first")
    rows = [dict(r, granularity=r.get("granularity", "layer")) for r in rows]
    table = [e for e in summarise(rows, ("spacing", "method", "K", "trained", "granularity"))
             if e["dtype"] == ROTATED_DTYPES[e["method"]]]  # fmt: skip
    for e in table:
        e.update(task_bytes(e["method"], e["K"], e["dtype"], e.get("trained") or 0, e["granularity"]))
    order = list(METHODS["rotated"])
    table.sort(key=lambda e: (e["spacing"], order.index(e["method"]), e["K"], e["task"]))
    print("| spacing (degrees) | bank | K | coefficients | lr (chosen on validation) | bytes per new task | bank "
          "(stored by the basis tasks) | test accuracy % (mean +- sd) | seeds | vs SupSup (points) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for e in table:
        ref = next((s for s in table if s["method"] == "supsup" and s["spacing"] == e["spacing"]), None)
        gap = "-" if ref is None or e["method"] == "supsup" else f"{e['mean'] - ref['mean']:+.1f}"
        supsup = e["method"] == "supsup"
        bank = f"{e['basis']:,}" if e["basis"] else "-"
        print(f"| {e['spacing']:g} | {bank_label(e)} | {'-' if supsup else e['K']} | "
              f"{'-' if supsup else coefficients_label(e['dtype'], e['granularity'])} | {e['candidate']} | "
              f"{e['task']:,} | {bank} | {e['mean']:.1f} +- {e['sd']:.1f} | {e['n']} | {gap} |")
    if figure:
        draw_rotated(table, figure)
        print(f"figure: {figure}")
    return table


def _errorbar(ax, points, **style):
    ax.errorbar([p["task"] if "x" not in p else p["x"] for p in points], [p["mean"] for p in points],
                yerr=[0 if math.isnan(p["sd"]) else p["sd"] for p in points], capsize=3, **style)  # fmt: skip


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_permuted(table: list[dict], density: float, path: Path) -> None:
    """Accuracy against bytes per new task at ``density``: every bank kind, fp16 coefficients
    (fp32 and bf16 score the same, the table shows them), SupSup's point; a second panel: SupSup
    and random banks at every density."""
    plt = _pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12.5, 5.8))
    at = [e for e in table if e["density"] == density]
    styles = [("random", "fp16", "s", "C1"), ("heterogeneous", "fp16", "^", "C2"),
              ("homogeneous", "fp16", "v", "C3"), ("mixed", "fp16", "D", "C4")]  # fmt: skip
    for method, dtype, marker, colour in styles:
        points = sorted((e for e in at if e["method"] == method and e["dtype"] == dtype), key=lambda e: e["task"])
        if points:
            _errorbar(ax, points, marker=marker, color=colour, label=f"{BANK_LABELS[method]}, alpha in {dtype}")
            for p in points:
                ax.annotate(f"K={p['K']}", (p["task"], p["mean"]), textcoords="offset points", xytext=(4, -11),
                            fontsize=7, color=colour)  # fmt: skip
    for ref in (e for e in at if e["method"] == "supsup"):
        _errorbar(ax, [ref], marker="*", markersize=13, color="k", linestyle="none", label="SupSup (dedicated mask)")
        ax.axvline(ref["task"] / 10, color="grey", linestyle=":", label="10x fewer bytes than SupSup")
        ax.axhline(ref["mean"] - 2, color="grey", linestyle="--", label="SupSup - 2 points")
    ax.set_xscale("log")
    ax.set_xlabel("bytes per new task (log scale; bank share counted for T = 1)")
    ax.set_ylabel("test accuracy on the new task (%)")
    ax.set_title(f"Permuted Fashion-MNIST, LeNet-300-100, density {density:g}: bank kinds", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)  # the points fill the axes
    ax.grid(alpha=0.3, which="both")
    densities = sorted({e["density"] for e in table})
    for i, d in enumerate(densities):
        points = sorted((e for e in table if e["density"] == d and e["method"] == "random" and e["dtype"] == "fp16"),
                        key=lambda e: e["task"])  # fmt: skip
        colour = f"C{i}"
        if points:
            _errorbar(bx, points, marker="s", color=colour, label=f"random bank, fp16, s = {d:g}")
        for ref in (e for e in table if e["density"] == d and e["method"] == "supsup"):
            _errorbar(bx, [ref], marker="*", markersize=12, color=colour, linestyle="none",
                      label=f"SupSup, s = {d:g}")  # fmt: skip
    bx.set_xscale("log")
    bx.set_xlabel("bytes per new task (log scale)")
    bx.set_ylabel("test accuracy on the new task (%)")
    bx.set_title("random banks and SupSup across densities", fontsize=10)
    bx.legend(fontsize=7, loc="lower right", ncol=2)
    bx.grid(alpha=0.3, which="both")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def draw_rotated(table: list[dict], path: Path) -> None:
    """Accuracy against the spacing of the basis tasks (log x): SupSup and each bank (solid:
    heterogeneous impressions, dashed: random, dotted: mixed)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.0, 6.4))
    lines = {"heterogeneous": "-", "random": "--", "mixed": ":"}

    def bank(e):
        return e["method"], e["K"], e.get("trained") or 0, str(e["granularity"])

    banks = sorted({bank(e) for e in table}, key=lambda b: (list(METHODS["rotated"]).index(b[0]), b[1], b[3]))
    for i, line in enumerate(banks):
        points = sorted((dict(e, x=e["spacing"]) for e in table if bank(e) == line), key=lambda e: e["x"])
        first, method, k = points[0], line[0], line[1]
        if method == "supsup":
            label, style = f"SupSup (dedicated mask, {first['task']:,} B)", dict(marker="*", color="k")
        else:
            label = (f"{bank_label(first)}, K = {k}, {coefficients_label(first['dtype'], first['granularity'])} "
                     f"({first['task']:,} B)")  # fmt: skip
            style = dict(marker="o", color=f"C{i % 10}", linestyle=lines[method])
        _errorbar(ax, points, label=label, **style)
    ax.set_xscale("log")
    spacings = sorted({e["spacing"] for e in table})
    ax.set_xticks(spacings, [f"{d:g}" for d in spacings])
    ax.minorticks_off()
    ax.set_xlabel("spacing between basis tasks (degrees, log scale); new task half-way between two")
    ax.set_ylabel("test accuracy on the new task (%)")
    ax.set_title("Rotated Fashion-MNIST, LeNet-300-100, density 0.1 (bytes per new task in brackets)", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)  # below: the points fill the axes
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


# ----------------------------------------------------------------------------- command line


def main(argv=None) -> None:
    def numbers(kind):
        return lambda s: [kind(v) for v in s.split(",")]

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", type=Path, nargs="?", default=ROOT / "configs" / "frontier_permuted.yaml",
                   help="YAML config (default configs/frontier_permuted.yaml)")
    p.add_argument("--out", default=None, help="results JSON (appended to; resumes); overrides the config's out")
    p.add_argument("--train-images", type=int, default=None, help="training images per task")
    p.add_argument("--seeds", type=numbers(int), default=None)
    p.add_argument("--densities", type=numbers(float), default=None, help="SupSup and random banks at each")
    p.add_argument("--ks", type=numbers(int), default=None,
                   help="random-bank sizes at every density (overrides the config's random_ks)")
    p.add_argument("--spacings", type=numbers(float), default=None, help="rotated: degrees between basis tasks")
    p.add_argument("--only", type=lambda s: s.split(","), default=None,
                   help="methods to run: supsup, random, heterogeneous, homogeneous, mixed")
    p.add_argument("--choices-from", default=None,
                   help="reuse the candidates another results file chose on its validation split (no new choice)")
    p.add_argument("--report", action="store_true", help="print the table (and draw the figure) from the results")
    p.add_argument("--figure", default=None, help="figure path (overrides the config's figure)")
    args = p.parse_args(argv)
    try:
        config = FrontierConfig.from_yaml(args.config, out=args.out, train_images=args.train_images, seeds=args.seeds,
                                          densities=args.densities, spacings=args.spacings, only=args.only,
                                          random_ks=None if args.ks is None else {"default": args.ks},
                                          figure=args.figure)  # fmt: skip
    except ConfigError as exc:
        p.error(str(exc))
    rotated = config.scenario == "rotated"
    if args.report:
        figure = ROOT / config.figure if config.figure else None
        (report_rotated if rotated else report_permuted)(config, figure)
    else:
        (run_rotated if rotated else run_permuted)(config, args.choices_from)


if __name__ == "__main__":
    main()
