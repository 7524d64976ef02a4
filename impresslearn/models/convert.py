"""``convert``: swap a model's layers for Impress layers (torchao's module-swap style).

Linear -> ImpressLinear, Conv2d -> ImpressConv2d, BatchNorm1d/2d -> MultitaskNonAffineBN,
MultiheadAttention -> ImpressMultiheadAttention, then
the backbone is regenerated from ``seed``. The rule is that a conversion either keeps what the
model computes (up to the masks) or refuses with the module's name; it never changes the model
silently:

- Only the exact classes are swapped, and subclasses that do not override ``forward``. A
  subclass with its own forward (timm's ``Conv2dSame``, ``StdConv2d``...) is refused, except
  the ones with a known equivalent (timm's ``BatchNormAct2d`` becomes BN, then its own dropout
  and activation; timm's ``Linear`` only differs under TorchScript).
- A module registered under several names becomes one masked layer under all of them. A
  Parameter shared between two modules is refused (swapping one would untie them).
- Modules whose forward reads a child's weight directly are swapped whole:
  ``nn.MultiheadAttention`` becomes ``ImpressMultiheadAttention`` (``in_proj_weight`` and
  ``out_proj`` masked), torchvision's Swin attention a subclass whose forward reads its masked
  ``qkv`` and ``proj``. Keeping such a module (``module_filter_fn``) while masking one of its
  children is refused: the mask would never reach the output.
- Biases are dropped with a warning naming the layers (the ImpressLearn backbone has none),
  or kept frozen with ``keep_bias=True``.
- A second ``convert`` of a converted model is a no-op when it would give the same backbone,
  and an error otherwise (the banks and coefficients belong to the backbone they were learned on).
"""

from __future__ import annotations

import copy
import warnings
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from .._integers import is_integer
from ..layers import (
    INITS,
    ImpressConv2d,
    ImpressLinear,
    ImpressMultiheadAttention,
    MultitaskNonAffineBN,
    backbone_weight,
    impress_layers,
)

FilterFn = Callable[[nn.Module, str], bool]

_IMPRESS_TYPES = (ImpressLinear, ImpressConv2d, MultitaskNonAffineBN, ImpressMultiheadAttention)
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)  # the batch norms convert swaps (and their subclasses)
_BASES = (nn.Linear, nn.Conv2d, *_BATCH_NORMS, nn.MultiheadAttention)


def _class_names(module: nn.Module) -> list[str]:
    """Qualified names of the module's class and its bases (checked without importing their packages)."""
    return [f"{c.__module__}.{c.__qualname__}" for c in type(module).__mro__]


def _qualname(module: nn.Module) -> str:
    return _class_names(module)[0]


def init_backbone_(model: nn.Module, seed: int, init: str = "signed_constant") -> nn.Module:
    """Regenerate every Impress layer's weight from one CPU generator seeded with ``seed``.

    Layers draw in module order, so the same seed gives the same weights bit for bit on any machine.
    """
    seed = _check_seed_init(seed, init)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    layers = impress_layers(model)
    if not layers:
        raise ValueError("model has no ImpressLinear or ImpressConv2d layer to initialise")
    for layer in layers:
        layer.reset_backbone_(generator, init)
    return model


def _check_seed_init(seed, init: str) -> int:
    """``seed`` as an int (any integer type: it is stored in the model's JSON spec), ``init`` known."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if not is_integer(seed):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return int(seed)


def _backbone_is(model: nn.Module, seed: int, init: str) -> bool:
    """Whether ``init_backbone_(model, seed, init)`` would leave every weight as it is."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    for layer in impress_layers(model):
        drawn = backbone_weight(layer.weight.shape, generator, init).to(layer.weight.device, layer.weight.dtype)
        if not torch.equal(drawn, layer.weight):
            return False
    return True


# ----------------------------------------------------------------------------- single-module swaps


def _bias_of(module: nn.Module, keep_bias: bool) -> bool:
    return keep_bias and getattr(module, "bias", None) is not None


def _linear(module: nn.Linear, keep_bias: bool) -> ImpressLinear:
    w = module.weight
    new = ImpressLinear(module.in_features, module.out_features, _bias_of(module, keep_bias), w.device, w.dtype)
    return _copy_bias(module, new)


def _conv(module: nn.Conv2d, keep_bias: bool) -> ImpressConv2d:
    w = module.weight
    new = ImpressConv2d(
        module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
        module.dilation, module.groups, _bias_of(module, keep_bias), module.padding_mode, w.device, w.dtype,
    )  # fmt: skip
    return _copy_bias(module, new)


def _copy_bias(old: nn.Module, new: ImpressLinear | ImpressConv2d):
    if new.bias is not None:
        with torch.no_grad():
            new.bias.copy_(old.bias)  # keep_bias keeps the model's own (possibly pretrained) bias, frozen
    return new


def _batch_norm(module: nn.BatchNorm1d | nn.BatchNorm2d, keep_bias: bool) -> MultitaskNonAffineBN:
    device = module.running_mean.device if module.running_mean is not None else None
    return MultitaskNonAffineBN(module.num_features, eps=module.eps, momentum=module.momentum or 0.1, device=device)


def _batch_norm_act(module: nn.BatchNorm2d, keep_bias: bool) -> nn.Module:
    """timm's BatchNormAct2d: normalise, then its own dropout and activation, as its forward does."""
    return nn.Sequential(_batch_norm(module, keep_bias), module.drop, module.act)


def _attention(module: nn.MultiheadAttention, keep_bias: bool) -> ImpressMultiheadAttention:
    """nn.MultiheadAttention -> ImpressMultiheadAttention: in_proj_weight and out_proj masked."""
    w = module.out_proj.weight
    bias = keep_bias and module.in_proj_bias is not None
    new = ImpressMultiheadAttention(
        module.embed_dim, module.num_heads, module.dropout, bias, False, module.add_zero_attn,
        batch_first=module.batch_first, device=w.device, dtype=w.dtype,
    )  # fmt: skip
    if bias:
        with torch.no_grad():
            new.in_proj.bias.copy_(module.in_proj_bias)
            new.out_proj.bias.copy_(module.out_proj.bias)
    return new


def _linear_ignoring_torchscript(module: nn.Linear, keep_bias: bool) -> ImpressLinear:
    # timm's Linear only casts weight and bias to the input dtype under TorchScript
    return _linear(module, keep_bias)


def _swin_attention(module: nn.Module, keep_bias: bool) -> nn.Module:
    """A copy of the attention module (its position tables and V2's logit scale kept) as the masked subclass."""
    new = copy.deepcopy(module)
    from . import _swin  # imports torchvision, which is there: the module being converted comes from it

    new.__class__ = _swin.MASKED[type(module)]  # same fields, only forward differs
    new.qkv = _linear(module.qkv, keep_bias)
    new.proj = _linear(module.proj, keep_bias)
    for name, child in getattr(new, "cpb_mlp", nn.Sequential()).named_children():  # V2's position-bias MLP
        if type(child) is nn.Linear:
            setattr(new.cpb_mlp, name, _linear(child, keep_bias))
    return new


_SWAPS: dict[type, Callable] = {
    nn.Linear: _linear,
    nn.Conv2d: _conv,
    nn.BatchNorm1d: _batch_norm,
    nn.BatchNorm2d: _batch_norm,
    nn.MultiheadAttention: _attention,
}
# subclasses with their own forward whose behaviour has an exact equivalent, by qualified name
_KNOWN_SUBCLASSES: dict[str, Callable] = {
    "timm.layers.norm_act.BatchNormAct2d": _batch_norm_act,
    "timm.layers.linear.Linear": _linear_ignoring_torchscript,
}


@dataclass(frozen=True)
class _WholeSwap:
    swap: Callable
    reads: str  # which weights its forward reads directly, for the refusal when a child alone is kept


# Modules whose forward reads a child Linear's weight (or its own weight Parameters) directly:
# swapping the child would mask a weight the forward never multiplies through the child. So
# they are swapped whole (the children are then part of the replacement, not swapped on their
# own), and refused when module_filter_fn keeps a child but not the module itself.
_SWIN_READS = "its forward passes qkv.weight and proj.weight straight to shifted_window_attention"
_WHOLE_SWAPS: dict[str, _WholeSwap] = {
    "torch.nn.modules.activation.MultiheadAttention": _WholeSwap(
        _attention, "its forward passes in_proj_weight and out_proj.weight straight to F.multi_head_attention_forward"
    ),
    "torchvision.models.swin_transformer.ShiftedWindowAttention": _WholeSwap(_swin_attention, _SWIN_READS),
    "torchvision.models.swin_transformer.ShiftedWindowAttentionV2": _WholeSwap(_swin_attention, _SWIN_READS),
}


def _swap_function(module: nn.Module, fqn: str) -> Callable | None:
    """How to swap ``module``: a function, None (not a swappable layer), or a ValueError."""
    if isinstance(module, _IMPRESS_TYPES):
        return None
    if isinstance(module, nn.MultiheadAttention) and (
        module.kdim != module.embed_dim or module.vdim != module.embed_dim or module.bias_k is not None
    ):
        raise ValueError(
            f"convert cannot mask {fqn or 'the model'} (MultiheadAttention): only kdim == vdim == embed_dim without "
            f"add_bias_kv is supported. Keep it as it is with module_filter_fn=lambda module, fqn: not "
            f"fqn.startswith({fqn!r})"
        )
    whole = _WHOLE_SWAPS.get(_qualname(module))
    known = _KNOWN_SUBCLASSES.get(_qualname(module)) or (whole.swap if whole is not None else None)
    if known is not None:
        return known
    base = next((b for b in _BASES if isinstance(module, b)), None)
    if base is None:
        return None
    if type(module) is not base and type(module).forward is not base.forward:
        raise ValueError(
            f"convert cannot mask {fqn or 'the model'} ({_qualname(module)}): it subclasses {base.__name__} with its "
            f"own forward, which a plain Impress layer would drop. Keep it as it is with "
            f"module_filter_fn=lambda module, fqn: fqn != {fqn!r}"
        )
    return _SWAPS[base]


# ----------------------------------------------------------------------------- convert


def convert(
    model: nn.Module,
    *,
    seed: int,
    init: str = "signed_constant",
    module_filter_fn: FilterFn | None = None,
    keep_bias: bool = False,
) -> nn.Module:
    """Swap Linear/Conv2d/BatchNorm for Impress layers in place and regenerate the backbone.

    ``module_filter_fn(module, fqn)`` returning False keeps a module as it is (torchao's
    convention; by default every Linear and Conv2d is masked, first and last included).
    ``keep_bias=True`` keeps each layer's bias, frozen; by default biases are dropped with a
    warning naming the layers. Returns ``model`` (a new module when ``model`` itself is a layer).
    See the module docstring for what is refused and why.
    """
    seed = _check_seed_init(seed, init)
    # every name of every module: a module registered twice must be swapped under both names
    names: dict[int, list[str]] = defaultdict(list)
    modules: dict[int, nn.Module] = {}
    for fqn, module in model.named_modules(remove_duplicate=False):
        names[id(module)].append(fqn)
        modules[id(module)] = module

    plan: dict[int, Callable] = {}
    for key, module in modules.items():
        fqns = names[key]
        kept = {fqn: module_filter_fn is None or bool(module_filter_fn(module, fqn)) for fqn in fqns}
        if len(set(kept.values())) > 1:
            raise ValueError(
                f"module_filter_fn keeps {[f for f, k in kept.items() if k]} but not "
                f"{[f for f, k in kept.items() if not k]}, which are one module registered under several names"
            )
        if not all(kept.values()):
            continue
        swap = _swap_function(module, fqns[0])
        if swap is not None:
            plan[key] = swap
    # an attention module swapped whole replaces its children (out_proj, qkv, proj) with its own
    whole_swaps = {whole.swap for whole in _WHOLE_SWAPS.values()}  # a plain subclass takes its base's swap
    swapped_whole = [names[k][0] for k in plan if plan[k] in whole_swaps]
    for key in list(plan):
        if any(all(_inside(f, outer) for f in names[key]) for outer in swapped_whole):
            del plan[key]

    _refuse_weights_read_elsewhere(model, names, modules, plan)
    _refuse_shared_parameters(names, modules, plan)

    existing = impress_layers(model)
    if existing:
        return _second_conversion(model, seed, init, existing, [names[k][0] for k in plan])

    dropped = [names[k][0] for k in plan if not keep_bias and _has_bias(modules[k])]
    replacements = {key: swap(modules[key], keep_bias) for key, swap in plan.items()}
    if id(model) in replacements:
        model = replacements[id(model)]
    else:
        for key, new in replacements.items():
            for fqn in names[key]:
                parent, _, attr = fqn.rpartition(".")
                setattr(model.get_submodule(parent), attr, new)
    if dropped:
        shown = ", ".join(dropped[:8]) + (f" and {len(dropped) - 8} more" if len(dropped) > 8 else "")
        warnings.warn(
            f"convert dropped the bias of {len(dropped)} layers ({shown}): the ImpressLearn backbone has none; "
            "pass keep_bias=True to keep them, frozen",
            stacklevel=2,
        )
    init_backbone_(model, seed, init)
    model.impress_spec = {"kind": "convert", "seed": seed, "init": init}
    return model


def _inside(fqn: str, outer: str) -> bool:
    """Whether module ``fqn`` lies strictly inside module ``outer`` ("" is the root)."""
    return fqn != outer and (outer == "" or fqn.startswith(outer + "."))


def _has_bias(module: nn.Module) -> bool:
    """Whether swapping ``module`` drops a bias (without keep_bias)."""
    if isinstance(module, nn.MultiheadAttention):
        return module.in_proj_bias is not None
    if _qualname(module) in _WHOLE_SWAPS:
        return any(m.bias is not None for m in module.modules() if isinstance(m, nn.Linear))
    # a batch norm's bias is its affine shift, which the swap to a non-affine BN drops by design
    return not isinstance(module, _BATCH_NORMS) and getattr(module, "bias", None) is not None


def _refuse_weights_read_elsewhere(model, names, modules, plan) -> None:
    for key, module in modules.items():
        # subclasses too: a subclass of an attention module reads the same weights unless proven otherwise
        reason = next((_WHOLE_SWAPS[q].reads for q in _class_names(module) if q in _WHOLE_SWAPS), None)
        if reason is None or key in plan:  # swapped whole: its replacement masks those weights itself
            continue
        inside = [names[k][0] for k in plan if any(_inside(n, names[key][0]) for n in names[k])]
        if inside:
            prefix = names[key][0]
            raise ValueError(
                f"convert cannot mask {prefix} ({type(module).__name__}): {reason}, so a mask would never reach "
                f"them. Keep it unmasked with module_filter_fn=lambda module, fqn: not fqn.startswith({prefix!r})"
                " (or a prefix covering every such module)"
            )


def _refuse_shared_parameters(names, modules, plan) -> None:
    owners: dict[int, list[str]] = defaultdict(list)
    for key, module in modules.items():
        for pname, p in module.named_parameters(recurse=False):
            owners[id(p)].append(f"{names[key][0]}.{pname}" if names[key][0] else pname)
    for key in plan:
        for pname, p in modules[key].named_parameters(recurse=False):
            if len(owners[id(p)]) > 1:
                raise ValueError(
                    f"convert cannot mask {names[key][0] or 'the model'}: its {pname} is one Parameter shared as "
                    f"{', '.join(owners[id(p)])}; swapping the layer would untie them. Register the shared layer "
                    "as one module under several names (it is then masked once), or keep it with module_filter_fn"
                )


def _second_conversion(model, seed: int, init: str, existing, pending: list[str]) -> nn.Module:
    if pending:
        raise ValueError(
            f"model already has {len(existing)} Impress layers and convert would swap {len(pending)} more "
            f"({', '.join(pending[:5])}): a second conversion would regenerate the backbone under the banks. "
            "Convert the original model once, with a module_filter_fn that selects every layer to mask"
        )
    if not _backbone_is(model, seed, init):
        spec = getattr(model, "impress_spec", None)
        was = f" (it was built with {spec})" if spec else ""
        raise ValueError(
            f"model already has Impress layers{was} and their backbone is not the one seed={seed}, init={init!r} "
            "gives: a second conversion would regenerate the backbone under its banks and coefficients"
        )
    return model
