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
        chosen = ", ".join(f"{d} -> {_automatic(spec, d)}" for d in _devices()) if not _backends._requested(None) else "-"
        lines.append(f"{name:<{width}}  automatic: {chosen}")
        for backend in _backends.BACKENDS:
            lines.append(f"{'':<{width}}    {backend:<9} {_status(spec, backend)}")
        if spec.composed:
            lines.append(f"{'':<{width}}    (elsewhere: {spec.composed})")
    return "\n".join(lines)


def _automatic(spec: _backends.OpSpec, device: str) -> str:
    chosen = _backends.select(spec.name, device)
    return "composed (see below)" if spec.composed and chosen == "reference" else chosen


def _status(spec: _backends.OpSpec, backend: str) -> str:
    """One line: can ``backend`` run ``spec`` here, and if not, why not."""
    if backend not in spec.impls:
        return f"no: {_missing_reason(spec, backend)}"
    if backend == "reference":
        return "available (pure PyTorch, any device)"
    if backend == "cpp":
        reason = _backends.backend_reason("cpp", "cpu")
        return "available on CPU tensors" if reason is None else f"no: {reason}"
    gpu = torch.cuda.is_available()
    if backend == "triton":
        if _backends.triton_interpret():
            reason = _backends.backend_reason("triton", "cpu")
            return "available on CPU tensors (interpreted)" if reason is None else f"no: {reason}"
        if gpu:
            return "available on CUDA tensors"
        return "kernels ready; no GPU visible here (CPU tensors run them under TRITON_INTERPRET=1)"
    return "available on CUDA tensors" if gpu else "compiled; no GPU visible here to run it"


def _missing_reason(spec: _backends.OpSpec, backend: str) -> str:
    if backend == "cuda" and "triton" in spec.impls:
        return "its GPU kernel is the Triton one"
    if backend == "triton" and "cuda" in spec.impls:
        return "its GPU kernel is the CUDA one (csrc/cuda)"
    if backend in ("cpp", "cuda"):
        if _extension.extension() is None:
            return _extension.unavailable_reason()
        if backend == "cuda" and not _extension.has_cuda_kernels():
            return "_C was built without CUDA kernels"
        return "no kernel of its own"
    if backend == "triton":
        return _backends._triton_reason() or "no Triton kernel of its own"
    return "not implemented"


def main(args=None) -> None:
    print(report())


if __name__ == "__main__":
    main()
