"""ResNets: SupSup's reduced ResNet-18 (width 20, for 32x32) and torchvision's ResNet-18/50, converted."""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from ..layers import ImpressConv2d, ImpressLinear, MultitaskNonAffineBN
from ._registry import register_model
from .convert import convert, init_backbone_


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = ImpressConv2d(in_planes, planes, 3, stride, 1)
        self.bn1 = MultitaskNonAffineBN(planes)
        self.conv2 = ImpressConv2d(planes, planes, 3, 1, 1)
        self.bn2 = MultitaskNonAffineBN(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(ImpressConv2d(in_planes, planes, 1, stride), MultitaskNonAffineBN(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ReducedResNet18(nn.Module):
    """The GEM/SupSup reduced ResNet-18 for Split CIFAR-100: 4 stages of 2 blocks, widths nf*(1,2,4,8)."""

    def __init__(self, num_classes: int = 5, in_channels: int = 3, width: int = 20, blocks=(2, 2, 2, 2)):
        super().__init__()
        self.conv1 = ImpressConv2d(in_channels, width, 3, 1, 1)
        self.bn1 = MultitaskNonAffineBN(width)
        stages, in_planes = [], width
        for i, count in enumerate(blocks):
            planes = width * 2**i
            for j in range(count):
                stages.append(_BasicBlock(in_planes, planes, 2 if (i > 0 and j == 0) else 1))
                in_planes = planes
        self.layers = nn.Sequential(*stages)
        self.linear = ImpressLinear(in_planes, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        # adaptive pooling: SupSup's avg_pool2d(4) for 32x32, and still one cell for 28x28
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


@register_model
def resnet18_cifar(
    *, num_classes: int = 5, in_channels: int = 3, width: int = 20, seed: int = 0, init: str = "signed_constant",
    blocks=(2, 2, 2, 2),
) -> nn.Module:  # fmt: skip
    """SupSup's reduced ResNet-18 (width 20) for 32x32 inputs; ``in_channels=1`` for 28x28 grayscale."""
    return init_backbone_(ReducedResNet18(num_classes, in_channels, width, tuple(blocks)), seed, init)


def _converted_torchvision_resnet(name: str, num_classes: int, seed: int, init: str) -> nn.Module:
    """torchvision's ResNet ``name``, every conv and linear masked. Its classifier is rebuilt without
    the bias torchvision gives it: the ImpressLearn backbone has none (convert would warn)."""
    import torchvision

    model = getattr(torchvision.models, name)(num_classes=num_classes)
    model.fc = nn.Linear(model.fc.in_features, model.fc.out_features, bias=False)
    return convert(model, seed=seed, init=init)


@register_model
def resnet18(*, num_classes: int = 1000, seed: int = 0, init: str = "signed_constant") -> nn.Module:
    """torchvision's ResNet-18, every conv and linear masked."""
    return _converted_torchvision_resnet("resnet18", num_classes, seed, init)


@register_model
def resnet50(*, num_classes: int = 1000, seed: int = 0, init: str = "signed_constant") -> nn.Module:
    """torchvision's ResNet-50, every conv and linear masked."""
    return _converted_torchvision_resnet("resnet50", num_classes, seed, init)
