"""Atomic file writes: a reader sees the old file or the new one, never a mix.

Write to a temp file in the same folder, flush, fsync, rename over the target, then
fsync the folder so the rename itself survives a crash. Whatever stops the write
(disk full, an interrupt, a kill between write and rename) leaves the previous file
untouched and no temp file behind. Used by checkpoints, sweep results and the
ImageNet script alike.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_CHUNK = 64 << 20  # bytes per write call: large checkpoints are written in pieces


def _write_all(f, data: bytes) -> None:
    view = memoryview(data)
    for start in range(0, len(view), _CHUNK):
        f.write(view[start : start + _CHUNK])


def atomic_write(path: str | os.PathLike, data: bytes | str, *, make_parents: bool = False) -> None:
    """Replace ``path`` with ``data`` atomically (text is written as UTF-8)."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if make_parents:
        folder.mkdir(parents=True, exist_ok=True)
    elif not folder.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {folder} does not exist")
    if isinstance(data, str):
        data = data.encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_all(f, data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms where folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
