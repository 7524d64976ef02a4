"""The one training configuration: what ``ImpressLearner`` accepts is what a YAML config accepts.

``TrainConfig`` describes how a mask (edge-popup scores) or a coefficient matrix alpha is
trained. The learner takes it as an argument; an experiment's ``mask_train:`` and
``alpha_train:`` sections are built into the same class. Every value is checked once, when the
object is built, so a bad value is refused before anything trains, and the message names the
field (the YAML loader puts the section in front: ``alpha_train.momentum: ...``).

Integers may be any ``numbers.Integral`` (numpy integers included) and are stored as ``int``;
real numbers any ``numbers.Real`` and are stored as ``float``; ``True``/``False`` are refused
where a number is expected (YAML reads ``lr: yes`` as a boolean).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ._integers import is_count, is_integer

OPTIMIZERS = ("sgd", "adam", "rmsprop")

# torch.manual_seed and torch.Generator accept seeds up to 2**64 - 1; the sweep derives popup
# seeds by multiplying a run seed, so keep the configured one well inside that range.
MAX_SEED = 2**62


class ConfigError(ValueError, TypeError):
    """A configuration value is invalid; the message names the key and the problem.

    It is both a ``ValueError`` (a value out of range) and a ``TypeError`` (a value of the wrong
    type), so callers can catch whichever they expect.
    """


def check_integer(value: Any, key: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int`` if it is an integer (not a bool) within bounds; else ConfigError."""
    if not is_integer(value):
        raise ConfigError(f"{key}: must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key}: must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{key}: must be <= {maximum}, got {value}")
    return value


def require(condition: bool, key: str, message: str) -> None:
    """ConfigError ``"<key>: <message>"`` unless ``condition`` holds (a check that needs no helper of its own)."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


def check_positive_int(value: Any, key: str, *, allow_none: bool = False) -> int | None:
    """``value`` as an ``int`` if it is an integer >= 1 (not a bool), or None when ``allow_none``; else ConfigError."""
    if allow_none and value is None:
        return None
    require(is_count(value, 1), key, f"must be a positive integer{' or null' if allow_none else ''}, got {value!r}")
    return int(value)


def check_known_keys(data: Mapping[str, Any], known: set[str], where: str = "") -> None:
    """ConfigError naming the keys of ``data`` outside ``known`` (``where``: prefix, e.g. a section)."""
    unknown = sorted(set(map(str, data)) - known)
    if unknown:
        prefix = f"{where}: " if where else ""
        raise ConfigError(f"{prefix}unknown key(s) {unknown}; known keys: {sorted(known)}")


def check_real(value: Any, key: str, *, minimum: float | None = None, maximum: float | None = None,
               exclusive_minimum: bool = False, exclusive_maximum: bool = False) -> float:
    """``value`` as a finite ``float`` within bounds (not a bool); else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{key}: must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"{key}: must be finite, got {value!r}")
    if minimum is not None and (value <= minimum if exclusive_minimum else value < minimum):
        raise ConfigError(f"{key}: must be {'>' if exclusive_minimum else '>='} {minimum:g}, got {value!r}")
    if maximum is not None and (value >= maximum if exclusive_maximum else value > maximum):
        raise ConfigError(f"{key}: must be {'<' if exclusive_maximum else '<='} {maximum:g}, got {value!r}")
    return value


@dataclass(frozen=True)
class TrainConfig:
    """How to train a mask (edge-popup scores) or a coefficient matrix alpha (Eq. 1-2).

    ``momentum`` is SGD's momentum, Adam's beta1 and RMSprop's momentum, in [0, 1). ``lam`` is
    the lambda of Eq. 2 (alpha only). ``seed`` seeds the initial edge-popup scores
    (homogeneous masks: one seed per mask); in a YAML sweep the run's own seed is added to it.
    ``batch_size`` is the batch size of the loaders built from this config (the experiment
    runner, the Avalanche strategy); ``ImpressLearner.learn_*`` train on whatever batches the
    loader they are given yields. Data order is the loader's own seed.
    Paper settings (Table 3): LeNet-300-100 RMSprop lr 0.002 lam 0; ResNet Adam, lam 0.005.

    Defaults (Adam, lr 0.03, 3 epochs) are the one recipe that worked for both a mask and alpha
    in ``scripts/choose_train_defaults.py``: Permuted Fashion-MNIST, LeNet-300-100, density 0.1,
    accuracy on 10,000 validation images carved from the training set (never the test set).
    With 50,000 training images: mask 0.826 (best candidate 0.830), alpha over 23 masks 0.627
    (best 0.634); with 5,000: mask 0.784 (best 0.792), alpha 0.585 (best). The old defaults
    (SGD lr 0.1, 1 epoch) gave mask 0.748 / alpha 0.608 and, with 5,000 images, 0.421 / 0.351.
    """

    epochs: int = 3
    lr: float = 0.03
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    lam: float = 0.0
    seed: int = 0
    batch_size: int = 128

    def __post_init__(self) -> None:
        normal = {
            "epochs": check_integer(self.epochs, "epochs", minimum=1),
            "lr": check_real(self.lr, "lr", minimum=0.0, exclusive_minimum=True),
            "momentum": check_real(self.momentum, "momentum", minimum=0.0, maximum=1.0, exclusive_maximum=True),
            "weight_decay": check_real(self.weight_decay, "weight_decay", minimum=0.0),
            "lam": check_real(self.lam, "lam", minimum=0.0),
            "seed": check_integer(self.seed, "seed", minimum=0, maximum=MAX_SEED),
            "batch_size": check_integer(self.batch_size, "batch_size", minimum=1),
        }
        if not isinstance(self.optimizer, str) or self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer: must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        for name, value in normal.items():  # numpy scalars -> int / float: one JSON form, one hash
            object.__setattr__(self, name, value)

    # -- conversions ------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        """Build from a plain mapping (a YAML section); unknown keys are refused by name."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"must be a mapping of {sorted(cls.field_names())}, got {data!r}")
        check_known_keys(data, cls.field_names())
        return cls(**data)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes`` applied, validated like any new config."""
        return dataclasses.replace(self, **changes)

    # -- use ----------------------------------------------------------------------------------
    def make_optimizer(self, params: Iterable[Any]):
        """The torch optimiser this config names, over ``params``."""
        import torch

        params = list(params)
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr, betas=(self.momentum, 0.999), weight_decay=self.weight_decay)
        return torch.optim.RMSprop(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)


__all__ = [
    "ConfigError", "OPTIMIZERS", "TrainConfig", "check_integer", "check_known_keys", "check_positive_int", "check_real",
    "require",
]
