"""Test set-up shared by every test module.

Triton kernels run on CPU tensors only when TRITON_INTERPRET=1 is set before they
are loaded, so it is decided here, before anything imports impresslearn:

* no CUDA device: TRITON_INTERPRET=1, the kernels are interpreted on CPU tensors;
* a CUDA device: TRITON_INTERPRET=0, so the Triton tests (``pytest -m gpu``, and
  tests/kernels on CUDA tensors) run the compiled kernels on the GPU, which is what
  they are for; the interpreter would run them in numpy (and refuse bfloat16).

An exported TRITON_INTERPRET wins either way (``TRITON_INTERPRET=1 pytest`` runs the
interpreter on a GPU host too).
"""

import os

import torch

if "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "0" if torch.cuda.is_available() else "1"
os.environ.pop("IMPRESSLEARN_BACKEND", None)  # tests choose backends explicitly

import pytest  # noqa: E402

# True when the Triton kernels run interpreted on CPU tensors in this test run.
TRITON_ON_CPU = os.environ["TRITON_INTERPRET"] == "1"
# The device the Triton kernel tests put their tensors on.
TRITON_DEVICE = "cpu" if TRITON_ON_CPU else "cuda"

# Backends every CPU test compares against the reference: the build must provide them.
# Triton runs on CPU tensors only interpreted; compiled, its tests run on the GPU.
CPU_BACKENDS = ("reference", "cpp", "triton") if TRITON_ON_CPU else ("reference", "cpp")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
