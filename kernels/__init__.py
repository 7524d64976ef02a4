"""Triton kernels of impresslearn, installed as ``impresslearn.kernels``.

Each module holds the ``@triton.jit`` kernels of one op and their host launchers;
the ops in ``impresslearn.ops`` register the launchers with ``torch.library`` and
hold the reference they are tested against. Run on CPU tensors with
``TRITON_INTERPRET=1`` set before import.
"""
