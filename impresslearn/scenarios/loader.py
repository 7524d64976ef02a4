"""BatchLoader: mini-batches of a data set, a new seeded order every epoch.

For in-memory data (``InMemoryDataset``, or anything with a ``tensors`` pair or triple
such as ``TensorDataset``) a batch is one index of those tensors: no per-example
``__getitem__``, no collate, no worker processes. That is what makes small models
on 2 CPU cores train at the speed of their kernels rather than of the loader.
File-backed data sets (ImageFolder) go through a torch ``DataLoader`` with
``num_workers`` processes, fed the same seeded order.

A batch is the tuple the data set's examples are: ``(x, y)``, or ``(x, y, task_label)`` for
data sets that carry task labels (Avalanche's, or a ``TensorDataset(x, y, t)``); the learner
and its objectives accept both.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from .._integers import is_count
from ._base import derive_seed


class BatchLoader:
    """Re-iterable batches ``(x, y)`` (or ``(x, y, t)``, as the examples are) of ``dataset``.

    Each ``for`` loop over the loader is one epoch. With ``shuffle=True`` epoch ``e``
    uses the order drawn from a generator seeded by (``seed``, ``e``): a new order
    every epoch, the same sequence of orders for the same seed. ``set_epoch`` moves
    the counter (e.g. to resume). Augmentations of in-memory data sets draw from
    the same per-epoch generator, so they repeat too.
    """

    def __init__(self, dataset: Dataset, batch_size: int = 128, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False, num_workers: int = 0, pin_memory: bool = False):
        if not is_count(batch_size, 1):
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not is_count(num_workers, 0):
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.epoch = 0
        tensors = getattr(dataset, "tensors", None)
        self._tensors = tuple(tensors) if isinstance(tensors, (tuple, list)) and len(tensors) in (2, 3) else None
        self._batch_transform = getattr(dataset, "batch_transform", None)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _generator(self, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed("batch-loader", self.seed, epoch))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        epoch = self.epoch
        self.epoch += 1
        g = self._generator(epoch)
        n = len(self.dataset)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        if self._tensors is not None:
            return self._iter_tensors(order, g)
        return self._iter_dataloader(order, g)

    def _iter_tensors(self, order: torch.Tensor, g: torch.Generator):
        stop = len(self) * self.batch_size if self.drop_last else len(order)
        for start in range(0, stop, self.batch_size):
            idx = order[start : start + self.batch_size]
            if not self.shuffle:  # a contiguous slice is a view: no copy
                batch = [t[start : start + len(idx)] for t in self._tensors]
            else:  # index_select: several times faster than advanced indexing for a row gather
                batch = [t.index_select(0, idx) for t in self._tensors]
            if self._batch_transform is not None:
                batch[0] = self._batch_transform(batch[0], g)
            if self.pin_memory:
                batch = [t.pin_memory() for t in batch]
            yield tuple(batch)

    def _iter_dataloader(self, order: torch.Tensor, g: torch.Generator):
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=order.tolist(),
            num_workers=self.num_workers,
            drop_last=self.drop_last,
            pin_memory=self.pin_memory,
            # Workers seed their torch RNG (random transforms) from this generator: repeatable per seed.
            generator=g,
            persistent_workers=False,
        )
        for batch in loader:
            yield tuple(batch) if isinstance(batch, list) else batch

    def __repr__(self) -> str:
        return (f"BatchLoader({self.dataset!r}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"seed={self.seed}, drop_last={self.drop_last})")
