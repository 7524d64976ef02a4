"""``synthetic``: random data with a learnable per-task rule, no files (for tests and demos).

Task ``t`` draws ``num_classes`` prototype images from a generator seeded by
(seed, t); an example of class ``c`` is prototype ``c`` plus Gaussian noise.
Classes are well separated, so a small masked network learns a task in a few
steps, while the prototypes of different tasks are independent: a mask trained
on one task scores chance on another (the paper's "incorrect mask" check).
"""

from __future__ import annotations

import torch

from ._base import InMemoryDataset, Scenario, check_num_tasks, derive_seed
from ._registry import register_scenario


@register_scenario("synthetic")
class Synthetic(Scenario):
    name = "synthetic"

    def __init__(self, num_tasks: int = 5, num_classes: int = 10, input_shape: tuple[int, ...] = (1, 28, 28),
                 train_size: int = 1000, test_size: int = 500, noise: float = 1.0, seed: int = 0,
                 train_subset: int | None = None, test_subset: int | None = None, cache_size: int = 4,
                 root=None, download: bool = False, subset_mode: str = "first"):
        # root, download and subset_mode are accepted (and ignored) so that code written
        # for file-backed scenarios runs unchanged on synthetic data.
        super().__init__(cache_size=cache_size)
        self.num_tasks = check_num_tasks(self.name, num_tasks)
        if num_classes < 2:
            raise ValueError(f"synthetic: num_classes must be >= 2, got {num_classes}")
        if train_size < 1 or test_size < 1:
            raise ValueError(f"synthetic: train_size and test_size must be positive, got {train_size}, {test_size}")
        self.num_classes = int(num_classes)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.noise = float(noise)
        self.seed = int(seed)
        self.train_size = train_size if train_subset is None else min(train_size, train_subset)
        self.test_size = test_size if test_subset is None else min(test_size, test_subset)
        self.spec = dict(num_tasks=self.num_tasks, num_classes=self.num_classes, input_shape=list(self.input_shape),
                         train_size=train_size, test_size=test_size, noise=self.noise, seed=self.seed,
                         train_subset=train_subset, test_subset=test_subset)

    def build_task(self, t: int):
        g = torch.Generator().manual_seed(derive_seed("synthetic", self.seed, t))
        prototypes = torch.randn(self.num_classes, *self.input_shape, generator=g)
        out = []
        for n in (self.train_size, self.test_size):
            y = torch.randint(0, self.num_classes, (n,), generator=g)
            x = prototypes[y] + self.noise * torch.randn(n, *self.input_shape, generator=g)
            out.append(InMemoryDataset(x, y))
        return tuple(out)
