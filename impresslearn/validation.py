"""Choosing hyperparameters on a validation split carved from the training set, never on test data.

One definition for every script and experiment that chooses (``benchmarks/frontier.py``,
``scripts/choose_train_defaults.py``, the experiment runner): how a task's training set is cut
into a training and a validation part, the learning-rate candidates the frontier compares, and
the rule that picks one of them.

The rule: every candidate is trained on the first seed; the one with the best validation
accuracy there is used for every other seed. Test accuracy may be recorded for every run, but a
choice never reads it.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from .config import TrainConfig, check_integer
from .scenarios import InMemoryDataset

VALIDATION_IMAGES = 10_000

# Alpha starts at 1/K, so the best step may shrink as K grows: the paper's LeNet recipe (RMSprop
# lr 0.002, Table 3), a smaller RMSprop step and the library's default (Adam lr 0.03).
ALPHA_CANDIDATES = (
    TrainConfig(optimizer="rmsprop", lr=0.002, epochs=3),
    TrainConfig(optimizer="rmsprop", lr=0.0005, epochs=3),
    TrainConfig(optimizer="adam", lr=0.03, epochs=3),
)
# An edge-popup mask: the library default (chosen on validation by scripts/choose_train_defaults.py)
# and the paper's Table 3 recipe.
MASK_CANDIDATES = (
    TrainConfig(optimizer="adam", lr=0.03, epochs=3),
    TrainConfig(optimizer="rmsprop", lr=0.002, epochs=3),
)


def validation_split(dataset, validation_images: int = VALIDATION_IMAGES, train_images: int | None = None):
    """(train, validation) of an in-memory training set: its last ``validation_images`` examples
    validate, the first ``train_images`` of the rest train (all of the rest when None)."""
    x, y = dataset.tensors
    validation_images = check_integer(validation_images, "validation_images", minimum=1)
    cut = len(y) - validation_images
    if cut < 1:
        raise ValueError(f"validation_split: {len(y)} examples leave none to train after {validation_images} "
                         "validation examples")  # fmt: skip
    stop = cut if train_images is None else min(cut, check_integer(train_images, "train_images", minimum=1))
    return InMemoryDataset(x[:stop], y[:stop]), InMemoryDataset(x[cut:], y[cut:])


def candidate_name(cfg: TrainConfig) -> str:
    """How results files name a candidate: ``"rmsprop lr 0.0005"``."""
    return f"{cfg.optimizer} lr {cfg.lr:g}"


def choose(results: Iterable[Mapping], candidates: Sequence[TrainConfig], *, metric=lambda r: r["validation"]):
    """The candidate chosen on validation among ``results`` of one group, or None until every
    candidate has a result on the first (lowest) seed.

    Each result is a mapping with ``seed``, ``candidate`` (its ``candidate_name``) and whatever
    ``metric`` reads its validation accuracy from (default ``result["validation"]``); ties go
    to the earlier candidate in ``candidates``.
    """
    results = list(results)
    if not results:
        return None
    first_seed = min(r["seed"] for r in results)
    scores = {r["candidate"]: metric(r) for r in results if r["seed"] == first_seed}
    names = [candidate_name(c) for c in candidates]
    if any(n not in scores for n in names):
        return None
    best = max(range(len(names)), key=lambda i: (scores[names[i]], -i))
    return candidates[best]


__all__ = ["ALPHA_CANDIDATES", "MASK_CANDIDATES", "VALIDATION_IMAGES", "candidate_name", "choose", "validation_split"]
