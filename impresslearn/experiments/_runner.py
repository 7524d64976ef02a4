"""Executes one run of a sweep with the real method (``ImpressLearner``) on real data.

Run kinds (see ``_sweep.expand``):

``supsup``          one edge-popup mask per new task, evaluated on it (the SupSup GG benchmark)
``incorrect_mask``  basis mask 0 evaluated on every new task (the paper's "X": should be chance)
``impress``         an impression set (kind x count) + alpha learned per new task (Eq. 1-2),
                    accuracy with task labels and with the task inferred per test batch (GN)
``basis_gn``        alpha fitted on each unnamed basis task: which mask it picks, its accuracy
``gn``              many alpha tasks, then GN task identification from one test batch each

Trained masks are the expensive part, and the same mask recurs across runs (a count-10 set
holds the count-5 set's masks; the SupSup masks of the new tasks are the same in every run of a
seed). Every trained mask is therefore cached, in memory and under ``<out>/cache/masks/``, by a
hash of what determines it bit for bit: scenario, model, backbone seed, density, mask-training
config, task index and popup seed, and the numerics of the machine that trained it (see
``numerics_key``). A resumed sweep reuses the masks of the killed one.

Training is not bit-identical across CPU thread counts: torch's GEMM splits its sums
differently with 1 and 2 threads, and edge-popup's top-k turns last-bit differences into other
masks. The thread count, device, backend and torch version are therefore part of the cache key:
a sweep resumed with another OMP_NUM_THREADS trains its masks again instead of mixing masks
from two numerics into one result.

A cache entry is an ``impresslearn.checkpoint`` file (safetensors, no pickle, SHA-256 over the
masks and the metadata); an entry that does not verify is logged and retrained, never used.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import torch

from .. import accounting
from ..accounting import model_sizes, supsup_bytes_per_task
from ..banks import round_coefficients, stored_bank_bytes
from ..layers import bind_coefficients, one_hot_coefficients
from ..metrics import accuracy_summary
from ._config import stable_hash

log = logging.getLogger(__name__)

# Popup seeds: the heterogeneous set uses the run seed for every task (paper A.1: one seed
# generates the whole set); homogeneous mask j of task 0 uses a distinct seed per mask.
_HOMOGENEOUS_SEED_STRIDE = 100_003


def _popup_seed(seed: int, j: int) -> int:
    return seed if j == 0 else seed * _HOMOGENEOUS_SEED_STRIDE + j


def basis_sources(kind: str, count: int, seed: int, mixture_homogeneous: float = 0.5) -> list[tuple[int, int]]:
    """(task index, popup seed) of each mask of an impression set, in bank order.

    Bank index b of a heterogeneous or mixture set is basis task b's own mask, so basis-GN
    knows the right answer; homogeneous extras follow.
    """
    if kind == "heterogeneous":
        return [(t, _popup_seed(seed, 0)) for t in range(count)]
    if kind == "homogeneous":
        return [(0, _popup_seed(seed, j)) for j in range(count)]
    if kind == "mixture":
        n_hom = round(count * mixture_homogeneous)
        n_het = max(1, count - n_hom)
        het = [(t, _popup_seed(seed, 0)) for t in range(n_het)]
        return het + [(0, _popup_seed(seed, j)) for j in range(1, count - n_het + 1)]
    raise ValueError(f"basis kind {kind!r} has no trained sources")


# ----------------------------------------------------------------------------- context


class RunContext:
    """What runs of one sweep share: scenario objects, learners per backbone, the mask cache."""

    def __init__(self, out_dir: Path, data_root: str | None = None, device: str = "cpu", backend: str | None = None):
        self.out_dir = Path(out_dir)
        self.data_root = data_root
        self.device = device
        self.backend = backend
        self.cache_dir = self.out_dir / "cache" / "masks"
        self._scenarios: dict[str, Any] = {}
        self._masks: dict[str, dict] = {}
        self._trainers: dict[str, Any] = {}
        self.trained_masks = 0  # masks trained by edge-popup in this process (tests check sharing)

    # --- data
    def scenario(self, params: dict):
        spec = params["scenario"]
        key = stable_hash(spec)
        if key not in self._scenarios:
            from ..scenarios import create_scenario

            kwargs = dict(spec.get("kwargs") or {})
            self._scenarios[key] = create_scenario(
                spec["name"], num_tasks=spec["num_tasks"], root=self.data_root, seed=spec["seed"],
                train_subset=spec["train_subset"], test_subset=spec["test_subset"], **kwargs)
        return self._scenarios[key]

    def loaders(self, params: dict, task_index: int, batch_size: int, seed: int):
        from ..scenarios import BatchLoader

        task = self.scenario(params).task(task_index)
        train = BatchLoader(task.train, batch_size=batch_size, shuffle=True, seed=seed)
        test = BatchLoader(task.test, batch_size=params["scenario"]["test_batch_size"], shuffle=False)
        return task, train, test

    def new_task_loaders(self, params: dict, task_index: int, batch_size: int, seed: int):
        """(train, validation, test) loaders of a new task. With ``params["validation"]`` the
        training set is split (``impresslearn.validation.validation_split``): train on the rest,
        choose on the carved part; without it, validation is None and train is all of it."""
        from ..scenarios import BatchLoader
        from ..validation import validation_split

        spec = params.get("validation")
        task, train, test = self.loaders(params, task_index, batch_size, seed)
        if not spec:
            return train, None, test
        train_part, val_part = validation_split(task.train, spec["images"])
        return (BatchLoader(train_part, batch_size=batch_size, shuffle=True, seed=seed),
                BatchLoader(val_part, batch_size=params["scenario"]["test_batch_size"], shuffle=False), test)

    # --- models and learners
    def new_learner(self, params: dict, seed: int, density: float):
        from ..learner import ImpressLearner
        from ..models import create_model

        scenario = self.scenario(params)
        model_spec = params["model"]
        kwargs = dict(model_spec.get("kwargs") or {})
        kwargs.setdefault("num_classes", scenario.num_classes)
        accepted = factory_kwargs(model_spec["name"])
        if "in_features" in accepted:
            kwargs.setdefault("in_features", _prod(scenario.input_shape))
        if "in_channels" in accepted:
            kwargs.setdefault("in_channels", scenario.input_shape[0])
        model = create_model(model_spec["name"], seed=seed, init=model_spec["init"], **kwargs)
        return ImpressLearner(model, density=density, device=self.device, backend=self.backend)

    # --- the mask cache
    def mask_key(self, params: dict, seed: int, density: float, task_index: int, popup_seed: int) -> str:
        return stable_hash({
            "scenario": params["scenario"], "model": params["model"], "mask_train": params["mask_train"],
            "backbone_seed": seed, "density": density, "task": task_index, "popup_seed": popup_seed,
            "numerics": numerics_key(self.device, self.backend),
        }, length=20)

    def mask(self, params: dict, seed: int, density: float, task_index: int, popup_seed: int) -> dict:
        """``{"masks": [bool tensor per layer], "accuracy": own-task test accuracy}``, trained once."""
        key = self.mask_key(params, seed, density, task_index, popup_seed)
        if key in self._masks:
            return self._masks[key]
        path = self.cache_dir / f"{key}{MASK_CACHE_SUFFIX}"
        if path.is_file():
            try:
                entry = read_mask_entry(path, key)
                self._masks[key] = entry
                return entry
            except MaskCacheError as exc:  # a damaged cache file is retrained, never trusted
                log.warning("%s; retraining", exc)
        entry = self._train_mask(params, seed, density, task_index, popup_seed)
        write_mask_entry(path, key, entry)
        self._masks[key] = entry
        return entry

    def _train_mask(self, params: dict, seed: int, density: float, task_index: int, popup_seed: int) -> dict:
        # One learner per backbone collects every mask trained on it; masks are then copied out
        # as plain bool tensors, so assembling an impression set never retrains.
        tkey = stable_hash({"p": {k: params[k] for k in ("scenario", "model")}, "seed": seed, "density": density})
        if tkey not in self._trainers:
            self._trainers = {tkey: self.new_learner(params, seed, density)}  # keep one backbone in memory
        learner = self._trainers[tkey]
        phase = params["mask_train"]
        task, train, test = self.loaders(params, task_index, phase["batch_size"], seed=popup_seed)
        name = f"mask/{task_index}/{popup_seed}"
        index = learner.learn_basis_mask(name, train, train_config(phase, popup_seed)).task.mask_index
        accuracy = float(learner.evaluate(name, test))
        self.trained_masks += 1
        return {"masks": export_mask(learner, index), "accuracy": accuracy, "task": task_index,
                "popup_seed": popup_seed}

    def learner_with(self, params: dict, seed: int, density: float, sources: list[tuple[int, int]]):
        """A fresh learner on backbone ``seed`` whose bank holds the masks of ``sources`` in order."""
        entries = [self.mask(params, seed, density, t, ps) for t, ps in sources]
        learner = self.new_learner(params, seed, density)
        if entries:
            import_masks(learner, [e["masks"] for e in entries], names=[f"mask/{t}/{ps}" for t, ps in sources])
        return learner, entries


def factory_kwargs(name: str) -> set[str]:
    """Keyword arguments the registered model builder ``name`` accepts (to size its input to the
    data); an unknown name is refused by ``impresslearn.models.model_builder``, naming the
    registered ones."""
    import inspect

    from ..models import model_builder

    return set(inspect.signature(model_builder(name)).parameters)


def _prod(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def numerics_key(device: str, backend: str | None) -> dict:
    """What, besides the inputs, decides a trained mask bit for bit (the mask cache key has it).

    The thread count changes how torch's GEMM splits its sums (OMP_NUM_THREADS=1 and 2 give
    different ResNet-18 banks); device, backend and torch version change the kernels.
    """
    return {"threads": torch.get_num_threads(), "device": str(device), "backend": backend or "auto",
            "torch": torch.__version__}


# ----------------------------------------------------------------------------- mask cache files

MASK_CACHE_SUFFIX = ".safetensors"
MASK_CACHE_FORMAT = "impresslearn.mask_cache/1"


class MaskCacheError(ValueError):
    """A mask cache file cannot be trusted (unreadable, damaged, foreign); it is retrained."""


def write_mask_entry(path: Path, key: str, entry: dict) -> None:
    """Store a trained mask (per-layer bool tensors + its accuracy) as a checkpoint file (safetensors + SHA-256)."""
    from ..checkpoint import save_checkpoint

    tensors = {f"mask.{i}": m.to(torch.bool) for i, m in enumerate(entry["masks"])}
    meta = {"format": MASK_CACHE_FORMAT, "key": key, "accuracy": float(entry["accuracy"]),
            "task": int(entry["task"]), "popup_seed": int(entry["popup_seed"]), "num_layers": len(tensors)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, tensors, meta)


def read_mask_entry(path: Path, key: str) -> dict:
    """A cache entry written by ``write_mask_entry`` for ``key``; MaskCacheError if it does not verify."""
    from ..checkpoint import CheckpointError, load_checkpoint

    try:
        tensors, meta = load_checkpoint(path)  # checks the header and every tensor against their SHA-256
    except CheckpointError as exc:
        raise MaskCacheError(f"{path}: unreadable mask cache entry ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != MASK_CACHE_FORMAT or meta.get("key") != key:
        raise MaskCacheError(f"{path}: not the mask cache entry of key {key}")
    n = meta.get("num_layers")
    names = [f"mask.{i}" for i in range(n)] if isinstance(n, int) else None
    if names is None or sorted(tensors) != sorted(names) or any(tensors[k].dtype != torch.bool for k in names):
        raise MaskCacheError(f"{path}: expected {n} bool masks, holds {sorted(tensors)}")
    return {"masks": [tensors[k] for k in names], "accuracy": meta["accuracy"], "task": meta["task"],
            "popup_seed": meta["popup_seed"]}


def alpha_granularity(params: dict):
    """The new tasks' coefficient granularity of a run (a run's parameters name it only when it is
    not the paper's per layer, so runs of configs without it keep their ids)."""
    return params.get("alpha_granularity", "layer")


def train_config(phase: dict, seed: int):
    """The TrainConfig of a phase for one run: the run's seed is added to the phase's own seed."""
    from ..config import TrainConfig

    config = TrainConfig.from_dict(phase)
    return config.replace(seed=config.seed + seed)


# ----------------------------------------------------------------------------- learner adapters
# Everything that reaches into the learner beyond its public API is here.


def export_mask(learner, index: int) -> list[torch.Tensor]:
    """Mask ``index`` of the learner's bank as one bool tensor per masked layer (weight shape)."""
    from ..layers import impress_layers

    out = []
    for layer in impress_layers(learner.model):
        masks = layer.masks()  # bool [K, n]
        out.append(masks[index].reshape(layer.weight.shape).clone())
    return out


def import_masks(learner, masks: list[list[torch.Tensor]], names: list[str] | None = None) -> list[int]:
    """Append already-trained masks (one list of per-layer bool tensors per mask) to the bank."""
    per_layer = [torch.stack([m[i] for m in masks]) for i in range(len(masks[0]))]
    return list(learner.add_masks(per_layer))


def evaluate_rounded(learner, name: str, coefficient_dtype: str, loader) -> float:
    """Accuracy of task ``name`` with its coefficients rounded to ``coefficient_dtype`` (as a learner
    storing that dtype would hold them, ``impresslearn.banks``), on the task's own BN slot."""
    from ..objectives import accuracy

    rec = learner.bind_task(name)  # the task's BN slot (and hybrid mask); coefficients rebound below
    bind_coefficients(learner.model, round_coefficients(rec.coefficients, coefficient_dtype),
                      last_layer_extra=rec.last_layer_extra(), granularity=rec.granularity)  # fmt: skip
    learner.model.eval()
    return float(accuracy(learner.model, loader, learner.device))


# ----------------------------------------------------------------------------- validation choice


def phase_candidates(run, ctx: RunContext, phase: str) -> tuple[list[dict], dict]:
    """(overrides of ``phase`` this run trains, how they were chosen).

    On the config's first seed (``choice_seed``): every candidate of the config (or the phase as
    configured, one empty override, when it lists none). On any other seed: the one the same run
    of the first seed chose (``impresslearn.validation``'s rule), read from its finished record.
    """
    from ._sweep import load_finished

    spec = run.params["validation"]
    if run.seed == spec["choice_seed"]:
        key = {"alpha_train": "alpha_candidates", "mask_train": "mask_candidates"}[phase]
        return list(spec.get(key) or [{}]), {"chosen_on_seed": run.seed}
    first = dataclasses.replace(run, seed=spec["choice_seed"])
    record = load_finished(ctx.out_dir, first)
    if record is None:
        raise RuntimeError(f"run {run.label()!r} reuses the choice of {first.label()!r} ({first.run_id}), "
                           "which has not finished: run the sweep in its order (the first seed first)")
    return [record["result"]["validation"]["chosen_override"]], {"chosen_on_seed": first.seed,
                                                                 "chosen_by_run": first.run_id}


def choose_on_validation(phase: dict, candidates: list[dict], validation_accuracies: list[list[float]],
                         provenance: dict | None = None) -> dict:
    """The choice record of a run: every candidate it trained with its validation accuracy per new
    task and their mean, and the one ``impresslearn.validation.choose`` keeps (best mean; ties: the
    first listed). Only validation accuracies enter: the test set is read afterwards, for the
    chosen candidate alone."""
    from ..config import TrainConfig
    from ..validation import candidate_name, choose

    configs = [TrainConfig.from_dict({**phase, **c}) for c in candidates]
    means = [_mean(accs) for accs in validation_accuracies]
    results = [{"seed": 0, "candidate": candidate_name(cfg), "validation": m} for cfg, m in zip(configs, means)]
    best = configs.index(choose(results, configs))
    return {"candidates": [{"override": c, "name": candidate_name(cfg), "validation_accuracies": v,
                            "mean_validation_accuracy": m}
                           for c, cfg, v, m in zip(candidates, configs, validation_accuracies, means)],
            "chosen": best, "chosen_override": candidates[best], **(provenance or {})}  # fmt: skip


# ----------------------------------------------------------------------------- evaluation helpers


def _accuracy(value) -> float:
    return float(value)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(sum(values) / len(values)) if values else None


# ----------------------------------------------------------------------------- run kinds


def _supsup_on_validation(run, ctx: RunContext) -> dict:
    """SupSup's dedicated masks with the mask recipe chosen on validation: every candidate trains
    one mask per new task on the task's training part; the test set is read for the chosen one."""
    p = run.params
    candidates, provenance = phase_candidates(run, ctx, "mask_train")
    learners, val_accs = [], []
    for override in candidates:
        cfg = train_config({**p["mask_train"], **override}, _popup_seed(run.seed, 0))
        per_task, accs = [], []
        for t in p["new_tasks"]:
            train, val, _ = ctx.new_task_loaders(p, t, cfg.batch_size, seed=_popup_seed(run.seed, 0))
            learner = ctx.new_learner(p, run.seed, run.density)
            learner.learn_basis_mask(f"mask/{t}", train, cfg)
            per_task.append(learner)
            accs.append(_accuracy(learner.evaluate(f"mask/{t}", val)))
        learners.append(per_task)
        val_accs.append(accs)
    choice = choose_on_validation(p["mask_train"], candidates, val_accs, provenance)
    chosen = learners[choice["chosen"]]
    accs = [_accuracy(lr.evaluate(f"mask/{t}", ctx.loaders(p, t, 128, seed=run.seed)[2]))
            for lr, t in zip(chosen, p["new_tasks"])]  # fmt: skip
    sizes, features = model_sizes(chosen[0].model)
    return {
        "tasks": p["new_tasks"], "accuracies": accs, "mean_accuracy": _mean(accs), "accuracy_matrix": [accs],
        "chance": 1.0 / ctx.scenario(p).num_classes, "mask_bits": sum(sizes),
        "bytes_per_task": supsup_bytes_per_task(sizes, features),  # impresslearn.accounting
        "num_layers": len(sizes), "learner_layers": chosen[0].num_layers, "validation": choice,
    }


def run_supsup(run, ctx: RunContext) -> dict:
    p = run.params
    if p.get("validation"):
        return _supsup_on_validation(run, ctx)
    accs = []
    for t in p["new_tasks"]:
        entry = ctx.mask(p, run.seed, run.density, t, _popup_seed(run.seed, 0))
        accs.append(entry["accuracy"])
    learner = ctx.new_learner(p, run.seed, run.density)
    n_weights = sum(m.numel() for m in entry["masks"])
    k = sum(int(m.sum()) for m in entry["masks"])
    return {
        "tasks": p["new_tasks"], "accuracies": accs, "mean_accuracy": _mean(accs),
        "accuracy_matrix": [accs],  # a SupSup mask never changes once stored: one row, BWT = 0
        "chance": 1.0 / ctx.scenario(p).num_classes,
        "mask_bits": n_weights, "mask_ones": k,
        "bytes_per_task": supsup_bytes_per_task(*model_sizes(learner.model)),  # impresslearn.accounting
        "num_layers": len(entry["masks"]),
        "learner_layers": learner.num_layers,
    }


def run_incorrect_mask(run, ctx: RunContext) -> dict:
    p = run.params
    learner, entries = ctx.learner_with(p, run.seed, run.density, [(0, _popup_seed(run.seed, 0))])
    accs = []
    for t in p["new_tasks"]:
        _, _, test = ctx.loaders(p, t, 128, seed=run.seed)
        accs.append(_accuracy(learner.evaluate_mask(0, test)))
    return {"tasks": p["new_tasks"], "accuracies": accs, "mean_accuracy": _mean(accs),
            "own_task_accuracy": entries[0]["accuracy"], "chance": 1.0 / ctx.scenario(p).num_classes}


def _impression_learner(run, ctx: RunContext):
    p = run.params
    if run.basis_kind == "random":
        learner = ctx.new_learner(p, run.seed, run.density)
        learner.add_random_masks(run.count, seed=run.seed)
        return learner
    sources = basis_sources(run.basis_kind, run.count, run.seed, p.get("mixture_homogeneous", 0.5))
    learner, _ = ctx.learner_with(p, run.seed, run.density, sources)
    return learner


def basis_owned_masks(run) -> int:
    """How many masks of a run's impression set are some basis task's own mask (that task stores
    it whether or not new tasks use it): one per distinct basis task. The other masks (random
    draws, a homogeneous set's extra seeds of task 0) are stored for the new tasks alone."""
    if run.basis_kind == "random":
        return 0
    sources = basis_sources(run.basis_kind, run.count, run.seed, run.params.get("mixture_homogeneous", 0.5))
    return len({task for task, _ in sources})


def basis_owned_bank_bytes(run, learner) -> int:
    """Stored bytes of the run's bank masks that are some basis task's own mask (``basis_owned_masks``):
    those tasks store them whether or not a new task uses them."""
    sizes, _ = model_sizes(learner.model)
    return basis_owned_masks(run) * accounting.mask_bytes(sizes)


def new_task_bytes(run, learner, names: list[str], coefficient_dtype: str) -> accounting.TaskBytes:
    """Bytes per new task, ``impresslearn.accounting.task_bytes``: the coefficients of ``names[0]``
    in ``coefficient_dtype``, its BN statistics, its fingerprint, and its share of the bank masks no
    basis task owns, stored as ``impresslearn.banks`` stores them (random draws: a seed record),
    split over the run's new tasks ``names``. The basis tasks' own masks
    (``basis_owned_bank_bytes``) are not charged.

    The run's learner stores no basis task (it imports their masks), so its own
    ``bytes_per_task`` (``accounting.learner_task_bytes``) spreads every mask of the bank over the
    new tasks: this figure plus ``basis_owned_bank_bytes / len(names)``. A run records both
    (``bytes_per_new_task``, ``bytes_per_task``); ``report`` labels them apart."""
    sizes, features = model_sizes(learner.model)
    bank = stored_bank_bytes(sizes, learner.num_masks, learner.random_mask_draws)
    unowned = bank - basis_owned_bank_bytes(run, learner)
    rec = learner.tasks[names[0]]
    return accounting.task_bytes(rec.kind, rec.num_masks, sizes, features, coefficient_dtype=coefficient_dtype,
                                 bank_share=unowned / len(names), num_columns=rec.coefficients.shape[1],
                                 fingerprint=accounting.fingerprint_bytes(learner, names[0]))  # fmt: skip


def frontier_points(run, learner, names: list[str], test_loaders: dict) -> dict:
    """Per coefficient dtype: the new tasks' test accuracy with their coefficients rounded to it,
    and the bytes per new task with its coefficients in that dtype (``new_task_bytes``). The basis
    tasks' own masks are reported beside it (``basis_owned_bank_bytes``), not charged to the new
    tasks."""
    out = {"basis_owned_bank_bytes": basis_owned_bank_bytes(run, learner), "dtypes": {}}
    for dtype in run.params["coefficient_dtypes"]:
        accs = [evaluate_rounded(learner, name, dtype, test_loaders[name]) for name in names]
        nbytes = new_task_bytes(run, learner, names, dtype)
        out["dtypes"][dtype] = {"accuracies": accs, "mean_accuracy": _mean(accs), "bytes_per_task": nbytes.to_dict()}
    return out


def _alpha_on_validation(run, ctx: RunContext, names: list[str]):
    """(learner, choice, seconds): every alpha candidate learns the run's new tasks on their training
    parts over a fresh copy of the impression set; the learner of the best mean validation
    accuracy is kept (the others are dropped as soon as they lose)."""
    p = run.params
    candidates, provenance = phase_candidates(run, ctx, "alpha_train")
    best, best_mean, kept, val_accs, seconds = None, None, None, [], 0.0
    for override in candidates:
        cfg = train_config({**p["alpha_train"], **override}, run.seed)
        learner = _impression_learner(run, ctx)
        accs = []
        t0 = time.perf_counter()
        for t, name in zip(p["new_tasks"], names):
            train, val, _ = ctx.new_task_loaders(p, t, cfg.batch_size, seed=run.seed)
            learner.learn_alpha(name, train, cfg, hybrid=run.hybrid, granularity=alpha_granularity(p))
            accs.append(_accuracy(learner.evaluate(name, val)))
        seconds += time.perf_counter() - t0
        val_accs.append(accs)
        if best is None or _mean(accs) > best_mean:  # only the leader is kept in memory (ties: the earlier)
            best, best_mean, kept = learner, _mean(accs), len(val_accs) - 1
    choice = choose_on_validation(p["alpha_train"], candidates, val_accs, provenance)
    if choice["chosen"] != kept:  # the rule is impresslearn.validation's; the kept learner must follow it
        raise AssertionError(f"kept candidate {kept}, but the validation rule chose {choice['chosen']}")
    return best, choice, seconds


def run_impress(run, ctx: RunContext) -> dict:
    p = run.params
    tasks = p["new_tasks"]
    names = [f"new/{t}" for t in tasks]
    n = len(tasks)
    matrix: list[list[float | None]] = [[None] * n for _ in range(n)]
    choice = None
    if p.get("validation"):
        learner, choice, alpha_time = _alpha_on_validation(run, ctx, names)
        test_loaders = {nm: ctx.loaders(p, t, 128, seed=run.seed)[2] for t, nm in zip(tasks, names)}
        # The test set is read once, after the choice: the diagonal is measured with the final
        # row (a stored alpha task never changes: own coefficients, own BN slot).
        final = [_accuracy(learner.evaluate(nm, test_loaders[nm])) for nm in names]
        for i in range(n):
            matrix[i][i] = final[i]
    else:
        learner = _impression_learner(run, ctx)
        test_loaders = {}
        t0 = time.perf_counter()
        for i, (t, name) in enumerate(zip(tasks, names)):
            _, train, test = ctx.loaders(p, t, p["alpha_train"]["batch_size"], seed=run.seed)
            test_loaders[name] = test
            learner.learn_alpha(name, train, train_config(p["alpha_train"], run.seed), hybrid=run.hybrid,
                                granularity=alpha_granularity(p))
            cols = range(i + 1) if p.get("full_matrix") else [i]
            for j in cols:
                matrix[i][j] = _accuracy(learner.evaluate(names[j], test_loaders[names[j]]))
        alpha_time = time.perf_counter() - t0
        # Final row: every task again after all are learned (no forgetting: equals the diagonal).
        final = [_accuracy(learner.evaluate(nm, test_loaders[nm])) for nm in names]
    matrix[-1] = final
    result: dict[str, Any] = {
        "tasks": tasks, "accuracies": final, "mean_accuracy": _mean(final),
        "diagonal": [matrix[i][i] for i in range(n)],
        "accuracy_matrix": matrix, "alpha_seconds": round(alpha_time, 3),
        "num_masks": learner.num_masks, "num_layers": learner.num_layers,
        # two figures, both impresslearn.accounting's (new_task_bytes says how they differ)
        "bytes_per_new_task": new_task_bytes(run, learner, names, learner.coefficient_dtype).to_dict(),
        "basis_owned_bank_bytes": basis_owned_bank_bytes(run, learner),
        "bytes_per_task": _jsonable_bytes(learner.bytes_per_task(names[0])),
        **accuracy_summary(matrix),  # bwt, forgetting (impresslearn.metrics): BWT = 0 by construction
    }
    if choice is not None:
        result["validation"] = choice
    if "coefficient_dtypes" in p:
        result["frontier"] = frontier_points(run, learner, names, test_loaders)
    if p.get("label_free_matrix", True):
        no_labels, hits = [], []
        for name in names:
            acc, hit = _label_free(learner, names, name, test_loaders[name])
            no_labels.append(acc)
            hits.append(hit)
        result["accuracies_no_labels"] = no_labels
        result["mean_accuracy_no_labels"] = _mean(no_labels)
        result["accuracy_matrix_no_labels"] = [no_labels]
        result["identification_rate"] = _mean(hits)
    return result


def _label_free(learner, candidates: list[str], true_name: str, test_loader, method: str = "oneshot"):
    correct = total = hits = batches = 0
    for x, y in test_loader:
        name = learner.infer_task(x, method=method, candidates=candidates)
        correct += _accuracy(learner.evaluate(name, [(x, y)])) * len(y)
        total += len(y)
        hits += int(name == true_name)
        batches += 1
    return correct / max(total, 1), hits / max(batches, 1)


def _jsonable_bytes(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


def run_basis_gn(run, ctx: RunContext) -> dict:
    p = run.params
    learner = _impression_learner(run, ctx)
    sources = basis_sources(run.basis_kind, run.count, run.seed, p.get("mixture_homogeneous", 0.5))
    n = p["basis_gn_tasks"]
    picks, accs, refs = [], [], []
    for b in range(n):
        _, train, test = ctx.loaders(p, b, p["alpha_train"]["batch_size"], seed=run.seed)
        res = learner.basis_gn(train, test, train_config(p["alpha_train"], run.seed))
        picks.append(int(res["picked"]))
        accs.append(_accuracy(res["accuracy"]))
        refs.append(ctx.mask(p, run.seed, run.density, *sources[b])["accuracy"])
    return {
        "tasks": list(range(n)), "picked": picks, "accuracies": accs, "reference_accuracies": refs,
        "pick_rate": _mean([float(pk == b) for b, pk in enumerate(picks)]),
        "mean_accuracy": _mean(accs), "mean_reference_accuracy": _mean(refs),
        "better_or_equal_rate": _mean([float(a >= r - 1e-9) for a, r in zip(accs, refs)]),
    }


def run_gn(run, ctx: RunContext) -> dict:
    p = run.params
    learner = _impression_learner(run, ctx)
    n_basis = 0 if run.basis_kind == "random" else max(t for t, _ in basis_sources(
        run.basis_kind, run.count, run.seed, p.get("mixture_homogeneous", 0.5))) + 1
    tasks = list(range(n_basis, n_basis + p["gn_num_tasks"]))
    names = [f"gn/{t}" for t in tasks]
    cfg = train_config(p["alpha_train"], run.seed)
    from tqdm.auto import tqdm

    accs = []
    batches: dict[str, list] = {}
    for t, name in zip(tqdm(tasks, desc="GN: alpha tasks", leave=False, unit="task"), names):
        _, train, test = ctx.loaders(p, t, p["alpha_train"]["batch_size"], seed=run.seed)
        learner.learn_alpha(name, train, cfg)
        accs.append(_accuracy(learner.evaluate(name, test)))
        batches[name] = _first_batches(ctx, p, t, p["gn_batch_size"], p["gn_batches_per_task"])
    result: dict[str, Any] = {"tasks": tasks, "accuracies": accs, "mean_accuracy": _mean(accs),
                              "num_stored_tasks": len(names)}
    for method in p["gn_methods"]:
        hits, gn_accs, picks = [], [], []
        t0 = time.perf_counter()
        for name in names:
            for x, y in batches[name]:
                picked = learner.infer_task(x, method=method)
                picks.append(picked)
                hits.append(float(picked == name))
                gn_accs.append(_accuracy(learner.evaluate(picked, [(x, y)])))
        result[f"identification_rate_{method}"] = _mean(hits)
        result[f"gn_accuracy_{method}"] = _mean(gn_accs)
        result[f"gn_seconds_{method}"] = round(time.perf_counter() - t0, 3)
        result[f"picked_{method}"] = picks  # which stored task GN named, per batch (diagnosis)
    result["identification_rate"] = result[f"identification_rate_{p['gn_methods'][0]}"]
    result["mean_accuracy_no_labels"] = result[f"gn_accuracy_{p['gn_methods'][0]}"]
    if p.get("gn_with_supsup"):
        # SupSup GG/GN: one edge-popup mask per task; GN picks among those masks.
        sources = [(t, _popup_seed(run.seed, 0)) for t in tasks]
        sup, entries = ctx.learner_with(p, run.seed, run.density, sources)
        sup_names = [f"mask/{t}/{ps}" for t, ps in sources]
        hits, gn_accs = [], []
        # Each imported mask becomes a stored basis task (one-hot A_t) so GN can pick among them;
        # the picked mask is then scored alone (evaluate_mask: BN, if any, on batch statistics,
        # as the imported masks carry no BN slot).
        for b, sname in enumerate(sup_names):
            sup.register_task(sname, one_hot_coefficients(sup.model, b), kind="basis")
        for name, sname in zip(names, sup_names):
            for x, y in batches[name]:
                picked = sup.infer_task(x, method=p["gn_methods"][0])
                hits.append(float(picked == sname))
                gn_accs.append(_accuracy(sup.evaluate_mask(sup_names.index(picked), [(x, y)])))
        result["supsup_gg_accuracy"] = _mean([e["accuracy"] for e in entries])
        result["supsup_identification_rate"] = _mean(hits)
        result["supsup_gn_accuracy"] = _mean(gn_accs)
    return result


def _first_batches(ctx: RunContext, p: dict, t: int, batch_size: int, count: int) -> list:
    from ..scenarios import BatchLoader

    task = ctx.scenario(p).task(t)
    out = []
    # A shuffled batch: the first test images of a split task may all share a class.
    for x, y in BatchLoader(task.test, batch_size=batch_size, shuffle=True, seed=t):
        out.append((x, y))
        if len(out) >= count:
            break
    return out


RUNNERS = {
    "supsup": run_supsup,
    "incorrect_mask": run_incorrect_mask,
    "impress": run_impress,
    "basis_gn": run_basis_gn,
    "gn": run_gn,
}


def execute_run(run, context: dict) -> dict:
    """The default executor of ``run_sweep``: builds (once) a ``RunContext`` in ``context``."""
    ctx = context.get("runner")
    if ctx is None:
        ctx = context["runner"] = RunContext(context["out_dir"], data_root=context.get("data_root"),
                                             device=context.get("device", "cpu"), backend=context.get("backend"))
    torch.manual_seed(run.seed)
    return RUNNERS[run.run_kind](run, ctx)
