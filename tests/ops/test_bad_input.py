"""Bad input to the ops' public functions is refused before any kernel runs, the same on every backend.

Non-finite numbers: ``alpha`` and ``scores`` with a NaN or an infinity used to pass, and
the backends then disagreed (a NaN alpha gave 37 NaN weights on the reference, 10 on
cpp; NaN scores were ranked first although documented as refused). Integer arguments:
any ``numbers.Integral`` (numpy's too) is accepted, floats and bools are refused with a
message naming the argument (``unpack_masks(bank, 8.0)`` used to fail inside the kernel,
numpy integers were refused as "must be an int").
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from impresslearn import ops
from impresslearn.ops import _checks
from tests.conftest import CPU_BACKENDS

TOPK_BACKENDS = ("reference", "cpp")  # no Triton top-k; CUDA's is tested on a GPU
FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
NON_FINITE = (math.nan, math.inf, -math.inf)


def _problem(k=9, n=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(k, n, generator=g) < 0.3
    return masks, ops.pack_masks(masks, backend="reference"), torch.randn(n, generator=g), torch.rand(k, generator=g)


# ----------------------------------------------------------------------------- non-finite values


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=1, max_size=300),
    dtype=st.sampled_from(FLOATS),
)
def test_check_finite_agrees_with_isfinite(values, dtype):
    """The one-pass aminmax check refuses exactly what isfinite() flags, wherever it sits in the vector."""
    t = torch.tensor(values, dtype=torch.float32).to(dtype)  # fp16/bf16 may overflow to inf: also refused
    if bool(torch.isfinite(t).all()):
        _checks.check_finite("t", t)
    else:
        with pytest.raises(ValueError, match=r"t must be finite: \d+ of \d+ values are NaN or infinite"):
            _checks.check_finite("t", t)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@settings(max_examples=15, deadline=None)
@given(position=st.integers(0, 8), bad=st.sampled_from(NON_FINITE), dtype=st.sampled_from((torch.float32, torch.float64)))
def test_non_finite_alpha_is_refused_by_combine(backend, position, bad, dtype):
    _, bank, weight, alpha = _problem()
    alpha = alpha.to(dtype)
    alpha[position] = bad
    with pytest.raises(ValueError, match=rf"alpha must be finite: 1 of 9 .*flat index {position}"):
        ops.combine_masks(weight, bank, alpha, backend=backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("bad", NON_FINITE)
def test_non_finite_alpha_is_refused_by_linear_and_conv(backend, bad):
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(4, 6, generator=g)
    bank = ops.pack_masks(torch.rand(3, 24, generator=g) < 0.5)
    alpha = torch.tensor([0.3, bad, 0.2])
    with pytest.raises(ValueError, match="alpha must be finite"):
        ops.impress_linear(torch.randn(2, 6), weight, bank, alpha, backend=backend)
    with pytest.raises(ValueError, match="alpha must be finite"):
        ops.impress_conv2d(torch.randn(1, 6, 3, 3), weight.view(4, 6, 1, 1), bank, alpha, backend=backend)


@pytest.mark.parametrize("backend", TOPK_BACKENDS)
@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 3000),
    data=st.data(),
    bad=st.sampled_from(NON_FINITE),
    dtype=st.sampled_from((torch.float32, torch.float16, torch.bfloat16)),
)
def test_non_finite_scores_are_refused_by_topk(backend, n, data, bad, dtype):
    position = data.draw(st.integers(0, n - 1))
    k = data.draw(st.integers(1, n))
    scores = torch.randn(n, generator=torch.Generator().manual_seed(n)).to(dtype)
    scores[position] = bad
    with pytest.raises(ValueError, match=rf"scores must be finite: 1 of {n} .*flat index {position}"):
        ops.topk_mask(scores, k, backend=backend)
    bank = torch.zeros(1, n, dtype=torch.uint8)
    with pytest.raises(ValueError, match="scores must be finite"):
        ops.topk_mask_into_(bank, 0, scores, k, backend=backend)
    assert not bank.any()  # nothing was written
    with pytest.raises(ValueError, match="scores must be finite"):
        ops.edge_popup_weight(torch.randn(n), scores, 0.5, backend=backend)


def test_finite_extremes_are_accepted_and_agree_across_backends():
    """The largest finite values are not mistaken for infinities (fp16 max, fp32 max)."""
    for dtype in (torch.float16, torch.float32):
        top = torch.finfo(dtype).max
        scores = torch.tensor([1.0, -top, 0.5, top, 2.0], dtype=dtype)
        masks = [ops.topk_mask(scores, 2, backend=b) for b in TOPK_BACKENDS]
        assert all(torch.equal(m, torch.tensor([False, True, False, True, False])) for m in masks)


def test_meta_tensors_are_shape_checked_only():
    """A meta tensor has no values: the finiteness check leaves it to the shape checks."""
    _checks.check_finite("alpha", torch.empty(3, device="meta"))


def test_finiteness_is_read_on_the_host_on_cpu_and_asserted_on_the_device_on_cuda(monkeypatch):
    """A host read per op call stalled the CUDA stream; there the check is a device-side assert
    unless IMPRESSLEARN_SYNC_CHECKS=1 asks for the named ValueError (debugging)."""
    monkeypatch.delenv(_checks.SYNC_CHECKS_ENV, raising=False)
    assert _checks.reads_values_on_host(torch.device("cpu"))
    assert not _checks.reads_values_on_host(torch.device("cuda", 0))
    monkeypatch.setenv(_checks.SYNC_CHECKS_ENV, "1")
    assert _checks.reads_values_on_host(torch.device("cuda", 0))


def test_the_device_side_finiteness_check_reads_nothing_on_the_host(monkeypatch):
    """The path CUDA tensors take, run on CPU tensors with every Python-level host read made to fail."""
    good, bad = torch.rand(9), torch.rand(9)
    bad[4] = math.nan
    monkeypatch.setattr(_checks, "reads_values_on_host", lambda device: False)  # as on CUDA by default
    for read in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, read, lambda *a, _read=read: pytest.fail(f"host read: Tensor.{_read}"))
    _checks.check_finite("alpha", good)
    with pytest.raises(RuntimeError, match="alpha must be finite"):  # _assert_async raises at once on CPU
        _checks.check_finite("alpha", bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_finiteness_check_does_not_synchronise_cuda(monkeypatch):
    monkeypatch.delenv(_checks.SYNC_CHECKS_ENV, raising=False)
    alpha = torch.rand(250, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # a synchronising call raises
    try:
        _checks.check_finite("alpha", alpha)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    monkeypatch.setenv(_checks.SYNC_CHECKS_ENV, "1")
    alpha[3] = math.inf
    with pytest.raises(ValueError, match="alpha must be finite: 1 of 250"):
        _checks.check_finite("alpha", alpha)


# ----------------------------------------------------------------------------- integer arguments

# Every public function of impresslearn.ops that takes an integer, as (argument name, call with it).
def _integer_calls():
    masks, bank, weight, alpha = _problem()
    scores = torch.randn(37)
    conv_w = torch.randn(4, 2, 1, 1)
    conv_bank = ops.pack_masks(torch.ones(1, 8, dtype=torch.bool))
    conv_x = torch.randn(1, 2, 3, 3)
    return {
        "unpack_masks.num_masks": ("num_masks", lambda v: ops.unpack_masks(bank, v)),
        "set_mask_.index": ("mask index", lambda v: ops.set_mask_(bank.clone(), v, masks[0])),
        "append_mask.num_masks": ("num_masks", lambda v: ops.append_mask(bank.clone(), v, masks[0])),
        "grow_bank.num_masks": ("num_masks", lambda v: ops.grow_bank(bank.clone(), v)),
        "combine_masks_alpha_grad.num_masks": ("num_masks", lambda v: ops.combine_masks_alpha_grad(weight, weight, bank, v)),
        "topk_mask.k": ("k", lambda v: ops.topk_mask(scores, v)),
        "topk_mask_into_.index": ("mask index", lambda v: ops.topk_mask_into_(bank.clone(), v, scores, 5)),
        "topk_mask_into_.k": ("k", lambda v: ops.topk_mask_into_(bank.clone(), 3, scores, v)),
        "keep_count.n": ("n", lambda v: ops.keep_count(v, 0.5)),
        "num_planes.num_masks": ("num_masks", lambda v: ops.num_planes(v)),
        "impress_conv2d.groups": ("groups", lambda v: ops.impress_conv2d(conv_x, conv_w, conv_bank, torch.ones(1), groups=v)),
        "impress_conv2d.stride": ("stride", lambda v: ops.impress_conv2d(conv_x, conv_w, conv_bank, torch.ones(1), stride=v)),
        "impress_conv2d.padding": ("padding", lambda v: ops.impress_conv2d(conv_x, conv_w, conv_bank, torch.ones(1), padding=(v, 0))),
    }


CALLS = _integer_calls()
# a value each call accepts, so the good/bad cases differ in type only
GOOD = {
    "unpack_masks.num_masks": 9, "set_mask_.index": 2, "append_mask.num_masks": 9, "grow_bank.num_masks": 9,
    "combine_masks_alpha_grad.num_masks": 9, "topk_mask.k": 5, "topk_mask_into_.index": 3, "topk_mask_into_.k": 5,
    "keep_count.n": 40, "num_planes.num_masks": 9, "impress_conv2d.groups": 1, "impress_conv2d.stride": 1,
    "impress_conv2d.padding": 1,
}

NUMPY_INTS = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("np_int", NUMPY_INTS, ids=lambda t: t.__name__)
def test_numpy_integers_are_accepted_with_the_same_result(call, np_int):
    _, fn = CALLS[call]
    expected = fn(GOOD[call])
    got = fn(np_int(GOOD[call]))
    if isinstance(expected, torch.Tensor):
        assert got.dtype == expected.dtype and torch.equal(got, expected)
    else:
        assert got == expected


def _bad_integers():
    """Values that are not integers: floats (integral ones too), bools, numpy floats and bools, others."""
    return st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(0, 20).map(float),  # 8.0 passed unpack_masks' check and failed in the kernel
        st.booleans(),
        st.sampled_from([np.float32(9.0), np.float64(2.0), np.bool_(True), "9", None, torch.tensor(9), 9 + 0j]),
    )


@pytest.mark.parametrize("call", sorted(CALLS))
@settings(max_examples=20, deadline=None)
@given(value=_bad_integers())
def test_non_integers_are_refused_naming_the_argument(call, value):
    name, fn = CALLS[call]
    with pytest.raises(TypeError, match=rf"{name} must be an integer, got {type(value).__name__}"):
        fn(value)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_unpack_masks_with_a_float_count_is_refused_before_the_kernel(backend):
    _, bank, _, _ = _problem(k=16)
    with pytest.raises(TypeError, match="num_masks must be an integer, got float 8.0"):
        ops.unpack_masks(bank[:1].contiguous(), 8.0, backend=backend)


def test_numpy_density_is_accepted_and_bad_densities_are_named():
    assert ops.keep_count(100, np.float32(0.25)) == ops.keep_count(100, 0.25) == 25
    assert ops.keep_count(100, np.float64(0.25)) == 25
    for bad in (True, "0.1", None, math.nan, torch.tensor(0.1)):
        with pytest.raises(TypeError, match="density must be a number"):
            ops.keep_count(100, bad)
    for bad in (0.0, -0.1, 1.5, math.inf, 10**400, np.int64(2)):
        with pytest.raises(ValueError, match="density must be in"):
            ops.keep_count(100, bad)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: ops.keep_count(0, 0.5), "n must be >= 1"),
        (lambda: ops.num_planes(-1), "num_masks must be >= 0"),
        (lambda: ops.unpack_masks(torch.zeros(1, 4, dtype=torch.uint8), 0), "num_masks must be >= 1"),
        (lambda: ops.grow_bank(torch.zeros(1, 4, dtype=torch.uint8), -8), "num_masks must be >= 0"),
    ],
)
def test_out_of_range_counts_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_zero_dimensional_input_to_impress_linear_is_named(backend):
    weight = torch.randn(3, 1)
    bank = ops.pack_masks(torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"x must have at least 1 dimension\(s\), got shape \(\)"):
        ops.impress_linear(torch.tensor(1.0), weight, bank, torch.ones(1), backend=backend)


def test_impress_linear_names_a_bad_alpha_before_reading_its_dtype():
    weight = torch.randn(3, 2)
    bank = ops.pack_masks(torch.ones(1, 6, dtype=torch.bool))
    with pytest.raises(TypeError, match="alpha must be a torch.Tensor, got list"):
        ops.impress_linear(torch.randn(2), weight, bank, [1.0])


def test_impress_conv2d_names_bad_input_shapes_and_arguments():
    weight = torch.randn(4, 2, 1, 1)
    bank = ops.pack_masks(torch.ones(1, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"x must be \[C, H, W\] or \[N, C, H, W\], got shape \(2, 3\)"):
        ops.impress_conv2d(torch.randn(2, 3), weight, bank, torch.ones(1))
    with pytest.raises(ValueError, match="stride must be >= 1"):
        ops.impress_conv2d(torch.randn(1, 2, 3, 3), weight, bank, torch.ones(1), stride=0)
    with pytest.raises(ValueError, match="dilation must be an int or a pair of ints"):
        ops.impress_conv2d(torch.randn(1, 2, 3, 3), weight, bank, torch.ones(1), dilation=(1, 1, 1))
    assert ops.impress_conv2d(torch.randn(1, 2, 3, 3), weight, bank, torch.ones(1), stride=np.int64(2)).shape == (1, 4, 2, 2)
    assert ops.impress_conv2d(torch.randn(1, 2, 3, 3), weight, bank, torch.ones(1), padding="same").shape == (1, 4, 3, 3)


def test_edge_popup_weight_names_a_non_tensor_weight():
    with pytest.raises(TypeError, match="weight must be a torch.Tensor, got list"):
        ops.edge_popup_weight([1.0, 2.0], torch.randn(2), 0.5)


def test_the_finiteness_check_keeps_a_compiled_graph_whole():
    """Under torch.compile the check is an in-graph assertion: no graph break, and still a refusal."""
    import torch._dynamo

    _, bank, weight, alpha = _problem()

    def step(weight, bank, alpha):
        return ops.combine_masks(weight, bank, alpha, backend="reference") * 2

    torch._dynamo.reset()
    compiled = torch.compile(step, backend="eager", fullgraph=True)  # fullgraph: a break raises
    assert torch.equal(compiled(weight, bank, alpha), step(weight, bank, alpha))
    bad = alpha.clone()
    bad[4] = math.nan
    with pytest.raises(RuntimeError, match="alpha must be finite"):
        compiled(weight, bank, bad)
