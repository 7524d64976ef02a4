"""Training objectives any loop can drive: edge-popup masks and alpha over the bank (Eq. 1-2).

Each objective is an ``nn.Module`` that owns exactly its trainable parameters (edge-popup
scores, or ``alpha[K, d]`` and for hybrid the last layer's scores) and returns the loss for a
batch: ``loss = objective(x, y)``. Your loop owns the optimiser, sampler, precision and
callbacks; when it is done, ``objective.commit(name)`` stores the task in the learner::

    objective = AlphaObjective(learner, lam=0.005)
    ddp = torch.nn.parallel.DistributedDataParallel(objective)      # only alpha is all-reduced
    optimizer = torch.optim.Adam(objective.parameters(), lr=0.01)
    for x, y in loader:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = ddp(x, y)
        loss.backward(); optimizer.step(); optimizer.zero_grad()
    objective.commit("task 7", fingerprint_inputs=loader,   # the inputs task inference will match,
                     process_group=torch.distributed.group.WORLD)  # summed over every rank's shard

Inputs the fingerprint cannot use (NaN, moments beyond fp16, another input size than the stored
fingerprints') refuse the commit after training; to hear it before, measure the sketch first
(``sketch = learner.measure_fingerprint(loader)``) and commit with
``dataclasses.replace(sketch, entropy=objective.output_entropy(loader))``, as ``learn_*`` do.

The learner's model is deliberately *not* a submodule: DDP would otherwise broadcast its
buffers (the banks: 0.8 GB for ResNet-50 at K = 250) and the frozen backbone. A new objective
reserves the task's BatchNorm slot at construction (its running statistics train with it);
``discard()`` gives it back. One open objective per learner at a time: opening another
supersedes it. :func:`fit` is the convenience loop the learner's ``learn_*`` use.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ._callers import caller_outside_package
from .config import TrainConfig
from .inference import task_entropy
from .layers import (bind_coefficients, bind_scores, coefficient_columns, edge_popup_scores, one_hot_coefficients,
                     set_bn_slot, unbind)  # fmt: skip
from .tasks import TaskRecord, check_granularity

# Fewer optimiser steps than this rarely train a mask or alpha (the recipe in TrainConfig's
# docstring takes about 1400 steps on Fashion-MNIST): fit warns.
MIN_TRAINING_STEPS = 100


def eq2_penalty(alpha: torch.Tensor, lam: float, num_layers: int | None = None, *,
                columns_per_layer: list[int] | None = None) -> torch.Tensor:  # fmt: skip
    """Eq. 2's regulariser: ``lam * sum_i (sum_k |alpha[k, i]| - 1)^2`` over the first ``num_layers``
    columns (all of them by default; a hybrid task's last column is not alpha-driven).

    Finer coefficients (``columns_per_layer``: layer ``i`` owns ``R_i`` consecutive columns, e.g.
    ``layers.coefficient_columns``): every column mixes the masks for its channels, so each is held
    near unit L1 norm like a layer's, and a layer's term is the *mean* over its columns,
    ``lam * sum_i mean_{r in layer i} (sum_k |alpha[k, r]| - 1)^2``. With one column per layer
    this is the paper's penalty, and a ``lam`` chosen per layer keeps its weight at any granularity
    (a sum over columns would scale it by the channel count).
    """
    if columns_per_layer is None:
        cols = alpha if num_layers is None else alpha[:, :num_layers]
        return lam * ((cols.abs().sum(dim=0) - 1.0) ** 2).sum()
    if num_layers is not None:
        columns_per_layer = columns_per_layer[:num_layers]
    if sum(columns_per_layer) > alpha.shape[1]:
        raise ValueError(f"alpha has {alpha.shape[1]} columns, fewer than the {sum(columns_per_layer)} of "
                         f"columns_per_layer {columns_per_layer}")  # fmt: skip
    deviation = (alpha[:, : sum(columns_per_layer)].abs().sum(dim=0) - 1.0) ** 2
    # one mean per layer's slice: no index or count tensors built from the lists on every step
    return lam * sum((d.mean() for d in deviation.split(list(columns_per_layer))), deviation.new_zeros(()))


def initial_scores(shapes, seed: int, device) -> list[nn.Parameter]:
    """Edge-popup's initial scores for layers of ``shapes``, from one CPU generator seeded by ``seed``."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return [nn.Parameter(edge_popup_scores(shape, generator).to(device)) for shape in shapes]


class TaskObjective(nn.Module):
    """What both objectives share: the learner, the reserved BN slot, the loss, commit checks."""

    def __init__(self, learner):
        super().__init__()
        self.learner = learner  # not an nn.Module: stays out of the module tree (see module doc)
        self.bn_slot = learner.reserve_bn_slot(self)
        self.closed = False

    # -- subclasses --------------------------------------------------------------------------
    def bind(self) -> None:
        """Make the learner's model compute this objective's current task."""
        raise NotImplementedError

    def penalty(self) -> torch.Tensor | None:
        return None

    # -- the loss ----------------------------------------------------------------------------
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[0] == 0:
            raise ValueError(f"{type(self).__name__}: the batch is empty (input of shape {tuple(x.shape)})")
        self._check_open()
        self.bind()
        set_bn_slot(self.learner.model, self.bn_slot)
        self.learner.model.train(self.training)  # BN: train mode updates this task's slot
        return self.learner.model(x)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (in fp32, also under autocast) plus the objective's penalty."""
        loss = F.cross_entropy(self.logits(x).float(), y)
        penalty = self.penalty()
        return loss if penalty is None else loss + penalty

    # -- storing -----------------------------------------------------------------------------
    def discard(self) -> None:
        """Give the reserved BN slot back without storing anything."""
        if not self.closed:
            self.learner.release_bn_slot(self)
            self.closed = True
        unbind(self.learner.model)

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"this {type(self).__name__} was already committed or discarded")
        if not self.learner.holds_bn_slot(self):  # checked before commit touches any bank
            raise RuntimeError("another objective was opened after this one and took its BN slot; "
                               "train one objective at a time per learner")

    def _check_finite(self, name: str, what: str, t: torch.Tensor) -> None:
        if not torch.isfinite(t).all():
            raise FloatingPointError(
                f"task {name!r}: the trained {what} are not finite (NaN or inf): training diverged; "
                "lower the learning rate. Nothing was stored."
            )

    def _fingerprint(self, fingerprint_inputs, process_group=None):
        """The task's fingerprint, measured with this objective bound before commit changes anything:
        inputs it cannot read refuse the commit and leave the learner as it was. (The same masks;
        alpha before its rounding to a 16-bit ``coefficient_dtype``, a last-digit difference in the
        entropy baseline.) ``process_group``: each rank passes its shard and the moments are summed
        over the group (``learner.add_fingerprint``), so every rank stores the same fingerprint."""
        if fingerprint_inputs is None:
            return None
        return self.learner.measure_fingerprint(fingerprint_inputs, bind=self._bind_with_slot,
                                                process_group=process_group)  # fmt: skip

    def _bind_with_slot(self) -> None:
        """The task as inference sees it: this objective's masks or alpha and its BN slot."""
        self.bind()
        set_bn_slot(self.learner.model, self.bn_slot)

    def output_entropy(self, inputs, *, max_examples: int | None = None, process_group=None) -> float:
        """The trained task's mean output entropy on ``inputs`` (at most ``max_examples``, by default
        the learner's ``fingerprint_read_limit()``): a fingerprint's entropy baseline, the one part
        that needs the trained task (:func:`~impresslearn.inference.task_entropy`). With a sketch
        measured before training (``learner.measure_fingerprint(inputs)``), ``commit(name,
        fingerprint_inputs=dataclasses.replace(sketch, entropy=objective.output_entropy(inputs)))``
        stores the fingerprint ``fingerprint_inputs=inputs`` measures (the same one when both passes
        read the same inputs), and no input problem waits until after training to show: what
        ``learn_*`` do. Stores nothing; ``FloatingPointError`` for NaN logits."""
        self._check_open()
        return task_entropy(self.learner, inputs, bind=self._bind_with_slot,
                            max_examples=self.learner.fingerprint_read_limit(max_examples),
                            process_group=process_group)  # fmt: skip

    def _store(self, record: TaskRecord, fingerprint=None) -> TaskRecord:
        rec = self.learner.store_task(record, owner=self)
        self.closed = True
        unbind(self.learner.model)
        if fingerprint is not None:
            self.learner.add_fingerprint(rec.name, fingerprint)  # measured and checked: cannot fail now
        return rec


class EdgePopupObjective(TaskObjective):
    """Edge-popup (SupSup): one score tensor per layer; the forward uses ``topk(|S_i|, k_i)``.

    ``commit(name)`` appends the top-k masks to the bank and stores a basis task (one-hot A_t);
    with ``fingerprint_inputs`` (the training loader or inputs) it also stores the task's
    fingerprint (``learner.add_fingerprint``), which task inference matches batches against.
    """

    def __init__(self, learner, *, seed: int = 0):
        super().__init__(learner)
        self.scores = nn.ParameterList(initial_scores([layer.weight.shape for layer in learner.layers], seed,
                                                      learner.device))  # fmt: skip

    def bind(self) -> None:
        bind_scores(self.learner.model, list(self.scores), self.learner.density)

    def commit(self, name: str, *, config: TrainConfig | dict | None = None, fingerprint_inputs=None,
               process_group=None) -> TaskRecord:  # fmt: skip
        self._check_open()
        self.learner.tasks.check_new_name(name)
        for i, s in enumerate(self.scores):
            self._check_finite(name, f"scores of layer {i}", s)
        fingerprint = self._fingerprint(fingerprint_inputs, process_group)
        index = self.learner.append_masks_from_scores([s.detach() for s in self.scores], owner=name)
        a = one_hot_coefficients(self.learner.model, index)
        record = TaskRecord(name, "basis", a, self.bn_slot, mask_index=index, config=_config_dict(config))
        return self._store(record, fingerprint)


class AlphaObjective(TaskObjective):
    """A new task as ``alpha[K, d]`` over the bank (Eq. 1), trained on CE + Eq. 2's penalty.

    ``alpha`` starts at 1/K. With ``hybrid`` (paper A.5) the last layer instead trains a new
    edge-popup mask (``last_scores``), stored in that layer's extra bank at commit.
    ``granularity``: ``"layer"`` (the paper's, default), ``"channel"`` or a block size ``b`` of
    output channels: ``alpha`` is then ``[K, sum_i ceil(C_i / b)]``, one column per block of each
    layer's output channels (``layers.coefficient_columns``), penalised per column
    (:func:`eq2_penalty`); hybrid is per layer only.
    ``commit(name, fingerprint_inputs=...)`` also stores the task's fingerprint (as above).
    """

    def __init__(self, learner, *, lam: float = 0.0, hybrid: bool = False, seed: int = 0, granularity="layer"):
        super().__init__(learner)
        k, d = learner.num_masks, learner.num_layers
        try:
            if k < 1:
                raise RuntimeError("the bank is empty: learn basis masks or add masks before learning alpha")
            if hybrid and d < 2:
                raise ValueError("hybrid needs at least two masked layers (alpha below, a new mask in the last)")
            if not isinstance(lam, (int, float)) or isinstance(lam, bool) or not math.isfinite(lam) or lam < 0:
                raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
            granularity = check_granularity(granularity)
            if hybrid and granularity != "layer":
                raise ValueError(f"hybrid tasks have per-layer coefficients only, got granularity {granularity!r}")
        except BaseException:
            self.discard()
            raise
        self.lam = float(lam)
        self.hybrid = bool(hybrid)
        self.granularity = granularity
        self.columns_per_layer = coefficient_columns(learner.model, granularity)
        self.alpha = nn.Parameter(torch.full((k, sum(self.columns_per_layer)), 1.0 / k, device=learner.device))
        self.last_scores = initial_scores([learner.layers[-1].weight.shape], seed, learner.device)[0] if hybrid else None

    def bind(self) -> None:
        model = self.learner.model
        bind_coefficients(model, self.alpha, skip_last=self.hybrid, granularity=self.granularity)
        if self.hybrid:  # paper A.5: the last layer trains its own edge-popup mask
            self.learner.layers[-1].use_scores(self.last_scores, self.learner.density)

    def penalty(self) -> torch.Tensor | None:
        if self.lam == 0.0:
            return None
        if self.granularity != "layer":
            return eq2_penalty(self.alpha, self.lam, columns_per_layer=self.columns_per_layer)
        return eq2_penalty(self.alpha, self.lam, self.learner.num_layers - 1 if self.hybrid else None)

    def coefficients(self) -> torch.Tensor:
        """The task's ``A_t``: alpha, with a hybrid task's last column zero (its own mask serves it)."""
        a = self.alpha.detach().clone()
        if self.hybrid:
            a[:, -1] = 0.0
        return a

    def commit(self, name: str, *, config: TrainConfig | dict | None = None, fingerprint_inputs=None,
               process_group=None) -> TaskRecord:  # fmt: skip
        self._check_open()
        self.learner.tasks.check_new_name(name)
        a = self.coefficients()
        self._check_finite(name, "coefficients alpha", a)
        extra_index = None
        if self.hybrid:
            self._check_finite(name, "last-layer scores", self.last_scores)
        fingerprint = self._fingerprint(fingerprint_inputs, process_group)
        if self.hybrid:
            extra_index = self.learner.append_extra_mask_from_scores(self.last_scores.detach())
        kind = "hybrid" if self.hybrid else "new"
        record = TaskRecord(name, kind, a, self.bn_slot, extra_index=extra_index, config=_config_dict(config),
                            granularity=self.granularity)  # fmt: skip
        return self._store(record, fingerprint)


def _config_dict(config) -> dict | None:
    if config is None or isinstance(config, dict):
        return config
    return config.to_dict()


# ----------------------------------------------------------------------------- a convenience loop


@dataclass(frozen=True)
class TrainingHistory:
    """What ``fit`` saw: mean loss per epoch, accuracy on ``val_loader`` after each epoch (if
    given), the optimiser steps taken, and the stored task (``learn_*`` set it)."""

    loss: tuple[float, ...]
    val_accuracy: tuple[float, ...] | None
    steps: int
    task: TaskRecord | None = None


def batch_inputs(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of a batch ``(x, y)`` or ``(x, y, task_label)`` (Avalanche's batches)."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise ValueError(f"a batch must be (x, y) or (x, y, t), got {type(batch).__name__}")
    return batch[0], batch[1]


@torch.no_grad()
def accuracy(logits_fn, loader, device) -> float:
    """Top-1 accuracy of ``logits_fn(x)`` over ``loader``."""
    correct = total = 0
    for batch in loader:
        x, y = batch_inputs(batch)
        x, y = x.to(device), y.to(device)
        correct += (logits_fn(x).argmax(dim=1) == y).sum().item()
        total += y.numel()
    if total == 0:
        raise ValueError("the loader yielded no examples")
    return correct / total


def fit(objective: TaskObjective, loader, cfg: TrainConfig, *, val_loader=None, progress: bool = False,
        desc: str = "") -> TrainingHistory:  # fmt: skip
    """Minimise ``objective`` over ``loader`` for ``cfg.epochs`` with ``cfg``'s optimiser.

    Refuses an empty loader, an empty batch and a non-finite loss; warns when the loader gives
    fewer than ``MIN_TRAINING_STEPS`` steps in all.
    """
    device = objective.learner.device
    optimizer = cfg.make_optimizer(objective.parameters())
    objective.train()
    losses, val, steps = [], [] if val_loader is not None else None, 0
    for epoch in range(cfg.epochs):
        total, batches = 0.0, 0
        # tqdm gets the epoch's iterator, not the loader: tqdm.auto's __init__ calls iter() on what it
        # is given and then iterates it again, which made every epoch start a second, unused iterator
        # (a DataLoader's workers; BatchLoader's epoch counter moved two epochs per epoch)
        bar = tqdm(iter(loader), total=len(loader) if hasattr(loader, "__len__") else None,
                   desc=f"{desc} epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)  # fmt: skip
        for batch in bar:
            x, y = batch_inputs(batch)
            if x.dim() == 0 or x.shape[0] == 0:
                raise ValueError(f"{desc}: batch {batches} of epoch {epoch + 1} is empty (zero examples)")
            loss = objective(x.to(device), y.to(device))
            value = loss.item()  # the step's one host sync, before backward and step are queued
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"{desc}: the loss is {value} at step {batches} of epoch {epoch + 1}: training diverged "
                    f"(lr {cfg.lr} {cfg.optimizer}); lower the learning rate"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += value
            batches += 1
            if batches % 20 == 0:
                bar.set_postfix(loss=f"{total / batches:.3f}")
        if batches == 0:
            raise ValueError(f"{desc}: the loader yielded no batches")
        steps += batches
        if epoch == 0 and batches * cfg.epochs < MIN_TRAINING_STEPS:
            warnings.warn(
                f"{desc}: {batches} batches x {cfg.epochs} epochs = {batches * cfg.epochs} optimiser steps; "
                f"fewer than {MIN_TRAINING_STEPS} rarely train a mask or alpha (more data, a smaller batch "
                "or more epochs)",
                stacklevel=caller_outside_package(),
            )
        losses.append(total / batches)
        if val is not None:
            objective.eval()
            val.append(accuracy(objective.logits, val_loader, device))
            objective.train()
    objective.eval()
    return TrainingHistory(tuple(losses), tuple(val) if val is not None else None, steps)


__all__ = [
    "AlphaObjective", "EdgePopupObjective", "MIN_TRAINING_STEPS", "TaskObjective", "TrainingHistory", "accuracy",
    "batch_inputs", "eq2_penalty", "fit", "initial_scores",
]  # fmt: skip
