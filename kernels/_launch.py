"""One way to launch a Triton kernel from a host launcher, traceable and interpretable.

``torch.library.wrap_triton`` lets ``triton_op`` trace a launch into a graph (fake
tensors, ``torch.compile``, ``opcheck``). Under ``TRITON_INTERPRET=1`` it returns the
bare interpreted kernel instead, which would then run on fake tensors' (absent)
storage; a launch whose tensors are fake, functional wrappers (AOT tracing) or on
``meta`` only has to produce the outputs' shapes, which the launcher already
allocated, so it is skipped. A plain tensor (or Parameter) always launches.
"""

from __future__ import annotations

import torch
import triton


def _is_fake(value) -> bool:
    if not isinstance(value, torch.Tensor):
        return False
    return type(value) not in (torch.Tensor, torch.nn.Parameter) or value.device.type == "meta"


def launch(kernel, grid, *args, **kwargs) -> None:
    """``wrap_triton(kernel)[grid](*args, **kwargs)``; interpreted, skipped for fake or meta tensors.

    Compiled kernels always go through ``wrap_triton``: under tracing it records the
    launch in the graph (``torch.compile`` needs it), so nothing may be skipped there.
    """
    if interpreted() and (any(_is_fake(a) for a in args) or any(_is_fake(v) for v in kwargs.values())):
        return
    torch.library.wrap_triton(kernel)[grid](*args, **kwargs)


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
