"""Storage accounting: the ONE definition of bytes per task, for ImpressLearn and for SupSup.

Every report (the learner's, the demo's, the experiment runner's, Table 2, the ImageNet script)
counts with these functions, so their numbers agree.

What a task stores, in bytes (stored formats: docs/design.md, Formats):

- a binary mask: 1 bit per weight, a byte plane per layer: ``sum_i ceil(n_i / 8)``;
- coefficients ``A_t[K_t, d]``: ``4 * K_t * d`` in fp32, ``2 * K_t * d`` in fp16 or bf16 (the
  learner's ``coefficient_dtype``, :mod:`impresslearn.banks`); at a finer granularity (one
  column per block of ``b`` output channels, :mod:`impresslearn.tasks`) ``d`` becomes the number
  of columns, ``sum_i ceil(C_i / b)``: K_t x blocks x dtype bytes per layer;
- per-task BatchNorm statistics (conv nets): fp32 running mean and variance per channel,
  ``8 * C`` per BN layer. SupSup needs them too (a shared BN fails every task but the last);
- a fingerprint (task inference, :class:`impresslearn.inference.TaskFingerprint`), when the
  task has one: fp16 mean and variance of ``m`` input projections and an fp32 entropy,
  ``4 * m + 4`` (260 at the default m = 64). SupSup stores none (it infers with GN).

ImpressLearn: a basis task stores its mask + its one-hot ``A_t`` + BN; a new task ``A_t`` + BN;
a hybrid task ``A_t`` + its last-layer mask + BN. SupSup (one mask per task): mask + BN.

The bank is amortised over the tasks as the paper's Phi does (``|alpha| + |M| * mask / T``):
every task's ``bank_share`` is the stored bytes of the bank masks no stored basis task owns,
divided by the number of tasks. A random mask stores no bits: the checkpoint keeps its draw's
seed and redraws it (:func:`impresslearn.banks.stored_bank_bytes`), so a bank of random masks
costs a few dozen bytes however large K is. The shares and the tasks' own bytes add up to
``storage_report``'s ``total_bytes``.

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

from .banks import coefficient_dtype_bytes, random_mask_indices, stored_bank_bytes
from .tasks import columns_per_layer

FP32_BYTES = 4
PAPER_TABLE2_MASK_BITS_PER_WEIGHT = 2


def mask_bytes(layer_sizes: Sequence[int]) -> int:
    """One binary mask over layers of ``layer_sizes`` weights: a byte plane per layer."""
    return sum(math.ceil(n / 8) for n in layer_sizes)


def coefficient_bytes(num_masks: int, num_columns: int, coefficient_dtype: str = "fp32") -> int:
    """``A_t[K_t, columns]`` stored in ``coefficient_dtype`` (fp32, fp16 or bf16); ``columns`` is ``d``
    per layer, or :func:`coefficient_width` at a finer granularity."""
    return coefficient_dtype_bytes(coefficient_dtype) * num_masks * num_columns


def coefficient_width(out_channels: Sequence[int], granularity="layer") -> int:
    """Columns of ``A_t`` for layers of ``out_channels`` output channels: ``d`` for ``"layer"``,
    ``sum_i ceil(C_i / b)`` per block of ``b`` channels (``"channel"``: b = 1)."""
    return sum(columns_per_layer(out_channels, granularity))


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
    """What one task stores: ``mask_bits`` (its own masks), ``coefficients``, ``bn_stats`` and
    ``bank_share`` (its part of the shared bank, see the module doc; may be fractional) and
    ``fingerprint`` (0 without one); ``total`` is their sum and ``supsup`` what SupSup stores
    for the same task."""

    mask_bits: int
    coefficients: int
    bn_stats: int
    total: float
    supsup: int
    bank_share: float = 0
    fingerprint: int = 0

    def __getitem__(self, key: str) -> int:  # reports read it like the dict it used to be
        return getattr(self, key)

    def to_dict(self) -> dict:
        return asdict(self)


def task_bytes(kind: str, num_masks: int, layer_sizes: Sequence[int], bn_features: Sequence[int], *,
               coefficient_dtype: str = "fp32", bank_share: float = 0, fingerprint: int = 0,
               num_columns: int | None = None) -> TaskBytes:  # fmt: skip
    """Bytes of one stored task of ``kind`` whose ``A_t`` spans ``num_masks`` masks, its
    coefficients in ``coefficient_dtype``, plus ``bank_share`` bytes of the shared bank and
    ``fingerprint`` bytes of its fingerprint (``TaskFingerprint.nbytes``; 0 without one).
    ``num_columns``: the columns of ``A_t`` (default one per layer; :func:`coefficient_width`)."""
    if kind == "basis":
        own = mask_bytes(layer_sizes)
    elif kind == "hybrid":
        own = mask_bytes(layer_sizes[-1:])
    elif kind == "new":
        own = 0
    else:
        raise ValueError(f"kind must be 'basis', 'new' or 'hybrid', got {kind!r}")
    columns = len(layer_sizes) if num_columns is None else num_columns
    coefficients = coefficient_bytes(num_masks, columns, coefficient_dtype)
    bn = bn_bytes_per_task(bn_features)
    return TaskBytes(own, coefficients, bn, own + coefficients + bn + bank_share + fingerprint,
                     supsup_bytes_per_task(layer_sizes, bn_features), bank_share, fingerprint)  # fmt: skip


# ----------------------------------------------------------------------------- of a learner


def model_sizes(model) -> tuple[list[int], list[int]]:
    """(weights per masked layer, channels per multitask BN) of a model with Impress layers."""
    from .layers import impress_layers, multitask_bns

    return [layer.weight.numel() for layer in impress_layers(model)], [bn.num_features for bn in multitask_bns(model)]


def shared_bank_bytes(learner) -> int:
    """Stored bytes of the bank masks that no stored basis task owns (random draws, added masks):
    what the tasks share (a basis task's own mask is its ``mask_bits``)."""
    sizes, _ = model_sizes(learner.model)
    draws = learner.random_mask_draws
    random = random_mask_indices(draws)
    basis_owned = sum(1 for rec in learner.tasks.values()
                      if rec.kind == "basis" and rec.mask_index not in random)  # fmt: skip
    return stored_bank_bytes(sizes, learner.num_masks, draws) - basis_owned * mask_bytes(sizes)


def fingerprint_bytes(learner, name: str) -> int:
    """Bytes of task ``name``'s fingerprint in the learner's ``fingerprints`` (0 without one)."""
    fingerprint = getattr(learner, "fingerprints", {}).get(name)
    return 0 if fingerprint is None else fingerprint.nbytes


def learner_task_bytes(learner, name: str) -> TaskBytes:
    rec = learner.tasks[name]
    sizes, features = model_sizes(learner.model)
    return task_bytes(rec.kind, rec.num_masks, sizes, features, coefficient_dtype=learner.coefficient_dtype,
                      bank_share=shared_bank_bytes(learner) / len(learner.tasks),
                      fingerprint=fingerprint_bytes(learner, name), num_columns=rec.coefficients.shape[1])  # fmt: skip


def storage_report(learner, new_task_granularity="layer") -> dict:
    """Bytes of everything a learner stores (banks, coefficients, BN statistics, fingerprints) vs
    SupSup for the same tasks; ``new_task_bytes`` is what one more new task would add, its
    coefficients at ``new_task_granularity``.

    ``bank_bytes`` is the banks' size in memory (byte planes, random masks included);
    ``stored_bank_bytes`` what the checkpoint stores of them (random masks as their seeds,
    a hybrid task's last-layer mask at 1 bit per weight), which the totals count.
    """
    sizes, features = model_sizes(learner.model)
    banks = sum(layer.bank.numel() + layer.extra_bank.numel() for layer in learner.layers)
    stored_banks = (stored_bank_bytes(sizes, learner.num_masks, learner.random_mask_draws)
                    + learner.layers[-1].num_extra * mask_bytes(sizes[-1:]))  # fmt: skip
    coefficients = sum(coefficient_bytes(rec.num_masks, rec.coefficients.shape[1], learner.coefficient_dtype)
                       for rec in learner.tasks.values())  # fmt: skip
    t = len(learner.tasks)
    bn = bn_bytes_per_task(features) * t
    fingerprints = sum(fingerprint_bytes(learner, name) for name in learner.tasks)
    total = stored_banks + coefficients + bn + fingerprints
    supsup = supsup_bytes_per_task(sizes, features)
    return dict(
        num_tasks=t,
        num_masks=learner.num_masks,
        num_layers=len(sizes),
        bank_bytes=banks,
        stored_bank_bytes=stored_banks,
        coefficient_dtype=learner.coefficient_dtype,
        coefficient_bytes=coefficients,
        bn_bytes=bn,
        fingerprint_bytes=fingerprints,
        total_bytes=total,
        bytes_per_task=total / t if t else float("nan"),
        # without a bank share; with a fingerprint like the stored ones' when the learner keeps them
        new_task_bytes=task_bytes("new", learner.num_masks, sizes, features,
                                  coefficient_dtype=learner.coefficient_dtype,
                                  num_columns=learner.coefficient_width(new_task_granularity),
                                  fingerprint=max((fp.nbytes for fp in getattr(learner, "fingerprints", {}).values()),
                                                  default=0)).total,
        supsup_total_bytes=supsup * t,
        supsup_bytes_per_task=supsup,
        compression=(supsup * t / total) if t else float("nan"),
    )


__all__ = [
    "FP32_BYTES", "PAPER_TABLE2_MASK_BITS_PER_WEIGHT", "TaskBytes", "bank_bytes", "bn_bytes_per_task",
    "coefficient_bytes", "coefficient_width", "dense_float_masks_bytes", "fingerprint_bytes", "learner_task_bytes", "mask_bytes",
    "model_sizes",
    "shared_bank_bytes", "storage_report", "supsup_bytes_per_task", "task_bytes",
]  # fmt: skip
