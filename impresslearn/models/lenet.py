"""LeNet-300-100 (784-300-100-10), SupSup's and the paper's MNIST model: three masked Linear layers."""

from __future__ import annotations

import torch.nn as nn

from ..layers import ImpressLinear
from ._registry import register_model
from .convert import init_backbone_


class LeNet300(nn.Module):
    def __init__(self, num_classes: int = 10, in_features: int = 784, hidden: tuple[int, int] = (300, 100)):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = ImpressLinear(in_features, hidden[0])
        self.fc2 = ImpressLinear(hidden[0], hidden[1])
        self.fc3 = ImpressLinear(hidden[1], num_classes)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.relu(self.fc1(self.flatten(x)))
        x = self.relu(self.fc2(x))
        return self.fc3(x)


@register_model
def lenet300(
    *, num_classes: int = 10, in_features: int = 784, seed: int = 0, init: str = "signed_constant", hidden=(300, 100)
) -> nn.Module:
    """LeNet-300-100; ``hidden`` shrinks it for tests."""
    return init_backbone_(LeNet300(num_classes, in_features, tuple(hidden)), seed, init)
