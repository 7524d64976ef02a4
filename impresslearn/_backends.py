"""The backend rule, written once for every op (DESIGN section 3).

Order of precedence:

1. an explicit ``backend=`` argument;
2. else the ``IMPRESSLEARN_BACKEND`` environment variable;
3. else automatic: the first backend in the op's preference list for the tensor's
   device that is available, falling back to ``reference``.

An explicit choice (1 or 2) that cannot run raises :class:`BackendUnavailable`
with the reason. An automatic choice that skips a preferred backend logs the
reason once per (op, backend).

Backends:

``reference``  pure PyTorch; oracle for tests, fallback, benchmark baseline.
``cpp``        C++/OpenMP kernels of ``impresslearn._C`` (CPU tensors).
``triton``     Triton kernels in ``impresslearn.kernels`` (CUDA tensors, or CPU
               tensors when ``TRITON_INTERPRET=1`` was set before import).
``cuda``       CUDA kernels of ``impresslearn._C`` (CUDA tensors).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from dataclasses import dataclass
from typing import Callable

import torch

from . import _extension

log = logging.getLogger("impresslearn")

ENV_VAR = "IMPRESSLEARN_BACKEND"
BACKENDS = ("reference", "cpp", "triton", "cuda")


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run this op on these tensors."""


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _triton_reason() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    try:
        import triton  # noqa: F401
    except Exception as exc:  # pragma: no cover - broken install
        return f"triton failed to import ({type(exc).__name__}: {exc})"
    return None


def backend_reason(backend: str, device: torch.device | str) -> str | None:
    """None if ``backend`` can run on ``device``, else why not (one line)."""
    device = torch.device(device)
    if backend == "reference":
        return None
    if backend == "cpp":
        if device.type != "cpu":
            return f"cpp kernels run on CPU tensors, got {device.type}"
        if not _extension.has_cpu_kernels():
            return _extension.unavailable_reason() or "impresslearn._C was built without CPU kernels"
        return None
    if backend == "triton":
        reason = _triton_reason()
        if reason:
            return reason
        if device.type == "cuda":
            return None
        if device.type == "cpu":
            return None if triton_interpret() else "triton runs on CPU tensors only under TRITON_INTERPRET=1"
        return f"triton does not run on {device.type} tensors"
    if backend == "cuda":
        if device.type != "cuda":
            return f"cuda kernels run on CUDA tensors, got {device.type}"
        if not _extension.has_cuda_kernels():
            return _extension.unavailable_reason() or "impresslearn._C was built without CUDA kernels"
        return None
    raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")


@dataclass(frozen=True)
class OpSpec:
    """One op and the backends that implement it.

    ``impls`` maps a backend name to a callable with the op's signature.
    ``prefer`` maps a device type to the automatic order of backends.
    """

    name: str
    impls: dict[str, Callable]
    prefer: dict[str, tuple[str, ...]]
    # dtypes a kernel backend accepts for the op's main tensor; the reference takes any
    dtypes: dict[str, tuple[torch.dtype, ...]] | None = None
    # for a backend without its own kernel: how the functional API composes the op there
    composed: str | None = None

    def __post_init__(self):
        if "reference" not in self.impls:
            raise ValueError(f"op {self.name} needs a reference implementation")
        for order in self.prefer.values():
            for b in order:
                if b not in BACKENDS:
                    raise ValueError(f"op {self.name}: unknown backend {b!r}")


REGISTRY: dict[str, OpSpec] = {}
_warned: set[tuple[str, str]] = set()


def register(spec: OpSpec) -> OpSpec:
    REGISTRY[spec.name] = spec
    return spec


def _requested(backend: str | None) -> str | None:
    if backend is not None:
        return backend
    env = os.environ.get(ENV_VAR, "").strip()
    return env or None


def _dtype_reason(spec: OpSpec, backend: str, dtype: torch.dtype | None) -> str | None:
    if dtype is None or spec.dtypes is None or backend not in spec.dtypes:
        return None
    if dtype in spec.dtypes[backend]:
        return None
    return f"{backend} kernels of {spec.name} take {', '.join(map(str, spec.dtypes[backend]))}, got {dtype}"


def select(
    op: str, device: torch.device | str, backend: str | None = None, dtype: torch.dtype | None = None
) -> str:
    """The backend that runs ``op`` on ``device`` (for tensors of ``dtype``) under the rule above."""
    spec = REGISTRY[op]
    device = torch.device(device)
    requested = _requested(backend)
    if requested is not None:
        if requested not in BACKENDS:
            raise ValueError(f"unknown backend {requested!r}; choose one of {BACKENDS}")
        if requested not in spec.impls:
            raise BackendUnavailable(
                f"{op} has no {requested} implementation (it has: {', '.join(spec.impls)})"
            )
        reason = backend_reason(requested, device) or _dtype_reason(spec, requested, dtype)
        if reason is not None:
            raise BackendUnavailable(f"{op} cannot run on backend {requested!r}: {reason}")
        return requested
    for candidate in spec.prefer.get(device.type, ()):
        if candidate not in spec.impls:
            continue
        if _dtype_reason(spec, candidate, dtype) is not None:
            continue  # e.g. float64 for gradcheck: the reference serves it, nothing to log
        reason = backend_reason(candidate, device)
        if reason is None:
            return candidate
        if (op, candidate) not in _warned:
            _warned.add((op, candidate))
            log.info("%s: backend %s skipped (%s); falling back", op, candidate, reason)
    return "reference"


def dispatch(
    op: str, device: torch.device | str, backend: str | None = None, dtype: torch.dtype | None = None
) -> Callable:
    """The implementation of ``op`` chosen by :func:`select`."""
    return REGISTRY[op].impls[select(op, device, backend, dtype)]
