"""Continual-learning scenarios: seeded sequences of tasks, and a fast batch loader.

>>> from impresslearn.scenarios import create_scenario, BatchLoader
>>> sc = create_scenario("permuted_fmnist", num_tasks=10, seed=0)
>>> task = sc.task(3)                      # Task(index=3, name="permuted_fmnist/3", train, test)
>>> for x, y in BatchLoader(task.train, batch_size=128, shuffle=True, seed=0): ...

Your own data: ``CustomScenario([(train, test), ...])`` with tensors or any torch Dataset per
task (see ``custom``); a YAML config names it by a dotted import path.

Scenarios stand beside the model code: nothing here imports layers, models or the learner.
"""

from ._base import DataNotFoundError, InMemoryDataset, Scenario, Task
from ._readers import DATA_ROOT_ENV, default_root
from ._registry import create_scenario, list_scenarios, register_scenario, resolve_scenario
from .custom import CustomScenario
from .loader import BatchLoader
from . import mnist as _mnist  # noqa: F401  (registers the MNIST-like scenarios)
from . import cifar as _cifar  # noqa: F401
from . import imagenet as _imagenet  # noqa: F401
from . import synthetic as _synthetic  # noqa: F401

__all__ = [
    "BatchLoader",
    "CustomScenario",
    "DATA_ROOT_ENV",
    "DataNotFoundError",
    "InMemoryDataset",
    "Scenario",
    "Task",
    "create_scenario",
    "default_root",
    "list_scenarios",
    "register_scenario",
    "resolve_scenario",
]
