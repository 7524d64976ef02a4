"""Loads the compiled extension ``impresslearn._C`` exactly once.

The package must import and work without it (on the reference backend), so a
missing or broken build is recorded, logged once, and reported by
``python -m impresslearn.info`` instead of raising at import time.
"""

from __future__ import annotations

import functools
import importlib
import logging

log = logging.getLogger("impresslearn")

_module = None
_reason: str | None = None
_loaded = False


def _load() -> None:
    global _module, _reason, _loaded
    if _loaded:
        return
    _loaded = True
    try:
        import torch  # noqa: F401  (the extension links against libtorch)

        _module = importlib.import_module("impresslearn._C")
    except Exception as exc:  # ImportError, OSError for a stale .so, ...
        _module = None
        _reason = f"impresslearn._C did not load ({type(exc).__name__}: {exc}); rebuild with `make install`"
        log.info("%s; ops run on the reference backend", _reason)


def extension():
    """The loaded ``_C`` module, or None."""
    _load()
    return _module


def unavailable_reason() -> str | None:
    """Why ``_C`` is missing, or None when it loaded."""
    _load()
    return _reason


def has_cpu_kernels() -> bool:
    mod = extension()
    return mod is not None and bool(getattr(mod, "WITH_CPU", False))


def has_cuda_kernels() -> bool:
    mod = extension()
    return mod is not None and bool(getattr(mod, "WITH_CUDA", False))


def cuda_archs() -> list[str]:
    """Compute capabilities the CUDA kernels of ``_C`` hold code for, e.g. ["8.0", "9.0"]; [] without them."""
    if not has_cuda_kernels():
        return []
    import torch

    try:
        archs = torch.ops.impresslearn.cuda_archs()
    except (AttributeError, RuntimeError):  # a build from before _C reported them
        return []
    return [f"{a // 10}.{a % 10}" for a in archs]


@functools.cache
def cuda_device_reason(index: int) -> str | None:
    """Why the CUDA kernels of ``_C`` cannot run on GPU ``index`` (no code for its architecture), else None.

    Asks the CUDA runtime whether it can load a kernel of the build on that device
    (csrc/cuda: ``cuda_kernel_reason``), so "no kernel image is available" is found
    before a launch instead of at it.
    """
    import torch

    try:
        check = torch.ops.impresslearn.cuda_kernel_reason
    except (AttributeError, RuntimeError):  # a build from before the check: nothing to ask
        return None
    return check(index) or None
