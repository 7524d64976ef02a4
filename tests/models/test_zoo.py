"""Model zoo: convert torchvision and timm models and check every forward against a dense model.

For each model: convert a copy, give every masked layer K = 13 random masks and bind random
coefficients ``alpha[13, d]`` (BN on a fresh slot, eval mode). The reference is the original
architecture computed densely: each converted layer's weight set to ``W * sum_k alpha[k] M_k``
with the masks and the sum computed here (float32, mask by mask), its bias zero, and each BN
set to what a fresh slot does (mean 0, variance 1, no affine). Both forwards must agree at fp32
tolerance. Models that ``convert`` refuses are listed with the reason it must give.

Small models and reduced configurations of the big families run by default on 32x32 or
64x64 inputs; the full-size architectures run under ``-m slow``. ``python tests/models/test_zoo.py
[--slow]`` prints the table (model, converted layers, max error or the reason refused).
"""

from __future__ import annotations

import copy
import math
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
import torch.nn as nn

from impresslearn import convert, impress_layers, multitask_bns, ops, set_bn_slot, task_bound
from impresslearn.layers import ImpressConv2d, ImpressLinear

K = 13
TOLERANCE = 2e-5  # max |converted - dense| over max |dense|; measured up to 2.1e-6 (fp32 sums through ~100 layers)


@dataclass(frozen=True)
class ZooCase:
    name: str
    build: Callable[[], nn.Module]
    input_size: int = 32
    refused: str | None = None  # the reason convert must give (a regex), or None: it must convert
    slow: bool = False


def _tv(name: str, **kwargs) -> Callable[[], nn.Module]:
    def build():
        import torchvision

        return torchvision.models.get_model(name, weights=None, **kwargs)

    return build


def _tv_class(path: str, *args, **kwargs) -> Callable[[], nn.Module]:
    """A torchvision family class at a reduced size (the family's code path, a fraction of the cost)."""

    def build():
        import importlib

        module, _, cls = path.rpartition(".")
        return getattr(importlib.import_module(module), cls)(*args, **kwargs)

    return build


def _tv_convnext_small_config():
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    return ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=10)


def _tv_resnet(block: str, layers, **kwargs):
    def build():
        from torchvision.models import resnet

        return resnet.ResNet(getattr(resnet, block), layers, num_classes=10, **kwargs)

    return build


def _tv_swin_v2_small_config():
    from torchvision.models.swin_transformer import SwinTransformer, SwinTransformerBlockV2, PatchMergingV2

    return SwinTransformer([4, 4], 16, [1, 1], [1, 2], [4, 4], block=SwinTransformerBlockV2,
                           downsample_layer=PatchMergingV2, num_classes=10)  # fmt: skip


def _tv_efficientnet_small_config():
    from torchvision.models.efficientnet import EfficientNet, MBConvConfig

    blocks = [MBConvConfig(1, 3, 1, 16, 8, 1), MBConvConfig(6, 3, 2, 8, 16, 1), MBConvConfig(6, 5, 2, 16, 24, 1)]
    return EfficientNet(blocks, dropout=0.0, num_classes=10)


def _timm(name: str, **kwargs) -> Callable[[], nn.Module]:
    def build():
        timm = pytest.importorskip("timm")
        return timm.create_model(name, pretrained=False, num_classes=10, **kwargs)

    return build



CASES = [
    # torchvision, default run: the small members of each family, reduced configurations of the big ones
    ZooCase("resnet18", _tv("resnet18", num_classes=10)),
    ZooCase("resnext (ResNet, Bottleneck [1,1,1,1], 32x4d)", _tv_resnet("Bottleneck", [1, 1, 1, 1], groups=32, width_per_group=4)),
    ZooCase("wide_resnet (ResNet, Bottleneck [1,1,1,1], width 128)", _tv_resnet("Bottleneck", [1, 1, 1, 1], width_per_group=128)),
    ZooCase("mobilenet_v2", _tv("mobilenet_v2", num_classes=10)),
    ZooCase("mobilenet_v3_small", _tv("mobilenet_v3_small", num_classes=10)),
    ZooCase("efficientnet (3 MBConv stages)", _tv_efficientnet_small_config),
    ZooCase("regnet_x_400mf", _tv("regnet_x_400mf", num_classes=10)),
    ZooCase("regnet_y_400mf", _tv("regnet_y_400mf", num_classes=10)),
    ZooCase("convnext (2 stages, widths 16/32)", _tv_convnext_small_config),
    ZooCase("densenet (growth 8, blocks 2,2)", _tv_class("torchvision.models.densenet.DenseNet", 8, (2, 2), 16, num_classes=10)),
    ZooCase("shufflenet_v2_x0_5", _tv("shufflenet_v2_x0_5", num_classes=10)),
    ZooCase("squeezenet1_1", _tv("squeezenet1_1", num_classes=10), input_size=64),
    ZooCase("vgg (VGG11 features, 32x32)", _tv("vgg11", num_classes=10), slow=True),
    ZooCase(
        "vit (2 layers, width 32, patch 8)",
        _tv_class("torchvision.models.vision_transformer.VisionTransformer", 32, 8, 2, 2, 32, 64, num_classes=10),
    ),
    ZooCase(
        "swin (depths 1,1, width 16)",
        _tv_class("torchvision.models.swin_transformer.SwinTransformer", [4, 4], 16, [1, 1], [1, 2], [4, 4], num_classes=10),
    ),
    ZooCase("swin_v2 (depths 1,1, width 16)", _tv_swin_v2_small_config),
    ZooCase(
        "maxvit (2 stages, width 16/32)",
        _tv_class("torchvision.models.maxvit.MaxVit", (32, 32), 8, 2, [16, 32], [1, 1], 8, 0.0, num_classes=10),
    ),
    # torchvision, the full architectures
    ZooCase("resnet50", _tv("resnet50", num_classes=10), slow=True),
    ZooCase("resnext50_32x4d", _tv("resnext50_32x4d", num_classes=10), slow=True),
    ZooCase("wide_resnet50_2", _tv("wide_resnet50_2", num_classes=10), slow=True),
    ZooCase("efficientnet_b0", _tv("efficientnet_b0", num_classes=10), slow=True),
    ZooCase("convnext_tiny", _tv("convnext_tiny", num_classes=10), slow=True),
    ZooCase("densenet121", _tv("densenet121", num_classes=10), slow=True),
    ZooCase("vit_b_16", _tv("vit_b_16", num_classes=10), input_size=224, slow=True),
    ZooCase("swin_t", _tv("swin_t", num_classes=10), slow=True),
    ZooCase("swin_v2_t", _tv("swin_v2_t", num_classes=10), slow=True),
    ZooCase("maxvit_t", _tv("maxvit_t", num_classes=10), input_size=224, slow=True),
    # timm
    ZooCase("timm resnet18", _timm("resnet18"), slow=True),
    ZooCase("timm efficientnet_b0 (BatchNormAct2d)", _timm("efficientnet_b0")),
    ZooCase("timm mobilenetv3_small_050", _timm("mobilenetv3_small_050")),
    ZooCase("timm convnext_atto", _timm("convnext_atto")),
    ZooCase("timm vit_tiny (img 32, patch 8)", _timm("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2)),
    ZooCase("timm mixnet_s (MixedConv2d)", _timm("mixnet_s")),
    ZooCase("timm tf_efficientnet_b0", _timm("tf_efficientnet_b0"), refused=r"Conv2dSame\).*own forward"),
    ZooCase("timm resnetv2_50x1_bit", _timm("resnetv2_50x1_bit"), refused=r"StdConv2d\).*own forward", slow=True),
]


# ----------------------------------------------------------------------------- the comparison


def _random_masks(n: int, generator: torch.Generator) -> torch.Tensor:
    """``bool[K, n]``: K independent fair-coin masks, bit j of random byte g giving mask 8g + j."""
    masks = torch.empty(K, n, dtype=torch.bool)
    for g in range(math.ceil(K / 8)):
        byte = torch.randint(0, 256, (n,), generator=generator, dtype=torch.uint8)
        for j in range(min(8, K - 8 * g)):
            masks[8 * g + j] = (byte >> j) & 1
    return masks


def _combined(masks: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """``sum_k coefficients[k] * masks[k]`` in float32, one mask at a time (big layers stay in memory)."""
    out = torch.zeros(masks.shape[1])
    for mask, a in zip(masks, coefficients.tolist()):
        out.add_(mask.float(), alpha=a)
    return out


def _dense_parameters(reference: nn.Module, fqn: str) -> tuple[nn.Parameter, nn.Parameter | None]:
    """The weight and bias of the original architecture that masked layer ``fqn`` replaced."""
    parent_name, _, name = fqn.rpartition(".")
    parent = reference.get_submodule(parent_name)
    if isinstance(parent, nn.MultiheadAttention) and name == "in_proj":  # q, k, v stacked in one Parameter
        return parent.in_proj_weight, parent.in_proj_bias
    module = reference.get_submodule(fqn)
    return module.weight, module.bias


def _bn_as_fresh_slot(module: nn.modules.batchnorm._BatchNorm) -> None:
    """A BatchNorm that computes what MultitaskNonAffineBN does on a fresh slot in eval mode."""
    with torch.no_grad():
        module.running_mean.zero_()
        module.running_var.fill_(1.0)
        if module.affine:
            module.weight.fill_(1.0)
            module.bias.zero_()


def check_case(case: ZooCase) -> dict:
    """Convert, bind, compare; returns a table row (raises on any mismatch)."""
    torch.manual_seed(0)
    reference = case.build().eval()
    model = copy.deepcopy(reference)
    if case.refused is not None:
        with pytest.raises(ValueError, match=case.refused) as refused:
            convert(model, seed=0)
        reason = str(refused.value).split(". ")[0]
        return {"model": case.name, "layers": "-", "result": f"refused: {reason}"}

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="convert dropped the bias")  # the dense side zeroes them too
        model = convert(model, seed=0)
    model.eval()
    named = {fqn: m for fqn, m in model.named_modules() if isinstance(m, (ImpressLinear, ImpressConv2d))}
    layers = impress_layers(model)
    assert len(named) == len(layers)
    plain_left = [fqn for fqn, m in model.named_modules() if type(m) in (nn.Linear, nn.Conv2d)]
    assert not plain_left, f"layers left unmasked: {plain_left[:5]}"

    generator = torch.Generator().manual_seed(1)
    alpha = torch.randn(K, len(layers), generator=generator) * math.sqrt(2.0 / K)  # keeps each layer's gain ~1
    column = {id(layer): i for i, layer in enumerate(layers)}
    dense_weights = {}
    for fqn, layer in named.items():
        masks = _random_masks(layer.weight.numel(), generator)
        layer.load_banks_(ops.pack_masks(masks), K, layer.extra_bank, 0)
        dense_weights[fqn] = layer.weight * _combined(masks, alpha[:, column[id(layer)]]).view_as(layer.weight)

    for bn in multitask_bns(model):
        bn.add_slot()
    for fqn, weight in dense_weights.items():
        dense_weight, dense_bias = _dense_parameters(reference, fqn)
        with torch.no_grad():
            dense_weight.copy_(weight)
            if dense_bias is not None:
                dense_bias.zero_()
    for module in reference.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            _bn_as_fresh_slot(module)

    x = torch.randn(2, 3, case.input_size, case.input_size, generator=generator)
    with torch.no_grad(), task_bound(model, alpha, bn_slot=0):
        got = model(x)
    with torch.no_grad():
        want = reference(x)
    assert torch.isfinite(want).all() and want.abs().max() > 0
    error = ((got - want).abs().max() / want.abs().max()).item()
    assert error < TOLERANCE, f"{case.name}: relative max error {error:.2e}"
    set_bn_slot(model, None)
    return {"model": case.name, "layers": str(len(layers)), "result": f"max error {error:.1e} (relative to max |y|)"}


def _slow_requested(config) -> bool:
    return "slow" in (config.getoption("markexpr") or "")


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.name, marks=[pytest.mark.slow] if c.slow else []) for c in CASES]
)
def test_zoo(case, request):
    if case.slow and not _slow_requested(request.config):
        pytest.skip("full-size architecture: run with -m slow")
    row = check_case(case)
    print(f"\n{row['model']} | {row['layers']} | {row['result']}")


def test_zoo_table_lists_every_family_of_the_issue():
    names = " ".join(c.name for c in CASES)
    for family in ("resnet", "resnext", "wide_resnet", "mobilenet_v2", "mobilenet_v3", "efficientnet", "regnet",
                   "convnext", "densenet", "shufflenet", "squeezenet", "vgg", "vit", "swin", "maxvit"):  # fmt: skip
        assert family in names, family
    assert sum(c.name.startswith("timm") for c in CASES) >= 5


def main(argv: list[str]) -> None:
    slow = "--slow" in argv
    print("| model | converted layers | max error, or the reason refused |")
    print("|---|---|---|")
    for case in CASES:
        if case.slow and not slow:
            continue
        start = time.process_time()
        row = check_case(case)
        cpu = time.process_time() - start
        print(f"| {row['model']} | {row['layers']} | {row['result']} |  ({cpu:.1f} s CPU)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
