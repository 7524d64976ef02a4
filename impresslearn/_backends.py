"""The backend rule, written once for every op (docs/design.md, Backends).

A backend names a *family* of kernels, and a family means the same thing on every op:

``reference``  pure PyTorch; oracle for tests, fallback, benchmark baseline.
``cpp``        the C++/OpenMP kernels of ``impresslearn._C``; CPU tensors.
``gpu``        the GPU kernels: Triton (``impresslearn.kernels``) and CUDA (``_C``),
               each op taking the one it has (combine, bank and linear: Triton;
               topk_mask: CUDA); CUDA tensors, or CPU tensors in the Triton
               interpreter, where an op without a Triton kernel runs its reference.
``triton``, ``cuda``  other names of ``gpu`` (its two kernel sources).

The kernels an op can have (``OpSpec.impls``) are named by where they come from:
``reference``, ``cpp``, ``triton``, ``cuda``. :data:`FAMILIES` says, per device, which
of them a family takes, in order: an op runs on the first one it implements.

Order of precedence:

1. an explicit ``backend=`` argument;
2. else the ``IMPRESSLEARN_BACKEND`` environment variable;
3. else automatic: the device's family (CPU tensors: ``cpp``, CUDA tensors: ``gpu``),
   falling back to ``reference`` for an op whose kernel there cannot run.

An explicit choice (1 or 2) that cannot run raises :class:`BackendUnavailable` with
the reason. An automatic choice that skips a kernel logs the reason once per
(op, kernel). Interpreter mode is decided once, by the Triton kernels themselves
when they first load (``impresslearn.ops._registry.triton_interpreted``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable

import torch

from . import _extension

log = logging.getLogger("impresslearn")

ENV_VAR = "IMPRESSLEARN_BACKEND"
KERNELS = ("reference", "cpp", "triton", "cuda")
BACKENDS = ("reference", "cpp", "gpu")
ALIASES = {"triton": "gpu", "cuda": "gpu"}

# family -> device type -> the kernels it takes there, in order; a device type not
# listed is one the family does not run on (family_reason says why)
FAMILIES: dict[str, dict[str, tuple[str, ...]]] = {
    "reference": {"*": ("reference",)},  # any device
    "cpp": {"cpu": ("cpp",)},
    # on CPU tensors only under the interpreter; topk_mask's GPU kernel is CUDA, so there
    # it runs its reference (the interpreter is a correctness tool for the Triton kernels)
    "gpu": {"cuda": ("triton", "cuda"), "cpu": ("triton", "reference")},
}
AUTOMATIC = {"cpu": "cpp", "cuda": "gpu"}


def family_kernels(backend: str, device: torch.device | str) -> tuple[str, ...]:
    """The kernels the family ``backend`` takes on ``device``, in order (empty: it does not run there)."""
    devices = FAMILIES[canonical(backend)]
    return devices.get(torch.device(device).type, devices.get("*", ()))


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run this op on these tensors."""


def canonical(backend: str) -> str:
    """The family a backend name selects (``triton``/``cuda`` -> ``gpu``); ValueError if unknown."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string or None, got {type(backend).__name__}")
    family = ALIASES.get(backend, backend)
    if family not in FAMILIES:
        names = ", ".join(repr(b) for b in (*BACKENDS, *ALIASES))
        raise ValueError(f"unknown backend {backend!r}; choose one of {names}")
    return family


def _triton_reason(device: torch.device) -> str | None:
    from .ops._registry import triton_interpreted, triton_load_reason

    reason = triton_load_reason()
    if reason is not None:
        return reason
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if triton_interpreted():
            return None
        return "the Triton kernels are compiled (TRITON_INTERPRET was not 1 when they loaded): CUDA tensors only"
    return f"triton does not run on {device.type} tensors"


def kernel_reason(kernel: str, device: torch.device | str) -> str | None:
    """None if ``kernel`` (one of :data:`KERNELS`) can run on ``device``, else why not (one line)."""
    device = torch.device(device)
    if kernel == "reference":
        return None
    if kernel == "cpp":
        if device.type != "cpu":
            return f"cpp kernels run on CPU tensors, got {device.type}"
        if not _extension.has_cpu_kernels():
            return _extension.unavailable_reason() or "impresslearn._C was built without CPU kernels"
        return None
    if kernel == "triton":
        return _triton_reason(device)
    if kernel == "cuda":
        if device.type != "cuda":
            return f"cuda kernels run on CUDA tensors, got {device.type}"
        if not _extension.has_cuda_kernels():
            return _extension.unavailable_reason() or "impresslearn._C was built without CUDA kernels"
        if torch.cuda.is_available():  # the build must hold code this GPU runs (TORCH_CUDA_ARCH_LIST)
            index = device.index if device.index is not None else torch.cuda.current_device()
            return _extension.cuda_device_reason(index)
        return None
    raise ValueError(f"unknown kernel {kernel!r}; kernels are {KERNELS}")


def family_reason(backend: str, device: torch.device | str) -> str | None:
    """None if the family ``backend`` runs on ``device`` at all, else why not."""
    family = canonical(backend)
    device = torch.device(device)
    if family == "cpp":  # one kernel source: the family runs where its kernel does
        return kernel_reason("cpp", device)
    if not family_kernels(family, device):
        return f"the {family} kernels do not run on {device.type} tensors"
    if family == "gpu" and device.type == "cpu":
        # Triton is the family's only kernel source on CPU tensors (interpreted)
        reason = _triton_reason(device)
        return None if reason is None else f"on CPU tensors the gpu kernels need the Triton interpreter: {reason}"
    return None


def backend_reason(backend: str, device: torch.device | str, op: str | None = None) -> str | None:
    """None if ``backend`` can run ``op`` (or, without ``op``, run at all) on ``device``, else why not."""
    if op is None:
        return family_reason(backend, device)
    try:
        select(op, device, backend)
    except BackendUnavailable as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class OpSpec:
    """One op and the kernels that implement it.

    ``impls`` maps a kernel name (:data:`KERNELS`) to a callable with the op's signature;
    which one runs is decided by :data:`FAMILIES`, never by the op.
    """

    name: str
    impls: dict[str, Callable]
    # dtypes a kernel accepts for the op's main tensor; the reference takes any
    dtypes: dict[str, tuple[torch.dtype, ...]] | None = None
    # for a family without a kernel of this op: how the functional API composes the op there
    composed: str | None = None

    def __post_init__(self):
        if "reference" not in self.impls:
            raise ValueError(f"op {self.name} needs a reference implementation")
        for kernel in self.impls:
            if kernel not in KERNELS:
                raise ValueError(f"op {self.name}: unknown kernel {kernel!r}; kernels are {KERNELS}")

    def member(self, backend: str, device: torch.device | str) -> str | None:
        """The kernel family ``backend`` runs this op with on ``device``, or None if it has none."""
        for kernel in family_kernels(backend, device):
            if kernel in self.impls:
                return kernel
        return None

    def missing(self, backend: str, device: torch.device | str) -> str:
        """Why family ``backend`` has no kernel of this op on ``device``: per kernel, not written or not built."""
        parts = []
        for kernel in family_kernels(backend, device):
            reason = kernel_reason(kernel, device) if kernel in ("cpp", "cuda") else None
            parts.append(f"{kernel}: {reason or 'no kernel for this op'}")
        return "; ".join(parts) or f"the {canonical(backend)} kernels do not run on {torch.device(device).type} tensors"


REGISTRY: dict[str, OpSpec] = {}
_warned: set[tuple[str, str]] = set()


def register(spec: OpSpec) -> OpSpec:
    REGISTRY[spec.name] = spec
    return spec


def requested_backend(backend: str | None = None) -> str | None:
    """The explicit choice: ``backend`` if given, else ``IMPRESSLEARN_BACKEND``, else None (automatic)."""
    if backend is not None:
        return backend
    env = os.environ.get(ENV_VAR, "").strip()
    return env or None


def _dtype_reason(spec: OpSpec, kernel: str, dtype: torch.dtype | None) -> str | None:
    if dtype is None or spec.dtypes is None or kernel not in spec.dtypes:
        return None
    if dtype in spec.dtypes[kernel]:
        return None
    return f"{kernel} kernels of {spec.name} take {', '.join(map(str, spec.dtypes[kernel]))}, got {dtype}"


# (op, device, requested backend, dtype) -> (the op's spec, the kernel chosen). Every op call
# selects, and deciding anew costs 15-19 us a call (device parsing, extension and Triton
# probes) against 1-3.4 us cached; what the decision depends on beyond the key is fixed once
# loaded: the spec (checked by identity, so re-registering an op invalidates), the extension,
# the Triton mode and the GPU's architecture. The requested backend is in the key, read from
# the argument or IMPRESSLEARN_BACKEND on every call, so setting either takes effect at once.
# That read is most of a cached select: 2.4 of its 3.4 us with the variable unset (os.environ.get
# raises and catches a KeyError), 1.2 us set; but a whole combine_masks call on 64 weights costs
# 80-90 us, so the read is 2-3% of the smallest op call (scripts/dispatch_overhead.py, 2-core
# Zen 1 at load 0.6-1.1; at load 4.3: 4.8 of 7.4 us, 2.2%). It stays: the standard library has no
# public test that os.environ changed that is cheaper than reading the variable.
# Refusals are not cached: they raise the same way each time.
_selected: dict[tuple, tuple[OpSpec, str]] = {}


def clear_selection_cache() -> None:
    """Forget every cached choice of :func:`select`.

    Needed only after changing what the choice depends on besides its arguments and
    ``IMPRESSLEARN_BACKEND`` (e.g. a test that swaps the extension's answers).
    """
    _selected.clear()


def select(
    op: str, device: torch.device | str, backend: str | None = None, dtype: torch.dtype | None = None
) -> str:
    """The kernel that runs ``op`` on ``device`` (for tensors of ``dtype``) under the rule above."""
    requested = requested_backend(backend)
    if torch.compiler.is_compiling():  # a compiled graph holds its choice; Dynamo would guard on the
        return _decide(op, torch.device(device), requested, dtype)  # cache and recompile as it fills
    key = (op, device, requested, dtype)
    try:
        spec, kernel = _selected[key]
    except (KeyError, TypeError):  # TypeError: an unhashable argument, refused by the rule below
        pass
    else:
        if REGISTRY.get(op) is spec:
            return kernel
    device = torch.device(device)
    kernel = _decide(op, device, requested, dtype)
    # "cuda" without an index means the current device, which can change: decide it each time
    if device.type != "cuda" or device.index is not None:
        _selected[key] = (REGISTRY[op], kernel)
    return kernel


def _decide(op: str, device: torch.device, requested: str | None, dtype: torch.dtype | None) -> str:
    """:func:`select` without its cache."""
    spec = REGISTRY[op]
    if requested is not None:
        family = canonical(requested)
        named = requested if requested == family else f"{requested} (= {family})"
        reason = family_reason(family, device)
        if reason is not None:
            raise BackendUnavailable(f"{op} cannot run on backend {named}: {reason}")
        kernel = spec.member(family, device)
        if kernel is None:
            raise BackendUnavailable(
                f"{op} has no kernel in backend {named} on {device.type} tensors ({spec.missing(family, device)}); "
                f"it has: {', '.join(spec.impls)}"
            )
        reason = kernel_reason(kernel, device) or _dtype_reason(spec, kernel, dtype)
        if reason is not None:
            raise BackendUnavailable(f"{op} cannot run on backend {named}: {reason}")
        return kernel
    family = AUTOMATIC.get(device.type)
    kernel = spec.member(family, device) if family is not None else None
    if kernel is None or kernel == "reference":
        return "reference"
    if _dtype_reason(spec, kernel, dtype) is not None:
        return "reference"  # e.g. float64 for gradcheck: the reference serves it, nothing to log
    reason = kernel_reason(kernel, device)
    if reason is None:
        return kernel
    if (op, kernel) not in _warned:
        _warned.add((op, kernel))
        log.info("%s: %s kernel skipped (%s); falling back to the reference", op, kernel, reason)
    return "reference"


def dispatch(
    op: str, device: torch.device | str, backend: str | None = None, dtype: torch.dtype | None = None
) -> Callable:
    """The implementation of ``op`` chosen by :func:`select`."""
    return REGISTRY[op].impls[select(op, device, backend, dtype)]
