"""What every scenario shares: the task record, in-memory datasets, the base class.

A scenario is a fixed, seeded sequence of classification tasks. ``task(t)``
builds task ``t`` once (permutation by indexing, rotation by one batched
resampling, class selection by a mask) and keeps the last few built tasks in
a small per-scenario LRU cache; the decoded source arrays are cached per process
(see ``_readers``), so building another task never re-reads a file.
"""

from __future__ import annotations

import collections
import hashlib
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .._integers import is_count, is_integer

# A batch transform maps (x [B, ...] float32, generator) -> x; it runs once per
# batch in BatchLoader, so augmentation of in-memory data costs a few tensor ops
# per batch instead of a Python call per image.
BatchTransform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class DataNotFoundError(FileNotFoundError):
    """A data set's files are not where any reader looked.

    ``searched`` lists every place that was tried; the message says how to get the data.
    """

    def __init__(self, dataset: str, searched: Sequence[object], how_to_get: str):
        self.dataset = dataset
        self.searched = [str(p) for p in searched]
        places = "\n".join(f"  - {p}" for p in self.searched) or "  (nowhere: no candidate folder)"
        super().__init__(f"{dataset} not found. Looked in:\n{places}\nTo get it: {how_to_get}")


@dataclass(frozen=True)
class Task:
    """One task of a scenario: ``train`` and ``test`` yield (x float32, y int64 in [0, C))."""

    index: int
    name: str
    train: Dataset
    test: Dataset


class InMemoryDataset(Dataset):
    """A labelled data set held as two tensors; BatchLoader indexes them directly.

    ``batch_transform`` (optional) is applied per batch by BatchLoader (training-time
    augmentation); ``__getitem__`` applies it to a batch of one with the global RNG.
    """

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, batch_transform: BatchTransform | None = None):
        for name, value in (("inputs", inputs), ("targets", targets)):
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor (torch.from_numpy converts an array), "
                                f"got {type(value).__name__}")  # fmt: skip
        if inputs.shape[0] != targets.shape[0]:
            raise ValueError(f"inputs ({inputs.shape[0]}) and targets ({targets.shape[0]}) differ in length")
        if targets.dtype != torch.int64 or targets.dim() != 1:
            raise ValueError(f"targets must be a 1-d int64 tensor, got {targets.dtype} of shape {tuple(targets.shape)}")
        self.inputs = inputs
        self.targets = targets
        self.batch_transform = batch_transform

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs, self.targets

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.inputs[i]
        if self.batch_transform is not None:
            g = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ()).item()))
            x = self.batch_transform(x.unsqueeze(0), g)[0]
        return x, self.targets[i]

    def __repr__(self) -> str:
        aug = ", augmented" if self.batch_transform is not None else ""
        return f"InMemoryDataset({len(self)} x {tuple(self.inputs.shape[1:])}{aug})"


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any mix of ints and strings, the same on every machine and run.

    (Python's ``hash`` of a string is salted per process, so it cannot be used.)
    """
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def subset_indices(n: int, count: int | None, mode: str, seed: int) -> np.ndarray | None:
    """Indices of a subset of ``n`` examples: the first ``count``, or a seeded random ``count``.

    None when no subset is asked for (or it would be everything, in order).
    """
    if count is None:
        return None
    if count <= 0:
        raise ValueError(f"subset size must be positive, got {count}")
    count = min(count, n)
    if mode == "first":
        return None if count == n else np.arange(count)
    if mode == "random":
        rng = np.random.default_rng(derive_seed("subset", seed))
        return np.sort(rng.choice(n, size=count, replace=False))
    raise ValueError(f"subset_mode must be 'first' or 'random', got {mode!r}")


class Scenario:
    """A fixed sequence of ``num_tasks`` tasks with ``num_classes`` classes each.

    Subclasses set ``name``, ``num_tasks``, ``num_classes``, ``input_shape`` and
    implement ``build_task(t) -> (train, test)``, two torch Datasets of ``(x, y)``
    (or ``(x, y, task_label)``) examples. ``spec`` holds the keyword arguments that
    recreate the scenario with ``create_scenario(name, **spec)`` (it goes into
    checkpoints and experiment records). For data you already hold, use
    ``CustomScenario`` instead of a subclass.
    """

    name: str = ""
    num_tasks: int = 0
    num_classes: int = 0
    input_shape: tuple[int, ...] = ()

    def __init__(self, *, cache_size: int = 4):
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self.cache_size = cache_size
        self._cache: collections.OrderedDict[int, Task] = collections.OrderedDict()
        self.spec: dict = {}

    def task_name(self, t: int) -> str:
        return f"{self.name}/{t}"

    def task(self, t: int) -> Task:
        t = self._check_index(t)
        if t in self._cache:
            self._cache.move_to_end(t)
            return self._cache[t]
        train, test = self.build_task(t)
        task = Task(index=t, name=self.task_name(t), train=train, test=test)
        if self.cache_size:
            self._cache[t] = task
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return task

    def build_task(self, t: int) -> tuple[Dataset, Dataset]:
        """The (train, test) data sets of task ``t`` (0 <= t < num_tasks); ``task(t)`` caches them."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_task(t) -> (train, test)")

    def _check_index(self, t: int) -> int:
        if not is_integer(t):
            raise TypeError(f"task index must be an int, got {type(t).__name__}")
        if not 0 <= t < self.num_tasks:
            raise IndexError(f"{self.name} has tasks 0..{self.num_tasks - 1}, asked for task {t}")
        return int(t)

    def __len__(self) -> int:
        return self.num_tasks

    def __iter__(self) -> Iterator[Task]:
        return (self.task(t) for t in range(self.num_tasks))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.spec.items())
        return f"{type(self).__name__}({args})"


def check_num_tasks(name: str, num_tasks: int, max_tasks: int | None = None) -> int:
    if not is_count(num_tasks, 1):
        raise ValueError(f"{name}: num_tasks must be a positive int, got {num_tasks!r}")
    if max_tasks is not None and num_tasks > max_tasks:
        raise ValueError(f"{name}: at most {max_tasks} tasks, asked for {num_tasks}")
    return int(num_tasks)


def check_class_split(
    name: str, num_classes: int, num_tasks: int, classes_per_task: int, class_order: Sequence[int] | None
) -> tuple[int, list[int]]:
    """``(classes_per_task, class order)`` of a split scenario over ``num_classes`` classes.

    The order is a permutation of 0..num_classes-1 (sorted when None); task ``t`` takes its
    ``classes_per_task`` entries from ``t * classes_per_task`` on, so all tasks must fit in it.
    """
    if not is_count(classes_per_task, 2):
        raise ValueError(f"{name}: classes_per_task must be an int >= 2, got {classes_per_task!r}")
    order = list(range(num_classes)) if class_order is None else [int(c) for c in class_order]
    if sorted(order) != list(range(num_classes)):
        raise ValueError(f"{name}: class_order must be a permutation of 0..{num_classes - 1}, got {order}")
    if num_tasks * classes_per_task > num_classes:
        raise ValueError(f"{name}: {num_tasks} tasks x {classes_per_task} classes do not fit in {num_classes}")
    return int(classes_per_task), order


def label_remap(classes: Sequence[int], num_classes: int) -> np.ndarray:
    """int64[num_classes] mapping original label ``classes[c]`` to ``c`` (every other label to -1)."""
    remap = np.full(num_classes, -1, dtype=np.int64)
    remap[list(classes)] = np.arange(len(classes))
    return remap


def check_subsets(name: str, train_subset: int | None, test_subset: int | None, subset_mode: str) -> None:
    """Refuse bad subset options at construction, before any task is built."""
    for label, value in (("train_subset", train_subset), ("test_subset", test_subset)):
        if value is not None and not is_count(value, 1):
            raise ValueError(f"{name}: {label} must be a positive int or None, got {value!r}")
    if subset_mode not in ("first", "random"):
        raise ValueError(f"{name}: subset_mode must be 'first' or 'random', got {subset_mode!r}")
