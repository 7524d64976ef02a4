"""One way to launch a Triton kernel from a host launcher: checked, on the tensors' device, traceable.

``torch.library.wrap_triton`` lets ``triton_op`` trace a launch into a graph (fake
tensors, ``torch.compile``, ``opcheck``). Under ``TRITON_INTERPRET=1`` it returns the
bare interpreted kernel instead, which would then run on fake tensors' (absent)
storage; a launch whose tensors are fake, functional wrappers (AOT tracing) or on
``meta`` only has to produce the outputs' shapes, which the launcher already
allocated, so it is skipped. A plain tensor (or Parameter) always launches.

Every launch is checked before it runs: its tensors share one device, and its grid
fits CUDA's limits (a launch past them fails on the GPU with an opaque error). A
compiled kernel runs under a guard for its tensors' device: Triton launches on the
*current* device, which on a multi-GPU host need not be the tensors' one.

:func:`recorded_launches` records launches instead of running them. On ``meta``
tensors that gives the grid and the arguments a launcher computes for any shape
without allocating it: the grid-limit tests and the compile-only tests
(``tests/kernels/compile_targets.py``) are built on it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import triton

# CUDA's grid limits (x, y, z) on every architecture since sm_30.
MAX_GRID = (2**31 - 1, 65535, 65535)

# Element types of the weights, activations and gradients the kernels compute on
# (fp32 accumulation throughout).
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Launch:
    """One recorded launch: ``kernel[grid](*args, **kwargs)``."""

    kernel: Any
    grid: tuple[int, ...]
    args: tuple
    kwargs: dict


_recorders: list[list[Launch]] = []


@contextlib.contextmanager
def recorded_launches() -> Iterator[list[Launch]]:
    """Record the launches made inside the block instead of running them (checks still run)."""
    launches: list[Launch] = []
    _recorders.append(launches)
    try:
        yield launches
    finally:
        _recorders.pop()


def _is_fake(value) -> bool:
    if not isinstance(value, torch.Tensor):
        return False
    return type(value) not in (torch.Tensor, torch.nn.Parameter) or value.device.type == "meta"


def check_grid(kernel, grid: tuple[int, ...]) -> None:
    """Raise if ``grid`` exceeds CUDA's limits (a long axis belongs on x, or in a loop)."""
    for axis, (size, limit) in enumerate(zip(grid, MAX_GRID)):
        if not 0 <= size <= limit:
            raise ValueError(
                f"{_name(kernel)}: grid {tuple(grid)} exceeds CUDA's limit on axis {'xyz'[axis]} "
                f"({size} > {limit}); the input is too large for this kernel"
            )


def tensor_device(kernel, *args, **kwargs) -> torch.device | None:
    """The one device of the tensor arguments (None if there are none); raise if they disagree."""
    devices = {a.device for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)}
    if len(devices) > 1:
        raise ValueError(f"{_name(kernel)}: tensors on several devices: {sorted(map(str, devices))}")
    return devices.pop() if devices else None


def launch(kernel, grid, *args, **kwargs) -> None:
    """``wrap_triton(kernel)[grid](*args, **kwargs)`` on the tensors' device, after the checks above.

    Interpreted, launches on fake or meta tensors are skipped. Compiled kernels always go
    through ``wrap_triton``: under tracing it records the launch in the graph
    (``torch.compile`` needs it), so nothing may be skipped there.
    """
    grid = tuple(grid)
    check_grid(kernel, grid)
    device = tensor_device(kernel, *args, **kwargs)
    if _recorders:
        _recorders[-1].append(Launch(kernel, grid, args, dict(kwargs)))
        return
    if interpreted() and (any(_is_fake(a) for a in args) or any(_is_fake(v) for v in kwargs.values())):
        return
    guard = torch.cuda.device(device) if device is not None and device.type == "cuda" else contextlib.nullcontext()
    with guard:
        torch.library.wrap_triton(kernel)[grid](*args, **kwargs)


def _name(kernel) -> str:
    return getattr(kernel, "__name__", None) or getattr(getattr(kernel, "fn", None), "__name__", repr(kernel))


@triton.jit
def _probe_kernel():
    pass


def interpreted() -> bool:
    """True when ``@triton.jit`` builds interpreted kernels (TRITON_INTERPRET=1 at import)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_probe_kernel, InterpretedFunction)


def triton_op(name: str, *, mutates_args):
    """``torch.library.triton_op``, or an opaque ``custom_op`` under the interpreter.

    ``triton_op`` decomposes into its body during AOT tracing so ``torch.compile``
    can see the kernels; an interpreted kernel cannot be traced (it reads real
    storage), so there the op stays opaque and its fake kernel is the same
    launcher, whose launches are skipped on fake tensors (see :func:`launch`).
    """
    if not interpreted():
        return torch.library.triton_op(name, mutates_args=mutates_args)

    def register(fn):
        op = torch.library.custom_op(name, fn, mutates_args=mutates_args)
        op.register_fake(fn)
        return op

    return register


def check_interpretable(**tensors: torch.Tensor) -> None:
    """Raise a clear error for what the interpreter cannot run (it has no bfloat16)."""
    if not interpreted():
        return
    for name, t in tensors.items():
        if t.dtype == torch.bfloat16:
            raise TypeError(
                f"{name} is bfloat16, which the Triton interpreter (TRITON_INTERPRET=1) cannot run; "
                "use a CUDA device, float32/float16, or another backend"
            )
