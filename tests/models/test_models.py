"""Model registry, built-in models, and convert() on torchvision models."""

import pytest
import torch
import torch.nn as nn

from impresslearn.layers import ImpressConv2d, ImpressLinear, MultitaskNonAffineBN, impress_layers, multitask_bns
from impresslearn.models import convert, create_model, init_backbone_, list_models, model_builder


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
    with pytest.raises(ValueError, match="unknown model 'vgg'; registered: lenet300, "):
        model_builder("vgg")


@pytest.mark.parametrize("name, layers", [("resnet18", 21), ("resnet50", 54)])
def test_torchvision_resnets_are_converted_without_a_bias_and_without_a_warning(name, layers):
    pytest.importorskip("torchvision")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # convert warns when it drops a bias: there is none to drop
        model = create_model(name, num_classes=7, seed=1)
    masked = impress_layers(model)
    assert len(masked) == layers and masked[-1] is model.fc and model.fc.bias is None
    assert model.fc.weight.shape == (7, 2048 if name == "resnet50" else 512)
    assert model.impress_spec == {"kind": "registry", "name": name, "kwargs": {"num_classes": 7, "seed": 1}}


def test_model_builder_tells_which_keywords_a_model_takes():
    import inspect

    from impresslearn.models.lenet import lenet300

    assert model_builder("lenet300") is lenet300
    assert {"num_classes", "seed", "init", "in_features"} <= set(inspect.signature(model_builder("lenet300")).parameters)
    assert "in_features" not in inspect.signature(model_builder("resnet18_cifar")).parameters


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
    with pytest.warns(UserWarning, match=r"dropped the bias of 1 layers \(fc\)"):
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
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 2))
    convert(model, seed=0, module_filter_fn=lambda mod, fqn: fqn != "2")
    assert isinstance(model[0], ImpressLinear) and type(model[2]) is nn.Linear
    reflect = convert(nn.Sequential(nn.Conv2d(1, 1, 3, padding="same", padding_mode="reflect", bias=False)), seed=0)
    assert reflect[0].padding == "same" and reflect[0].padding_mode == "reflect"
    with pytest.raises(ValueError, match="no ImpressLinear"):
        convert(nn.Sequential(nn.ReLU()), seed=0)
    root = convert(nn.Linear(3, 2, bias=False), seed=0)  # the root module itself is swapped
    assert isinstance(root, ImpressLinear)
    mlp = convert(nn.Sequential(nn.Linear(4, 6, bias=False), nn.BatchNorm1d(6), nn.Linear(6, 2, bias=False)), seed=0)
    assert isinstance(mlp[1], MultitaskNonAffineBN) and mlp[1].num_features == 6


# ----------------------------------------------------------------------------- convert never changes a model silently


def test_convert_keeps_a_module_registered_twice_as_one_masked_layer():
    shared = nn.Linear(4, 4, bias=False)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    convert(model, seed=0)
    assert isinstance(model[0], ImpressLinear) and model[0] is model[2]
    assert len(impress_layers(model)) == 1
    with pytest.raises(ValueError, match="one module registered under several names"):
        convert(nn.Sequential(shared, shared), seed=0, module_filter_fn=lambda mod, fqn: fqn == "0")


def test_convert_refuses_a_parameter_shared_by_two_modules():
    a, b = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)
    b.weight = a.weight
    with pytest.raises(ValueError, match=r"one Parameter shared as 0.weight, 1.weight"):
        convert(nn.Sequential(a, b), seed=0)
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight  # a tied language-model head
    model = nn.ModuleDict({"emb": emb, "head": head, "body": nn.Linear(4, 4, bias=False)})
    with pytest.raises(ValueError, match="convert cannot mask head"):
        convert(model, seed=0)
    convert(model, seed=0, module_filter_fn=lambda mod, fqn: fqn != "head")  # excluded: the tie stays
    assert model["head"].weight is model["emb"].weight and isinstance(model["body"], ImpressLinear)


def test_second_convert_is_a_no_op_when_identical_and_an_error_otherwise():
    model = convert(nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False)), seed=5)
    layer = model[0]
    layer.add_mask(torch.ones(3, 4, dtype=torch.bool))
    assert convert(model, seed=5) is model and model[0] is layer and model[0].num_masks == 1
    before = model[0].weight.clone()
    with pytest.raises(ValueError, match="already has Impress layers.*'seed': 5.*not the one seed=6"):
        convert(model, seed=6)
    with pytest.raises(ValueError, match="already has Impress layers"):
        convert(model, seed=5, init="kaiming_normal")
    assert torch.equal(model[0].weight, before)
    model.append(nn.Linear(2, 2, bias=False))
    with pytest.raises(ValueError, match=r"would swap 1 more \(2\)"):
        convert(model, seed=5)


def test_convert_refuses_subclasses_with_their_own_forward_and_weights_read_elsewhere():
    class ScaledLinear(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    class PlainSubclass(nn.Linear):
        pass

    with pytest.raises(ValueError, match=r"cannot mask 1 \(.*ScaledLinear\).*own forward"):
        convert(nn.Sequential(nn.Linear(3, 3, bias=False), ScaledLinear(3, 3)), seed=0)
    plain = convert(nn.Sequential(PlainSubclass(3, 3, bias=False)), seed=0)
    assert isinstance(plain[0], ImpressLinear)

    attention = nn.Sequential(nn.Linear(8, 8, bias=False))
    attention.append(nn.MultiheadAttention(8, 2, bias=False))
    with pytest.raises(ValueError, match=r"cannot mask 1 \(MultiheadAttention\).*in_proj_weight"):  # out_proj alone
        convert(attention, seed=0, module_filter_fn=lambda mod, fqn: fqn != "1")
    convert(attention, seed=0, module_filter_fn=lambda mod, fqn: not fqn.startswith("1"))
    assert isinstance(attention[0], ImpressLinear) and type(attention[1].out_proj) is not ImpressLinear
    root = convert(nn.MultiheadAttention(8, 2, bias=False), seed=0)  # the root module itself is swapped
    assert len(impress_layers(root)) == 2
    for unsupported in (dict(kdim=4), dict(vdim=4), dict(add_bias_kv=True)):
        with pytest.raises(ValueError, match=r"cannot mask 0 \(MultiheadAttention\): only kdim == vdim"):
            convert(nn.Sequential(nn.MultiheadAttention(8, 2, **unsupported)), seed=0)
    convert(nn.Sequential(nn.MultiheadAttention(8, 2, kdim=8, vdim=8, bias=False)), seed=0)  # equal dims: supported
    swin = pytest.importorskip("torchvision.models.swin_transformer")
    with pytest.raises(ValueError, match=r"cannot mask 0 \(ShiftedWindowAttention\).*qkv.weight"):
        convert(nn.Sequential(swin.ShiftedWindowAttention(8, [2, 2], [1, 1], 2)), seed=0,
                module_filter_fn=lambda mod, fqn: fqn != "0")  # fmt: skip

    class MyWindowAttention(swin.ShiftedWindowAttention):  # a subclass is not swapped whole, so refused
        pass

    with pytest.raises(ValueError, match=r"cannot mask 0 \(MyWindowAttention\).*qkv.weight"):
        convert(nn.Sequential(MyWindowAttention(8, [2, 2], [1, 1], 2)), seed=0)
    with pytest.warns(UserWarning, match=r"dropped the bias of 1 layers \(0\)"):  # qkv's and the MLP's
        masked = convert(nn.Sequential(swin.ShiftedWindowAttentionV2(8, [2, 2], [1, 1], 2)), seed=0)
    assert len(impress_layers(masked)) == 4  # qkv, proj and the two layers of the position-bias MLP


def test_convert_takes_any_integer_seed_and_stores_a_plain_int():
    import json

    import numpy as np

    model = convert(nn.Sequential(nn.Linear(4, 3, bias=False)), seed=np.int64(5))
    same = convert(nn.Sequential(nn.Linear(4, 3, bias=False)), seed=5)
    assert torch.equal(model[0].weight, same[0].weight)
    assert json.dumps(model.impress_spec) == json.dumps(same.impress_spec)  # np.int64 is not JSON
    with pytest.raises(TypeError, match="seed must be an int, got bool"):
        convert(nn.Sequential(nn.Linear(4, 3, bias=False)), seed=True)


def test_a_plain_attention_subclass_is_swapped_whole_like_its_base():
    """Its forward is MultiheadAttention's: converted like its base, both projections masked once."""
    from impresslearn.layers import ImpressMultiheadAttention

    class PlainAttention(nn.MultiheadAttention):
        pass

    model = convert(nn.Sequential(PlainAttention(8, 2, bias=False)), seed=0)
    assert isinstance(model[0], ImpressMultiheadAttention)
    assert impress_layers(model) == [model[0].in_proj, model[0].out_proj]


@pytest.mark.parametrize("batch_first, bias", [(True, False), (False, True)])
def test_convert_masks_both_projections_of_multihead_attention(batch_first, bias):
    from impresslearn import task_bound
    from impresslearn.layers import ImpressMultiheadAttention

    original = nn.MultiheadAttention(8, 2, bias=bias, batch_first=batch_first)
    reference = nn.MultiheadAttention(8, 2, bias=bias, batch_first=batch_first)
    reference.load_state_dict(original.state_dict())
    model = convert(nn.Sequential(original), seed=0, keep_bias=True)
    attention = model[0]
    assert isinstance(attention, ImpressMultiheadAttention)
    assert impress_layers(model) == [attention.in_proj, attention.out_proj]
    g = torch.Generator().manual_seed(0)
    masks = [torch.rand(2, *layer.weight.shape, generator=g) < 0.5 for layer in impress_layers(model)]
    for layer, pair in zip(impress_layers(model), masks):
        for m in pair:
            layer.add_mask(m)
    alpha = torch.randn(2, 2, generator=g)
    with torch.no_grad():
        reference.in_proj_weight.copy_(attention.in_proj.weight * torch.einsum("k,koi->oi", alpha[:, 0], masks[0].float()))
        reference.out_proj.weight.copy_(attention.out_proj.weight * torch.einsum("k,koi->oi", alpha[:, 1], masks[1].float()))
    q, kv = torch.randn(3, 4, 8, generator=g), torch.randn(3, 5, 8, generator=g)  # batch 3, lengths 4 and 5
    if not batch_first:
        q, kv = q.transpose(0, 1), kv.transpose(0, 1)
    padding = torch.zeros(3, 5, dtype=torch.bool)  # [batch, source length] in both layouts
    padding[:, -1] = True
    with task_bound(model, alpha):
        got, got_weights = attention(q, kv, kv, key_padding_mask=padding)
    want, want_weights = reference(q, kv, kv, key_padding_mask=padding)
    # The masked weights are summed by the combine kernel here and by einsum in the reference:
    # measured 3.7e-8 at most (one fp32 ulp of outputs up to 0.56; 1 and 2 threads, avx2 and
    # portable). 1e-6 leaves 25x; a wrong mask or coefficient moves them by 1e-2 and more.
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(got_weights, want_weights, atol=1e-6, rtol=0)


def test_convert_biases_warn_by_name_or_stay_frozen():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(12, 2))
    with pytest.warns(UserWarning, match=r"dropped the bias of 2 layers \(0, 2\).*keep_bias=True"):
        convert(model, seed=0)
    assert model[0].bias is None and model[2].bias is None
    original = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(12, 2))
    biases = [original[0].bias.detach().clone(), original[2].bias.detach().clone()]
    kept = convert(original, seed=0, keep_bias=True)
    assert torch.equal(kept[0].bias, biases[0]) and torch.equal(kept[2].bias, biases[1])
    assert not kept[0].bias.requires_grad and torch.equal(kept[0].weight, model[0].weight)


def test_convert_keeps_timm_batchnorm_activation():
    timm_layers = pytest.importorskip("timm.layers")
    block = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), timm_layers.BatchNormAct2d(4, act_layer=nn.SiLU))
    convert(block, seed=0)
    assert isinstance(block[1][0], MultitaskNonAffineBN) and isinstance(block[1][2], nn.SiLU)


def _tiny_vit():
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(16, 8, 1, 2, 16, 32, num_classes=5)


def test_converted_model_state_dict_round_trip_and_memory_format():
    pytest.importorskip("torchvision")
    import io

    from impresslearn import add_bn_slot, task_bound

    def build(seed=3):
        cnn = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 5))
        return nn.ModuleDict({"cnn": convert(cnn, seed=seed), "vit": convert(_tiny_vit(), seed=seed)})

    with pytest.warns(UserWarning, match="dropped the bias"):
        model = build()
    g = torch.Generator().manual_seed(0)
    for layer in impress_layers(model):
        for _ in range(9):  # 9 masks: two byte planes
            layer.add_mask(torch.rand(layer.weight.shape, generator=g) < 0.5)
    last = impress_layers(model)[-1]
    last.add_mask(torch.rand(last.weight.shape, generator=g) < 0.5, extra=True)
    add_bn_slot(model), add_bn_slot(model)
    state = io.BytesIO()
    torch.save(model.state_dict(), state)

    with pytest.warns(UserWarning):
        fresh = build()
    fresh.load_state_dict(torch.load(io.BytesIO(state.getvalue()), weights_only=False))
    x = torch.randn(2, 3, 16, 16)
    alpha = torch.randn(9, len(impress_layers(model)), generator=g)
    outputs = []
    for m in (model, fresh):
        with torch.no_grad(), task_bound(m.eval(), alpha, bn_slot=1, last_layer_extra=torch.ones(1)):
            outputs.append(torch.cat([m["cnn"](x), m["vit"](x)], dim=1))
    assert torch.equal(outputs[0], outputs[1])

    fresh.to(memory_format=torch.channels_last)  # conv weights become channels_last; the forward still runs
    with torch.no_grad(), task_bound(fresh, alpha, bn_slot=1, last_layer_extra=torch.ones(1)):
        cl = torch.cat([fresh["cnn"](x.to(memory_format=torch.channels_last)), fresh["vit"](x)], dim=1)
    # bit-identical here (measured), but a CPU or build may pick another conv kernel for
    # channels_last: torch's fp32 tolerance (rtol 1.3e-6, atol 1e-5) on outputs up to ~6
    torch.testing.assert_close(cl, outputs[0])

    with pytest.warns(UserWarning):
        other = build(seed=4)
    with pytest.raises(RuntimeError, match="cnn.0: the state_dict's backbone weight differs"):
        other.load_state_dict(torch.load(io.BytesIO(state.getvalue()), weights_only=False))
