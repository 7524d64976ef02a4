"""Model registry, built-in models, and convert() on torchvision models."""

import pytest
import torch
import torch.nn as nn

from impresslearn.layers import ImpressConv2d, ImpressLinear, MultitaskNonAffineBN, impress_layers, multitask_bns
from impresslearn.models import convert, create_model, init_backbone_, list_models


def _bind_first_mask(model):
    """Give every layer one random mask and bind it (what a learner does for a basis task)."""
    g = torch.Generator().manual_seed(0)
    for layer in impress_layers(model):
        layer.add_mask_from_scores(torch.rand(layer.weight.shape, generator=g), 0.5)
        layer.use_coefficients(torch.ones(1))
    for bn in multitask_bns(model):
        bn.add_slot()
        bn.task_slot = 0
    return model


def test_registry():
    assert {"lenet300", "resnet18_cifar", "resnet18", "resnet50"} <= set(list_models())
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        create_model("vgg")


def test_lenet300_shapes_spec_and_seed():
    m = create_model("lenet300", num_classes=10, seed=3)
    shapes = [tuple(layer.weight.shape) for layer in impress_layers(m)]
    assert shapes == [(300, 784), (100, 300), (10, 100)]
    assert m.impress_spec == {"kind": "registry", "name": "lenet300", "kwargs": {"num_classes": 10, "seed": 3}}
    same = create_model("lenet300", num_classes=10, seed=3)
    other = create_model("lenet300", num_classes=10, seed=4)
    for a, b, c in zip(impress_layers(m), impress_layers(same), impress_layers(other)):
        assert torch.equal(a.weight, b.weight)
        assert not torch.equal(a.weight, c.weight)
        assert a.bias is None and not a.weight.requires_grad
    out = _bind_first_mask(m)(torch.randn(4, 1, 28, 28))
    assert out.shape == (4, 10)


def test_resnet18_cifar_masks_every_layer_and_runs_on_28x28_gray():
    m = create_model("resnet18_cifar", num_classes=10, in_channels=1, seed=0)
    layers = impress_layers(m)
    assert isinstance(layers[0], ImpressConv2d) and layers[0].weight.shape == (20, 1, 3, 3)
    assert isinstance(layers[-1], ImpressLinear) and layers[-1].weight.shape == (10, 160)
    assert len(layers) == 21  # 1 + 16 block convs + 3 shortcuts + linear, as in the paper's Table 2
    assert not any(isinstance(mod, (nn.Conv2d, nn.Linear)) and not isinstance(mod, (ImpressConv2d, ImpressLinear))
                   for mod in m.modules())  # fmt: skip
    _bind_first_mask(m).train()
    assert m(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    m.eval()
    assert m(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_convert_torchvision_resnet18_keeps_shapes_and_masks_everything():
    torchvision = pytest.importorskip("torchvision")
    ref = torchvision.models.resnet18(num_classes=7)
    ref_shapes = {n: tuple(mod.weight.shape) for n, mod in ref.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear))}
    num_bn = sum(isinstance(mod, nn.BatchNorm2d) for mod in ref.modules())
    m = convert(torchvision.models.resnet18(num_classes=7), seed=1)
    got = {n: mod for n, mod in m.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear))}
    assert {n: tuple(mod.weight.shape) for n, mod in got.items()} == ref_shapes
    assert all(isinstance(mod, (ImpressConv2d, ImpressLinear)) for mod in got.values())
    assert all(mod.bias is None for mod in got.values())
    assert len(multitask_bns(m)) == num_bn and not any(isinstance(x, nn.BatchNorm2d) for x in m.modules())
    assert got["conv1"].stride == (2, 2) and got["conv1"].padding == (3, 3)
    before = [layer.weight.clone() for layer in impress_layers(m)]
    init_backbone_(m, seed=1)  # regenerating from the same seed gives the same bits
    assert all(torch.equal(a, b.weight) for a, b in zip(before, impress_layers(m)))
    assert m.impress_spec == {"kind": "convert", "seed": 1, "init": "signed_constant"}
    _bind_first_mask(m).eval()
    assert m(torch.randn(2, 3, 64, 64)).shape == (2, 7)


def test_convert_filter_and_bad_modules():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    convert(model, seed=0, module_filter_fn=lambda mod, fqn: fqn != "2")
    assert isinstance(model[0], ImpressLinear) and type(model[2]) is nn.Linear
    with pytest.raises(ValueError, match="padding_mode"):
        convert(nn.Sequential(nn.Conv2d(1, 1, 3, padding_mode="reflect")), seed=0)
    with pytest.raises(ValueError, match="no ImpressLinear"):
        convert(nn.Sequential(nn.ReLU()), seed=0)
    root = convert(nn.Linear(3, 2), seed=0)  # the root module itself is swapped
    assert isinstance(root, ImpressLinear)
    mlp = convert(nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2)), seed=0)
    assert isinstance(mlp[1], MultitaskNonAffineBN) and mlp[1].num_features == 6
