"""Split CIFAR-100: 20 tasks of 5 classes (SupSup's and ImpressLearn's benchmark).

Read from the ``cifar-100-python`` pickles into memory once; each task keeps its
classes' images as normalised float32 [N, 3, 32, 32]. Training batches get
SupSup's augmentation (random 32x32 crop of the 4-pixel zero-padded image,
horizontal flip), applied per batch with tensor ops.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from ._base import (
    InMemoryDataset, Scenario, check_class_split, check_num_tasks, check_subsets, derive_seed, label_remap,
    subset_indices,
)
from ._readers import load_cifar100
from ._registry import register_scenario

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


class RandomCropFlip:
    """Per-batch random crop of the ``padding``-padded image plus horizontal flip.

    Padding uses ``fill`` per channel: the normalised value of a black pixel, so the
    result equals torchvision's RandomCrop(padding) + flip applied before Normalize.
    """

    def __init__(self, padding: int, fill: Sequence[float]):
        self.padding = int(padding)
        self.fill = torch.tensor(fill, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.padding
        padded = self.fill.to(x.dtype).expand(b, c, h + 2 * p, w + 2 * p).clone()
        padded[:, :, p : p + h, p : p + w] = x
        oy = torch.randint(0, 2 * p + 1, (b,), generator=g)
        ox = torch.randint(0, 2 * p + 1, (b,), generator=g)
        flip = torch.rand(b, generator=g) < 0.5
        rows = (oy[:, None] + torch.arange(h))[:, None, :, None]  # [b, 1, h, 1]
        cols = ox[:, None] + torch.arange(w)                        # [b, w]
        cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]
        return padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding})"


@register_scenario("split_cifar100")
class SplitCIFAR100(Scenario):
    """CIFAR-100's classes in groups of ``classes_per_task`` (0-4, 5-9, ... unless ``class_order``)."""

    name = "split_cifar100"
    input_shape = (3, 32, 32)

    def __init__(self, num_tasks: int = 20, root: str | os.PathLike | None = None, seed: int = 0,
                 download: bool = False, train_subset: int | None = None, test_subset: int | None = None,
                 subset_mode: str = "first", classes_per_task: int = 5, class_order: Sequence[int] | None = None,
                 augment: bool = True, cache_size: int = 4):
        super().__init__(cache_size=cache_size)
        self.num_tasks = check_num_tasks(self.name, num_tasks)
        check_subsets(self.name, train_subset, test_subset, subset_mode)
        self.num_classes, self.class_order = check_class_split(self.name, 100, self.num_tasks, classes_per_task,
                                                               class_order)
        self.seed = int(seed)
        self.augment = bool(augment)
        self._subsets = {"train": train_subset, "test": test_subset}
        self._subset_mode = subset_mode
        self._splits = {split: load_cifar100(root, split, download) for split in ("train", "test")}
        self._augmentation = RandomCropFlip(4, [-m / s for m, s in zip(CIFAR100_MEAN, CIFAR100_STD)])
        self.spec = dict(num_tasks=self.num_tasks, root=None if root is None else str(root), seed=self.seed,
                         train_subset=train_subset, test_subset=test_subset, subset_mode=subset_mode,
                         classes_per_task=self.num_classes,
                         class_order=None if class_order is None else self.class_order, augment=self.augment)

    def classes(self, t: int) -> list[int]:
        """CIFAR-100 fine labels of task ``t``; ``classes(t)[c]`` becomes label ``c``."""
        t = self._check_index(t)
        return self.class_order[t * self.num_classes : (t + 1) * self.num_classes]

    def build_task(self, t: int):
        classes = self.classes(t)
        remap = label_remap(classes, 100)
        mean = torch.tensor(CIFAR100_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CIFAR100_STD).view(1, 3, 1, 1)
        out = []
        for split in ("train", "test"):
            images, labels = self._splits[split]
            keep = np.flatnonzero(np.isin(labels, classes))
            idx = subset_indices(len(keep), self._subsets[split], self._subset_mode, derive_seed(self.seed, split, t))
            if idx is not None:
                keep = keep[idx]
            x = torch.from_numpy(images[keep]).to(torch.float32).div_(255.0).sub_(mean).div_(std)
            transform = self._augmentation if split == "train" and self.augment else None
            out.append(InMemoryDataset(x, torch.from_numpy(remap[labels[keep]]), batch_transform=transform))
        return tuple(out)
