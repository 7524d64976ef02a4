"""The backend rule as users and scripts read it (docs/design.md, Backends).

Which kernel family runs an op here, why a family cannot run, and what the compiled
extension holds. Dispatch itself lives in the private ``_backends`` / ``_extension``
modules; this is their public face, so that scripts and benchmarks never import a
private module.
"""

from __future__ import annotations

from . import _extension
from ._backends import (
    BACKENDS,
    ENV_VAR,
    BackendUnavailable,
    backend_reason,
    clear_selection_cache,
    requested_backend,
    select,
)
from ._extension import cuda_archs, has_cpu_kernels, has_cuda_kernels


def cpu_isa() -> tuple[str, list[str]]:
    """The ISA the C++ kernels run (``IMPRESSLEARN_CPU_ISA`` or the best this CPU offers) and all it offers.

    ``("no C++ kernels", [])`` when ``impresslearn._C`` was built without them, and
    ``("unknown ...", [])`` for a build from before the ISA dispatch. Raises ``ValueError``
    naming the variable when ``IMPRESSLEARN_CPU_ISA`` names no ISA or one this CPU cannot run.
    """
    ext = _extension.extension()
    if not _extension.has_cpu_kernels():
        return "no C++ kernels", []
    if not hasattr(ext, "cpu_isa"):
        return "unknown (impresslearn._C predates the ISA dispatch: rebuild it)", []
    return ext.cpu_isa(), list(ext.cpu_isas())  # the ValueError names the variable, its value and the choices


__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "BackendUnavailable",
    "backend_reason",
    "clear_selection_cache",
    "cpu_isa",
    "cuda_archs",
    "has_cpu_kernels",
    "has_cuda_kernels",
    "requested_backend",
    "select",
]
