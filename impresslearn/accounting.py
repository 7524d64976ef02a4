"""Storage accounting: the ONE definition of bytes per task, for ImpressLearn and for SupSup.

Every report (the learner's, the demo's, the experiment runner's, Table 2, the ImageNet script)
counts with these functions, so their numbers agree.

What a task stores, in bytes (stored formats: docs/design.md, Formats):

- a binary mask: 1 bit per weight, a byte plane per layer: ``sum_i ceil(n_i / 8)``;
- coefficients ``A_t[K_t, d]``: fp32, ``4 * K_t * d``;
- per-task BatchNorm statistics (conv nets): fp32 running mean and variance per channel,
  ``8 * C`` per BN layer. SupSup needs them too (a shared BN fails every task but the last).

ImpressLearn: a basis task stores its mask + its one-hot ``A_t`` + BN; a new task ``A_t`` + BN;
a hybrid task ``A_t`` + its last-layer mask + BN. SupSup (one mask per task): mask + BN.

The paper's Table 2 counts a SupSup mask as 16-bit indices of the kept weights at density
1/8, i.e. 2 bits per weight (:data:`PAPER_TABLE2_MASK_BITS_PER_WEIGHT`); it is used only to
reproduce that table next to the stored size above. Memory, not storage: SupSup's code holds
masks as fp32 tensors (:func:`dense_float_masks_bytes`), our bank holds byte planes
(:func:`bank_bytes`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

FP32_BYTES = 4
PAPER_TABLE2_MASK_BITS_PER_WEIGHT = 2


def mask_bytes(layer_sizes: Sequence[int]) -> int:
    """One binary mask over layers of ``layer_sizes`` weights: a byte plane per layer."""
    return sum(math.ceil(n / 8) for n in layer_sizes)


def coefficient_bytes(num_masks: int, num_layers: int) -> int:
    """``A_t[K_t, d]`` in fp32."""
    return FP32_BYTES * num_masks * num_layers


def bn_bytes_per_task(bn_features: Sequence[int]) -> int:
    """Per-task BN statistics: fp32 running mean and variance of every channel of every BN."""
    return sum(2 * FP32_BYTES * c for c in bn_features)


def bank_bytes(layer_sizes: Sequence[int], num_masks: int) -> int:
    """A bank of ``num_masks`` masks: ``ceil(K / 8)`` byte planes per layer."""
    return sum(n * math.ceil(num_masks / 8) for n in layer_sizes)


def dense_float_masks_bytes(layer_sizes: Sequence[int], num_masks: int) -> int:
    """``num_masks`` masks as fp32 tensors, as SupSup's code holds them in memory."""
    return FP32_BYTES * num_masks * sum(layer_sizes)


def supsup_bytes_per_task(layer_sizes: Sequence[int], bn_features: Sequence[int]) -> int:
    """SupSup stores one mask and its BN statistics per task."""
    return mask_bytes(layer_sizes) + bn_bytes_per_task(bn_features)


@dataclass(frozen=True)
class TaskBytes:
    """What one task stores: ``mask_bits`` (its own masks), ``coefficients``, ``bn_stats``;
    ``total`` is their sum and ``supsup`` what SupSup stores for the same task."""

    mask_bits: int
    coefficients: int
    bn_stats: int
    total: int
    supsup: int

    def __getitem__(self, key: str) -> int:  # reports read it like the dict it used to be
        return getattr(self, key)

    def to_dict(self) -> dict:
        return asdict(self)


def task_bytes(kind: str, num_masks: int, layer_sizes: Sequence[int], bn_features: Sequence[int]) -> TaskBytes:
    """Bytes of one stored task of ``kind`` whose ``A_t`` spans ``num_masks`` masks."""
    if kind == "basis":
        own = mask_bytes(layer_sizes)
    elif kind == "hybrid":
        own = mask_bytes(layer_sizes[-1:])
    elif kind == "new":
        own = 0
    else:
        raise ValueError(f"kind must be 'basis', 'new' or 'hybrid', got {kind!r}")
    coefficients = coefficient_bytes(num_masks, len(layer_sizes))
    bn = bn_bytes_per_task(bn_features)
    return TaskBytes(own, coefficients, bn, own + coefficients + bn, supsup_bytes_per_task(layer_sizes, bn_features))


# ----------------------------------------------------------------------------- of a learner


def model_sizes(model) -> tuple[list[int], list[int]]:
    """(weights per masked layer, channels per multitask BN) of a model with Impress layers."""
    from .layers import impress_layers, multitask_bns

    return [layer.weight.numel() for layer in impress_layers(model)], [bn.num_features for bn in multitask_bns(model)]


def learner_task_bytes(learner, name: str) -> TaskBytes:
    rec = learner.tasks[name]
    sizes, features = model_sizes(learner.model)
    return task_bytes(rec.kind, rec.num_masks, sizes, features)


def storage_report(learner) -> dict:
    """Bytes of everything a learner stores (banks, coefficients, BN statistics) vs SupSup for the same tasks."""
    sizes, features = model_sizes(learner.model)
    banks = sum(layer.bank.numel() + layer.extra_bank.numel() for layer in learner.layers)
    coefficients = sum(coefficient_bytes(rec.num_masks, len(sizes)) for rec in learner.tasks.values())
    t = len(learner.tasks)
    bn = bn_bytes_per_task(features) * t
    total = banks + coefficients + bn
    supsup = supsup_bytes_per_task(sizes, features)
    return dict(
        num_tasks=t,
        num_masks=learner.num_masks,
        num_layers=len(sizes),
        bank_bytes=banks,
        coefficient_bytes=coefficients,
        bn_bytes=bn,
        total_bytes=total,
        bytes_per_task=total / t if t else float("nan"),
        new_task_bytes=task_bytes("new", learner.num_masks, sizes, features).total,
        supsup_total_bytes=supsup * t,
        supsup_bytes_per_task=supsup,
        compression=(supsup * t / total) if t else float("nan"),
    )


__all__ = [
    "FP32_BYTES", "PAPER_TABLE2_MASK_BITS_PER_WEIGHT", "TaskBytes", "bank_bytes", "bn_bytes_per_task",
    "coefficient_bytes", "dense_float_masks_bytes", "learner_task_bytes", "mask_bytes", "model_sizes",
    "storage_report", "supsup_bytes_per_task", "task_bytes",
]  # fmt: skip
