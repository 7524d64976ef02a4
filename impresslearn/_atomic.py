"""Atomic file writes: a reader sees the old file or the new one, never a mix.

Write to a temp file in the same folder, flush, fsync, rename over the target, then
fsync the folder so the rename itself survives a crash. An error or an interrupt
(disk full, KeyboardInterrupt, a failed rename) leaves the previous file untouched and
removes the temp file. A SIGKILL or a power cut cannot be caught: the temp file stays,
and the next write of the same target removes it, once its writer is known dead.

Temp files are named ``.<target name>.<host>-<pid>.<random>.tmp``. Only files of that
exact pattern, for the same target, written on this host by a process that no longer
exists are removed; a live writer's file, another host's (a shared file system) and
any other file are left alone. A recycled pid looks alive, which keeps the file: a
stale file may survive, a live one is never removed.

The file gets the mode ``open()`` gives a new file (0666 less the umask), as other
tools' files do, not ``tempfile.mkstemp``'s private 0600.

Used by checkpoints, sweep results and the ImageNet script alike.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import socket
from pathlib import Path

_CHUNK = 64 << 20  # bytes per write call: large checkpoints are written in pieces
_TEMP_SUFFIX = ".tmp"


def _write_all(f, data: bytes) -> None:
    view = memoryview(data)
    for start in range(0, len(view), _CHUNK):
        f.write(view[start : start + _CHUNK])


def _host() -> str:
    # '.' and '-' separate the fields of a temp name; keep the host name to one plain token
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname()) or "host"


def _temp_name(target: str, host: str, pid: int) -> str:
    return f".{target}.{host}-{pid}.{secrets.token_hex(6)}{_TEMP_SUFFIX}"


def _temp_pattern(target: str) -> re.Pattern:
    """The names :func:`_temp_name` gives for ``target``, with host and pid captured."""
    return re.compile(
        rf"\.{re.escape(target)}\.(?P<host>[A-Za-z0-9_]+)-(?P<pid>[0-9]+)\.[0-9a-f]{{12}}{re.escape(_TEMP_SUFFIX)}"
    )


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if os.name == "nt":  # os.kill(pid, 0) sends CTRL_C_EVENT there: never probe, keep the file
        return True
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OverflowError:  # beyond the platform's pid range: no such process
        return False
    except OSError as exc:  # anything unexpected counts as alive: never remove a live writer's file
        return exc.errno not in (errno.ESRCH, errno.EINVAL)
    return True


def stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Temp files of ``path`` left by writers on this host that no longer run (see the module doc)."""
    path = Path(path)
    folder = path.parent  # "." for a bare file name
    pattern, host, me = _temp_pattern(path.name), _host(), os.getpid()
    stale = []
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    prefix = f".{path.name}."
    for name in names:
        if not (name.startswith(prefix) and name.endswith(_TEMP_SUFFIX)):  # cheap test first: big folders
            continue
        m = pattern.fullmatch(name)
        if m is None or m["host"] != host:
            continue
        pid = int(m["pid"])
        if pid != me and not _pid_alive(pid):
            stale.append(folder / name)
    return stale


def _remove_stale_temporaries(path: Path) -> None:
    for tmp in stale_temporaries(path):
        try:
            os.unlink(tmp)
        except OSError:  # removed by another writer meanwhile, or not ours to remove: harmless
            pass


def _create_temp(folder: Path, target: str) -> tuple[int, Path]:
    host, pid = _host(), os.getpid()
    while True:
        tmp = folder / _temp_name(target, host, pid)
        try:
            # 0o666 & ~umask, as open() gives; O_EXCL: never reuse a name another writer holds
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue


def atomic_write(path: str | os.PathLike, data: bytes | str, *, make_parents: bool = False) -> None:
    """Replace ``path`` with ``data`` atomically (text is written as UTF-8)."""
    path = Path(path)
    folder = path.parent  # "." for a bare file name
    if make_parents:
        folder.mkdir(parents=True, exist_ok=True)
    elif not folder.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {folder} does not exist")
    if isinstance(data, str):
        data = data.encode()
    _remove_stale_temporaries(path)
    fd, tmp = _create_temp(folder, path.name)
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
