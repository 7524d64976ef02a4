"""pack_masks / unpack_masks / set_mask_ / append_mask on every CPU backend, compared exactly."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from impresslearn import ops
from impresslearn.ops.bank import pack_masks_reference
from tests.conftest import CPU_BACKENDS

KS = (1, 7, 8, 9, 64, 250)
NS = (1, 13, 1000, 4099)  # not multiples of 8, 32 or any block size


def _masks(k, n, p=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(k, n, generator=g) < p


def test_reference_matches_the_bit_formula():
    masks = _masks(11, 5)
    bank = pack_masks_reference(masks)
    assert bank.shape == (2, 5) and bank.dtype == torch.uint8
    for m in range(16):
        for j in range(5):
            bit = (int(bank[m // 8, j]) >> (m % 8)) & 1
            assert bit == (int(masks[m, j]) if m < 11 else 0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("n", NS)
def test_pack_unpack_exact(backend, k, n):
    masks = _masks(k, n, seed=k * 7919 + n)
    bank = ops.pack_masks(masks, backend=backend)
    assert torch.equal(bank, pack_masks_reference(masks))
    assert torch.equal(ops.unpack_masks(bank, k, backend=backend), masks)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("k", KS)
def test_set_mask_replaces_one_mask_only(backend, k):
    n = 1001
    masks = _masks(k, n, seed=k)
    bank = ops.pack_masks(masks, backend="reference")
    new = _masks(1, n, p=0.5, seed=99)[0]
    index = k // 2
    ops.set_mask_(bank, index, new, backend=backend)
    expected = masks.clone()
    expected[index] = new
    assert torch.equal(bank, pack_masks_reference(expected))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_append_mask_grows_one_plane_every_eight(backend):
    n = 37
    masks = _masks(17, n, seed=3)
    bank = torch.zeros(0, n, dtype=torch.uint8)
    for i in range(17):
        bank = ops.append_mask(bank, i, masks[i], backend=backend)
        assert bank.shape == (i // 8 + 1, n)
    assert torch.equal(ops.unpack_masks(bank, 17), masks)


@settings(max_examples=30, deadline=None)
@given(k=st.integers(1, 40), n=st.integers(1, 300), seed=st.integers(0, 2**16))
def test_cpp_round_trip_random_shapes(k, n, seed):
    masks = _masks(k, n, p=0.5, seed=seed)
    bank = ops.pack_masks(masks, backend="cpp")
    assert torch.equal(bank, pack_masks_reference(masks))
    assert torch.equal(ops.unpack_masks(bank, k, backend="cpp"), masks)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bad_input_raises_before_the_kernel(backend):
    masks = _masks(9, 10)
    bank = ops.pack_masks(masks)
    with pytest.raises(TypeError, match="bool"):
        ops.pack_masks(masks.float(), backend=backend)
    with pytest.raises(ValueError, match="2-D"):
        ops.pack_masks(masks[0], backend=backend)
    with pytest.raises(ValueError, match="contiguous"):
        ops.pack_masks(masks.t(), backend=backend)
    with pytest.raises(TypeError, match="uint8"):
        ops.unpack_masks(bank.int(), 9, backend=backend)
    with pytest.raises(ValueError, match="planes"):
        ops.unpack_masks(bank, 17, backend=backend)
    with pytest.raises(ValueError, match="elements"):
        ops.set_mask_(bank, 0, masks[0, :5].contiguous(), backend=backend)
    with pytest.raises(IndexError, match="out of range"):
        ops.set_mask_(bank, 16, masks[0], backend=backend)
    with pytest.raises(TypeError, match="bool"):
        ops.set_mask_(bank, 0, masks[0].float(), backend=backend)


def test_wrong_device_is_named():
    bank = ops.pack_masks(_masks(3, 4))
    with pytest.raises(ValueError, match="one device"):
        ops.set_mask_(bank, 0, torch.ones(4, dtype=torch.bool, device="meta"))


def test_unknown_and_unavailable_backends_raise():
    masks = _masks(3, 4)
    with pytest.raises(ValueError, match="unknown backend"):
        ops.pack_masks(masks, backend="fortran")
    with pytest.raises(ops_errors(), match="cuda"):
        ops.pack_masks(masks.to("meta"), backend="cuda")  # the gpu family runs on CPU only interpreted


def ops_errors():
    from impresslearn import BackendUnavailable

    return BackendUnavailable


# ----------------------------------------------------------------------------- torch.library


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "reference"])
def test_opcheck(backend):
    ops.load_triton_ops()  # registered lazily, at first use; torch.ops.* needs them now
    masks = _masks(9, 13)
    bank = pack_masks_reference(masks)
    torch.library.opcheck(getattr(torch.ops.impresslearn, f"pack_masks_{backend}"), (masks,))
    torch.library.opcheck(getattr(torch.ops.impresslearn, f"unpack_masks_{backend}"), (bank, 9))
    torch.library.opcheck(getattr(torch.ops.impresslearn, f"set_mask_{backend}"), (bank.clone(), 3, masks[0].clone()))
