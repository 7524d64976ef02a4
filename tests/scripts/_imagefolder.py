"""A tiny ImageNet-like ImageFolder of generated JPEGs, with a learnable rule per class.

Class ``c`` images are noise around a class-specific colour pattern, so a small network
learns them in a few steps; the files follow ImageNet's layout (``train/<wnid>/*.JPEG``,
``val/<wnid>/*.JPEG``) so the real Split ImageNet reader is exercised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_image_folder(root: Path, *, num_classes: int, train_per_class: int, val_per_class: int,
                      size: int = 16, seed: int = 0) -> Path:  # fmt: skip
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for c in range(num_classes):
        wnid = f"n{c:08d}"
        # a class = a colour and a stripe direction; noise makes every image different
        colour = rng.uniform(40, 215, size=3)
        stripes = np.sin(2 * np.pi * (2 + c % 3) * (xx if c % 2 else yy))
        for split, count in (("train", train_per_class), ("val", val_per_class)):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                noise = rng.normal(0, 25, size=(size, size, 3))
                pixels = colour + 60 * stripes[..., None] + noise
                image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
                image.save(folder / f"{wnid}_{i}.JPEG", quality=90)
    return root
