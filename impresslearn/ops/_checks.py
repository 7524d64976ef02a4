"""Input checks shared by every op, run before any kernel sees a pointer.

Each check raises ``ValueError`` (bad value or shape) or ``TypeError`` (bad type or
dtype) with a message that names the argument and what was expected.

The functional API (``pack_masks``, ``combine_masks``, ...) checks everything,
values included: integer arguments (any ``numbers.Integral``, never a float or bool)
and finiteness of ``alpha`` and ``scores``. The Triton launchers in ``kernels/`` reuse
the layout checks (dtype, rank, contiguity), which read metadata only and so also
hold on the fake tensors that ``torch.compile`` and ``opcheck`` trace with.
"""

from __future__ import annotations

import math
import numbers
import os

import torch

from .._integers import is_integer

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_int(name: str, value, *, minimum: int | None = None) -> int:
    """``value`` as a Python int: any integer type (``numbers.Integral``: int, numpy, ...).

    Floats (even ``8.0``) and bools are refused: a float count or index is almost always
    a computation gone wrong, and the kernels' schemas take ``int``. A ``torch.SymInt``
    (a size under tracing, e.g. in a fake kernel) is kept symbolic.
    """
    if isinstance(value, torch.SymInt):
        if minimum is not None and value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")
        return value
    if not is_integer(value):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def num_planes(num_masks: int) -> int:
    """Byte planes needed for ``num_masks`` masks: ceil(K / 8)."""
    num_masks = check_int("num_masks", num_masks, minimum=0)
    return (num_masks + 7) // 8


def check_tensor(name: str, t, *, dtypes=None, ndim=None, min_ndim=None, contiguous=True) -> None:
    """``t`` is a tensor of one of ``dtypes``, with ``ndim`` (or at least ``min_ndim``) dimensions,
    contiguous unless ``contiguous=False``; metadata only, so it holds on fake tensors too."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        want = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype {want}; got {str(t.dtype).replace('torch.', '')}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if min_ndim is not None and t.dim() < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {tuple(t.shape)}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous() first)")


SYNC_CHECKS_ENV = "IMPRESSLEARN_SYNC_CHECKS"


def reads_values_on_host(device: torch.device) -> bool:
    """Whether :func:`check_finite` reads a tensor on ``device`` back to the host.

    CPU: always (the read is free and a bad value is refused by name, as ``ValueError``).
    CUDA: only with ``IMPRESSLEARN_SYNC_CHECKS=1``. A host read there waits for every
    queued kernel, once per op call, and a training step calls several ops per layer;
    by default the check is a device-side assertion instead (:func:`assert_finite_async`),
    which stops on a bad value without stalling the stream. Set the variable while
    debugging to get the named ``ValueError`` on CUDA too. Other devices (no device-side
    assertion to rely on) read on the host.
    """
    if device.type != "cuda":
        return True
    return os.environ.get(SYNC_CHECKS_ENV, "").strip() == "1"


def assert_finite_async(name: str, lo: torch.Tensor, hi: torch.Tensor) -> None:
    """Fail when ``lo`` or ``hi`` (the min and max of a tensor) is not finite, without a host read.

    ``torch._assert_async`` queues the test on the tensor's device: on CUDA a bad value
    raises a device-side assert at the next synchronisation (which leaves the CUDA
    context unusable: the process must restart), under ``torch.compile`` it keeps the
    graph whole, and on CPU it raises ``RuntimeError`` at once.
    """
    torch._assert_async(torch.isfinite(lo) & torch.isfinite(hi), f"{name} must be finite (it holds NaN or inf)")


def check_finite(name: str, t: torch.Tensor) -> None:
    """Refuse NaN and +-inf in ``t``.

    Why here: backends treat NaN differently (a dense matmul spreads a NaN coefficient to
    every weight, a lookup table only to the weights whose mask bit is set; a sort places
    NaN scores first), so a non-finite input would give backend-dependent results.
    Why ``aminmax``: it is one pass with no temporary and propagates NaN, so both ends are
    finite exactly when every element is; ``isfinite(t).all()`` writes a bool tensor of
    ``t``'s size and measured slower than the top-k itself on 25M scores. Measured on 25M
    scores, 2 threads of a busy 2-core machine: 0.12x (fp32) and 0.15x (bf16) the time of
    the cpp top-k kernel, against 1.2-1.4x for ``isfinite().all()``; about 12 us on an
    alpha of 250 values. Where the values are read back (CPU; CUDA only in debug mode):
    :func:`reads_values_on_host`.
    """
    if t.numel() == 0 or t.device.type == "meta":  # a meta tensor has no values to check
        return
    lo, hi = torch.aminmax(t.detach())
    # under torch.compile a host read would split the graph in two at every op
    if torch.compiler.is_compiling() or not reads_values_on_host(t.device):
        assert_finite_async(name, lo, hi)
        return
    if t.device.type == "cpu":  # two scalar reads skip three small ops (65 -> 9 us per alpha, busy 2 cores)
        finite = math.isfinite(lo.item()) and math.isfinite(hi.item())
    else:
        finite = bool(torch.isfinite(lo) & torch.isfinite(hi))  # one host read
    if not finite:
        flat = t.detach().reshape(-1)
        bad = (~torch.isfinite(flat)).nonzero()
        first = int(bad[0])
        raise ValueError(
            f"{name} must be finite: {bad.numel()} of {flat.numel()} values are NaN or infinite "
            f"(first at flat index {first}: {flat[first].item()})"
        )


def check_same_device(**tensors: torch.Tensor) -> None:
    """All ``tensors`` (by argument name) on one device; the message lists each one's."""
    _check_all_equal("device", ValueError, tensors)


def check_same_dtype(**tensors: torch.Tensor) -> None:
    """All ``tensors`` (by argument name) of one dtype (``tl.dot`` takes two operands of one
    type, so the fused linear kernels do); the message lists each one's."""
    _check_all_equal("dtype", TypeError, tensors)


def _check_all_equal(attribute: str, error: type[Exception], tensors: dict[str, torch.Tensor]) -> None:
    values = {name: getattr(t, attribute) for name, t in tensors.items()}
    if len(set(values.values())) > 1:
        listed = ", ".join(f"{name} {str(value).replace('torch.', '')}" for name, value in values.items())
        raise error(f"tensors must have one {attribute}: {listed}")


def check_masks(masks: torch.Tensor, name: str = "masks") -> None:
    """A stack of binary masks, bool[K, n] with K >= 1 and n >= 1."""
    check_tensor(name, masks, dtypes=(torch.bool,), ndim=2)
    if masks.shape[0] < 1 or masks.shape[1] < 1:
        raise ValueError(f"{name} must have at least one mask of at least one weight, got shape {tuple(masks.shape)}")


def check_bank(bank: torch.Tensor, num_masks: int | None = None, n: int | None = None) -> None:
    """A byte-plane bank, uint8[ceil(K/8), n] (the format in docs/design.md)."""
    check_tensor("bank", bank, dtypes=(torch.uint8,), ndim=2)
    if num_masks is not None:
        num_masks = check_int("num_masks", num_masks, minimum=1)
        if bank.shape[0] != num_planes(num_masks):
            raise ValueError(
                f"bank has {bank.shape[0]} byte planes but {num_masks} masks need "
                f"ceil({num_masks}/8) = {num_planes(num_masks)}"
            )
    if n is not None and bank.shape[1] != n:
        raise ValueError(f"bank covers {bank.shape[1]} weights but the weight has {n} elements")


def check_alpha(alpha: torch.Tensor, bank: torch.Tensor, *, ndim: int = 1) -> int:
    """Coefficients alpha[K] of one layer (``ndim=2``: alpha[K, R], one column per block of
    channels) against its bank, on metadata only; returns K.

    A bank of G planes holds between 8(G-1)+1 and 8G masks, so alpha of K
    coefficients matches it exactly when ceil(K/8) == G.
    """
    check_tensor("alpha", alpha, dtypes=FLOAT_DTYPES, ndim=ndim)
    k = alpha.shape[0]
    if k < 1:
        raise ValueError("alpha must have at least one coefficient")
    if num_planes(k) != bank.shape[0]:
        raise ValueError(
            f"bank and alpha disagree on K: alpha has {k} {'coefficients' if ndim == 1 else 'rows'} (ceil(K/8) = "
            f"{num_planes(k)} planes) but the bank has {bank.shape[0]} byte planes"
        )
    return k


def check_combine_inputs(weight: torch.Tensor, bank: torch.Tensor, alpha: torch.Tensor) -> None:
    """What ``combine_masks`` takes: a float weight of ``n`` elements, its bank of ``n`` weights,
    alpha[K] matching the bank, finite, all on one device (``impress_linear`` checks the same)."""
    check_tensor("weight", weight, dtypes=FLOAT_DTYPES)
    check_bank(bank, n=weight.numel())
    check_alpha(alpha, bank)
    check_same_device(weight=weight, bank=bank, alpha=alpha)
    check_finite("alpha", alpha)


def check_mask_index(index: int, num_masks: int, *, allow_append: bool) -> int:
    """``index`` as an int in [0, num_masks) (or [0, num_masks] with ``allow_append``)."""
    index = check_int("mask index", index)
    limit = num_masks + 1 if allow_append else num_masks
    if not 0 <= index < limit:
        raise IndexError(f"mask index {index} is out of range for a bank of {num_masks} masks")
    return index


def check_density(density: float) -> float:
    """``density`` as a float in (0, 1]: any real number type but bool."""
    if isinstance(density, bool) or not isinstance(density, numbers.Real):
        raise TypeError(f"density must be a number in (0, 1], got {density!r}")
    try:
        value = float(density)
    except OverflowError:  # an int beyond float range
        value = math.inf
    if math.isnan(value):
        raise TypeError(f"density must be a number in (0, 1], got {density!r}")
    if not 0.0 < value <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    return value


def keep_count(n: int, density: float) -> int:
    """k = max(1, round(s * n)): how many weights a mask of density s keeps."""
    n = check_int("n", n, minimum=1)
    density = check_density(density)
    # round half up (not Python's half-to-even) so C++, CUDA and Python agree
    return max(1, min(n, math.floor(density * n + 0.5)))
