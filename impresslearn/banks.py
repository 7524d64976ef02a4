"""What a bank costs on disk: random masks stored as their seeds, coefficients in fp32, fp16 or bf16.

A bank of random masks is fully determined by the seed of each ``add_random_masks`` call, the
density and the layer shapes (:func:`random_mask_scores` is the one definition of that draw).
A learner checkpoint therefore stores only the masks that were *trained* (or added by hand);
the random ones are redrawn on load, re-packed into their planes, and the whole bank is checked
against the SHA-256 recorded at save, so a changed seed, density or top-k rule is refused
instead of silently giving other masks.

Coefficients ``A_t`` are trained in fp32; a learner created with ``coefficient_dtype="fp16"``
(or ``"bf16"``) rounds every stored task's coefficients to that type when the task is stored,
so what it evaluates is exactly what it saves and loads (2 bytes per coefficient instead of 4).
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import torch

from . import ops
from ._integers import is_count
from .config import ConfigError

# name -> torch dtype of the stored coefficients; fp32 is what training uses
COEFFICIENT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# On disk a random draw is its record {first, count, seed}: three int64 in the metadata.
RANDOM_DRAW_BYTES = 3 * 8
# ... and the bank is checked against one SHA-256 digest.
BANK_HASH_BYTES = 32


def check_coefficient_dtype(name) -> str:
    """``name`` if it is one of :data:`COEFFICIENT_DTYPES`, else a ConfigError naming the choices."""
    if not isinstance(name, str) or name not in COEFFICIENT_DTYPES:
        raise ConfigError(f"coefficient_dtype: must be one of {tuple(COEFFICIENT_DTYPES)}, got {name!r}")
    return name


def coefficient_dtype_bytes(name: str) -> int:
    """Bytes of one stored coefficient in ``name`` (4 for fp32, 2 for fp16 and bf16)."""
    return COEFFICIENT_DTYPES[check_coefficient_dtype(name)].itemsize


def round_coefficients(alpha: torch.Tensor, name: str) -> torch.Tensor:
    """``alpha`` rounded to ``name`` and returned as fp32 (exactly the values that type stores).

    fp16 holds magnitudes up to 65504; a coefficient beyond that would become inf, so it is refused.
    """
    dtype = COEFFICIENT_DTYPES[check_coefficient_dtype(name)]
    if dtype == torch.float32:
        return alpha.float()
    rounded = alpha.detach().to(dtype)
    if not torch.isfinite(rounded).all() and torch.isfinite(alpha).all():
        largest = float(alpha.detach().abs().max())
        raise ValueError(f"coefficients up to {largest:g} in magnitude do not fit {name} "
                         f"(max {torch.finfo(dtype).max:g}); store them as fp32 or bf16")  # fmt: skip
    return rounded.float()


def random_mask_scores(shapes: Sequence[torch.Size], count: int, seed: int) -> Iterator[list[torch.Tensor]]:
    """The scores of ``count`` random masks drawn from ``seed``: one list (a tensor per layer) per mask.

    Top-k of uniform scores is a uniformly random k-subset, so ``topk(scores_i, k_i)`` is the
    mask. One CPU generator, mask by mask and layer by layer: the same seed and shapes always
    give the same scores, on any device.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    for _ in range(count):
        yield [torch.rand(shape, generator=generator) for shape in shapes]


def random_mask_indices(draws: Sequence[dict]) -> set[int]:
    """Indices of the bank masks that ``draws`` (``{first, count, seed}`` records) produced."""
    return {i for d in draws for i in range(d["first"], d["first"] + d["count"])}


def stored_bank_bytes(layer_sizes: Sequence[int], num_masks: int, draws: Sequence[dict]) -> int:
    """What a checkpoint stores for a bank of ``num_masks`` masks, ``draws`` of them random.

    Trained (and hand-added) masks at 1 bit per weight (``accounting.mask_bytes`` each), every
    random draw as its record, and the bank's hash when anything is redrawn.
    """
    from .accounting import mask_bytes

    num_random = len(random_mask_indices(draws))
    trained = (num_masks - num_random) * mask_bytes(layer_sizes)
    return trained + RANDOM_DRAW_BYTES * len(draws) + (BANK_HASH_BYTES if draws else 0)


# ----------------------------------------------------------------------------- checkpoints


def _copy_masks(source: torch.Tensor, target: torch.Tensor, pairs: Iterable[tuple[int, int]]) -> None:
    """For each ``(s, t)``, set mask ``t`` of the byte-plane bank ``target`` (all zeros there) to
    mask ``s`` of ``source``: the bit loop behind saving a bank without its random masks and
    putting the stored ones back in place."""
    for s, t in pairs:
        target[t // 8] |= ((source[s // 8] >> (s % 8)) & 1) << (t % 8)


def select_masks(bank: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
    """A byte-plane bank holding only masks ``indices`` of ``bank`` (in that order), re-packed."""
    count = len(indices)
    if list(indices) == list(range(count)):  # a prefix (e.g. no random masks): whole planes, no bit loop
        out = bank[: ops.num_planes(count)].clone()
        if count % 8:
            out[-1] &= (1 << (count % 8)) - 1
        return out
    out = bank.new_zeros((ops.num_planes(count), bank.shape[1]))
    _copy_masks(bank, out, ((old, new) for new, old in enumerate(indices)))
    return out


def compact_checkpoint(learner, tensors: dict, metadata: dict, version: int) -> tuple[dict, dict]:
    """What ``save`` writes: the bank tensors without the random masks (their draws are in
    ``metadata['random_masks']``), ``bank_sha256`` of the full bank, and every task's
    coefficients in the learner's ``coefficient_dtype``. ``version`` is the learner format."""
    from .tasks import bank_sha256

    random = random_mask_indices(learner.random_mask_draws)
    kept = [j for j in range(learner.num_masks) if j not in random]
    tensors = dict(tensors)
    for i, layer in enumerate(learner.layers):
        tensors[f"layers.{i}.bank"] = select_masks(layer.bank.detach().cpu(), kept).contiguous()
    dtype = COEFFICIENT_DTYPES[learner.coefficient_dtype]
    for name in [n for n in tensors if n.startswith("tasks.") and n.endswith(".coefficients")]:
        tensors[name] = tensors[name].to(dtype).contiguous()
    metadata = dict(metadata, learner_version=version, bank_sha256=bank_sha256(learner.layers),
                    coefficient_dtype=learner.coefficient_dtype)  # fmt: skip
    return tensors, metadata


def install_stored_banks(learner, tensors: dict, metadata: dict, need) -> None:
    """Load the banks of a :func:`compact_checkpoint`: trained masks from the file, random masks
    redrawn from their seeds, then the whole bank checked against ``bank_sha256``.

    ``need(condition, message)`` raises the loader's error (a ``CheckpointError``) when false.
    """
    from .tasks import bank_sha256

    num_masks, num_extra, draws = metadata["num_masks"], metadata["num_extra"], metadata["random_masks"]
    need(isinstance(draws, list) and all(isinstance(d, dict) and set(d) == {"first", "count", "seed"}
                                         and is_count(d["first"], 0) and is_count(d["count"], 1)
                                         and is_count(d["seed"], 0) for d in draws),
         "random_masks is not a list of {first, count, seed}")  # fmt: skip
    random = random_mask_indices(draws)
    need(len(random) == sum(d["count"] for d in draws) and all(i < num_masks for i in random),
         f"random_masks {draws} overlap or reach past the bank of {num_masks} masks")  # fmt: skip
    kept = [j for j in range(num_masks) if j not in random]
    shapes = [layer.weight.shape for layer in learner.layers]
    full = []
    for i, layer in enumerate(learner.layers):
        stored = tensors[f"layers.{i}.bank"]
        n = layer.weight.numel()
        need(stored.dtype == torch.uint8 and tuple(stored.shape) == (ops.num_planes(len(kept)), n),
             f"layers.{i}.bank must hold the {len(kept)} trained masks, uint8[{ops.num_planes(len(kept))}, {n}]; "
             f"got {stored.dtype} of shape {tuple(stored.shape)}")  # fmt: skip
        bank = torch.zeros(ops.num_planes(num_masks), n, dtype=torch.uint8)
        if kept == list(range(len(kept))):  # trained masks first: their planes as stored
            bank[: stored.shape[0]] = stored
        else:
            _copy_masks(stored, bank, enumerate(kept))
        full.append(bank.to(layer.weight.device))
    for d in sorted(draws, key=lambda d: d["first"]):
        for m, scores in enumerate(random_mask_scores(shapes, d["count"], d["seed"])):
            for layer, bank, s in zip(learner.layers, full, scores):
                k = ops.keep_count(layer.weight.numel(), learner.density)
                ops.topk_mask_into_(bank, d["first"] + m, s.to(bank.device), k, backend=layer.backend)
    for i, (layer, bank) in enumerate(zip(learner.layers, full)):
        layer.load_banks_(bank, num_masks, tensors[f"layers.{i}.extra_bank"], num_extra[i])
    got, want = bank_sha256(learner.layers), metadata["bank_sha256"]
    need(got == want,
         f"the bank rebuilt from the stored masks and the random seeds hashes to {got[:16]}..., the saved bank to "
         f"{str(want)[:16]}...: a seed, the density, a stored mask or the random-mask rule differs from the one "
         "that saved it")  # fmt: skip


__all__ = [
    "BANK_HASH_BYTES", "COEFFICIENT_DTYPES", "RANDOM_DRAW_BYTES", "check_coefficient_dtype",
    "coefficient_dtype_bytes", "compact_checkpoint", "install_stored_banks", "random_mask_indices",
    "random_mask_scores", "round_coefficients", "select_masks", "stored_bank_bytes",
]  # fmt: skip
