"""The checkpoint file: tensors in safetensors, JSON metadata in its header, one file.

Layout (docs/design.md, Formats): a plain safetensors file whose header ``__metadata__``
holds these strings:

``format``          ``"impresslearn-checkpoint"``
``format_version``  ``"2"``: a reader refuses versions it does not know
``sha256``          JSON {tensor name: SHA-256 hex of its bytes}
``metadata``        JSON of the caller's metadata (backbone spec, tasks, config, ...)
``header_sha256``   SHA-256 of everything above plus each tensor's dtype and shape
                    (:func:`header_sha256`), so no byte of the header is unchecked

Version 1 had no ``header_sha256``: a flipped bit in its JSON (a task name, a BN slot,
a tensor's dtype) loaded silently. Version 1 files still load, with a warning, and
:func:`upgrade_checkpoint` rewrites one as version 2. One flipped bit cannot turn
``"2"`` into ``"1"`` (0x32 and 0x31 differ in two bits), so damage never downgrades a
file to the unchecked format. The checksums detect damage, not tampering: whoever edits a
file can recompute them, so the learner still checks every value it reads.

Before any tensor is allocated, each header entry's dtype and shape must give exactly
the byte count of its slice of the file, so a damaged shape cannot ask for terabytes.

One file means one rename makes a save visible: a reader sees the old checkpoint
or the new one, never half of each (``impresslearn._atomic``).

This layer knows nothing of models; the learner's save and load build the tensors and
metadata and check shapes and the backbone hash on top of it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import warnings
from pathlib import Path
from typing import Iterable, Mapping

import torch

from ._atomic import atomic_write
from ._integers import is_count

FORMAT = "impresslearn-checkpoint"
FORMAT_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
_UNCHECKED_HEADER_VERSIONS = (1,)  # versions without header_sha256

_MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header

# safetensors' dtype names (the header's "dtype" field) and the torch dtypes they hold.
_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "U16": torch.uint16, "I16": torch.int16,
    "U32": torch.uint32, "I32": torch.int32, "U64": torch.uint64, "I64": torch.int64,
    "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64, "C64": torch.complex64,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E4M3FNUZ": torch.float8_e4m3fnuz,
    "F8_E5M2": torch.float8_e5m2, "F8_E5M2FNUZ": torch.float8_e5m2fnuz,
}  # fmt: skip
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


class CheckpointError(ValueError):
    """A checkpoint file is missing, damaged, of an unknown version, or fails its checksums."""


class UncheckedHeaderWarning(UserWarning):
    """A version-1 checkpoint was loaded: its metadata has no checksum (see :func:`upgrade_checkpoint`)."""


def header_sha256(format_version: str, metadata_json: str, digests_json: str, layout: Mapping[str, tuple]) -> str:
    """SHA-256 over the header's content: format, version, metadata, tensor digests and
    each tensor's safetensors dtype and shape (``layout``: {name: (dtype, shape)}).

    Canonical JSON (sorted keys, no spaces), so the same content always gives the same
    hash. Data offsets are left out: safetensors checks that they tile the data section
    exactly, and each tensor's bytes have their own SHA-256.
    """
    canonical = json.dumps(
        {
            "format": FORMAT,
            "format_version": format_version,
            "metadata": metadata_json,
            "sha256": digests_json,
            "tensors": {name: [dtype, list(shape)] for name, (dtype, shape) in layout.items()},
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


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
        if t.dtype not in _DTYPE_NAMES:
            raise TypeError(f"tensors[{name!r}] has dtype {t.dtype}, which safetensors cannot store")
        t = t.detach().to("cpu").contiguous()
        # safetensors refuses tensors sharing memory; a private copy of a repeated storage fixes that.
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen_storage and t.numel():
            t = t.clone()
        seen_storage.add(t.untyped_storage().data_ptr())
        prepared[name] = t
    version = str(FORMAT_VERSION)
    digests_json = json.dumps({name: tensor_sha256(t) for name, t in prepared.items()}, sort_keys=True)
    layout = {name: (_DTYPE_NAMES[t.dtype], t.shape) for name, t in prepared.items()}
    header = {
        "format": FORMAT,
        "format_version": version,
        "sha256": digests_json,
        "metadata": metadata_json,
        "header_sha256": header_sha256(version, metadata_json, digests_json, layout),
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
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_count(o) for o in offsets)
                and offsets[0] <= offsets[1]):  # fmt: skip
            raise CheckpointError(f"checkpoint {path}: damaged header entry for tensor {name!r}")
        if offsets[1] > data_size:
            raise CheckpointError(
                f"checkpoint {path}: truncated (tensor {name!r} ends at byte {offsets[1]} of a "
                f"{data_size}-byte data section)")
        # The declared size must be the slice's size: checked in Python integers, before any
        # allocation, so a damaged shape is refused instead of allocated.
        dtype, shape = entry.get("dtype"), entry.get("shape")
        if dtype not in _DTYPES:
            raise CheckpointError(f"checkpoint {path}: tensor {name!r} has an unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and all(is_count(d) for d in shape)):
            raise CheckpointError(f"checkpoint {path}: tensor {name!r} has a damaged shape {shape!r}")
        declared = math.prod(shape) * _DTYPES[dtype].itemsize
        if declared != offsets[1] - offsets[0]:
            raise CheckpointError(
                f"checkpoint {path}: tensor {name!r} declares {dtype}{shape} ({declared} bytes) but its "
                f"slice of the file holds {offsets[1] - offsets[0]} bytes")
    return header


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read ``path`` and return ``(tensors, metadata)`` on the CPU.

    Raises CheckpointError, naming the file and the problem, when the file is missing,
    truncated or damaged, not an impresslearn checkpoint, of an unsupported format
    version, when the header does not match its ``header_sha256``, when a tensor's declared
    dtype and shape do not fit its bytes, or when any tensor's bytes do not match the
    SHA-256 stored at save time. A version-1 file (no header checksum) loads with an
    :class:`UncheckedHeaderWarning`.
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
    names = {k for k in header if k != "__metadata__"}
    if int(version) in _UNCHECKED_HEADER_VERSIONS:
        warnings.warn(
            f"checkpoint {path} has format version {version}, whose metadata has no checksum; "
            f"rewrite it as version {FORMAT_VERSION} with impresslearn.checkpoint.upgrade_checkpoint(path)",
            UncheckedHeaderWarning,
            stacklevel=2,
        )
    else:
        stored = meta.get("header_sha256")
        if not isinstance(stored, str) or not all(isinstance(meta.get(k), str) for k in ("sha256", "metadata")):
            raise CheckpointError(f"checkpoint {path}: damaged header (its checksum or metadata is missing)")
        layout = {name: (header[name]["dtype"], header[name]["shape"]) for name in names}
        if header_sha256(version, meta["metadata"], meta["sha256"], layout) != stored:
            raise CheckpointError(
                f"checkpoint {path}: damaged header, SHA-256 mismatch (the metadata, a tensor's name, dtype "
                f"or shape, or the checksum itself was changed after saving)")
    try:
        digests = json.loads(meta["sha256"])
        metadata = json.loads(meta["metadata"])
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path}: damaged metadata ({exc})") from exc
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


def upgrade_checkpoint(path: str | os.PathLike, out: str | os.PathLike | None = None) -> None:
    """Rewrite a checkpoint of an older format version as the current one (in place unless ``out``).

    The old file's tensor checksums are verified first; its metadata cannot be (version 1
    has no header checksum), so upgrade files you trust.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UncheckedHeaderWarning)
        tensors, metadata = load_checkpoint(path)
    save_checkpoint(path if out is None else out, tensors, metadata)
