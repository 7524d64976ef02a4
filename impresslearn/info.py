"""``python -m impresslearn.info``: versions, and for every op each backend, available or why not.

Loads the Triton kernels (they are otherwise loaded at first use) to say whether they run.
"""

from __future__ import annotations

import os
import platform

import torch

from . import _backends, _extension, backends, ops  # noqa: F401  (importing ops registers every op)
from .ops import _registry

_KERNEL_WHERE = {
    "reference": "pure PyTorch",
    "cpp": "C++ kernel",
    "triton": "Triton kernel",
    "cuda": "CUDA kernel",
}


def _devices() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    return devices


def _triton_line() -> str:
    reason = _registry.triton_load_reason()
    if reason is not None:
        return f"triton: {reason}"
    mode = (
        "interpreted (TRITON_INTERPRET=1 when they loaded): they run on CPU tensors"
        if _registry.triton_interpreted()
        else "compiled: they run on CUDA tensors"
    )
    return f"triton: kernels loaded, {mode}"


def report() -> str:
    from . import __version__

    requested = _backends.requested_backend()
    lines = [
        f"impresslearn {__version__}",
        f"python {platform.python_version()}  torch {torch.__version__}  "
        f"cuda {torch.version.cuda or '-'}  threads {torch.get_num_threads()}",
        _triton_line(),
        f"_C: {_extension.unavailable_reason() or 'loaded'}"
        + (
            f" (cpu kernels: {'yes' if _extension.has_cpu_kernels() else 'no'}, "
            f"cuda kernels: {_cuda_build()})"
            if _extension.extension() is not None
            else ""
        ),
        f"cpu kernels ISA: {_cpu_isa()}",
        f"GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none visible'}",
        f"{_backends.ENV_VAR}={requested or '(unset: automatic)'}",
        f"backends: {', '.join(_backends.BACKENDS)} "
        f"({', '.join(f'{a} = {f}' for a, f in _backends.ALIASES.items())}); "
        f"automatic: {', '.join(f'{d} tensors -> {f}' for d, f in _backends.AUTOMATIC.items())}",
        "",
    ]
    width = max(len(name) for name in _backends.REGISTRY)
    for name, spec in sorted(_backends.REGISTRY.items()):
        chosen = ", ".join(f"{d} -> {_automatic(spec, d)}" for d in _devices()) if requested is None else "-"
        lines.append(f"{name:<{width}}  automatic: {chosen}")
        for backend in _backends.BACKENDS:
            lines.append(f"{'':<{width}}    {backend:<9} {_status(spec, backend)}")
    return "\n".join(lines)


def _cuda_build() -> str:
    """'no', or 'yes, for compute capabilities ...' (what TORCH_CUDA_ARCH_LIST put in the build)."""
    if not _extension.has_cuda_kernels():
        return "no"
    archs = _extension.cuda_archs()
    return f"yes, for compute capabilities {', '.join(archs)}" if archs else "yes"


def _cpu_isa() -> str:
    """The ISA the C++ kernels run and the others this CPU could, or why none (:func:`backends.cpu_isa`)."""
    try:
        isa, supported = backends.cpu_isa()
    except ValueError as exc:  # the variable names no ISA, or one this CPU lacks
        return f"none: {exc}"
    if not supported:
        return f"- ({isa})"
    return f"{isa} (this CPU runs {', '.join(supported)}; IMPRESSLEARN_CPU_ISA=portable|avx2|avx512 forces one)"


def _automatic(spec: _backends.OpSpec, device: str) -> str:
    chosen = _backends.select(spec.name, device)
    return "composed (see below)" if spec.composed and chosen == "reference" else chosen


def _status(spec: _backends.OpSpec, backend: str) -> str:
    """One line: what ``backend`` runs ``spec`` with, on which tensors, or why it cannot."""
    if backend == "reference":
        return "pure PyTorch, any device"
    parts = []
    for device in ("cpu", "cuda"):
        if not _backends.family_kernels(backend, device):
            continue
        kernel = spec.member(backend, device)
        if kernel is None:
            parts.append(f"{device} tensors: {spec.composed or 'no kernel (' + spec.missing(backend, device) + ')'}")
            continue
        reason = _backends.kernel_reason(kernel, device)
        if kernel == "reference" and backend != "reference":
            where = f"reference ({spec.name} has no Triton kernel; its GPU kernel is CUDA)"
        else:
            where = _KERNEL_WHERE[kernel]
        if device == "cpu" and backend == "gpu":
            where += ", Triton interpreter only"
        if reason is None and device == "cuda" and not torch.cuda.is_available():
            reason = "no GPU visible here"
        parts.append(f"{device} tensors: {where}" + ("" if reason is None else f" [not here: {reason}]"))
    return "; ".join(parts) if parts else "-"


def main(args=None) -> None:
    print(report())


if __name__ == "__main__":
    main()
