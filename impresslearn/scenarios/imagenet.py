"""Split ImageNet: ImageNet's classes in sorted order, 100 tasks of 10 classes by default.

Files stay on disk in the ImageFolder layout ``root/train/<wnid>/*.JPEG`` and
``root/val/<wnid>/*``; a task lists only its own classes' folders (so building
a task reads 10 directories, not 1000). Transforms follow the usual ImageNet
recipe: train RandomResizedCrop + horizontal flip, val Resize(256/224 of the
size) + CenterCrop, both normalised. BatchLoader reads these through a torch
DataLoader with ``num_workers`` processes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset

from .._integers import is_count
from ._base import DataNotFoundError, Scenario, check_num_tasks, check_subsets, derive_seed
from ._readers import search_roots
from ._registry import register_scenario

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ImageListDataset(Dataset):
    """(path, label) pairs read with PIL and passed through ``transform``."""

    def __init__(self, samples: list[tuple[str, int]], transform: Callable | None):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image

        path, label = self.samples[i]
        with open(path, "rb") as f:
            image = Image.open(f).convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, torch.tensor(label, dtype=torch.int64)

    def __repr__(self) -> str:
        return f"ImageListDataset({len(self)} images)"


def imagenet_dirs(root: str | os.PathLike | None) -> list[Path]:
    dirs: list[Path] = []
    for r in search_roots(root):
        dirs += [r, r / "imagenet", r / "ILSVRC2012"]
    return dirs


def _list_images(folder: Path) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(e.path for e in it if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))


@register_scenario("split_imagenet")
class SplitImageNet(Scenario):
    """Sorted ImageNet class folders in groups of ``classes_per_task``.

    ``num_tasks=None`` takes every whole group (100 for the 1000 ImageNet classes).
    ``image_size`` is the crop size (224); val images are first resized to 256/224 of it.
    """

    name = "split_imagenet"

    def __init__(self, num_tasks: int | None = None, root: str | os.PathLike | None = None, seed: int = 0,
                 download: bool = False, train_subset: int | None = None, test_subset: int | None = None,
                 subset_mode: str = "first", classes_per_task: int = 10, image_size: int = 224,
                 cache_size: int = 4):
        super().__init__(cache_size=cache_size)
        check_subsets(self.name, train_subset, test_subset, subset_mode)
        self.root = self._find_root(root, download)
        self.wnids = sorted(e.name for e in os.scandir(self.root / "train") if e.is_dir())
        if not is_count(classes_per_task, 2):  # the split scenarios' rule (_base.check_class_split)
            raise ValueError(f"{self.name}: classes_per_task must be an int >= 2, got {classes_per_task!r}")
        if num_tasks is None:
            num_tasks = len(self.wnids) // classes_per_task
        self.num_tasks = check_num_tasks(self.name, num_tasks, len(self.wnids) // classes_per_task)
        self.num_classes = int(classes_per_task)
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.input_shape = (3, self.image_size, self.image_size)
        self._subsets = {"train": train_subset, "test": test_subset}
        self._subset_mode = subset_mode
        self.spec = dict(num_tasks=self.num_tasks, root=str(self.root), seed=self.seed, train_subset=train_subset,
                         test_subset=test_subset, subset_mode=subset_mode, classes_per_task=self.num_classes,
                         image_size=self.image_size)

    def _find_root(self, root, download: bool) -> Path:
        candidates = imagenet_dirs(root)
        for c in candidates:
            if (c / "train").is_dir() and (c / "val").is_dir():
                return c
        how = ("ImageNet cannot be downloaded automatically (its licence needs a sign-in at image-net.org"
               + ("; download=True cannot help" if download else "") + "). Get ILSVRC2012, arrange it as "
               "<root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/* (val sorted into class folders), "
               "and pass root= (--data-root on the command line)")
        raise DataNotFoundError("ImageNet", [f"{c}/{{train,val}}/<wnid>/" for c in candidates], how)

    def classes(self, t: int) -> list[str]:
        """WordNet ids of task ``t``; ``classes(t)[c]`` becomes label ``c``."""
        t = self._check_index(t)
        return self.wnids[t * self.num_classes : (t + 1) * self.num_classes]

    def transforms(self, split: str):
        import torchvision.transforms as T

        normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
        if split == "train":
            return T.Compose([T.RandomResizedCrop(self.image_size), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
        resize = round(self.image_size * 256 / 224)
        return T.Compose([T.Resize(resize), T.CenterCrop(self.image_size), T.ToTensor(), normalize])

    def build_task(self, t: int):
        out = []
        for split in ("train", "val"):
            per_class: list[list[tuple[str, int]]] = []
            for label, wnid in enumerate(self.classes(t)):
                folder = self.root / split / wnid
                if not folder.is_dir():
                    raise DataNotFoundError("ImageNet", [folder], f"every class folder of train/ must also exist in {split}/")
                per_class.append([(p, label) for p in _list_images(folder)])
            # Interleave the classes (i-th image of each class, then the (i+1)-th...), so that
            # the "first N" subset is balanced over classes rather than all of class 0.
            ranked = [(i, s) for images in per_class for i, s in enumerate(images)]
            samples = [s for _, s in sorted(ranked, key=lambda r: (r[0], r[1][1]))]
            key = "train" if split == "train" else "test"
            count = self._subsets[key]
            if count is not None and count < len(samples):
                if self._subset_mode == "random":
                    g = torch.Generator().manual_seed(derive_seed("subset", self.seed, key, t))
                    keep = torch.randperm(len(samples), generator=g)[:count].sort().values.tolist()
                    samples = [samples[i] for i in keep]
                elif self._subset_mode == "first":
                    samples = samples[:count]
                else:
                    raise ValueError(f"subset_mode must be 'first' or 'random', got {self._subset_mode!r}")
            out.append(ImageListDataset(samples, self.transforms(split)))
        return tuple(out)
