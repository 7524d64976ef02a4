"""Scenario registry and factory (timm's ``register_model`` + ``create_model`` pattern)."""

from __future__ import annotations

from typing import Callable, TypeVar

from ._base import Scenario

_SCENARIOS: dict[str, Callable[..., Scenario]] = {}

F = TypeVar("F", bound=Callable[..., Scenario])


def register_scenario(name: str) -> Callable[[F], F]:
    """Decorator: make a scenario class (or factory) available as ``create_scenario(name)``."""

    def wrap(factory: F) -> F:
        if name in _SCENARIOS and _SCENARIOS[name] is not factory:
            raise ValueError(f"scenario {name!r} is already registered (by {_SCENARIOS[name]!r})")
        _SCENARIOS[name] = factory
        return factory

    return wrap


def list_scenarios() -> list[str]:
    """Names accepted by :func:`create_scenario`, sorted."""
    return sorted(_SCENARIOS)


def create_scenario(name: str, **kwargs) -> Scenario:
    """Build the scenario ``name``; keyword arguments go to its constructor.

    Common arguments: ``num_tasks``, ``root`` (data folder, torchvision layout),
    ``seed``, ``download`` (False unless asked), ``train_subset``/``test_subset``
    (first N examples per task, or a seeded random N with ``subset_mode="random"``).
    """
    try:
        factory = _SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(list_scenarios())}") from None
    return factory(**kwargs)
