"""Looks up the compiled ops of ``impresslearn._C`` by name.

``_C`` registers its kernels with ``TORCH_LIBRARY(impresslearn, m)`` under
``<op>_cpp`` (CPU) and ``<op>_cuda`` (GPU). An op is offered to dispatch only if
the loaded extension defines it, so a partial build still works.
"""

from __future__ import annotations

import importlib
import importlib.util

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


def triton_module(name: str):
    """``impresslearn.kernels.<name>`` if triton imports and the module loads, else None.

    Import errors other than a missing triton are re-raised: a broken kernel file
    is a bug to see, not a backend to skip silently.
    """
    from .._backends import backend_reason

    if backend_reason("triton", "cuda") is not None:
        return None
    if importlib.util.find_spec(f"impresslearn.kernels.{name}") is None:
        return None
    return importlib.import_module(f"impresslearn.kernels.{name}")
