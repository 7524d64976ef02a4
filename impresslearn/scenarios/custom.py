"""Your own data as a scenario: one ``(train, test)`` pair per task, from tensors or any Dataset.

>>> import torch
>>> from impresslearn.scenarios import CustomScenario
>>> x, y = torch.randn(300, 1, 28, 28), torch.randint(0, 10, (300,))
>>> tasks = [((x[:200] + t, y[:200]), (x[200:] + t, y[200:])) for t in range(3)]
>>> scenario = CustomScenario(tasks, name="shifted")        # 3 tasks, 10 classes, (1, 28, 28)
>>> scenario.task(2).name
'shifted/2'

A side of a task is either a pair of tensors (or numpy arrays) ``(inputs, targets)``, kept in
memory as an ``InMemoryDataset`` (BatchLoader's fast path), or any ``torch.utils.data.Dataset``
of ``(x, y)`` or ``(x, y, task_label)`` examples, used as it is. ``num_classes`` is read from
the targets where they are tensors (``max + 1``, the largest over all tasks) and must be given
otherwise; ``input_shape`` is the shape of the first training example.

To use it from a YAML config, give ``scenario.name`` as a dotted import path of a function or
class that returns the scenario. The runner calls it with ``num_tasks``, ``seed``, ``root``,
``train_subset``, ``test_subset`` and the config's ``scenario.kwargs``; ``CustomScenario``
accepts all of them, so a module ``mydata.py`` with ::

    def shifted(**options):
        x, y = ...                                             # your tensors
        return CustomScenario([((x + t, y), (x + t, y)) for t in range(5)], name="shifted", **options)

runs with ``scenario: {name: mydata.shifted, num_tasks: 5}``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from .._integers import is_count
from ._base import InMemoryDataset, Scenario, check_subsets, derive_seed, subset_indices


class CustomScenario(Scenario):
    """A scenario over data you already hold: ``tasks[t] = (train, test)``.

    ``num_tasks`` (optional) keeps the first ``num_tasks`` tasks; ``train_subset`` /
    ``test_subset`` keep the first N examples of each side (a seeded random N with
    ``subset_mode="random"``). ``root`` and ``download`` are accepted and ignored, so the
    experiment runner can build it like any registered scenario.
    """

    def __init__(self, tasks: Sequence[Sequence[Any]], *, name: str = "custom", num_classes: int | None = None,
                 input_shape: Sequence[int] | None = None, num_tasks: int | None = None, seed: int = 0,
                 train_subset: int | None = None, test_subset: int | None = None, subset_mode: str = "first",
                 root: Any = None, download: bool = False, cache_size: int = 4):
        super().__init__(cache_size=cache_size)
        if not isinstance(name, str) or not name:
            raise ValueError(f"CustomScenario: name must be a non-empty string, got {name!r}")
        self.name = name
        if isinstance(tasks, (str, bytes)) or not isinstance(tasks, Sequence) or len(tasks) == 0:
            raise ValueError(f"{name}: tasks must be a non-empty sequence of (train, test) pairs, "
                             f"got {type(tasks).__name__}")
        if num_tasks is not None:
            if not is_count(num_tasks, 1):
                raise ValueError(f"{name}: num_tasks must be a positive int or None, got {num_tasks!r}")
            if num_tasks > len(tasks):
                raise ValueError(f"{name}: num_tasks={num_tasks} but only {len(tasks)} tasks were given")
            tasks = tasks[: int(num_tasks)]
        check_subsets(name, train_subset, test_subset, subset_mode)
        self.num_tasks = len(tasks)
        self.seed = int(seed)
        self._tasks = [self._task_pair(t, pair) for t, pair in enumerate(tasks)]
        self._subsets = {"train": train_subset, "test": test_subset}
        self._subset_mode = subset_mode
        self.num_classes = self._num_classes(num_classes)
        self.input_shape = self._input_shape(input_shape)
        self.spec = dict(num_tasks=self.num_tasks, seed=self.seed, train_subset=train_subset,
                         test_subset=test_subset, subset_mode=subset_mode)

    # -- construction -----------------------------------------------------------------------
    def _task_pair(self, t: int, pair: Any) -> tuple[Dataset, Dataset]:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"{self.name}: task {t} must be a (train, test) pair, got {type(pair).__name__}")
        return tuple(self._dataset(f"task {t} {side}", data) for side, data in zip(("train", "test"), pair))

    def _dataset(self, where: str, data: Any) -> Dataset:
        if isinstance(data, Dataset):
            if len(data) == 0:
                raise ValueError(f"{self.name}: {where} is empty")
            return data
        if isinstance(data, (tuple, list)) and len(data) == 2:
            inputs, targets = (torch.as_tensor(v) for v in data)
            if targets.dim() != 1 or targets.dtype.is_floating_point or targets.dtype == torch.bool:
                raise ValueError(f"{self.name}: {where}: targets must be a 1-d integer tensor, "
                                 f"got {targets.dtype} of shape {tuple(targets.shape)}")
            if len(targets) == 0:
                raise ValueError(f"{self.name}: {where} is empty")
            if int(targets.min()) < 0:
                raise ValueError(f"{self.name}: {where}: class labels must be >= 0, got {int(targets.min())}")
            if not inputs.dtype.is_floating_point:
                raise ValueError(f"{self.name}: {where}: inputs must be floating point (normalise them), "
                                 f"got {inputs.dtype}")
            return InMemoryDataset(inputs, targets.to(torch.int64))
        raise ValueError(f"{self.name}: {where} must be a torch Dataset or an (inputs, targets) pair, "
                         f"got {type(data).__name__}")

    def _num_classes(self, given: int | None) -> int:
        seen = [int(ds.targets.max()) + 1 for pair in self._tasks for ds in pair if isinstance(ds, InMemoryDataset)]
        if given is None:
            if len(seen) != 2 * self.num_tasks:
                raise ValueError(f"{self.name}: pass num_classes= (it cannot be read from a Dataset that is not "
                                 "a pair of tensors)")
            return max(seen)
        if not is_count(given, 2):
            raise ValueError(f"{self.name}: num_classes must be an int >= 2, got {given!r}")
        if seen and max(seen) > given:
            raise ValueError(f"{self.name}: num_classes={given} but a task has label {max(seen) - 1}")
        return int(given)

    def _input_shape(self, given: Sequence[int] | None) -> tuple[int, ...]:
        if given is not None:
            return tuple(int(d) for d in given)
        first = self._tasks[0][0]
        x = first.inputs[0] if isinstance(first, InMemoryDataset) else first[0][0]
        return tuple(torch.as_tensor(x).shape)

    # -- tasks --------------------------------------------------------------------------------
    def build_task(self, t: int) -> tuple[Dataset, Dataset]:
        out = []
        for split, dataset in zip(("train", "test"), self._tasks[t]):
            idx = subset_indices(len(dataset), self._subsets[split], self._subset_mode,
                                 derive_seed(self.seed, split, t))
            if idx is not None:
                dataset = _subset(dataset, idx)
            out.append(dataset)
        return tuple(out)


def _subset(dataset: Dataset, idx: np.ndarray) -> Dataset:
    if isinstance(dataset, InMemoryDataset):
        index = torch.from_numpy(idx)
        return InMemoryDataset(dataset.inputs[index], dataset.targets[index], dataset.batch_transform)
    return Subset(dataset, idx.tolist())
