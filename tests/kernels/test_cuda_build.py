"""The CUDA build holds code for every GPU it claims to support (checked with cuobjdump, no GPU needed).

A build with only sm_90 code fails on an A100 or an RTX card at the first launch ("no
kernel image is available"). setup.py defaults TORCH_CUDA_ARCH_LIST to
DEFAULT_CUDA_ARCHS; the built library must hold exactly the SASS and PTX that the
list in force asks for, and report the same list at run time (``cuda_archs``).
"""

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import cuda_archs  # noqa: E402

from impresslearn import _extension  # noqa: E402


def test_default_arch_list_covers_ampere_ada_hopper_and_newer_by_ptx():
    want = cuda_archs.requested(cuda_archs.default_arch_list())
    assert {80, 86, 89, 90} <= set(want["sass"])
    assert want["ptx"] == [max(want["sass"])]  # devices newer than the newest SASS JIT the PTX


def test_arch_list_parsing():
    assert cuda_archs.requested("8.0;8.6 9.0+PTX") == {"sass": [80, 86, 90], "ptx": [90]}
    assert cuda_archs.requested("9.0a") == {"sass": [90], "ptx": []}
    with pytest.raises(ValueError, match="not like"):
        cuda_archs.requested("sm_90")


@pytest.mark.skipif(not _extension.has_cuda_kernels(), reason="impresslearn._C was built without CUDA kernels")
def test_built_library_holds_the_requested_architectures():
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST") or cuda_archs.default_arch_list()
    found = cuda_archs.archs_in(cuda_archs.library())
    want = cuda_archs.requested(arch_list)
    assert found == want, (
        f"_C holds {cuda_archs.describe(found)} but TORCH_CUDA_ARCH_LIST={arch_list!r} asks for "
        f"{cuda_archs.describe(want)}: rebuild (make setup)"
    )
    # what the library reports at run time (nvcc's __CUDA_ARCH_LIST__) is the same list
    assert list(torch.ops.impresslearn.cuda_archs()) == want["sass"]


def test_cuda_kernels_are_refused_on_a_gpu_the_build_has_no_code_for(monkeypatch):
    # a GPU host whose device the build cannot run: the reason comes from the CUDA
    # runtime (csrc/cuda cuda_kernel_reason); stood in for here, as there is no GPU
    from impresslearn import _backends

    reason = "impresslearn._C was built for compute capabilities 9.0 (TORCH_CUDA_ARCH_LIST), which cuda:1 (8.6) cannot run"
    asked = []
    monkeypatch.setattr(_extension, "has_cuda_kernels", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_extension, "cuda_device_reason", lambda index: asked.append(index) or reason)
    assert _backends.kernel_reason("cuda", "cuda:1") == reason
    assert asked == [1]
    monkeypatch.setattr(_extension, "cuda_device_reason", lambda index: None)
    assert _backends.kernel_reason("cuda", "cuda:1") is None


def test_no_gpu_visible_asks_nothing_of_the_cuda_runtime(monkeypatch):
    from impresslearn import _backends

    monkeypatch.setattr(_extension, "has_cuda_kernels", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(_extension, "cuda_device_reason", lambda index: pytest.fail("asked the CUDA runtime"))
    assert _backends.kernel_reason("cuda", "cuda") is None
