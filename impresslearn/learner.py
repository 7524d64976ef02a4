"""ImpressLearner: the convenient facade over the pieces of continual learning with task impressions.

Notation (docs/design.md): ``d`` masked layers, a bank of ``K`` basis masks per layer, every
stored task ``t`` a coefficient matrix ``A_t[K_t, d]`` over the first ``K_t`` masks. The pieces,
each usable on its own:

- :mod:`impresslearn.tasks`       frozen task records, their registry, BN slots, the state hash;
- :mod:`impresslearn.objectives`  ``EdgePopupObjective`` / ``AlphaObjective`` (nn.Modules for
                                  any loop, DDP included) and the ``fit`` loop ``learn_*`` use;
- :mod:`impresslearn.inference`   task inference without labels (GN, input fingerprints);
- :mod:`impresslearn.accounting`  bytes per task, for ImpressLearn and SupSup;
- :mod:`impresslearn.learner_io`  checkpoint save and load.

The learner holds the model (its banks live in its layers), the task registry, the
per-task BN slots and each task's input fingerprint (``fingerprints``, what ``infer_task``
uses by default), and binds the mask source of the model's layers before each forward.
"""

from __future__ import annotations

import contextlib
import copy
import random
import secrets
import warnings
from dataclasses import replace
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from . import accounting, banks, inference, learner_io
from .config import TrainConfig, check_integer
from .layers import (add_bn_slot, bind_coefficients, coefficient_columns, drop_bn_slots_from, impress_layers,
                     multitask_bns, one_hot_coefficients, set_bn_slot)
from .objectives import AlphaObjective, EdgePopupObjective, TrainingHistory, accuracy, fit
from .ops import keep_count
from .tasks import TaskRecord, TaskRegistry, check_granularity, state_sha256

# Masks a learner may draw without a seed: fresh entropy per call (recorded in the checkpoint).
_SEED_BITS = 62

# Training inputs a learned task's fingerprint reads (its sketch in a pass before training, its
# entropy baseline in one after it, each stopping there; a forward per input for the entropy: 8192
# is 14% of one 60,000-image epoch). Chosen on
# validation by scripts/fingerprint_examples.py (10 tasks, sketch m = 64, 3 seeds, each task's
# fingerprint from its own shuffled training images; the last 10,000 training images validate,
# test images are only reported): the smallest size measured whose batches of 128 are named within
# 0.5 points of a fingerprint of all 50,000 images. Permuted Fashion-MNIST needs few: batches of
# 8 or more 100% from 64 inputs; single images 89% (16), 96.1% (256), 96.4% (4096 and all).
# Rotated by 3 degrees needs many: batches of 128 29% (16), 74% (256), 89.5% (1024), 98.0% (4096),
# 99.2% (8192), 99.6% (16384 and all); on test 96.9% at 4096, 98.8% at 8192, 99.7% with all.
# (Fingerprints of every task read from the same source images, which only such benchmarks
# allow, share their sampling noise: 99% there already from 256 inputs, ``--same-images``.)
FINGERPRINT_EXAMPLES = 8192


class TrainedTaskNotStoredError(RuntimeError):
    """``learn_*`` trained task ``name`` but could not measure its entropy baseline afterwards (the one
    part of a fingerprint that needs the trained task: NaN logits from a diverged run, say), so nothing
    was stored. The training is not lost: ``objective`` is the trained objective, still open and
    holding its BN slot, ``history`` what ``fit`` saw and ``fingerprint`` the inputs' sketch measured
    before training (entropy NaN). ``objective.commit(name, fingerprint_inputs=fingerprint)`` stores
    the task with it (fingerprint inference works; only ``calibrated`` needs the entropy),
    ``fingerprint_inputs=None`` without one; ``objective.discard()`` drops it (do one of them before
    saving the learner: an open objective's BN slot is not a stored task's).
    """

    def __init__(self, name: str, objective, history, fingerprint, cause: Exception):
        self.name, self.objective, self.history, self.fingerprint = name, objective, history, fingerprint
        super().__init__(
            f"{self._subject()} was trained ({history.steps} steps) but its output entropy on its training inputs "
            f"could not be measured ({type(cause).__name__}: {cause}); nothing was stored. The trained task is "
            f"kept in this error: {self._how_to_keep()}"
        )

    def _subject(self) -> str:
        return f"task {self.name!r}"

    def _how_to_keep(self) -> str:
        return (f"error.objective.commit({self.name!r}, fingerprint_inputs=error.fingerprint) stores it with its "
                "input fingerprint and no entropy baseline, fingerprint_inputs=None without a fingerprint, "
                "error.objective.discard() drops it")  # fmt: skip


@contextlib.contextmanager
def _unadvanced(loader):
    """Read ``loader`` inside without moving what its next iteration yields: the global RNGs (torch's
    CPU one, DataLoader's shuffle and worker seeds; numpy's and Python's ``random``, which a data set's
    transforms may draw from), the state of a ``torch.Generator`` the loader or its sampler holds, and
    an epoch counter that iteration advances (``BatchLoader``'s, restored with ``set_epoch``)."""
    holders = (loader, getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None))
    generators = {id(g): g for g in (getattr(h, "generator", None) for h in holders) if isinstance(g, torch.Generator)}
    states = {key: g.get_state() for key, g in generators.items()}
    epoch = getattr(loader, "epoch", None)
    restore_epoch = callable(getattr(loader, "set_epoch", None)) and isinstance(epoch, int)
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
            for key, g in generators.items():
                g.set_state(states[key])
            if restore_epoch:
                loader.set_epoch(epoch)


class ImpressLearner:
    """Learns basis masks with edge-popup and new tasks as coefficients over them (ImpressLearn).

    ``model`` must have its Linear/Conv2d layers converted to Impress layers (``create_model``
    or ``convert``). ``backend`` is passed to every op (None: the dispatch rule decides).
    ``coefficient_dtype`` (``"fp32"``, ``"fp16"`` or ``"bf16"``): every stored task's
    coefficients are rounded to it when stored, and saved in it (``impresslearn.banks``).
    ``fingerprint_examples``: how many training inputs of a task ``learn_*`` read into its
    fingerprint (``fingerprints``, :meth:`add_fingerprint`); 0 stores none.

    Fingerprint failures refuse, everywhere: ``learn_*`` and an objective's
    ``commit(name, fingerprint_inputs=...)`` measure the fingerprint before they store anything,
    and when it cannot be measured (fewer than 2 inputs, NaN, moments beyond fp16, inputs the
    model cannot read, a sketch or input size other than the stored fingerprints') they raise and
    leave the learner as it was: no mask, no task, no fingerprint. A task stored without its
    fingerprint would make the default task inference fall back to GN for every candidate set
    holding it, which misses new tasks' batches, without a word. ``learn_*`` measure the part
    that depends on the inputs alone (the sketch) BEFORE training, so those refusals cost no
    training; only the entropy baseline needs the trained task and is measured after it, and
    when that fails (NaN logits) the trained task is kept in the
    :class:`TrainedTaskNotStoredError` raised, to commit or discard. A learner built with
    ``fingerprint_examples=0`` stores tasks without fingerprints on purpose.
    """

    def __init__(self, model: nn.Module, density: float = 0.1, device: str | torch.device = "cpu",
                 backend: str | None = None, *, progress: bool = False, coefficient_dtype: str = "fp32",
                 fingerprint_examples: int = FINGERPRINT_EXAMPLES):  # fmt: skip
        keep_count(1, density)  # validates density in (0, 1]
        self.fingerprint_examples = check_integer(fingerprint_examples, "fingerprint_examples", minimum=0)
        self.coefficient_dtype = banks.check_coefficient_dtype(coefficient_dtype)
        self.model = model.to(device)
        self.density = float(density)
        self.device = torch.device(device)
        self.backend = backend
        self.progress = progress
        self.layers = impress_layers(self.model)
        if not self.layers:
            raise ValueError("model has no ImpressLinear/ImpressConv2d layer: build it with create_model or convert")
        self.bns = multitask_bns(self.model)
        for p in self.model.parameters():
            p.requires_grad_(False)  # the backbone is frozen; only scores or alpha train
        for layer in self.layers:
            layer.backend = backend
        self.tasks = TaskRegistry()
        # task that trained each bank mask, or None (random / added masks)
        self.mask_owners: list[str | None] = [None] * self.layers[0].num_masks
        # every add_random_masks call: {first, count, seed}, so the checkpoint says how to redraw them
        self.random_mask_draws: list[dict] = []
        # task name -> its inputs' fingerprint (inference.TaskFingerprint), for task inference
        self.fingerprints: dict[str, inference.TaskFingerprint] = {}
        self._slot_owner = None  # the open objective that reserved the next BN slot

    # -- sizes ------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_masks(self) -> int:
        return self.layers[0].num_masks

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    # -- binding (impresslearn.layers' public binding API) ---------------------------------
    def bind_task(self, name: str) -> TaskRecord:
        """Make the model compute task ``name`` (its coefficients and BN slot)."""
        rec = self.tasks[name]
        bind_coefficients(self.model, rec.coefficients, last_layer_extra=rec.last_layer_extra(),
                          granularity=rec.granularity)  # fmt: skip
        set_bn_slot(self.model, rec.bn_slot)
        return rec

    def coefficient_width(self, granularity="layer") -> int:
        """Columns of a task's coefficient matrix at ``granularity`` on this model: ``d`` per layer,
        ``sum_i ceil(C_i / b)`` per block of ``b`` output channels (``layers.coefficient_columns``)."""
        return sum(coefficient_columns(self.model, granularity))

    # -- BN slots and the registry (what objectives use) -----------------------------------
    def reserve_bn_slot(self, owner) -> int:
        """A fresh BN slot for the task ``owner`` (an objective) is training; supersedes any other
        open objective's reservation. Returns the slot (the next task's)."""
        slot = self.num_tasks
        drop_bn_slots_from(self.model, slot)  # an open or abandoned objective's slot: start afresh
        add_bn_slot(self.model)
        self._slot_owner = owner
        return slot

    def holds_bn_slot(self, owner) -> bool:
        """Whether ``owner`` still holds the BN slot it reserved (no objective opened since)."""
        return self._slot_owner is owner

    def release_bn_slot(self, owner) -> None:
        if self._slot_owner is owner:
            drop_bn_slots_from(self.model, self.num_tasks)
            self._slot_owner = None

    def store_task(self, record: TaskRecord, *, owner=None) -> TaskRecord:
        """Store ``record``; an objective passes itself as ``owner`` to prove it holds its BN slot."""
        if owner is not None and self._slot_owner is not owner:
            raise RuntimeError("another objective was opened after this one and took its BN slot; "
                               "train one objective at a time per learner")  # fmt: skip
        width = self.coefficient_width(record.granularity)
        if record.coefficients.shape[1] != width:
            raise ValueError(f"task {record.name!r}: coefficients have {record.coefficients.shape[1]} columns but "
                             f"granularity {record.granularity!r} on this model has {width}")  # fmt: skip
        # what is evaluated is what is saved: coefficients rounded to the stored dtype (before any change)
        record = replace(record, coefficients=banks.round_coefficients(record.coefficients, self.coefficient_dtype))
        if owner is None:
            self.release_bn_slot(self._slot_owner)
            add_bn_slot(self.model)
        self.tasks.add(record)
        self._slot_owner = None
        return record

    def append_masks_from_scores(self, scores: Sequence[torch.Tensor], owner: str | None = None) -> int:
        """Append ``topk(|scores_i|, k_i)`` of every layer to the bank as one new mask; returns its index."""
        index = self.num_masks
        for layer, s in zip(self.layers, scores, strict=True):
            layer.add_mask_from_scores(s.detach(), self.density)
        self.mask_owners.append(owner)
        return index

    def append_extra_mask_from_scores(self, scores: torch.Tensor) -> int:
        """Append a hybrid task's last-layer mask to that layer's extra bank; returns its index."""
        return self.layers[-1].add_mask_from_scores(scores.detach(), self.density, extra=True)

    # -- step 1: basis masks ---------------------------------------------------------------
    def learn_basis_mask(self, name: str, loader, cfg: TrainConfig = TrainConfig(), *,
                         val_loader=None) -> TrainingHistory:  # fmt: skip
        """Train a mask for task ``name`` with edge-popup and append it to the bank.

        The task is stored as a basis task (one-hot ``A_t``) with its own BN slot; the returned
        history's ``task.mask_index`` is the mask's place in the bank. Homogeneous masks: call
        again on the same data under other names with other ``cfg.seed``. Its fingerprint's
        sketch is read from the first ``fingerprint_examples`` inputs of ``loader`` before training
        (``loader`` must be re-iterable), its entropy baseline from as many after it: inputs it cannot
        read refuse the task before training, an entropy it cannot measure raises a
        :class:`TrainedTaskNotStoredError` holding the trained task (the class docstring).
        """
        self.tasks.check_new_name(name)
        objective = EdgePopupObjective(self, seed=cfg.seed)
        return self._fit_and_commit(objective, name, loader, cfg, val_loader, f"mask {name}")

    def add_random_masks(self, count: int, seed: int | None = None) -> list[int]:
        """Append ``count`` uniformly random masks with exactly ``k_i`` ones per layer.

        Each call draws fresh masks from a new random seed unless ``seed`` is given; either way
        the seed is recorded (``random_mask_draws``, and in the checkpoint). Reusing a seed
        repeats those masks, with a warning.
        """
        count = check_integer(count, "count", minimum=1)
        if seed is None:
            seed = secrets.randbits(_SEED_BITS)
        else:
            seed = check_integer(seed, "seed", minimum=0)
            for draw in self.random_mask_draws:
                if draw["seed"] == seed:
                    warnings.warn(f"add_random_masks: seed {seed} already drew masks {draw['first']}.."
                                  f"{draw['first'] + draw['count'] - 1}; the new masks repeat them", stacklevel=2)  # fmt: skip
        first = self.num_masks
        # the one definition of a draw (banks.random_mask_scores): a checkpoint redraws it from the seed
        for scores in banks.random_mask_scores([layer.weight.shape for layer in self.layers], count, seed):
            for layer, s in zip(self.layers, scores):
                layer.add_mask_from_scores(s, self.density)
            self.mask_owners.append(None)
        self.random_mask_draws.append(dict(first=first, count=count, seed=seed))
        return list(range(first, first + count))

    def add_masks(self, masks: Sequence[torch.Tensor], owner: str | None = None) -> list[int]:
        """Append already-trained masks: ``masks[i]`` is ``bool[m, *weight_i.shape]`` (or ``[m, n_i]``).

        All layers must bring the same number ``m`` of masks; everything is checked before any
        bank changes. Returns the new mask indices.
        """
        if len(masks) != self.num_layers:
            raise ValueError(f"need masks for {self.num_layers} layers, got {len(masks)}")
        counts = set()
        for i, (m, layer) in enumerate(zip(masks, self.layers)):
            n = layer.weight.numel()
            if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or m.dim() < 1 or m[0].numel() != n:
                raise ValueError(f"masks[{i}] must be bool[m, {n}] (or [m, *weight shape]) for layer {i}")
            counts.add(m.shape[0])
        if len(counts) != 1 or 0 in counts:
            raise ValueError(f"every layer needs the same number (>= 1) of masks, got {sorted(counts)}")
        m = counts.pop()
        start = self.num_masks
        for layer, stack in zip(self.layers, masks):
            for j in range(m):
                layer.add_mask(stack[j])
        self.mask_owners.extend([owner] * m)
        return list(range(start, start + m))

    # -- step 2: new tasks ----------------------------------------------------------------
    def learn_alpha(self, name: str, loader, cfg: TrainConfig = TrainConfig(), hybrid: bool = False, *,
                    val_loader=None, granularity="layer") -> TrainingHistory:  # fmt: skip
        """Learn a new task as ``alpha[K, d]`` over the bank (paper Eq. 1-2) and store it.

        ``alpha`` starts at 1/K; only alpha trains (and, with ``hybrid``, a new edge-popup mask in
        the last layer, paper A.5, stored in that layer's extra bank). The returned history's
        ``task.coefficients`` is the stored ``A_t``. Diverged (non-finite) alpha is refused.
        ``granularity``: ``"layer"`` (the paper's), ``"channel"`` or a block size of output
        channels: one column of alpha per block of each layer's channels
        (:class:`~impresslearn.objectives.AlphaObjective`; bytes: ``bytes_per_task``).
        Its fingerprint is read as :meth:`learn_basis_mask`'s: inputs it cannot read refuse the
        task before training, an entropy it cannot measure after training raises a
        :class:`TrainedTaskNotStoredError` holding the trained task (the class docstring).
        """
        self.tasks.check_new_name(name)
        objective = AlphaObjective(self, lam=cfg.lam, hybrid=hybrid, seed=cfg.seed, granularity=granularity)
        return self._fit_and_commit(objective, name, loader, cfg, val_loader, f"alpha {name}")

    def _fit_and_commit(self, objective, name, loader, cfg, val_loader, desc) -> TrainingHistory:
        """``learn_*``'s training and commit (after the objective's own checks): the fingerprint's
        input sketch is measured before training (inputs it cannot read refuse the task there), its
        entropy baseline after it; a failure there keeps the trained task
        (:class:`TrainedTaskNotStoredError`), any other gives the BN slot back."""
        try:
            sketch = self.input_sketch(loader)
            history = fit(objective, loader, cfg, val_loader=val_loader, progress=self.progress, desc=desc)
            fingerprint = None
            if sketch is not None:
                try:
                    entropy = objective.output_entropy(loader, max_examples=self.fingerprint_examples)
                except Exception as exc:
                    raise TrainedTaskNotStoredError(name, objective, history, sketch, exc) from exc
                fingerprint = replace(sketch, entropy=entropy)
            rec = objective.commit(name, config=cfg, fingerprint_inputs=fingerprint)
        except TrainedTaskNotStoredError:
            raise  # the objective stays open: the error holds the trained task
        except BaseException:
            objective.discard()
            raise
        return replace(history, task=rec)

    def register_task(self, name: str, coefficients: torch.Tensor, kind: str = "new", *,
                      config: TrainConfig | dict | None = None, granularity="layer") -> TaskRecord:  # fmt: skip
        """Store a task whose ``A_t[K_t, d]`` (or, at a finer ``granularity``, ``[K_t, coefficient_width]``)
        was obtained elsewhere (e.g. another rank); fresh BN slot."""
        self.tasks.check_new_name(name)
        if kind not in ("basis", "new"):
            raise ValueError(f"register_task stores 'basis' or 'new' tasks, got {kind!r}")
        granularity = check_granularity(granularity)
        width = self.coefficient_width(granularity)
        a = torch.as_tensor(coefficients, dtype=torch.float32).cpu()
        if a.dim() != 2 or a.shape[1] != width or not 1 <= a.shape[0] <= self.num_masks:
            raise ValueError(
                f"coefficients must be [K_t, {width}] with 1 <= K_t <= {self.num_masks} (granularity "
                f"{granularity!r}), got {tuple(a.shape)}"
            )
        if not torch.isfinite(a).all():
            raise ValueError("coefficients must be finite")
        mask_index = None
        if kind == "basis":
            mask_index = a.shape[0] - 1
            if not torch.equal(a, one_hot_coefficients(self.model, mask_index).cpu()):
                raise ValueError("a basis task's coefficients are one-hot on its mask (the last row) in every layer")
        if isinstance(config, TrainConfig):
            config = config.to_dict()
        rec = TaskRecord(name, kind, a.to(self.device).clone(), self.num_tasks, mask_index=mask_index, config=config,
                         granularity=granularity)  # fmt: skip
        return self.store_task(rec)

    # -- fingerprints (what task inference reads by default) ------------------------------
    def add_fingerprint(self, name: str, inputs, *, max_examples: int | None = None,
                        process_group=None) -> inference.TaskFingerprint:  # fmt: skip
        """Compute and keep the fingerprint of stored task ``name`` from its training inputs.

        For tasks committed from your own loop (``objective.commit(name, fingerprint_inputs=...)``
        calls this too). ``inputs``: a tensor ``[N, ...]``, an iterable of batches (``x``,
        ``(x, y)`` or ``(x, y, t)``) such as the training loader, or a ready
        :class:`~impresslearn.inference.TaskFingerprint`. At most ``max_examples`` inputs are read
        (default ``fingerprint_examples``, or ``FINGERPRINT_EXAMPLES`` when that is 0); besides
        their sketch it measures the task's mean output entropy on them (the ``calibrated``
        method's baseline). Replaces any earlier one; a refused one changes nothing.

        Under DDP, pass ``process_group`` (e.g. ``torch.distributed.group.WORLD``) with each
        rank's shard as ``inputs``: the moments are summed over the group's ranks
        (:func:`~impresslearn.inference.task_fingerprint`), so every rank keeps the same
        fingerprint; ``max_examples`` then counts per rank. Every rank of the group must call it.
        """
        rec = self.tasks[name]  # KeyError naming the stored tasks
        fingerprint = self.measure_fingerprint(inputs, name=rec.name, max_examples=max_examples,
                                               process_group=process_group)  # fmt: skip
        self.fingerprints[name] = fingerprint
        return fingerprint

    def measure_fingerprint(self, inputs, *, name: str | None = None, bind=None, max_examples: int | None = None,
                            process_group=None) -> inference.TaskFingerprint:  # fmt: skip
        """The fingerprint :meth:`add_fingerprint` keeps, checked against the stored ones, not kept.

        The task is the stored ``name``, or the one ``bind()`` makes the model compute (a task
        not stored yet: an objective's commit measures first, so that inputs it cannot read
        refuse the commit before anything is stored). With neither, only the inputs' sketch is
        measured (entropy NaN), which needs no trained task: ``learn_*`` measure it before
        training, the entropy after (:meth:`TaskObjective.output_entropy
        <impresslearn.objectives.TaskObjective.output_entropy>`). ``process_group``: as in
        :meth:`add_fingerprint`.
        """
        if isinstance(inputs, inference.TaskFingerprint):
            if process_group is not None:  # nothing to sum: a rank that skipped the collective would hang the rest
                raise ValueError("process_group sums the moments of inputs being read; a ready TaskFingerprint "
                                 "has none to sum (pass the inputs, or the fingerprint without process_group)")  # fmt: skip
            fingerprint = inputs
        else:
            measured = name is not None or bind is not None
            fingerprint = inference.task_fingerprint(inputs, learner=self if measured else None, name=name, bind=bind,
                                                     max_examples=self.fingerprint_read_limit(max_examples),
                                                     process_group=process_group)  # fmt: skip
        others = [fp for n, fp in self.fingerprints.items() if n != name]
        if others and not fingerprint.same_sketch(others[0]):
            first, subject = others[0], "these inputs" if name is None else repr(name)
            raise ValueError(
                f"the fingerprint of {subject} (input size {fingerprint.input_size}, sketch_dim "
                f"{fingerprint.sketch_dim}, seed {fingerprint.seed}) does not match the stored ones' "
                f"({first.input_size}, {first.sketch_dim}, {first.seed}): they could not be compared"
            )
        return fingerprint

    def fingerprint_read_limit(self, max_examples: int | None = None) -> int:
        """How many inputs a fingerprint (or its entropy) reads: ``max_examples``, by default
        ``fingerprint_examples`` (``FINGERPRINT_EXAMPLES`` when that is 0: learners that fingerprint
        nothing themselves still read the default)."""
        if max_examples is None:
            max_examples = self.fingerprint_examples or FINGERPRINT_EXAMPLES
        return check_integer(max_examples, "max_examples", minimum=2)

    def input_sketch(self, loader) -> inference.TaskFingerprint | None:
        """What ``learn_*`` measure before training (and a loop of your own, or the Avalanche
        strategy, can too): the sketch of the loader's first
        ``fingerprint_examples`` inputs (entropy NaN), checked against the stored fingerprints, so
        that every failure that depends on the inputs alone (too few, NaN, moments beyond fp16, an
        input size or sketch other than the stored ones') refuses the task before an hour of training
        rather than after. None when this learner stores no fingerprints.

        The pass leaves the loader's next iteration as it was (:func:`_unadvanced`): training sees
        the same batches as without it, and the sketch reads the first inputs of its first epoch.
        Cost: reading and projecting 8192 inputs, no forward (mostly the loader's reading: the same
        8192 inputs read without sketching took 0.16-0.28 s). Permuted Fashion-MNIST, LeNet-300-100,
        K = 8, batches of 128, one thread on a shared 2-core Zen 1 (load 2): 0.32 s against 5.6 s for
        one alpha epoch of 60,000 images (5.6%; 1.9% of ``TrainConfig``'s 3 epochs) and 7.8 s for an
        edge-popup one; the entropy pass after training, which the fingerprint always had, 0.67 s
        (``scripts/fingerprint_cost.py``).
        """
        if not self.fingerprint_examples:
            return None
        with _unadvanced(loader):  # iter() already advances a BatchLoader's epoch, a DataLoader's RNG
            batches = iter(loader)
            if batches is loader:  # an iterator: the pre-pass would take the first batches from training
                raise TypeError(
                    f"learn_* read the loader more than once (its first {self.fingerprint_examples} inputs for the "
                    "fingerprint before training, then every epoch), but it is an iterator that can be read once: "
                    "pass a re-iterable (a DataLoader, BatchLoader or list of batches)"
                )
            return self.measure_fingerprint(batches, max_examples=self.fingerprint_examples)

    # -- evaluation -----------------------------------------------------------------------
    def _accuracy(self, loader) -> float:
        self.model.eval()
        return accuracy(self.model, loader, self.device)

    @torch.no_grad()
    def predict(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Logits of task ``name`` for a batch (task label given)."""
        self.bind_task(name)
        self.model.eval()
        return self.model(x.to(self.device))

    def evaluate(self, name: str, loader) -> float:
        """Accuracy of task ``name`` on ``loader`` (task label given); batches ``(x, y)`` or ``(x, y, t)``."""
        self.bind_task(name)
        return self._accuracy(loader)

    def evaluate_mask(self, mask_index: int, loader) -> float:
        """Accuracy of one basis mask alone (the paper's "incorrect mask" check on another task).

        BN (conv nets) uses the slot of the task that trained the mask, or batch statistics.
        """
        mask_index = check_integer(mask_index, "mask_index", minimum=0)
        if mask_index >= self.num_masks:
            raise IndexError(f"mask_index {mask_index} out of range for a bank of {self.num_masks} masks")
        bind_coefficients(self.model, one_hot_coefficients(self.model, mask_index))
        owner = self.mask_owners[mask_index]
        set_bn_slot(self.model, self.tasks[owner].bn_slot if owner in self.tasks else None)
        return self._accuracy(loader)

    # -- task inference: impresslearn.inference --------------------------------------------
    def infer_task(self, x: torch.Tensor, method: str = inference.DEFAULT_METHOD,
                   candidates: Sequence[str] | None = None) -> str:  # fmt: skip
        """The stored task a batch ``x`` most likely comes from, without its label.

        The default ``'auto'`` matches the batch against the tasks' ``fingerprints`` when every
        candidate has one (tasks from ``learn_*``, or :meth:`add_fingerprint`), else uses GN, with a
        warning when only some candidates have one (:func:`impresslearn.inference.infer_task`,
        which also gives scores and confidence: a low confidence flags a batch that mixes tasks).
        Tasks with finer coefficients than per layer are found by their fingerprints only: the GN
        and exhaustive methods combine one column per layer, so they refuse such candidates.
        """
        return inference.infer_task_name(self, x, method=method, candidates=candidates)

    def basis_gn(self, train_loader, test_loader, cfg: TrainConfig = TrainConfig()) -> dict:
        """basis-GN: fit Eq. 1-2 on labelled data of an unnamed task, without storing it.

        Returns ``picked`` (argmax_k sum_i |alpha[k, i]|), ``alpha``, ``accuracy`` of the fit on
        ``test_loader`` and ``mask_accuracy`` of the picked mask alone.
        """
        objective = AlphaObjective(self, lam=cfg.lam, seed=cfg.seed)  # its BN slot is given back below
        try:
            fit(objective, train_loader, cfg, progress=self.progress, desc="basis-GN")
            alpha = objective.coefficients()
            objective.eval()
            fit_accuracy = accuracy(objective.logits, test_loader, self.device)
        finally:
            objective.discard()
        picked = int(alpha.abs().sum(dim=1).argmax())
        return dict(picked=picked, alpha=alpha, accuracy=fit_accuracy,
                    mask_accuracy=self.evaluate_mask(picked, test_loader))  # fmt: skip

    # -- storage: impresslearn.accounting ---------------------------------------------------
    def bytes_per_task(self, name: str) -> accounting.TaskBytes:
        """What task ``name`` stores, in bytes, next to SupSup's one mask per task (see accounting)."""
        return accounting.learner_task_bytes(self, name)

    def storage_report(self, new_task_granularity="layer") -> dict:
        """Bytes of everything stored (banks, coefficients, BN statistics) vs SupSup for the same tasks
        (:func:`impresslearn.accounting.storage_report`)."""
        return accounting.storage_report(self, new_task_granularity)

    # -- identity and checkpoints: impresslearn.learner_io ---------------------------------
    def backbone_spec(self) -> dict:
        spec = getattr(self.model, "impress_spec", None)
        if spec is None:
            raise ValueError("the model has no impress_spec: build it with create_model or convert")
        return copy.deepcopy(dict(spec))

    def weights_sha256(self) -> str:
        from .checkpoint import weights_sha256

        return weights_sha256(layer.weight.detach().cpu() for layer in self.layers)

    def state_sha256(self) -> str:
        """SHA-256 of the banks, every task's coefficients, the BN statistics and the task fingerprints."""
        return state_sha256(self.layers, self.tasks, self.bns, self.fingerprints)

    def save(self, path) -> None:
        """Write banks, task coefficients, BN statistics, the task registry and random-mask seeds (atomic)."""
        learner_io.save_learner(self, path)

    @classmethod
    def load(cls, path, device: str | torch.device = "cpu", backend: str | None = None, *,
             model: nn.Module | None = None, progress: bool = False) -> "ImpressLearner":  # fmt: skip
        """Rebuild a learner from ``save``: regenerate the backbone, check its hash, install the rest.

        For a registered model the backbone is rebuilt from the stored spec; for a ``convert``ed
        one pass ``model=`` built the same way. Anything inconsistent is a ``CheckpointError``.
        """
        return learner_io.load_learner(cls, path, device, backend, model=model, progress=progress)


__all__ = ["ImpressLearner", "TaskRecord", "TrainConfig", "TrainedTaskNotStoredError", "TrainingHistory"]
