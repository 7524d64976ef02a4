"""The checkpoint file: tensors in safetensors, JSON metadata in its header, one file.

Layout (docs/design.md, Formats): a plain safetensors file whose header ``__metadata__``
holds three strings:

``format``          ``"impresslearn-checkpoint"``
``format_version``  ``"1"``: a reader refuses versions it does not know
``sha256``          JSON {tensor name: SHA-256 hex of its bytes}
``metadata``        JSON of the caller's metadata (backbone spec, tasks, config, ...)

One file means one rename makes a save visible: a reader sees the old checkpoint
or the new one, never half of each. Writes go to a temporary file in the same
folder, which is flushed and fsynced, renamed over the target, and then the
folder is fsynced so the rename itself survives a crash.

This layer knows nothing of models; ``ImpressLearner.save``/``load`` build the
tensors and metadata and check shapes and the backbone hash on top of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Iterable, Mapping

import torch

from ._atomic import atomic_write

FORMAT = "impresslearn-checkpoint"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)

_MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header


class CheckpointError(ValueError):
    """A checkpoint file is missing, damaged, of an unknown version, or fails its checksums."""


def tensor_sha256(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes in row-major order (dtype and shape are checked separately)."""
    return hashlib.sha256(_tensor_bytes(t)).hexdigest()


def weights_sha256(tensors: Iterable[torch.Tensor]) -> str:
    """One SHA-256 over a sequence of tensors: dtype, shape and bytes of each, in order.

    The backbone's fingerprint: the same seed gives the same weights bit for bit on any
    machine, so the same hash; a checkpoint loaded onto another backbone is refused.
    """
    h = hashlib.sha256()
    for t in tensors:
        h.update(f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)};".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().to("cpu").contiguous()
    # A uint8 view covers every dtype (numpy has no bfloat16); reshape(-1) handles 0-d tensors.
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def save_checkpoint(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping) -> None:
    """Write ``tensors`` and JSON-serialisable ``metadata`` to ``path`` atomically."""
    from safetensors.torch import save as safetensors_save

    path = Path(path)
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping, got {type(metadata).__name__}")
    try:
        metadata_json = json.dumps(metadata, sort_keys=True, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"checkpoint metadata is not JSON-serialisable: {exc}") from exc
    prepared: dict[str, torch.Tensor] = {}
    seen_storage: set[int] = set()
    for name, t in tensors.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"tensor names must be non-empty strings, got {name!r}")
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensors[{name!r}] is a {type(t).__name__}, not a torch.Tensor")
        if t.is_sparse:
            raise TypeError(f"tensors[{name!r}] is sparse; store its dense form or its indices and values")
        t = t.detach().to("cpu").contiguous()
        # safetensors refuses tensors sharing memory; a private copy of a repeated storage fixes that.
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen_storage and t.numel():
            t = t.clone()
        seen_storage.add(t.untyped_storage().data_ptr())
        prepared[name] = t
    header = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "sha256": json.dumps({name: tensor_sha256(t) for name, t in prepared.items()}, sort_keys=True),
        "metadata": metadata_json,
    }
    data = safetensors_save(prepared, metadata=header)
    atomic_write(path, data)


def read_checkpoint_header(path: str | os.PathLike) -> dict:
    """The safetensors JSON header of ``path`` (tensor entries and ``__metadata__``), checked for sanity."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"checkpoint {path}: truncated ({size} bytes; not even a header length)")
        (n,) = struct.unpack("<Q", prefix)
        if n > _MAX_HEADER or 8 + n > size:
            raise CheckpointError(
                f"checkpoint {path}: damaged or truncated header (says {n} header bytes, file has {size} bytes)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path}: damaged header (not valid JSON: {exc})") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"checkpoint {path}: damaged header (not a JSON object)")
    data_size = size - 8 - n
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1]):
            raise CheckpointError(f"checkpoint {path}: damaged header entry for tensor {name!r}")
        if offsets[1] > data_size:
            raise CheckpointError(
                f"checkpoint {path}: truncated (tensor {name!r} ends at byte {offsets[1]} of a "
                f"{data_size}-byte data section)")
    return header


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read ``path`` and return ``(tensors, metadata)`` on the CPU.

    Raises CheckpointError, naming the file and the problem, when the file is missing,
    truncated or damaged, not an impresslearn checkpoint, of an unsupported format
    version, or when any tensor's bytes do not match the SHA-256 stored at save time.
    """
    from safetensors import safe_open

    path = Path(path)
    header = read_checkpoint_header(path)
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: not an impresslearn checkpoint (no '{FORMAT}' marker)")
    version = meta.get("format_version")
    if version not in {str(v) for v in SUPPORTED_VERSIONS}:
        raise CheckpointError(
            f"checkpoint {path}: format version {version!r} is not supported by this impresslearn "
            f"(supported: {', '.join(map(str, SUPPORTED_VERSIONS))}); it may come from a newer release")
    try:
        digests = json.loads(meta["sha256"])
        metadata = json.loads(meta["metadata"])
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path}: damaged metadata ({exc})") from exc
    names = {k for k in header if k != "__metadata__"}
    if not isinstance(digests, dict) or set(digests) != names:
        raise CheckpointError(f"checkpoint {path}: the checksum list does not match the stored tensors")
    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in sorted(names):
                tensors[name] = f.get_tensor(name)
    except Exception as exc:  # safetensors raises its own error types; callers get one
        raise CheckpointError(f"checkpoint {path}: cannot read tensors ({type(exc).__name__}: {exc})") from exc
    bad = [name for name, t in tensors.items() if tensor_sha256(t) != digests[name]]
    if bad:
        raise CheckpointError(
            f"checkpoint {path}: damaged data, SHA-256 mismatch for tensor(s) {', '.join(sorted(bad))}")
    return tensors, metadata
