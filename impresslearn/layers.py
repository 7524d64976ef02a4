"""Masked layers of a frozen random backbone (docs/design.md, Notation).

``ImpressLinear`` and ``ImpressConv2d`` are ``nn.Linear`` / ``nn.Conv2d`` (no bias by default)
whose frozen weight ``W_i`` is generated from a seed on the CPU. Each holds its byte-plane bank
(``uint8[ceil(K/8), n_i]``, docs/design.md, Formats) and is driven by one *mask source* at a time:

``ScoresSource``       edge-popup scores being trained: ``W' = W * topk(|S|, k_i)``.
``CoefficientSource``  coefficients over the bank: ``W_eff = W * sum_k alpha[k] B[k]``. A basis
                       task is a one-hot ``alpha``, a new task its column of ``A_t``, the GN
                       superposition the column of ``alpha' = A^T beta`` (one combine, whatever
                       the number of stored tasks). Optional coefficients over a second bank of
                       *extra* masks that are not basis masks: the hybrid last-layer masks.
                       With ``block`` set, ``alpha`` is ``[K', R]``: one column per block of
                       output channels (``ops.combine_masks_rows``; tasks.columns_per_layer).

Layers are thin: ``forward`` calls the functional ops of :mod:`impresslearn.ops` and nothing
else, so every backend drops in unchanged. The layer never decides *which* coefficients to
use: the learner, or a user's loop through ``task_bound`` and the ``bind_*`` functions at the
end of this module, binds a source before each forward. ``ImpressMultiheadAttention`` masks
both projections of ``nn.MultiheadAttention``.

``MultitaskNonAffineBN`` is SupSup's non-affine BatchNorm with one slot of running statistics
per stored task (a shared one makes every task but the last fail, SupSup issue #11).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops
from ._integers import is_count, is_integer
from .ops import num_planes
from .tasks import channels_per_column, check_granularity, columns_per_layer

INITS = ("signed_constant", "kaiming_normal")


# ----------------------------------------------------------------------------- backbone init


def backbone_weight(shape: torch.Size | tuple[int, ...], generator: torch.Generator | None, init: str) -> torch.Tensor:
    """A frozen weight drawn on the CPU from ``generator`` (float32), so a seed fixes it bit for bit.

    ``generator=None`` draws from torch's global CPU generator (``torch.manual_seed`` fixes it).

    ``kaiming_normal``: N(0, gain / sqrt(fan_in)) with the ReLU gain (paper footnote 2).
    ``signed_constant``: sign(kaiming_normal) * gain / sqrt(fan_in) (SupSup's default).
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    shape = tuple(shape)
    fan_in = math.prod(shape[1:])
    std = math.sqrt(2.0) / math.sqrt(fan_in)  # calculate_gain("relu") = sqrt(2)
    normal = torch.randn(shape, generator=generator, dtype=torch.float32)
    if init == "kaiming_normal":
        return normal * std
    return torch.sign(normal) * std


def edge_popup_scores(shape: torch.Size | tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Initial edge-popup scores: kaiming-uniform with a = sqrt(5) (nn.Linear's default), on the CPU."""
    scores = torch.empty(tuple(shape), dtype=torch.float32)
    nn.init.kaiming_uniform_(scores, a=math.sqrt(5), generator=generator)
    return scores


# ----------------------------------------------------------------------------- mask sources


@dataclass(frozen=True)
class ScoresSource:
    """Edge-popup: the mask is ``topk(|scores|, keep_count(n, density))``, trained straight-through."""

    scores: torch.Tensor
    density: float


@dataclass(frozen=True)
class CoefficientSource:
    """``W * (sum_k alpha[k] B[k] + sum_h extra_alpha[h] E[h])``.

    ``alpha`` has ``K'`` entries over the first ``K'`` bank masks (a task learned when the bank
    held ``K'`` masks keeps using exactly those planes, so adding masks later cannot change its
    outputs by a single bit). ``extra_alpha`` likewise covers the first ``H'`` extra masks.
    Either may be None, not both. ``block``: None for one coefficient per mask (``alpha[K']``), or
    the output channels per column of ``alpha[K', ceil(C / block)]`` (no ``extra_alpha`` then).
    """

    alpha: torch.Tensor | None
    extra_alpha: torch.Tensor | None = None
    block: int | None = None

    def __post_init__(self):
        if self.alpha is None and self.extra_alpha is None:
            raise ValueError("a CoefficientSource needs alpha, extra_alpha, or both")
        if self.block is not None and (self.alpha is None or self.extra_alpha is not None):
            raise ValueError("coefficients per block of channels take alpha only (no extra_alpha: hybrid is per layer)")


class _ImpressMixin:
    """Bank, extra bank, frozen weight and mask source shared by the linear and conv layers."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def _init_impress(self, seed: int | None, init: str) -> None:
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if seed is not None and not is_integer(seed):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        n = self.weight.numel()
        self.register_buffer("bank", torch.zeros(0, n, dtype=torch.uint8, device=self.weight.device))
        self.register_buffer("extra_bank", torch.zeros(0, n, dtype=torch.uint8, device=self.weight.device))
        self.num_masks = 0
        self.num_extra = 0
        self.backend: str | None = None
        self.source: ScoresSource | CoefficientSource | None = None
        self.seed, self.init = None if seed is None else int(seed), init  # numpy's too: kept as a plain int
        self.reset_parameters()

    # -- backbone -------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """Draw the frozen backbone from ``seed`` (None: torch's global RNG, as ``nn.Linear`` does).

        The weight comes from :func:`backbone_weight`; a bias, when the layer has one, is drawn
        next from the same generator like ``nn.Linear``'s (uniform, bound 1/sqrt(fan_in)).
        Both are frozen: only masks, scores and coefficients ever train. ``seed`` is the
        constructor's: models built by ``create_model`` or ``convert`` instead redraw every
        layer from one model-level generator (``init_backbone_``).
        """
        if "bank" not in self._buffers:
            return  # nn.Linear / nn.Conv2d's __init__ calls this before _init_impress sets seed and init
        generator = None if self.seed is None else torch.Generator(device="cpu").manual_seed(self.seed)
        self.reset_backbone_(generator, self.init)
        if self.bias is not None:
            fan_in = math.prod(self.weight.shape[1:])
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            drawn = (torch.rand(self.bias.shape, generator=generator, dtype=torch.float32) * 2 - 1) * bound
            with torch.no_grad():
                self.bias.copy_(drawn)
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)

    def reset_backbone_(self, generator: torch.Generator | None, init: str) -> None:
        """Regenerate ``W_i`` from ``generator`` (CPU), then move it to the layer's device.

        Only the weight: a kept bias is not part of the random backbone (``convert`` keeps the
        original module's own bias).
        """
        with torch.no_grad():
            self.weight.copy_(backbone_weight(self.weight.shape, generator, init))
        self.init = init

    def _backbone(self) -> torch.Tensor:
        """The weight as the ops take it: contiguous (``model.to(memory_format=...)`` may have changed it)."""
        return self.weight.contiguous()

    # -- sources --------------------------------------------------------------------------
    def use_scores(self, scores: torch.Tensor, density: float) -> None:
        if scores.shape != self.weight.shape:
            raise ValueError(f"scores have shape {tuple(scores.shape)} but the weight has {tuple(self.weight.shape)}")
        self.source = ScoresSource(scores, density)

    def use_coefficients(
        self, alpha: torch.Tensor | None, extra_alpha: torch.Tensor | None = None, *, block: int | None = None
    ) -> None:
        """Bind ``W * (sum_k alpha[k] B[k] + sum_h extra_alpha[h] E[h])`` (see :class:`CoefficientSource`);
        with ``block``, ``alpha[K', ceil(C / block)]`` gives each block of output channels its own column."""
        self.source = self._coefficient_source(alpha, extra_alpha, block=block)

    def _coefficient_source(
        self, alpha: torch.Tensor | None, extra_alpha: torch.Tensor | None = None, *, block: int | None = None
    ) -> CoefficientSource:
        if block is not None:
            columns = columns_per_layer([self.weight.shape[0]], block)[0]
            if alpha is None or alpha.dim() != 2 or alpha.shape[1] != columns:
                got = "None" if alpha is None else f"shape {tuple(alpha.shape)}"
                raise ValueError(
                    f"alpha of a layer with {self.weight.shape[0]} output channels in blocks of {block} must be "
                    f"[K', {columns}], got {got}"
                )
        for name, coeff, count, what in (("alpha", alpha, self.num_masks, "the bank holds"),
                                         ("extra_alpha", extra_alpha, self.num_extra, "the layer holds")):  # fmt: skip
            if coeff is None:
                continue
            if coeff.dim() != 1 and block is None:
                raise ValueError(f"{name} of one layer must be a vector [K'], got shape {tuple(coeff.shape)}")
            if not 1 <= coeff.shape[0] <= count:
                extra = " extra" if name == "extra_alpha" else ""
                raise ValueError(f"{name} has {coeff.shape[0]} coefficients but {what} {count}{extra} masks")
        return CoefficientSource(alpha, extra_alpha, block)

    def clear_source(self) -> None:
        self.source = None

    def _terms(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(bank planes, coefficients) pairs of a CoefficientSource, each ready for combine_masks."""
        src = self.source
        terms = []
        if src.alpha is not None:
            terms.append((self.bank[: num_planes(src.alpha.shape[0])], src.alpha.contiguous()))
        if src.extra_alpha is not None:
            terms.append((self.extra_bank[: num_planes(src.extra_alpha.shape[0])], src.extra_alpha.contiguous()))
        return terms

    def effective_weight(self) -> torch.Tensor:
        """``W_eff`` of the bound source (for inspection and tests; forward may fuse it away)."""
        src = self._require_source()
        if isinstance(src, ScoresSource):
            return ops.edge_popup_weight(self._backbone(), src.scores, src.density, backend=self.backend)
        weight = self._backbone()
        if src.block is not None:
            bank, alpha = self._terms()[0]
            return ops.combine_masks_rows(weight, bank, alpha, src.block, backend=self.backend)
        parts = [ops.combine_masks(weight, bank, a, backend=self.backend) for bank, a in self._terms()]
        return parts[0] if len(parts) == 1 else parts[0] + parts[1]

    def _require_source(self):
        if self.source is None:
            raise RuntimeError(
                f"{type(self).__name__} has no mask source bound, so it has no weight to use. Bind a task "
                "first: `with impresslearn.task_bound(model, coefficients): model(x)` (or bind_coefficients / "
                "bind_scores), or let an ImpressLearner bind it (learner.bind_task(name))"
            )
        return self.source

    # -- banks ----------------------------------------------------------------------------
    def add_mask_from_scores(self, scores: torch.Tensor, density: float, *, extra: bool = False) -> int:
        """Append ``topk(|scores|, k_i)`` to the bank (or the extra bank) as its next mask; returns its index."""
        if scores.shape != self.weight.shape:
            raise ValueError(f"scores have shape {tuple(scores.shape)} but the weight has {tuple(self.weight.shape)}")
        k = ops.keep_count(self.weight.numel(), density)
        scores = scores.detach().to(self.weight.device).contiguous()
        count = self.num_extra if extra else self.num_masks
        bank = ops.grow_bank(self.extra_bank if extra else self.bank, count)
        ops.topk_mask_into_(bank, count, scores, k, backend=self.backend)
        self._store(bank, count + 1, extra)
        return count

    def add_mask(self, mask: torch.Tensor, *, extra: bool = False) -> int:
        """Append a bool mask (shaped like the weight, or flat) as the next mask; returns its index."""
        if mask.dtype != torch.bool or mask.numel() != self.weight.numel():
            raise ValueError(
                f"mask must be bool with {self.weight.numel()} elements, got {mask.dtype} of shape {tuple(mask.shape)}"
            )
        count = self.num_extra if extra else self.num_masks
        bank = ops.append_mask(
            self.extra_bank if extra else self.bank,
            count,
            mask.reshape(-1).to(self.weight.device).contiguous(),
            backend=self.backend,
        )
        self._store(bank, count + 1, extra)
        return count

    def load_banks_(self, bank: torch.Tensor, num_masks: int, extra_bank: torch.Tensor, num_extra: int) -> None:
        """Install banks read from a checkpoint (shapes checked against the weight)."""
        n = self.weight.numel()
        for name, b, count in (("bank", bank, num_masks), ("extra_bank", extra_bank, num_extra)):
            if b.dtype != torch.uint8 or b.dim() != 2 or b.shape != (num_planes(count), n):
                raise ValueError(
                    f"{name} of {type(self).__name__} must be uint8[{num_planes(count)}, {n}] for {count} masks, "
                    f"got {b.dtype} of shape {tuple(b.shape)}"
                )
        self._store(bank.to(self.weight.device).contiguous(), num_masks, False)
        self._store(extra_bank.to(self.weight.device).contiguous(), num_extra, True)

    def masks(self, *, extra: bool = False) -> torch.Tensor:
        """The stored masks unpacked, ``bool[K, *weight.shape]`` (for inspection and tests)."""
        count = self.num_extra if extra else self.num_masks
        if count == 0:
            return torch.zeros(0, *self.weight.shape, dtype=torch.bool, device=self.weight.device)
        bank = self.extra_bank if extra else self.bank
        return ops.unpack_masks(bank, count, backend=self.backend).view(count, *self.weight.shape)

    def _store(self, bank: torch.Tensor, count: int, extra: bool) -> None:
        if extra:
            self.extra_bank, self.num_extra = bank, count
        else:
            self.bank, self.num_masks = bank, count

    def _impress_repr(self) -> str:
        return f", masks={self.num_masks}, extra_masks={self.num_extra}, init={self.init}"

    # -- state_dict -----------------------------------------------------------------------
    # The banks' byte planes do not say how many masks they hold (8 masks share a plane), so the
    # counts travel as extra state. Loading sizes the banks to the incoming ones (any K) and
    # refuses, before anything is copied, a backbone that is not this layer's: masks learned on
    # one random weight mean nothing on another.

    def get_extra_state(self) -> dict:
        return {"format": STATE_FORMAT, "num_masks": self.num_masks, "num_extra": self.num_extra}

    def set_extra_state(self, state: dict) -> None:
        # checked by _load_from_state_dict before any tensor was copied
        self.num_masks, self.num_extra = int(state["num_masks"]), int(state["num_extra"])
        self.source = None  # the banks changed under whatever was bound

    def _load_problem(self, state_dict: dict, prefix: str) -> str | None:
        weight = state_dict.get(prefix + "weight")
        if isinstance(weight, torch.Tensor):
            if weight.shape != self.weight.shape:
                return (
                    f"the state_dict's weight has shape {tuple(weight.shape)} but this {type(self).__name__} has "
                    f"{tuple(self.weight.shape)}: a different architecture"
                )
            if not _same_values(weight, self.weight):
                return (
                    "the state_dict's backbone weight differs from this layer's: it was saved from a model built "
                    "with another seed or init. Build this model with the same seed and init (the frozen backbone "
                    "is never loaded over: masks learned on one random weight mean nothing on another)"
                )
        meta = state_dict.get(prefix + "_extra_state")
        if meta is None:
            return None  # PyTorch reports the missing key (strict) or keeps this layer's banks
        if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT:
            return f"its extra state is not an impresslearn layer state of format {STATE_FORMAT}: {meta!r}"
        n = self.weight.numel()
        for name, key in (("bank", "num_masks"), ("extra_bank", "num_extra")):
            count, bank = meta.get(key), state_dict.get(prefix + name)
            if not is_count(count):
                return f"its extra state's {key} must be an int >= 0, got {count!r}"
            want = (num_planes(count), n)
            if not isinstance(bank, torch.Tensor) or bank.dtype != torch.uint8 or tuple(bank.shape) != want:
                got = f"{bank.dtype} of shape {tuple(bank.shape)}" if isinstance(bank, torch.Tensor) else "missing"
                return f"{name} must be uint8{list(want)} for {count} masks, got {got}"
        return None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        problem = self._load_problem(state_dict, prefix)
        if problem is not None:
            error_msgs.append(f"{prefix.rstrip('.') or type(self).__name__}: {problem}")
            return
        if prefix + "_extra_state" in state_dict:
            for name in ("bank", "extra_bank"):  # any K: size the buffer so PyTorch's copy fits
                incoming = state_dict[prefix + name]
                setattr(self, name, torch.empty(incoming.shape, dtype=torch.uint8, device=self.weight.device))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )  # fmt: skip


STATE_FORMAT = 1  # version of the layers' extra state in a state_dict


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal at the coarser of the two dtypes (a model cast to half still matches its fp32 state)."""
    coarse = a.dtype if torch.finfo(a.dtype).eps >= torch.finfo(b.dtype).eps else b.dtype
    return torch.equal(a.detach().to("cpu", coarse), b.detach().to("cpu", coarse))


class ImpressLinear(_ImpressMixin, nn.Linear):
    """``nn.Linear`` over a frozen random weight and a byte-plane bank of masks.

    Takes ``nn.Linear``'s arguments plus ``seed`` and ``init`` (see :func:`backbone_weight`).
    ``bias`` defaults to False (the ImpressLearn backbone has none); ``bias=True`` adds a frozen
    bias, drawn like ``nn.Linear``'s from the same seed, that no mask touches.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        device=None,
        dtype=None,
        *,
        seed: int | None = None,
        init: str = "signed_constant",
    ):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_impress(seed, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        src = self._require_source()
        if isinstance(src, ScoresSource):
            w = ops.edge_popup_weight(self._backbone(), src.scores, src.density, backend=self.backend)
            return F.linear(x, w, self.bias)
        terms = self._terms()
        if len(terms) == 1 and src.block is None:
            bank, alpha = terms[0]
            out = ops.impress_linear(x, self._backbone(), bank, alpha, backend=self.backend)
            return out if self.bias is None else out + self.bias
        return F.linear(x, self.effective_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._impress_repr()


class ImpressConv2d(_ImpressMixin, nn.Conv2d):
    """``nn.Conv2d`` over a frozen random weight and a byte-plane bank of masks.

    Takes ``nn.Conv2d``'s arguments (string padding and every ``padding_mode`` included) plus
    ``seed`` and ``init``; ``bias`` defaults to False, ``bias=True`` adds a frozen bias as in
    :class:`ImpressLinear`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = False,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        *,
        seed: int | None = None,
        init: str = "signed_constant",
    ):
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
            bias=bias, padding_mode=padding_mode, device=device, dtype=dtype,
        )  # fmt: skip
        self._init_impress(seed, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        src = self._require_source()
        padding = self.padding
        if self.padding_mode != "zeros":  # as nn.Conv2d._conv_forward: pad explicitly, then convolve unpadded
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        conv = dict(stride=self.stride, padding=padding, dilation=self.dilation, groups=self.groups)
        if isinstance(src, ScoresSource):
            w = ops.edge_popup_weight(self._backbone(), src.scores, src.density, backend=self.backend)
            return F.conv2d(x, w, self.bias, **conv)
        terms = self._terms()
        if len(terms) == 1 and src.block is None:
            bank, alpha = terms[0]
            out = ops.impress_conv2d(x, self._backbone(), bank, alpha, backend=self.backend, **conv)
            return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)
        return F.conv2d(x, self.effective_weight(), self.bias, **conv)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._impress_repr()


# ----------------------------------------------------------------------------- attention


class ImpressMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` whose input and output projections are masked layers.

    ``nn.MultiheadAttention`` hands its weights straight to ``F.multi_head_attention_forward``,
    so masking its ``out_proj`` child would never reach the output. Here the q, k and v weights
    are one ``in_proj = ImpressLinear(E, 3E)`` (stacked as ``in_proj_weight`` is) and the output
    projection an ``out_proj = ImpressLinear(E, E)``; both take part in the bank and the
    coefficients like any masked layer (in that order), and the forward passes their effective
    weights to the same functional attention, with the same signature and results.

    Takes ``nn.MultiheadAttention``'s arguments plus ``seed`` (``in_proj`` draws from ``seed``,
    ``out_proj`` from ``seed + 1``) and ``init``. Only the packed form is supported: ``kdim`` and
    ``vdim`` equal to ``embed_dim`` and no ``add_bias_kv`` (learned key/value biases).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = False,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device=None,
        dtype=None,
        *,
        seed: int | None = None,
        init: str = "signed_constant",
    ):
        super().__init__()
        if add_bias_kv:
            raise ValueError("ImpressMultiheadAttention does not support add_bias_kv (learned key/value biases)")
        if (kdim or embed_dim) != embed_dim or (vdim or embed_dim) != embed_dim:
            raise ValueError(
                f"ImpressMultiheadAttention needs kdim == vdim == embed_dim = {embed_dim} (one packed in_proj), "
                f"got kdim={kdim}, vdim={vdim}"
            )
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.add_zero_attn, self.batch_first = add_zero_attn, batch_first
        self.in_proj = ImpressLinear(embed_dim, 3 * embed_dim, bias, device, dtype, seed=seed, init=init)
        out_seed = None if seed is None else seed + 1
        self.out_proj = ImpressLinear(embed_dim, embed_dim, bias, device, dtype, seed=out_seed, init=init)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batched = query.dim() == 3
        if self.batch_first and batched:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        out, weights = F.multi_head_attention_forward(
            query, key, value, self.embed_dim, self.num_heads,
            self.in_proj.effective_weight(), self.in_proj.bias, None, None, self.add_zero_attn, self.dropout,
            self.out_proj.effective_weight(), self.out_proj.bias, training=self.training,
            key_padding_mask=key_padding_mask, need_weights=need_weights, attn_mask=attn_mask,
            average_attn_weights=average_attn_weights, is_causal=is_causal,
        )  # fmt: skip
        if self.batch_first and batched:
            out = out.transpose(1, 0)
        return out, weights

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"


# ----------------------------------------------------------------------------- batch norm


class MultitaskNonAffineBN(nn.Module):
    """Non-affine BatchNorm with one slot of running statistics per stored task (SupSup).

    ``task_slot`` picks the slot the forward uses: in training mode the batch is normalised by
    its own statistics and that slot's running statistics are updated; in eval mode the slot's
    running statistics normalise. ``task_slot = None`` normalises by the batch statistics and
    updates nothing: what the GN superposition uses, since a mixture of tasks has no slot.
    Works for ``[N, C]`` and ``[N, C, H, W]`` inputs.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, device=None):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(0, num_features, device=device))
        self.register_buffer("running_var", torch.zeros(0, num_features, device=device))
        self.task_slot: int | None = None

    @property
    def num_slots(self) -> int:
        return self.running_mean.shape[0]

    def add_slot(self) -> int:
        """A fresh slot (mean 0, variance 1) for a new task; returns its index."""
        c = self.num_features
        self.running_mean = torch.cat([self.running_mean, self.running_mean.new_zeros(1, c)])
        self.running_var = torch.cat([self.running_var, self.running_var.new_ones(1, c)])
        return self.num_slots - 1

    def load_slots_(self, running_mean: torch.Tensor, running_var: torch.Tensor) -> None:
        if running_mean.shape != running_var.shape or running_mean.dim() != 2 or running_mean.shape[1] != self.num_features:
            raise ValueError(
                f"BN statistics must be [slots, {self.num_features}], got {tuple(running_mean.shape)} "
                f"and {tuple(running_var.shape)}"
            )
        device = self.running_mean.device
        self.running_mean = running_mean.to(device, torch.float32).contiguous()
        self.running_var = running_var.to(device, torch.float32).contiguous()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        mean, var = state_dict.get(prefix + "running_mean"), state_dict.get(prefix + "running_var")
        if isinstance(mean, torch.Tensor) and isinstance(var, torch.Tensor):
            if mean.dim() != 2 or mean.shape != var.shape or mean.shape[1] != self.num_features:
                error_msgs.append(
                    f"{prefix.rstrip('.') or type(self).__name__}: BN statistics in the state_dict are "
                    f"{tuple(mean.shape)} and {tuple(var.shape)}, this layer needs [slots, {self.num_features}]: "
                    "a different architecture"
                )
                return
            # any number of slots: size the buffers so PyTorch's copy fits
            self.running_mean = torch.empty(mean.shape, dtype=self.running_mean.dtype, device=self.running_mean.device)
            self.running_var = torch.empty(var.shape, dtype=self.running_var.dtype, device=self.running_var.device)
            if self.task_slot is not None and self.task_slot >= mean.shape[0]:
                self.task_slot = None
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slot = self.task_slot
        if slot is None:
            return F.batch_norm(x, None, None, None, None, True, 0.0, self.eps)
        if not 0 <= slot < self.num_slots:
            raise IndexError(f"BN task slot {slot} out of range: {self.num_slots} slots")
        # basic indexing gives views, so training-mode updates land in the slot in place
        return F.batch_norm(
            x, self.running_mean[slot], self.running_var[slot], None, None, self.training, self.momentum, self.eps
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, slots={self.num_slots}"


def impress_layers(model: nn.Module) -> list[ImpressLinear | ImpressConv2d]:
    """The masked layers of ``model`` in module order: layer ``i`` of the notation is entry ``i``."""
    return [m for m in model.modules() if isinstance(m, _ImpressMixin)]


def multitask_bns(model: nn.Module) -> list[MultitaskNonAffineBN]:
    return [m for m in model.modules() if isinstance(m, MultitaskNonAffineBN)]


# ----------------------------------------------------------------------------- binding a task to a model
#
# A model computes one task at a time: every masked layer holds one mask source and every
# MultitaskNonAffineBN one statistics slot. These functions set both for a whole model, so a
# user's own loop (or the learner) never has to touch a layer. Layer i of the notation is the
# i-th masked layer in module order (``impress_layers``).


def _require_layers(model: nn.Module) -> list[ImpressLinear | ImpressConv2d]:
    layers = impress_layers(model)
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no ImpressLinear or ImpressConv2d layer: build it with create_model, "
            "convert(model, seed=...), or the Impress layers directly"
        )
    return layers


def _check_coefficients(name: str, t: torch.Tensor, ndim: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim or not t.is_floating_point():
        want = "a float matrix [K', d]" if ndim == 2 else "a float vector [H']"
        raise ValueError(f"{name} must be {want}, got {t.dtype} of shape {tuple(t.shape)}")


def coefficient_columns(model: nn.Module, granularity="layer") -> list[int]:
    """Columns of a task's coefficient matrix per masked layer at ``granularity`` (their sum: its width).

    ``"layer"``: 1 per layer (``A_t[K, d]``); ``"channel"`` or a block size ``b``: ceil(C_i / b) for
    layer ``i``'s ``C_i`` output channels (``weight.shape[0]``), its columns consecutive in layer order.
    """
    return columns_per_layer([layer.weight.shape[0] for layer in _require_layers(model)], granularity)


def bind_coefficients(
    model: nn.Module,
    alpha: torch.Tensor,
    *,
    last_layer_extra: torch.Tensor | None = None,
    skip_last: bool = False,
    granularity="layer",
) -> None:
    """Bind a task's coefficient matrix ``alpha[K', d]``: masked layer ``i`` uses column ``i``.

    ``K'`` may be below the bank's ``K`` (a task learned on a smaller bank reads only its first
    ``K'`` masks). The last layer takes ``last_layer_extra[H']`` over its extra bank instead
    (a hybrid task's own mask), or keeps its current source with ``skip_last`` (hybrid training
    binds edge-popup scores there); in either case ``alpha`` may have ``d - 1`` columns.
    ``granularity`` ``"channel"`` or a block size ``b``: ``alpha`` is ``[K', sum_i R_i]`` and layer
    ``i`` uses its ``R_i`` consecutive columns, one per block of output channels
    (:func:`coefficient_columns`); hybrid (``last_layer_extra``, ``skip_last``) is per layer only.
    Everything is checked before any layer changes; the BN slot is bound by :func:`set_bn_slot`.
    """
    layers = _require_layers(model)
    _check_coefficients("alpha", alpha, 2)
    block = channels_per_column(granularity)
    if block is not None:
        sources = _block_sources(layers, alpha, block, granularity, last_layer_extra is not None or skip_last)
    else:
        sources = _layer_sources(layers, alpha, last_layer_extra, skip_last)
    for layer, source in sources:  # every source was built (and so validated) first: a failure leaves
        layer.source = source  # the old binding intact


def _layer_sources(layers, alpha: torch.Tensor, last_layer_extra: torch.Tensor | None, skip_last: bool) -> list:
    """(layer, source) for each layer bound at granularity 'layer' (:func:`bind_coefficients`)."""
    d = len(layers)
    last_elsewhere = skip_last or last_layer_extra is not None
    if skip_last and last_layer_extra is not None:
        raise ValueError("pass last_layer_extra or skip_last, not both")
    allowed = (d - 1, d) if last_elsewhere else (d,)
    if alpha.shape[1] not in allowed:
        raise ValueError(
            f"alpha has {alpha.shape[1]} columns but the model has {d} masked layers (one column per layer"
            + (", the last one may be left out when the last layer is bound otherwise)" if last_elsewhere else ")")
        )
    if last_layer_extra is not None:
        _check_coefficients("last_layer_extra", last_layer_extra, 1)
    sources = []
    for i, layer in enumerate(layers):
        if i == d - 1 and last_elsewhere:
            if last_layer_extra is not None:
                sources.append((layer, layer._coefficient_source(None, last_layer_extra)))
        else:
            sources.append((layer, layer._coefficient_source(alpha[:, i])))
    return sources


def _block_sources(layers, alpha: torch.Tensor, block: int, granularity, hybrid: bool) -> list:
    """(layer, source) for each layer bound with one column per block of output channels."""
    if hybrid:
        raise ValueError(f"granularity {granularity!r}: a hybrid task (last_layer_extra, skip_last) has per-layer "
                         "coefficients only; use granularity='layer'")  # fmt: skip
    columns = columns_per_layer([layer.weight.shape[0] for layer in layers], block)
    if alpha.shape[1] != sum(columns):
        raise ValueError(
            f"alpha has {alpha.shape[1]} columns but granularity {check_granularity(granularity)!r} needs "
            f"{sum(columns)} for this model ({' + '.join(map(str, columns))}, per masked layer)"
        )
    sources, start = [], 0
    for layer, count in zip(layers, columns):
        sources.append((layer, layer._coefficient_source(alpha[:, start : start + count], block=block)))
        start += count
    return sources


def one_hot_coefficients(model: nn.Module, index: int) -> torch.Tensor:
    """``alpha[index + 1, d]`` that selects bank mask ``index`` in every layer (a basis task)."""
    layers = _require_layers(model)
    if not is_count(index):
        raise ValueError(f"mask index must be an int >= 0, got {index!r}")
    alpha = torch.zeros(index + 1, len(layers), device=layers[0].weight.device, dtype=layers[0].weight.dtype)
    alpha[index] = 1.0
    return alpha


def bind_scores(model: nn.Module, scores: Sequence[torch.Tensor], density: float) -> None:
    """Bind edge-popup: layer ``i`` uses ``W_i * topk(|scores[i]|, keep_count(n_i, density))``."""
    layers = _require_layers(model)
    ops.keep_count(1, density)  # validates density
    if len(scores) != len(layers):
        raise ValueError(f"need one scores tensor per masked layer: got {len(scores)} for {len(layers)} layers")
    for i, (layer, s) in enumerate(zip(layers, scores)):
        if not isinstance(s, torch.Tensor) or s.shape != layer.weight.shape:
            got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
            raise ValueError(f"scores[{i}] must be shaped like layer {i}'s weight {tuple(layer.weight.shape)}, got {got}")
    for layer, s in zip(layers, scores):
        layer.use_scores(s, density)


def set_bn_slot(model: nn.Module, slot: int | None) -> None:
    """Every ``MultitaskNonAffineBN`` uses statistics slot ``slot`` (None: batch statistics, nothing updated)."""
    bns = multitask_bns(model)
    if slot is not None:
        if not is_integer(slot):
            raise TypeError(f"BN slot must be an int or None, got {type(slot).__name__}")
        slot = int(slot)
        for bn in bns:
            if not 0 <= slot < bn.num_slots:
                raise IndexError(f"BN slot {slot} out of range: the model's BN layers hold {bn.num_slots} slots")
    for bn in bns:
        bn.task_slot = slot


def num_bn_slots(model: nn.Module) -> int | None:
    """The number of statistics slots every BN holds (None: the model has no MultitaskNonAffineBN)."""
    counts = {bn.num_slots for bn in multitask_bns(model)}
    if len(counts) > 1:
        raise RuntimeError(f"the model's BN layers disagree on their number of slots: {sorted(counts)}")
    return counts.pop() if counts else None


def add_bn_slot(model: nn.Module) -> int | None:
    """Append a fresh statistics slot (mean 0, variance 1) to every BN; returns its index (None: no BN)."""
    count = num_bn_slots(model)
    for bn in multitask_bns(model):
        bn.add_slot()
    return count


def drop_bn_slots_from(model: nn.Module, slot: int) -> None:
    """Keep only slots ``[0, slot)`` in every BN (undo :func:`add_bn_slot` after a failed task)."""
    if not is_count(slot):
        raise ValueError(f"slot must be an int >= 0, got {slot!r}")
    for bn in multitask_bns(model):
        bn.load_slots_(bn.running_mean[:slot].clone(), bn.running_var[:slot].clone())
        if bn.task_slot is not None and bn.task_slot >= slot:
            bn.task_slot = None


def unbind(model: nn.Module) -> None:
    """Clear every layer's mask source and every BN's slot: the next forward raises until a task is bound."""
    for layer in impress_layers(model):
        layer.clear_source()
    for bn in multitask_bns(model):
        bn.task_slot = None


@contextlib.contextmanager
def task_bound(
    model: nn.Module,
    coefficients: torch.Tensor | int,
    *,
    bn_slot: int | None = None,
    last_layer_extra: torch.Tensor | None = None,
    granularity="layer",
) -> Iterator[nn.Module]:
    """Run ``model`` as one task inside the block, then restore whatever was bound before.

    ``coefficients``: the task's ``alpha[K', d]`` (see :func:`bind_coefficients`), or a bank mask
    index (a basis task: that mask in every layer). ``bn_slot``: the task's BN statistics slot
    (None: batch statistics). ``granularity``: how ``coefficients``' columns map to layers
    (:func:`bind_coefficients`). Usage::

        with task_bound(model, alpha, bn_slot=3):
            logits = model(x)
    """
    layers = _require_layers(model)
    bns = multitask_bns(model)
    saved_sources = [layer.source for layer in layers]
    saved_slots = [bn.task_slot for bn in bns]
    if is_integer(coefficients):
        coefficients = one_hot_coefficients(model, coefficients)
    try:
        bind_coefficients(model, coefficients, last_layer_extra=last_layer_extra, granularity=granularity)
        set_bn_slot(model, bn_slot)
        yield model
    finally:
        for layer, source in zip(layers, saved_sources):
            layer.source = source
        for bn, slot in zip(bns, saved_slots):
            bn.task_slot = slot
