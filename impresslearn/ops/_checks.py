"""Input checks shared by every op, run before any kernel sees a pointer.

Each check raises ``ValueError`` (bad value or shape) or ``TypeError`` (bad dtype)
with a message that names the argument and what was expected.
"""

from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def num_planes(num_masks: int) -> int:
    """Byte planes needed for ``num_masks`` masks: ceil(K / 8)."""
    return (num_masks + 7) // 8


def check_tensor(name: str, t, *, dtypes=None, ndim=None, contiguous=True) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        want = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype {want}; got {str(t.dtype).replace('torch.', '')}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous() first)")


def check_same_device(**tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"tensors must be on one device: {listed}")


def check_masks(masks: torch.Tensor, name: str = "masks") -> None:
    """A stack of binary masks, bool[K, n] with K >= 1 and n >= 1."""
    check_tensor(name, masks, dtypes=(torch.bool,), ndim=2)
    if masks.shape[0] < 1 or masks.shape[1] < 1:
        raise ValueError(f"{name} must have at least one mask of at least one weight, got shape {tuple(masks.shape)}")


def check_bank(bank: torch.Tensor, num_masks: int | None = None, n: int | None = None) -> None:
    """A byte-plane bank, uint8[ceil(K/8), n] (DESIGN section 2)."""
    check_tensor("bank", bank, dtypes=(torch.uint8,), ndim=2)
    if num_masks is not None:
        if num_masks < 1:
            raise ValueError(f"num_masks must be >= 1, got {num_masks}")
        if bank.shape[0] != num_planes(num_masks):
            raise ValueError(
                f"bank has {bank.shape[0]} byte planes but {num_masks} masks need "
                f"ceil({num_masks}/8) = {num_planes(num_masks)}"
            )
    if n is not None and bank.shape[1] != n:
        raise ValueError(f"bank covers {bank.shape[1]} weights but the weight has {n} elements")


def check_alpha(alpha: torch.Tensor, bank: torch.Tensor) -> int:
    """Coefficients alpha[K] of one layer against its bank; returns K.

    A bank of G planes holds between 8(G-1)+1 and 8G masks, so alpha of K
    coefficients matches it exactly when ceil(K/8) == G.
    """
    check_tensor("alpha", alpha, dtypes=FLOAT_DTYPES, ndim=1)
    k = alpha.shape[0]
    if k < 1:
        raise ValueError("alpha must have at least one coefficient")
    if num_planes(k) != bank.shape[0]:
        raise ValueError(
            f"bank and alpha disagree on K: alpha has {k} coefficients (ceil(K/8) = "
            f"{num_planes(k)} planes) but the bank has {bank.shape[0]} byte planes"
        )
    return k


def check_mask_index(index: int, num_masks: int, *, allow_append: bool) -> None:
    limit = num_masks + 1 if allow_append else num_masks
    if not isinstance(index, int) or isinstance(index, bool):
        raise TypeError(f"mask index must be an int, got {type(index).__name__}")
    if not 0 <= index < limit:
        raise IndexError(f"mask index {index} is out of range for a bank of {num_masks} masks")


def check_density(density: float) -> None:
    if not isinstance(density, (int, float)) or isinstance(density, bool) or math.isnan(density):
        raise TypeError(f"density must be a number in (0, 1], got {density!r}")
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")


def keep_count(n: int, density: float) -> int:
    """k = max(1, round(s * n)): how many weights a mask of density s keeps."""
    check_density(density)
    # round half up (not Python's half-to-even) so C++, CUDA and Python agree
    return max(1, min(n, math.floor(density * n + 0.5)))
