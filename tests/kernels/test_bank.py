"""Triton bank kernels (kernels/bank.py) against the reference, bit-exact.

On CPU tensors under TRITON_INTERPRET=1 where there is no GPU, compiled on CUDA tensors
where there is one (tests/conftest.py). Mask indices 8-15 put the plane argument at 1,
which Triton specialises into a constant when compiled (it once failed to compile there).
"""

import pytest
import torch

from impresslearn import ops
from impresslearn.ops.bank import pack_masks_reference, unpack_masks_reference
from impresslearn.ops.combine import TOLERANCES
from tests.conftest import TRITON_DEVICE, TRITON_ON_CPU

pytest.importorskip("impresslearn.kernels.bank")

gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or TRITON_ON_CPU, reason="needs a CUDA device and compiled kernels (TRITON_INTERPRET=0)"
)
pytestmark = [] if TRITON_ON_CPU else [pytest.mark.gpu]


def _masks(k, n, seed=0, device=TRITON_DEVICE):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(k, n, generator=g) < 0.4).to(device)


@pytest.mark.parametrize("k,n", [(1, 1), (8, 16), (9, 1), (17, 1001)])
def test_pack_and_unpack_are_the_reference(k, n):
    masks = _masks(k, n, seed=k + n)
    bank = ops.pack_masks(masks, backend="triton")
    assert torch.equal(bank.cpu(), pack_masks_reference(masks.cpu()))
    assert torch.equal(ops.unpack_masks(bank, k, backend="triton").cpu(), masks.cpu())


@pytest.mark.parametrize("n", (1, 16, 1001))
def test_set_mask_on_every_plane_and_bit(n):
    # indices 8-15 (plane 1, a constexpr when compiled) and 16+ (plane 2), other bits intact
    masks = _masks(20, n, seed=n)
    bank = pack_masks_reference(masks.cpu()).to(TRITON_DEVICE)
    expected = masks.clone()
    for index in (0, 1, 7, 8, 9, 15, 16, 19):
        new = _masks(1, n, seed=100 + index)[0]
        ops.set_mask_(bank, index, new, backend="triton")
        expected[index] = new
    assert torch.equal(unpack_masks_reference(bank.cpu(), 20), expected.cpu())


def test_append_mask_grows_a_plane_every_eight():
    n = 37
    masks = _masks(17, n, seed=1)
    bank = pack_masks_reference(masks[:1].cpu()).to(TRITON_DEVICE)
    for i in range(1, 17):
        bank = ops.append_mask(bank, i, masks[i], backend="triton")
    assert bank.shape == (3, n)
    assert torch.equal(bank.cpu(), pack_masks_reference(masks.cpu()))


@gpu
def test_gpu_bank_past_the_old_grid_limit():
    # 65535 blocks of 1024 weights on grid axis y was the old cap: 67,107,840 weights
    n = 67_107_840 + 4099
    masks = _masks(9, n, device="cuda")
    bank = ops.pack_masks(masks, backend="triton")
    assert torch.equal(bank, pack_masks_reference(masks))
    assert torch.equal(ops.unpack_masks(bank, 9, backend="triton"), masks)


@gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_gpu_kernels_run_on_the_tensors_device_not_the_current_one():
    torch.cuda.set_device(0)
    masks = _masks(9, 10_001, device="cuda:1")
    bank = ops.pack_masks(masks, backend="triton")
    assert bank.device == torch.device("cuda:1")
    assert torch.equal(bank.cpu(), pack_masks_reference(masks.cpu()))
    weight, alpha = torch.randn(10_001, device="cuda:1"), torch.randn(9, device="cuda:1")
    expected = weight.double() * (alpha.double() @ masks.double())
    out = ops.combine_masks(weight, bank, alpha, backend="triton")
    assert out.device == torch.device("cuda:1")
    torch.testing.assert_close(out.double(), expected, **TOLERANCES[torch.float32])
