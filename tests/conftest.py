"""Test set-up shared by every test module.

Triton kernels run on CPU tensors only when TRITON_INTERPRET=1 is set before
triton is imported, so it is set here, before anything imports impresslearn.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.pop("IMPRESSLEARN_BACKEND", None)  # tests choose backends explicitly

import pytest  # noqa: E402
import torch  # noqa: E402

# Backends every CPU test compares against the reference: the build must provide them.
CPU_BACKENDS = ("reference", "cpp", "triton")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
