"""Permuted, Rotated and Split scenarios on MNIST and Fashion-MNIST (28x28 grey images).

Every task is built once as two in-memory float32 tensors [N, 1, 28, 28],
normalised with the data set's mean and std:

* Permuted: a fixed pixel permutation per task, from a generator seeded by
  (seed, task), applied by indexing the flat images (SupSup permutes every task,
  the first one included).
* Rotated: a fixed angle per task (never a random angle per image), applied to
  the whole split at once with one batched bilinear resampling; the default
  angles are evenly spaced over [0, 360) by task.
* Split: disjoint groups of classes (0-1, 2-3, ... by default), labels
  remapped to 0..C-1 within each task.
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
from ._readers import load_mnist_like
from ._registry import register_scenario

# Per-data-set pixel mean and std over the training split (of x / 255).
NORMALIZATION = {"mnist": (0.1307, 0.3081), "fashion_mnist": (0.2860, 0.3530)}

_ROTATE_CHUNK = 8192  # images per resampling call: bounds the sampling grid's memory (~50 MB)


class MnistLikeScenario(Scenario):
    """Shared loading, subsetting and normalisation of the 28x28 scenarios.

    A subclass declared with ``name=`` and ``dataset=`` (``class PermutedMNIST(PermutedScenario,
    name="permuted_mnist", dataset="mnist")``) is registered as ``create_scenario(name)``,
    reading that data set's files: the name is written once, where it is registered.
    """

    input_shape = (1, 28, 28)
    num_classes = 10
    dataset = ""  # a key of NORMALIZATION: which files (set by each registered subclass)
    default_num_tasks = 10

    def __init_subclass__(cls, *, name: str | None = None, dataset: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if name is None and dataset is None:
            return  # a variant (PermutedScenario, ...) or a user's subclass that registers itself
        if name is None or dataset not in NORMALIZATION:
            raise TypeError(
                f"{cls.__qualname__}: a registered MNIST-like scenario takes name= and dataset= (one of "
                f"{sorted(NORMALIZATION)}), got name={name!r}, dataset={dataset!r}"
            )
        cls.name, cls.dataset = name, dataset
        register_scenario(name)(cls)

    def __init__(self, num_tasks: int | None = None, root: str | os.PathLike | None = None, seed: int = 0,
                 download: bool = False, train_subset: int | None = None, test_subset: int | None = None,
                 subset_mode: str = "first", cache_size: int = 4):
        super().__init__(cache_size=cache_size)
        dataset = self.dataset
        if num_tasks is None:
            num_tasks = self.default_num_tasks
        self.num_tasks = check_num_tasks(self.name, num_tasks)
        check_subsets(self.name, train_subset, test_subset, subset_mode)
        self.seed = int(seed)
        self.root = root
        self.mean, self.std = NORMALIZATION[dataset]
        self._train_subset = train_subset
        self._test_subset = test_subset
        self._subset_mode = subset_mode
        # Decoding happens here, so a missing data set fails at construction, not at task 7.
        self._splits = {split: load_mnist_like(dataset, root, split, download) for split in ("train", "test")}
        self.spec = dict(num_tasks=self.num_tasks, root=None if root is None else str(root), seed=self.seed,
                         train_subset=train_subset, test_subset=test_subset, subset_mode=subset_mode)

    def _source(self, split: str, t: int | None = None, keep: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """The uint8 images and labels of one split, optionally restricted to ``keep`` and then subset."""
        images, labels = self._splits[split]
        if keep is not None:
            images, labels = images[keep], labels[keep]
        count = self._train_subset if split == "train" else self._test_subset
        idx = subset_indices(len(labels), count, self._subset_mode, derive_seed(self.seed, split, t))
        if idx is not None:
            images, labels = images[idx], labels[idx]
        return images, labels

    def _normalize(self, x01: torch.Tensor) -> torch.Tensor:
        return x01.sub_(self.mean).div_(self.std)

    def _to_float(self, images: np.ndarray) -> torch.Tensor:
        # np.array copies into a writable float32 buffer (the cached decoded arrays are read-only).
        x = torch.from_numpy(np.array(images, dtype=np.float32)).div_(255.0)
        return x.reshape(-1, *self.input_shape)


class PermutedScenario(MnistLikeScenario):
    def permutation(self, t: int) -> torch.Tensor:
        """The pixel permutation of task ``t`` (int64 [784]): new flat pixel j is old pixel perm[j]."""
        t = self._check_index(t)
        rng = np.random.default_rng(derive_seed("permuted", self.seed, t))
        return torch.from_numpy(rng.permutation(int(np.prod(self.input_shape))))

    def build_task(self, t: int):
        perm = self.permutation(t).numpy()
        out = []
        for split in ("train", "test"):
            images, labels = self._source(split)
            flat = images.reshape(len(images), -1)[:, perm]  # gather on uint8: 4x less traffic than on floats
            out.append(InMemoryDataset(self._normalize(self._to_float(flat)), torch.from_numpy(labels)))
        return tuple(out)


class RotatedScenario(MnistLikeScenario):
    def __init__(self, *args, angles: Sequence[float] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if angles is None:
            self.angles = [360.0 * t / self.num_tasks for t in range(self.num_tasks)]
        else:
            self.angles = [float(a) for a in angles]
            if len(self.angles) != self.num_tasks:
                raise ValueError(f"{self.name}: {len(self.angles)} angles given for {self.num_tasks} tasks")
        self.spec["angles"] = None if angles is None else list(self.angles)

    def angle(self, t: int) -> float:
        """Rotation of task ``t`` in degrees, counter-clockwise."""
        return self.angles[self._check_index(t)]

    def build_task(self, t: int):
        out = []
        for split in ("train", "test"):
            images, labels = self._source(split)
            x = rotate_images(self._to_float(images), self.angle(t))  # rotate in [0, 1]: background stays 0
            out.append(InMemoryDataset(self._normalize(x), torch.from_numpy(labels)))
        return tuple(out)


def rotate_images(x: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotate a batch [N, C, H, W] by ``angle`` degrees counter-clockwise about the centre.

    Bilinear, zero fill, in chunks (one ``affine_grid`` + ``grid_sample`` per chunk).
    Multiples of 90 degrees are exact (``rot90``), so angle 0 returns the images unchanged.
    """
    quarter = angle / 90.0
    if quarter == round(quarter):
        return torch.rot90(x, int(round(quarter)) % 4, dims=(-2, -1)).contiguous()
    theta_rad = torch.tensor(angle * np.pi / 180.0, dtype=torch.float64)
    cos, sin = torch.cos(theta_rad).item(), torch.sin(theta_rad).item()
    # affine_grid maps output coordinates to input ones; with y pointing down, this
    # matrix turns the image counter-clockwise as displayed (torchvision's convention).
    theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=x.dtype)
    out = torch.empty_like(x)
    for start in range(0, x.shape[0], _ROTATE_CHUNK):
        chunk = x[start : start + _ROTATE_CHUNK]
        grid = torch.nn.functional.affine_grid(theta.expand(chunk.shape[0], 2, 3), list(chunk.shape),
                                               align_corners=False)
        out[start : start + chunk.shape[0]] = torch.nn.functional.grid_sample(
            chunk, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out


class SplitScenario(MnistLikeScenario):
    default_num_tasks = 5  # classes 0-1, 2-3, ..., 8-9

    def __init__(self, *args, classes_per_task: int = 2, class_order: Sequence[int] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.num_classes, self.class_order = check_class_split(self.name, 10, self.num_tasks, classes_per_task,
                                                               class_order)
        self.spec.update(classes_per_task=self.num_classes,
                         class_order=None if class_order is None else self.class_order)

    def classes(self, t: int) -> list[int]:
        """Original labels of task ``t``; label ``classes(t)[c]`` becomes ``c``."""
        t = self._check_index(t)
        return self.class_order[t * self.num_classes : (t + 1) * self.num_classes]

    def build_task(self, t: int):
        classes = self.classes(t)
        remap = label_remap(classes, 10)
        out = []
        for split in ("train", "test"):
            keep = np.flatnonzero(np.isin(self._splits[split][1], classes))
            images, labels = self._source(split, t, keep)
            out.append(InMemoryDataset(self._normalize(self._to_float(images)), torch.from_numpy(remap[labels])))
        return tuple(out)


class PermutedMNIST(PermutedScenario, name="permuted_mnist", dataset="mnist"):
    """MNIST, one fixed pixel permutation per task (10 tasks by default)."""


class PermutedFashionMNIST(PermutedScenario, name="permuted_fmnist", dataset="fashion_mnist"):
    """Fashion-MNIST, one fixed pixel permutation per task (10 tasks by default)."""


class RotatedMNIST(RotatedScenario, name="rotated_mnist", dataset="mnist"):
    """MNIST, one fixed rotation per task (10 tasks by default)."""


class RotatedFashionMNIST(RotatedScenario, name="rotated_fmnist", dataset="fashion_mnist"):
    """Fashion-MNIST, one fixed rotation per task (10 tasks by default)."""


class SplitMNIST(SplitScenario, name="split_mnist", dataset="mnist"):
    """MNIST's ten digits in disjoint groups of classes (5 tasks of 2 by default)."""


class SplitFashionMNIST(SplitScenario, name="split_fmnist", dataset="fashion_mnist"):
    """Fashion-MNIST's ten classes in disjoint groups (5 tasks of 2 by default)."""
