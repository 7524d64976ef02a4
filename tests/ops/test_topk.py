"""topk_mask / topk_mask_into_ on the reference and cpp backends, compared exactly.

The oracle is numpy's stable argsort of -|scores| (independent of torch.sort, which
the reference uses): the k first indices, so ties go to the lower flat index.
(The CUDA backend is tested on a GPU; triton has no topk.)
"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from impresslearn import BackendUnavailable, ops
from impresslearn.ops.bank import pack_masks_reference, unpack_masks_reference

BACKENDS = ("reference", "cpp")
NS = (1, 13, 1000, 4099)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _oracle(scores: torch.Tensor, k: int) -> torch.Tensor:
    absval = scores.reshape(-1).abs().double().numpy()  # exact for every dtype here
    order = np.argsort(-absval, kind="stable")
    mask = np.zeros(absval.shape[0], dtype=bool)
    mask[order[:k]] = True
    return torch.from_numpy(mask).view(scores.shape)


def _scores(kind: str, n: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "normal":
        s = torch.randn(n, generator=g)
    elif kind == "coarse":  # few distinct values, both signs: ties everywhere
        s = torch.randint(-3, 4, (n,), generator=g).float() * 0.5
    elif kind == "equal":
        s = torch.full((n,), -0.75)
    elif kind == "zeros":  # -0.0 and 0.0 tie; a few positives above them
        s = torch.tensor([(-0.0, 0.0, 1e-3)[j % 3] for j in range(n)])
    elif kind == "negative":
        s = -torch.rand(n, generator=g) - 0.1
    else:
        raise ValueError(kind)
    return s.to(dtype)


KINDS = ("normal", "coarse", "equal", "zeros", "negative")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", NS)
def test_mask_equals_stable_sort_oracle(backend, dtype, kind, n):
    scores = _scores(kind, n, dtype, seed=n)
    for k in sorted({1, max(1, n // 10), (n + 1) // 2, n}):
        mask = ops.topk_mask(scores, k, backend=backend)
        assert mask.dtype == torch.bool and mask.shape == scores.shape
        assert int(mask.sum()) == k
        assert torch.equal(mask, _oracle(scores, k)), (kind, k)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shape_is_kept(backend):
    scores = torch.randn(6, 5, 3, 3)
    mask = ops.topk_mask(scores, 27, backend=backend)
    assert mask.shape == (6, 5, 3, 3)
    assert torch.equal(mask, _oracle(scores, 27))


@pytest.mark.parametrize("dtype", DTYPES)
def test_fp32_keys_differing_in_low_bits_only(dtype):
    """Scores that share the fp32 kernel's first radix digit: the second digit decides."""
    j = torch.arange(50_000)
    scores = (1.0 + ((j * 7919) % 97).float() * 2.0**-23).to(dtype)
    for k in (1, 500, 25_000, 49_999):
        assert torch.equal(ops.topk_mask(scores, k, backend="cpp"), _oracle(scores, k))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("index", (0, 5, 8, 15))
def test_into_writes_one_bit_and_leaves_the_others(backend, index):
    n = 4099
    g = torch.Generator().manual_seed(index)
    bank = torch.randint(0, 256, (2, n), dtype=torch.uint8, generator=g)
    before = unpack_masks_reference(bank, 16).clone()
    scores = _scores("coarse", n, torch.float32, seed=index)
    out = ops.topk_mask_into_(bank, index, scores, 400, backend=backend)
    assert out is bank
    after = unpack_masks_reference(bank, 16)
    expected = before.clone()
    expected[index] = _oracle(scores, 400)
    assert torch.equal(after, expected)


def test_masks_identical_for_one_and_many_threads():
    n = 300_007  # large enough that the kernel splits it across threads
    scores = _scores("coarse", n, torch.float32, seed=1) + 1e-7 * torch.randn(n).round()
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            bank = torch.zeros(1, n, dtype=torch.uint8)
            ops.topk_mask_into_(bank, 2, scores, 123_457, backend="cpp")
            results.append((ops.topk_mask(scores, 123_457, backend="cpp"), bank))
    finally:
        torch.set_num_threads(before)
    want = _oracle(scores, 123_457)
    for mask, bank in results:
        assert torch.equal(mask, want)
        assert torch.equal(bank, pack_masks_reference(torch.stack([torch.zeros_like(want)] * 2 + [want])))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 400), data=st.data(), levels=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_cpp_random_ties(n, data, levels, seed):
    k = data.draw(st.integers(1, n))
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(-levels, levels + 1, (n,), generator=g).float()
    assert torch.equal(ops.topk_mask(scores, k, backend="cpp"), _oracle(scores, k))


def test_edge_popup_keeps_round_density():
    weight = torch.randn(1001)
    scores = torch.randn(1001, requires_grad=True)
    out = ops.edge_popup_weight(weight, scores, 0.1, backend="cpp")
    assert int((out != 0).sum()) == ops.keep_count(1001, 0.1) == 100
    out.sum().backward()
    torch.testing.assert_close(scores.grad, weight * torch.sign(scores.detach()))


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_raises_before_the_kernel(backend):
    scores = torch.randn(10)
    bank = torch.zeros(2, 10, dtype=torch.uint8)
    for k in (0, 11, -1):
        with pytest.raises(ValueError, match="k must be in"):
            ops.topk_mask(scores, k, backend=backend)
    with pytest.raises(TypeError, match="k must be an int"):
        ops.topk_mask(scores, True, backend=backend)
    with pytest.raises(TypeError, match="k must be an int"):
        ops.topk_mask(scores, 2.0, backend=backend)
    with pytest.raises(TypeError, match="scores must have dtype"):
        ops.topk_mask(scores.int(), 3, backend=backend)
    with pytest.raises(ValueError, match="contiguous"):
        ops.topk_mask(torch.randn(10, 2)[:, 0], 3, backend=backend)
    with pytest.raises(ValueError, match="at least one"):
        ops.topk_mask(torch.randn(0), 1, backend=backend)
    with pytest.raises(IndexError, match="out of range"):
        ops.topk_mask_into_(bank, 16, scores, 3, backend=backend)
    with pytest.raises(ValueError, match="covers 10 weights"):
        ops.topk_mask_into_(bank, 0, torch.randn(11), 3, backend=backend)
    with pytest.raises(TypeError, match="uint8"):
        ops.topk_mask_into_(bank.int(), 0, scores, 3, backend=backend)
    for density in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="density"):
            ops.edge_popup_weight(scores, scores, density, backend=backend)
    with pytest.raises(TypeError, match="density"):
        ops.edge_popup_weight(scores, scores, float("nan"), backend=backend)


def test_cpp_refuses_float64_explicitly_and_reference_serves_it():
    scores = torch.randn(10, dtype=torch.float64)
    with pytest.raises(BackendUnavailable, match="float64"):
        ops.topk_mask(scores, 3, backend="cpp")
    assert torch.equal(ops.topk_mask(scores, 3), _oracle(scores, 3))


def test_cpp_kernel_checks_memory_safety_itself():
    scores = torch.randn(10)
    with pytest.raises(RuntimeError, match="1 <= k"):
        torch.ops.impresslearn.topk_mask_cpp(scores, 11)
    with pytest.raises(RuntimeError, match="index out of range"):
        torch.ops.impresslearn.topk_mask_into_cpp(torch.zeros(1, 10, dtype=torch.uint8), 8, scores, 3)
    with pytest.raises(RuntimeError, match="covering the scores"):
        torch.ops.impresslearn.topk_mask_into_cpp(torch.zeros(1, 9, dtype=torch.uint8), 0, scores, 3)


# ----------------------------------------------------------------------------- torch.library


@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck(dtype):
    scores = _scores("coarse", 37, dtype)
    torch.library.opcheck(torch.ops.impresslearn.topk_mask_cpp.default, (scores, 5))
    bank = torch.randint(0, 256, (2, 37), dtype=torch.uint8)
    torch.library.opcheck(torch.ops.impresslearn.topk_mask_into_cpp.default, (bank, 9, scores, 5))
