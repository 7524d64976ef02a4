"""The learner's stored tasks: frozen task records, their registry, per-task BN slots, a state hash.

Every stored task ``t`` is a coefficient matrix ``A_t[K_t, d]`` over the first ``K_t`` bank masks
(paper Eq. 1), or, at a finer *granularity*, ``A_t[K_t, sum_i R_i]``: layer ``i`` gets ``R_i``
consecutive columns, one per block of its output channels (:func:`columns_per_layer`). A basis task is the one-hot column of its own mask in every layer
(``impresslearn.layers.one_hot_coefficients``, the one place that matrix is built); SupSup's one mask per task is
the case K = T. Each task also owns one slot of per-task BatchNorm statistics (conv nets).
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch

from ._integers import is_count
from .config import check_integer

TASK_KINDS = ("basis", "new", "hybrid")

# ----------------------------------------------------------------------------- coefficient granularity
# "layer": one coefficient per mask and masked layer, the paper's A_t[K, d]. "channel": one per mask
# and output channel. An int b >= 1: one per mask and block of b output channels (the last block of
# a layer may be shorter; b = 1 is "channel", b >= a layer's channels gives that layer one column).

GRANULARITIES = ("layer", "channel")


def check_granularity(granularity) -> str | int:
    """``granularity`` in its one spelling: ``"layer"``, ``"channel"`` (also for 1) or an int block >= 2."""
    if isinstance(granularity, str) and granularity in GRANULARITIES:
        return granularity
    if is_count(granularity, 1):
        return "channel" if granularity == 1 else int(granularity)
    raise ValueError(
        f"granularity must be 'layer', 'channel' or a block size of output channels (an int >= 1), got {granularity!r}"
    )


def channels_per_column(granularity) -> int | None:
    """Output channels that share one coefficient column: None for ``"layer"`` (the whole layer)."""
    granularity = check_granularity(granularity)
    if granularity == "layer":
        return None
    return 1 if granularity == "channel" else granularity


def granularity_words(granularity) -> str:
    """How tables and logs name a granularity: "per layer", "per channel", "per 4 channels"."""
    granularity = check_granularity(granularity)
    return f"per {granularity}" if isinstance(granularity, str) else f"per {granularity} channels"


def columns_per_layer(out_channels: Sequence[int], granularity) -> list[int]:
    """Coefficient columns of each layer: 1 per layer, or ceil(C_i / block) for C_i output channels."""
    block = channels_per_column(granularity)
    return [1 if block is None else math.ceil(c / block) for c in out_channels]


@dataclass(frozen=True)
class TaskRecord:
    """A stored task: its coefficients ``A_t[K_t, d]`` and what else it owns.

    ``mask_index``: a basis task's mask in the bank. ``extra_index``: a hybrid task's mask in
    the last layer's extra bank. ``bn_slot``: its slot of per-task BatchNorm statistics.
    ``config``: how it was trained (``TrainConfig.to_dict()``), if known. ``granularity``: how
    ``coefficients``' columns map to layers (:func:`check_granularity`); the learner checks the
    column count against its model when the task is stored.
    """

    name: str
    kind: str
    coefficients: torch.Tensor
    bn_slot: int
    mask_index: int | None = None
    extra_index: int | None = None
    config: Mapping | None = None
    granularity: str | int = "layer"

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"task name must be a non-empty string, got {self.name!r}")
        if self.kind not in TASK_KINDS:
            raise ValueError(f"task {self.name!r}: kind must be one of {TASK_KINDS}, got {self.kind!r}")
        a = self.coefficients
        if not isinstance(a, torch.Tensor) or a.dim() != 2 or a.shape[0] < 1 or not a.is_floating_point():
            raise ValueError(f"task {self.name!r}: coefficients must be a float tensor [K_t >= 1, d]")
        if not torch.isfinite(a).all():
            raise ValueError(
                f"task {self.name!r}: coefficients are not finite (NaN or inf); training diverged "
                "(lower the learning rate) or the values were damaged"
            )
        check_integer(self.bn_slot, f"task {self.name!r}: bn_slot", minimum=0)
        if (self.kind == "basis") != (self.mask_index is not None):
            raise ValueError(f"task {self.name!r}: a basis task, and only a basis task, has a mask_index")
        if (self.kind == "hybrid") != (self.extra_index is not None):
            raise ValueError(f"task {self.name!r}: a hybrid task, and only a hybrid task, has an extra_index")
        object.__setattr__(self, "granularity", check_granularity(self.granularity))
        if self.granularity != "layer" and self.kind != "new":
            raise ValueError(f"task {self.name!r}: only new tasks have finer coefficients than per layer "
                             f"(a {self.kind} task with granularity {self.granularity!r})")  # fmt: skip

    @property
    def num_masks(self) -> int:
        return self.coefficients.shape[0]

    def last_layer_extra(self) -> torch.Tensor | None:
        """A hybrid task's coefficients over the last layer's extra masks: one-hot on its own mask."""
        if self.extra_index is None:
            return None
        e = torch.zeros(self.extra_index + 1, device=self.coefficients.device)
        e[self.extra_index] = 1.0
        return e


class TaskRegistry(Mapping):
    """Stored tasks by name, in the order they were stored; records are frozen, names unique."""

    def __init__(self):
        self._records: OrderedDict[str, TaskRecord] = OrderedDict()

    def __getitem__(self, name: str) -> TaskRecord:
        if name not in self._records:
            known = ", ".join(self._records) or "none"
            raise KeyError(f"no task named {name!r} (stored tasks: {known})")
        return self._records[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def check_new_name(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"task name must be a non-empty string, got {name!r}")
        if name in self._records:
            raise ValueError(f"a task named {name!r} is already stored")

    def add(self, record: TaskRecord) -> TaskRecord:
        self.check_new_name(record.name)
        if record.bn_slot != len(self._records):
            raise ValueError(f"task {record.name!r} has BN slot {record.bn_slot}; the next task owns slot {len(self)}")
        self._records[record.name] = record
        return record

    def __repr__(self) -> str:
        return f"TaskRegistry({list(self._records)})"


# ----------------------------------------------------------------------------- BN slots


def bn_slot_statistics(bns, slot: int) -> torch.Tensor:
    """One task's BN running statistics as one fp32 vector (mean then var of every BN), on the CPU."""
    parts = [t for bn in bns for t in (bn.running_mean[slot], bn.running_var[slot])]
    return torch.cat([p.detach().float().reshape(-1).cpu() for p in parts]) if parts else torch.zeros(0)


def load_bn_slot_statistics_(bns, slot: int, vector: torch.Tensor) -> None:
    """Write a vector from :func:`bn_slot_statistics` into slot ``slot`` (e.g. averaged over ranks)."""
    need = sum(2 * bn.num_features for bn in bns)
    if vector.dim() != 1 or vector.numel() != need:
        raise ValueError(f"BN statistics vector has shape {tuple(vector.shape)}, the model needs [{need}]")
    offset = 0
    with torch.no_grad():
        for bn in bns:
            for buf in (bn.running_mean, bn.running_var):
                c = buf.shape[1]
                buf[slot].copy_(vector[offset : offset + c].to(buf.device, buf.dtype))
                offset += c


# ----------------------------------------------------------------------------- state hash


def bank_sha256(layers) -> str:
    """SHA-256 of every layer's bank bytes, in layer order."""
    h = hashlib.sha256()
    for layer in layers:
        h.update(layer.bank.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def state_sha256(layers, tasks: Mapping[str, TaskRecord], bns, fingerprints: Mapping | None = None) -> str:
    """SHA-256 of the banks (and extra banks), every task's name and coefficients, BN statistics
    and task fingerprints (they decide what the default task inference picks)."""
    h = hashlib.sha256(bank_sha256(layers).encode())
    for layer in layers:
        h.update(layer.extra_bank.detach().cpu().contiguous().numpy().tobytes())
    for rec in tasks.values():
        h.update(rec.name.encode())
        h.update(rec.coefficients.detach().float().cpu().contiguous().numpy().tobytes())
        if rec.granularity != "layer":  # per-layer tasks hash as they did before granularity existed
            h.update(f"granularity={rec.granularity}".encode())
    for bn in bns:
        h.update(bn.running_mean.detach().cpu().contiguous().numpy().tobytes())
        h.update(bn.running_var.detach().cpu().contiguous().numpy().tobytes())
    for name in [n for n in tasks if n in (fingerprints or {})]:  # none: hashes as before fingerprints
        fp = fingerprints[name]
        h.update(f"fingerprint {name} {fp.input_size} {fp.sketch_dim} {fp.seed}".encode())
        for t in fp.stored_tensors().values():  # as saved: mean, var, entropy
            h.update(t.numpy().tobytes())
    return h.hexdigest()


__all__ = [
    "GRANULARITIES", "TASK_KINDS", "TaskRecord", "TaskRegistry", "bank_sha256", "bn_slot_statistics",
    "channels_per_column", "check_granularity", "columns_per_layer", "granularity_words", "load_bn_slot_statistics_",
    "state_sha256",
]  # fmt: skip
