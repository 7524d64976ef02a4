"""``convert``: swap a model's layers for Impress layers (torchao's module-swap style).

Linear -> ImpressLinear, Conv2d -> ImpressConv2d (biases dropped: the backbone has none),
BatchNorm1d/2d -> MultitaskNonAffineBN, then the backbone is regenerated from ``seed``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from ..layers import INITS, ImpressConv2d, ImpressLinear, MultitaskNonAffineBN, impress_layers


def init_backbone_(model: nn.Module, seed: int, init: str = "signed_constant") -> nn.Module:
    """Regenerate every Impress layer's weight from one CPU generator seeded with ``seed``.

    Layers draw in module order, so the same seed gives the same weights bit for bit on any machine.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    layers = impress_layers(model)
    if not layers:
        raise ValueError("model has no ImpressLinear or ImpressConv2d layer to initialise")
    for layer in layers:
        layer.reset_backbone_(generator, init)
    return model


def _swap(module: nn.Module, fqn: str, module_filter_fn) -> nn.Module | None:
    if isinstance(module, (ImpressLinear, ImpressConv2d, MultitaskNonAffineBN)):
        return None
    keep = module_filter_fn is None or module_filter_fn(module, fqn)
    device = next(module.parameters(), torch.empty(0)).device
    if isinstance(module, nn.Linear) and keep:
        return ImpressLinear(module.in_features, module.out_features, device=device)
    if isinstance(module, nn.Conv2d) and keep:
        if module.padding_mode != "zeros":
            raise ValueError(f"{fqn}: Conv2d with padding_mode={module.padding_mode!r} is not supported (zeros only)")
        if isinstance(module.padding, str):
            raise ValueError(f"{fqn}: Conv2d with padding={module.padding!r} is not supported (integers only)")
        return ImpressConv2d(
            module.in_channels, module.out_channels, module.kernel_size, module.stride,
            module.padding, module.dilation, module.groups, device=device,
        )  # fmt: skip
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and keep:
        return MultitaskNonAffineBN(module.num_features, eps=module.eps, momentum=module.momentum or 0.1, device=device)
    return None


def convert(
    model: nn.Module,
    *,
    seed: int,
    init: str = "signed_constant",
    module_filter_fn: Callable[[nn.Module, str], bool] | None = None,
) -> nn.Module:
    """Swap Linear/Conv2d/BatchNorm for Impress layers in place and regenerate the backbone.

    ``module_filter_fn(module, fqn)`` returning False keeps a module as it is (by default every
    Linear and Conv2d is masked, first and last included). Returns ``model``.
    """

    def visit(parent: nn.Module, prefix: str) -> None:
        for name, child in parent.named_children():
            fqn = f"{prefix}.{name}" if prefix else name
            new = _swap(child, fqn, module_filter_fn)
            if new is not None:
                setattr(parent, name, new)
            else:
                visit(child, fqn)

    root = _swap(model, "", module_filter_fn)
    if root is not None:
        model = root
    else:
        visit(model, "")
    init_backbone_(model, seed, init)
    model.impress_spec = {"kind": "convert", "seed": seed, "init": init}
    return model
