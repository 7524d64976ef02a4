"""Named recipes for new tasks, chosen on the accuracy-per-byte frontier (docs/results.md, Frontier).

A preset fixes what the frontier experiment (``benchmarks/frontier.py``,
``benchmarks/frontier_granularity.py``) varied: the density, the bank (``random_masks`` uniformly
random masks, stored as their seed), the dtype the coefficients are stored in and their
granularity, plus the alpha training recipe that won on the validation split. Build a learner
from it and learn new tasks with :meth:`Preset.learn_alpha` (the recipe and the granularity)::

    preset = get_preset("random500-fp16")
    learner = preset.make_learner(create_model("lenet300", seed=0), seed=0)
    preset.learn_alpha(learner, "task 1", loader)
"""

from __future__ import annotations

from dataclasses import dataclass

from .banks import check_coefficient_dtype
from .config import ConfigError, TrainConfig, check_integer
from .tasks import check_granularity


@dataclass(frozen=True)
class Preset:
    """A bank and a recipe for new tasks; ``measured`` says where its numbers come from."""

    name: str
    density: float
    random_masks: int
    coefficient_dtype: str
    alpha: TrainConfig
    measured: str
    granularity: str | int = "layer"

    def __post_init__(self) -> None:
        check_integer(self.random_masks, f"preset {self.name}: random_masks", minimum=1)
        check_granularity(self.granularity)
        check_coefficient_dtype(self.coefficient_dtype)
        if not isinstance(self.alpha, TrainConfig):
            raise ConfigError(f"preset {self.name}: alpha must be a TrainConfig, got {type(self.alpha).__name__}")

    def make_learner(self, model, *, seed: int, **learner_kwargs):
        """An ``ImpressLearner`` at this density and coefficient dtype with the preset's random bank
        drawn from ``seed``; ``learner_kwargs`` (device, backend, progress) go to the learner."""
        from .learner import ImpressLearner

        learner = ImpressLearner(model, density=self.density, coefficient_dtype=self.coefficient_dtype,
                                 **learner_kwargs)  # fmt: skip
        learner.add_random_masks(self.random_masks, seed=seed)
        return learner

    def learn_alpha(self, learner, name: str, loader, cfg: TrainConfig | None = None, **kwargs):
        """``learner.learn_alpha`` with the preset's recipe (or ``cfg``) and coefficient granularity."""
        return learner.learn_alpha(name, loader, cfg or self.alpha, granularity=self.granularity, **kwargs)


def _permuted_fmnist_preset(name: str, script: str, random_masks: int, alpha: TrainConfig, **fields) -> Preset:
    """A density-0.1, fp16 preset measured by ``benchmarks/<script>`` on Permuted Fashion-MNIST."""
    measured = (f"benchmarks/{script}: Permuted Fashion-MNIST, LeNet-300-100, 12,000 training images per task, "
                "lr chosen on a 10,000-image validation split of the training set")  # fmt: skip
    return Preset(name=name, density=0.1, random_masks=random_masks, coefficient_dtype="fp16", alpha=alpha,
                  measured=measured, **fields)  # fmt: skip


PRESETS = {
    p.name: p
    for p in (
        _permuted_fmnist_preset(
            "random500-fp16", "frontier.py", 500, TrainConfig(optimizer="rmsprop", lr=0.0005, epochs=3, batch_size=128)
        ),
        # The frontier's smallest bank that meets the 10x budget: 10 masks (0.5 MB in memory, not
        # 16.8 MB; an alpha step about 3x faster) with one coefficient per 4 output channels.
        _permuted_fmnist_preset(
            "random10-per4ch-fp16",
            "frontier_granularity.py",
            10,
            TrainConfig(optimizer="adam", lr=0.03, epochs=3, batch_size=128),
            granularity=4,
        ),
    )
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; a KeyError lists the known ones."""
    if name not in PRESETS:
        raise KeyError(f"no preset named {name!r}; known presets: {sorted(PRESETS)}")
    return PRESETS[name]


__all__ = ["PRESETS", "Preset", "get_preset"]
