"""Readers for the files of each data set, in torchvision's on-disk layouts.

The MNIST-like sets are IDX files (gzip or plain), decoded with numpy in one
``frombuffer``; CIFAR-100 is the ``cifar-100-python`` pickle layout, read with a restricted unpickler
that admits only containers and numpy arrays (never code named by the file). Decoded
arrays are cached per process, so every task and every scenario built on the
same files shares one copy. Downloads happen only when asked, through
torchvision's own downloaders, into the torchvision layout that is then read here.
"""

from __future__ import annotations

import functools
import gzip
import os
import pickle
from pathlib import Path

import numpy as np

from ._base import DataNotFoundError

DATA_ROOT_ENV = "IMPRESSLEARN_DATA_ROOT"

# The Debian package dataset-fashion-mnist installs the IDX files here (gz).
FASHION_MNIST_SYSTEM_DIRS = [Path("/usr/share/datasets/fashion-mnist")]

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def default_root() -> Path:
    """Where data is looked for and downloaded when no root is given."""
    env = os.environ.get(DATA_ROOT_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "impresslearn" / "data"


def search_roots(root: str | os.PathLike | None) -> list[Path]:
    """The folders every reader looks in, in order: ``root`` (when given), then :func:`default_root`.

    A download goes into the first of them.
    """
    roots = [Path(root).expanduser()] if root is not None else []
    d = default_root()
    if d not in roots:
        roots.append(d)
    return roots


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Decode one IDX file (``.gz`` or plain) into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:  # gzip raises BadGzipFile (OSError) or EOFError when truncated
        raise ValueError(f"{path}: cannot read IDX file: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: IDX header truncated")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(f"{path}: IDX data has {len(data) - header} bytes, shape {shape} needs {expected}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def _find_idx_pair(folder: Path, split: str) -> tuple[Path, Path] | None:
    found = []
    for stem in IDX_FILES[split]:
        for name in (stem + ".gz", stem):
            if (folder / name).is_file():
                found.append(folder / name)
                break
        else:
            return None
    return found[0], found[1]


def mnist_like_dirs(dataset: str, root: str | os.PathLike | None) -> list[Path]:
    """Candidate folders for ``dataset`` in {"mnist", "fashion_mnist"}, in search order."""
    sub = {"mnist": ("MNIST", "mnist"), "fashion_mnist": ("FashionMNIST", "fashion-mnist")}[dataset]
    dirs: list[Path] = []
    for r in search_roots(root):
        dirs += [r / sub[0] / "raw", r / sub[1], r]
    if dataset == "fashion_mnist":
        dirs += list(FASHION_MNIST_SYSTEM_DIRS)
    return dirs


_HOW_TO_GET = {
    "mnist": (
        "put the IDX files (train-images-idx3-ubyte[.gz], ...) in <root>/MNIST/raw/ and pass root= "
        "(--data-root on the command line), or pass download=True to fetch them with torchvision"
    ),
    "fashion_mnist": (
        "install the Debian package (sudo apt-get install dataset-fashion-mnist), or put the IDX files in "
        "<root>/FashionMNIST/raw/ and pass root= (--data-root on the command line), "
        "or pass download=True to fetch them with torchvision"
    ),
}


def load_mnist_like(dataset: str, root: str | os.PathLike | None, split: str, download: bool = False
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 28, 28] and labels int64 [N] of one split ("train" or "test")."""
    if split not in IDX_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    dirs = mnist_like_dirs(dataset, root)
    for folder in dirs:
        pair = _find_idx_pair(folder, split)
        if pair is not None:
            return _decode_pair(str(pair[0]), str(pair[1]))
    if download:
        _download_torchvision(dataset, search_roots(root)[0])
        return load_mnist_like(dataset, root, split, download=False)
    raise DataNotFoundError(
        {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}[dataset],
        [f"{d}/{{{IDX_FILES[split][0]},{IDX_FILES[split][1]}}}[.gz]" for d in dirs],
        _HOW_TO_GET[dataset],
    )


@functools.lru_cache(maxsize=8)
def _decode_pair(images_path: str, labels_path: str) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path)
    labels = read_idx(labels_path).astype(np.int64)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{images_path} {images.shape} and {labels_path} {labels.shape}: expected [N, H, W] images and N labels"
        )
    return images, labels


def _download_torchvision(dataset: str, root: Path) -> None:
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "cifar100": tvd.CIFAR100}[dataset]
    root.mkdir(parents=True, exist_ok=True)
    for train in (True, False):
        cls(str(root), train=train, download=True)


# ---------------------------------------------------------------- CIFAR-100

def cifar100_dirs(root: str | os.PathLike | None) -> list[Path]:
    dirs: list[Path] = []
    for r in search_roots(root):
        dirs += [r / "cifar-100-python", r]
    return dirs


def load_cifar100(root: str | os.PathLike | None, split: str, download: bool = False
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 3, 32, 32] and fine labels int64 [N] of one split ("train" or "test")."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    dirs = cifar100_dirs(root)
    for folder in dirs:
        if (folder / split).is_file() and (folder / "meta").is_file():
            return _decode_cifar(str(folder / split))
    if download:
        _download_torchvision("cifar100", search_roots(root)[0])
        return load_cifar100(root, split, download=False)
    raise DataNotFoundError(
        "CIFAR-100",
        [f"{d}/{{{split},meta}}" for d in dirs],
        "extract cifar-100-python.tar.gz into <root> (giving <root>/cifar-100-python/) and pass root= "
        "(--data-root on the command line), or pass download=True to fetch it with torchvision",
    )


class UnsafePickleError(pickle.UnpicklingError):
    """A data file's pickle names a Python object outside what its format uses; nothing was run."""


def _numpy_pickle_globals() -> dict[tuple[str, str], object]:
    # The callables a pickled numpy array refers to, under the module names numpy 1 and 2 use.
    reconstruct = np.ndarray((0,), np.uint8).__reduce__()[0]    # protocols 0-4
    frombuffer = np.zeros(1, np.uint8).__reduce_ex__(5)[0]       # protocol 5
    allowed: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{module}.numeric", "_frombuffer")] = frombuffer
    import codecs

    # Python 3 writes bytes in protocol 0-2 pickles as _codecs.encode(text, "latin1").
    allowed[("_codecs", "encode")] = codecs.encode
    return allowed


class _DataUnpickler(pickle.Unpickler):
    """Unpickles only plain containers, strings, numbers and numpy arrays.

    The ``cifar-100-python`` batches are dicts of lists, strings and one uint8 array; a pickle
    that asks for any other global (``os.system``, ``builtins.eval``, a class) could run code,
    so it is refused before anything of it is called.
    """

    _ALLOWED = _numpy_pickle_globals()

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load {module}.{name}: a CIFAR-100 file holds only dicts, lists, strings, "
                "numbers and numpy arrays") from None


def load_data_pickle(path: str | os.PathLike) -> object:
    """Read a data-set pickle (CIFAR-100's layout) without running any code it names."""
    with open(path, "rb") as f:
        return _DataUnpickler(f, encoding="latin1").load()


@functools.lru_cache(maxsize=4)
def _decode_cifar(path: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        entry = load_data_pickle(path)
    except UnsafePickleError as exc:
        raise ValueError(f"{path}: not a CIFAR-100 pickle: {exc}") from None
    except Exception as exc:  # a damaged pickle raises many kinds of errors
        raise ValueError(f"{path}: cannot read the CIFAR-100 pickle: {exc}") from exc
    if not isinstance(entry, dict) or "data" not in entry or "fine_labels" not in entry:
        raise ValueError(f"{path}: not a cifar-100-python batch (needs 'data' and 'fine_labels')")
    data = np.asarray(entry["data"], dtype=np.uint8)
    labels = np.asarray(entry["fine_labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise ValueError(f"{path}: data {data.shape} and labels {labels.shape} do not match [N, 3072] and [N]")
    return data.reshape(-1, 3, 32, 32), labels
