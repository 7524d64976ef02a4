"""``python -m impresslearn.info``: versions, and for every op each backend, available or why not."""

from __future__ import annotations

import platform

import torch

from . import _backends, _extension, ops  # noqa: F401  (importing ops registers every op)


def _devices() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    return devices


def report() -> str:
    lines = [
        f"impresslearn {__import__('impresslearn').__version__}",
        f"python {platform.python_version()}  torch {torch.__version__}  "
        f"cuda {torch.version.cuda or '-'}  threads {torch.get_num_threads()}",
        f"triton: {_backends._triton_reason() or 'importable'}"
        + (" (TRITON_INTERPRET=1: Triton runs on CPU tensors)" if _backends.triton_interpret() else ""),
        f"_C: {_extension.unavailable_reason() or 'loaded'}"
        + (
            f" (cpu kernels: {'yes' if _extension.has_cpu_kernels() else 'no'}, "
            f"cuda kernels: {'yes' if _extension.has_cuda_kernels() else 'no'})"
            if _extension.extension() is not None
            else ""
        ),
        f"GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none visible'}",
        f"{_backends.ENV_VAR}={__import__('os').environ.get(_backends.ENV_VAR, '') or '(unset: automatic)'}",
        "",
    ]
    width = max(len(name) for name in _backends.REGISTRY)
    for name, spec in sorted(_backends.REGISTRY.items()):
        chosen = ", ".join(f"{d} -> {_backends.select(name, d) if not _backends._requested(None) else '-'}" for d in _devices())
        lines.append(f"{name:<{width}}  automatic: {chosen}")
        for backend in _backends.BACKENDS:
            if backend not in spec.impls:
                why = _missing_reason(backend)
                lines.append(f"{'':<{width}}    {backend:<9} no: {why}")
                continue
            device = "cuda" if backend in ("cuda",) else "cpu"
            if backend == "triton" and not _backends.triton_interpret():
                device = "cuda"
            reason = _backends.backend_reason(backend, device)
            status = f"available on {device}" if reason is None else f"not here: {reason}"
            lines.append(f"{'':<{width}}    {backend:<9} {status}")
    return "\n".join(lines)


def _missing_reason(backend: str) -> str:
    if backend in ("cpp", "cuda"):
        if _extension.extension() is None:
            return _extension.unavailable_reason()
        if backend == "cuda" and not _extension.has_cuda_kernels():
            return "_C was built without CUDA kernels"
        return "no kernel for this op in _C"
    if backend == "triton":
        return _backends._triton_reason() or "no Triton kernel for this op"
    return "not implemented"


def main(args=None) -> None:
    print(report())


if __name__ == "__main__":
    main()
