"""CUDA topk_mask (csrc/cuda/topk.cu) against the stable-sort reference, exactly.

GPU only: the kernels compile here (setup.py with IMPRESSLEARN_BUILD_CUDA=1) but no
CUDA device is present in CI, so every test skips with the reason when there is none.
"""

import pytest
import torch

from impresslearn import ops
from impresslearn.ops.bank import pack_masks_reference, unpack_masks_reference
from impresslearn.ops.topk import topk_mask_reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _scores(n, dtype, kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "normal":
        s = torch.randn(n, generator=g)
    elif kind == "ties":  # few distinct magnitudes: the threshold value spans many tiles
        s = torch.randint(-4, 5, (n,), generator=g).float()
    elif kind == "signed_zeros":
        s = torch.zeros(n)
        s[torch.rand(n, generator=g) < 0.5] = -0.0
        s[::7] = 1.0
    else:  # "constant": every score ties
        s = torch.full((n,), 0.5)
    return s.to(dtype).cuda()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ("normal", "ties", "signed_zeros", "constant"))
@pytest.mark.parametrize("n", (1, 13, 4095, 4097, 100_003, 3_000_001))
def test_topk_mask_matches_reference(n, kind, dtype):
    scores = _scores(n, dtype, kind, seed=n)
    for k in sorted({1, max(1, n // 10), max(1, n // 2), n}):
        got = ops.topk_mask(scores, k, backend="cuda")
        assert int(got.sum()) == k
        assert torch.equal(got.cpu(), topk_mask_reference(scores.cpu(), k)), (n, kind, k)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("index", (0, 5, 13))
def test_topk_mask_into_sets_one_bit_only(index, dtype):
    n = 50_001
    g = torch.Generator().manual_seed(index)
    masks = torch.rand(16, n, generator=g) < 0.5
    bank = pack_masks_reference(masks).cuda()
    scores = _scores(n, dtype, "ties", seed=index)
    k = n // 10
    ops.topk_mask_into_(bank, index, scores, k, backend="cuda")
    expected = masks.clone()
    expected[index] = topk_mask_reference(scores.cpu(), k)
    assert torch.equal(unpack_masks_reference(bank.cpu(), 16), expected)


def test_opcheck():
    scores = _scores(1000, torch.float32, "ties")
    bank = torch.zeros(2, 1000, dtype=torch.uint8, device="cuda")
    torch.library.opcheck(torch.ops.impresslearn.topk_mask_cuda, (scores, 100))
    torch.library.opcheck(torch.ops.impresslearn.topk_mask_into_cuda, (bank, 9, scores, 100))


def test_the_build_holds_code_this_gpu_runs():
    # the CUDA runtime loads a kernel of the build on each visible device (TORCH_CUDA_ARCH_LIST)
    from impresslearn import _backends

    for index in range(torch.cuda.device_count()):
        assert torch.ops.impresslearn.cuda_kernel_reason(index) == ""
        assert _backends.kernel_reason("cuda", f"cuda:{index}") is None
    major, minor = torch.cuda.get_device_capability()
    archs = list(torch.ops.impresslearn.cuda_archs())
    assert any(a // 10 == major and a % 10 <= minor for a in archs) or max(archs) <= 10 * major + minor


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_topk_runs_on_the_scores_device_not_the_current_one():
    torch.cuda.set_device(0)
    scores = _scores(100_003, torch.float32, "ties").to("cuda:1")
    got = ops.topk_mask(scores, 10_000, backend="cuda")
    assert got.device == torch.device("cuda:1")
    assert torch.equal(got.cpu(), topk_mask_reference(scores.cpu(), 10_000))
