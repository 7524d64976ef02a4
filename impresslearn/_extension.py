"""Loads the compiled extension ``impresslearn._C`` exactly once.

The package must import and work without it (on the reference backend), so a
missing or broken build is recorded, logged once, and reported by
``python -m impresslearn.info`` instead of raising at import time.
"""

from __future__ import annotations

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
