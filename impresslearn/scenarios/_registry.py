"""Scenario registry and factory (timm's ``register_model`` + ``create_model`` pattern).

A scenario is named either by its registered name (``"permuted_fmnist"``) or by a dotted
import path of a function or class that returns one (``"mypkg.data.shifted"`` or
``"mypkg.data:shifted"``), which is how a YAML config uses a scenario defined outside the
package.
"""

from __future__ import annotations

import importlib
from typing import Callable, TypeVar

from ._base import Scenario

_SCENARIOS: dict[str, Callable[..., Scenario]] = {}

F = TypeVar("F", bound=Callable[..., Scenario])


def _identity(factory: Callable) -> tuple[str, str]:
    return getattr(factory, "__module__", ""), getattr(factory, "__qualname__", repr(factory))


def register_scenario(name: str) -> Callable[[F], F]:
    """Decorator: make a scenario class (or factory) available as ``create_scenario(name)``.

    Registering the same class again (a module reloaded, a notebook cell run twice: same
    module and qualified name) replaces the old entry; a *different* class under a name that
    is taken is refused, so a typo cannot silently shadow a built-in scenario.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a scenario name must be a non-empty string, got {name!r}")

    def wrap(factory: F) -> F:
        old = _SCENARIOS.get(name)
        if old is not None and old is not factory and _identity(old) != _identity(factory):
            raise ValueError(f"scenario {name!r} is already registered (by {old!r}); "
                             f"choose another name for {factory!r}")
        _SCENARIOS[name] = factory
        return factory

    return wrap


def list_scenarios() -> list[str]:
    """Names accepted by :func:`create_scenario`, sorted (dotted import paths are accepted too)."""
    return sorted(_SCENARIOS)


def resolve_scenario(name: str) -> Callable[..., Scenario]:
    """The factory of scenario ``name``: a registered name, or ``module.attr`` / ``module:attr``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a scenario name must be a non-empty string, got {name!r}")
    if name in _SCENARIOS:
        return _SCENARIOS[name]
    if ":" in name or "." in name:
        module_name, _, attr = name.partition(":") if ":" in name else name.rpartition(".")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"scenario {name!r}: cannot import module {module_name!r} ({exc})") from None
        factory = module
        for part in attr.split("."):
            factory = getattr(factory, part, None)
            if factory is None:
                raise ValueError(f"scenario {name!r}: module {module_name!r} has no attribute {attr!r}")
        if not callable(factory):
            raise ValueError(f"scenario {name!r}: {attr!r} is not a class or function")
        return factory
    raise ValueError(f"unknown scenario {name!r}; known: {', '.join(list_scenarios())} "
                     "(or a dotted import path such as mypkg.data.my_scenario)")


def create_scenario(name: str, **kwargs) -> Scenario:
    """Build the scenario ``name`` (registered, or a dotted import path); keyword arguments go to it.

    Common arguments: ``num_tasks``, ``root`` (data folder, torchvision layout),
    ``seed``, ``download`` (False unless asked), ``train_subset``/``test_subset``
    (first N examples per task, or a seeded random N with ``subset_mode="random"``).
    """
    factory = resolve_scenario(name)
    scenario = factory(**kwargs)
    if not isinstance(scenario, Scenario):
        raise TypeError(f"scenario {name!r}: {factory!r} returned a {type(scenario).__name__}, not a Scenario "
                        "(wrap your data in impresslearn.scenarios.CustomScenario)")
    return scenario
