"""Where the ops find their kernels: the compiled ``impresslearn._C`` and the Triton kernels.

``_C`` registers its kernels with ``TORCH_LIBRARY(impresslearn, m)`` under
``<op>_cpp`` (CPU) and ``<op>_cuda`` (GPU). An op is offered to dispatch only if
the loaded extension defines it, so a partial build still works.

The Triton kernels are registered lazily. Importing ``triton`` and registering a
``torch.library.triton_op`` pulls in ``torch._inductor`` (seconds), which a user
on the CPU kernels never needs, so ``import impresslearn`` only checks that the
kernel files exist (``importlib.util.find_spec``, no import). The first call that
dispatches to a Triton kernel, or :func:`load_triton_ops`, imports every kernel
module at once and registers every Triton op (docs/design.md, Ops).
Loading them together is what makes the interpreter mode one decision:
``@triton.jit`` reads ``TRITON_INTERPRET`` when a kernel module is imported, so
all kernels share the mode that held at that one moment, and dispatch asks the
loaded kernels (:func:`triton_interpreted`) rather than the environment.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import threading
from typing import Callable

import torch

from .. import _extension


def compiled_op(name: str):
    """``torch.ops.impresslearn.<name>`` if ``_C`` loaded and defines it, else None."""
    if _extension.extension() is None:
        return None
    try:
        return getattr(torch.ops.impresslearn, name)
    except (AttributeError, RuntimeError):
        return None


# ----------------------------------------------------------------------------- Triton, lazily


@functools.cache
def triton_missing_reason() -> str | None:
    """Why Triton kernels cannot exist here (package or kernel files absent), found without importing."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if importlib.util.find_spec("impresslearn.kernels") is None:
        return "the impresslearn.kernels package is not installed"
    return None


# op module's kernel file -> the function that registers its torch.library ops, in load order
_REGISTRARS: dict[str, Callable] = {}
_registered: dict[str, dict[str, Callable]] = {}
_load_lock = threading.RLock()
_load_failure: str | None = None


class TritonOps:
    """The Triton ops of one op module, registered with ``torch.library`` at first use.

    ``register(kernels)`` receives the imported ``impresslearn.kernels.<name>``
    module, registers the ops (``triton_op``, autograd) and returns them by key.
    :meth:`impl` gives a callable for ``OpSpec.impls`` that loads on its first call.
    """

    def __init__(self, name: str, register: Callable):
        self.name = name
        _REGISTRARS[name] = register

    def ops(self) -> dict[str, Callable]:
        """The registered ops of this module (loads every Triton op on the first call)."""
        if self.name not in _registered:
            load_triton_ops()
        return _registered[self.name]

    def impl(self, key: str) -> Callable:
        def call(*args, **kwargs):
            if self.name not in _registered:
                _load_outside_compile()
            return _registered[self.name][key](*args, **kwargs)

        call.__name__ = call.__qualname__ = f"{key}_triton"
        return call


def triton_ops(name: str, register: Callable) -> TritonOps | None:
    """Lazy Triton ops of ``impresslearn.kernels.<name>``, or None where they cannot exist."""
    if triton_missing_reason() is not None:
        return None
    if importlib.util.find_spec(f"impresslearn.kernels.{name}") is None:
        return None
    return TritonOps(name, register)


def _load_outside_compile() -> None:
    # imports and op registrations are not traceable: under torch.compile the first call
    # graph-breaks here (torch.compiler.disable imports torch._dynamo, so only now, not at import)
    torch.compiler.disable(load_triton_ops)()


def load_triton_ops() -> None:
    """Import every Triton kernel module and register its ops with ``torch.library``. Idempotent.

    Dispatch calls this on first use. Call it yourself before reaching the ops through
    ``torch.ops.impresslearn.*_triton`` directly (e.g. ``torch.library.opcheck``).
    Raises ``RuntimeError`` when Triton cannot be loaded here (the reason is kept for
    ``python -m impresslearn.info``); a broken kernel file raises its own error.
    """
    global _load_failure
    if _REGISTRARS and len(_registered) == len(_REGISTRARS):
        return  # loaded: the path every dispatch to a Triton kernel takes (no import, no lock)
    # the op modules add their registrars when imported; importing ops here covers a
    # caller that reaches this function before anything imported impresslearn.ops
    from .. import ops  # noqa: F401

    with _load_lock:
        if _load_failure is not None:
            raise RuntimeError(_load_failure)
        missing = triton_missing_reason()
        if missing is not None:
            raise RuntimeError(f"Triton kernels unavailable: {missing}")
        try:
            importlib.import_module("triton")
        except Exception as exc:  # a broken install: keep the reason, do not retry
            _load_failure = f"triton failed to import ({type(exc).__name__}: {exc})"
            raise RuntimeError(_load_failure) from exc
        for name, register in _REGISTRARS.items():
            if name not in _registered:
                _registered[name] = register(importlib.import_module(f"impresslearn.kernels.{name}"))


def triton_load_reason() -> str | None:
    """None once the Triton ops can be (or are) loaded, else why not. Loads them."""
    try:
        load_triton_ops()
    except RuntimeError as exc:
        return str(exc)
    return None


def triton_loaded() -> bool:
    """True once the Triton kernels were imported (this never loads them)."""
    return bool(_registered)


def triton_interpreted() -> bool:
    """True when the loaded Triton kernels are interpreted (TRITON_INTERPRET=1 when they were loaded).

    The one place that decides interpreter mode: it asks the kernels themselves.
    Loads them if no call has yet (the mode is fixed from then on).
    """
    if triton_load_reason() is not None:
        return False
    from ..kernels._launch import interpreted

    return interpreted()
