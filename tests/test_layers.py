"""Impress layers: backbone init, banks, every mask source's outputs and gradients, per-task BN."""

import math

import pytest
import torch
import torch.nn.functional as F

from impresslearn import ops
from impresslearn.layers import (
    ImpressConv2d,
    ImpressLinear,
    MultitaskNonAffineBN,
    backbone_weight,
    edge_popup_scores,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _masks(k, shape, p=0.4, seed=1):
    return torch.rand(k, *shape, generator=_gen(seed)) < p


def _layer_with_masks(layer, k, seed=1, dtype=torch.float64):
    layer.reset_backbone_(_gen(0), "kaiming_normal")
    masks = _masks(k, layer.weight.shape, seed=seed)
    for m in masks:
        layer.add_mask(m)
    return layer.to(dtype), masks.to(dtype)


# ----------------------------------------------------------------------------- backbone


def test_backbone_same_seed_same_bits_and_init_scales():
    a = backbone_weight((300, 784), _gen(3), "signed_constant")
    b = backbone_weight((300, 784), _gen(3), "signed_constant")
    assert torch.equal(a, b)
    assert not torch.equal(a, backbone_weight((300, 784), _gen(4), "signed_constant"))
    std = math.sqrt(2.0 / 784)
    assert torch.allclose(a.abs(), torch.full_like(a, std))  # signed constant: +-gain/sqrt(fan_in)
    k = backbone_weight((300, 784), _gen(3), "kaiming_normal")
    assert abs(k.std().item() - std) < 0.02 * std
    assert torch.equal(torch.sign(k), torch.sign(a))  # same draw, different scaling
    with pytest.raises(ValueError, match="init must be one of"):
        backbone_weight((2, 2), _gen(0), "xavier")


def test_scores_are_kaiming_uniform():
    s = edge_popup_scores((100, 50), _gen(0))
    bound = 1 / math.sqrt(50)  # kaiming_uniform(a=sqrt(5)) bound = 1/sqrt(fan_in)
    assert s.abs().max() <= bound and s.abs().max() > 0.9 * bound
    assert torch.equal(s, edge_popup_scores((100, 50), _gen(0)))


# ----------------------------------------------------------------------------- banks


def test_bank_grows_by_planes_and_keeps_masks():
    layer = ImpressLinear(7, 5)
    masks = _masks(17, layer.weight.shape)
    for i, m in enumerate(masks):
        assert layer.add_mask(m) == i
        assert layer.bank.shape == (ops.num_planes(i + 1), 35)
    assert torch.equal(layer.masks(), masks)


@pytest.mark.parametrize("density", [0.05, 0.1, 0.5])
def test_add_mask_from_scores_keeps_exactly_k(density):
    layer = ImpressConv2d(3, 5, 3)
    scores = torch.randn(layer.weight.shape)
    idx = layer.add_mask_from_scores(scores, density)
    mask = layer.masks()[idx]
    k = ops.keep_count(layer.weight.numel(), density)
    assert int(mask.sum()) == k
    assert torch.equal(mask.reshape(-1), ops.topk_mask(scores, k, backend="reference").reshape(-1))


def test_no_source_and_bad_coefficients_raise():
    layer, _ = _layer_with_masks(ImpressLinear(4, 3), 2)
    with pytest.raises(RuntimeError, match="no mask source"):
        layer(torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="bank holds 2 masks"):
        layer.use_coefficients(torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="extra masks"):
        layer.use_coefficients(None, torch.ones(1, dtype=torch.float64))
    with pytest.raises(ValueError, match="bool"):
        layer.add_mask(torch.ones(12))


# ----------------------------------------------------------------------------- gradients


def test_coefficient_source_matches_dense_formula_and_gradcheck():
    layer, masks = _layer_with_masks(ImpressLinear(6, 5), 9)
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    alpha = torch.randn(9, dtype=torch.float64, requires_grad=True)

    def f(x, alpha):
        layer.use_coefficients(alpha)
        return layer(x)

    dense = F.linear(x, layer.weight * torch.einsum("k,koi->oi", alpha, masks))
    torch.testing.assert_close(f(x, alpha), dense)
    assert torch.autograd.gradcheck(f, (x, alpha))
    # K' < K: a task learned on the first K' masks reads only those
    a5 = alpha[:5]
    torch.testing.assert_close(f(x, a5), F.linear(x, layer.weight * torch.einsum("k,koi->oi", a5, masks[:5])))


def test_extra_masks_source_gradcheck():
    layer, masks = _layer_with_masks(ImpressLinear(5, 4), 3)
    extra = _masks(2, layer.weight.shape, seed=9)
    for m in extra:
        layer.add_mask(m, extra=True)
    extra = extra.double()
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    alpha = torch.randn(3, dtype=torch.float64, requires_grad=True)
    beta = torch.randn(2, dtype=torch.float64, requires_grad=True)

    def f(x, alpha, beta):
        layer.use_coefficients(alpha, beta)
        return layer(x)

    coeff = torch.einsum("k,koi->oi", alpha, masks) + torch.einsum("h,hoi->oi", beta, extra)
    torch.testing.assert_close(f(x, alpha, beta), F.linear(x, layer.weight * coeff))
    assert torch.autograd.gradcheck(f, (x, alpha, beta))
    # a fixed extra mask alone (hybrid last layer)
    layer.use_coefficients(None, torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight * extra[1]))


def test_superposition_source_gradcheck_in_beta():
    """alpha' = A^T beta over T stored tasks is one combine; its gradient in beta is exact."""
    layer, masks = _layer_with_masks(ImpressLinear(5, 4), 4)
    tasks = torch.randn(6, 4, dtype=torch.float64)  # A[T, K] of this layer
    x = torch.randn(3, 5, dtype=torch.float64)

    def f(beta):
        layer.use_coefficients(tasks.t() @ beta)
        return layer(x)

    beta = torch.full((6,), 1 / 6, dtype=torch.float64, requires_grad=True)
    dense = sum(beta[t] * F.linear(x, layer.weight * torch.einsum("k,koi->oi", tasks[t], masks)) for t in range(6))
    torch.testing.assert_close(f(beta), dense)
    assert torch.autograd.gradcheck(f, (beta,))


def test_conv_coefficient_source_gradcheck():
    layer, masks = _layer_with_masks(ImpressConv2d(2, 3, 3, stride=2, padding=1), 3)
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    alpha = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def f(x, alpha):
        layer.use_coefficients(alpha)
        return layer(x)

    dense = F.conv2d(x, layer.weight * torch.einsum("k,kocij->ocij", alpha, masks), stride=2, padding=1)
    torch.testing.assert_close(f(x, alpha), dense)
    assert torch.autograd.gradcheck(f, (x, alpha))


@pytest.mark.parametrize("cls", ["linear", "conv"])
def test_scores_source_straight_through_gradient(cls):
    """Edge-popup: forward W * topk(|S|); backward dL/dS = (dL/dW' * W) * sign(S) (dense formula)."""
    layer = ImpressLinear(6, 4) if cls == "linear" else ImpressConv2d(2, 3, 3, padding=1)
    layer.reset_backbone_(_gen(0), "kaiming_normal")
    layer.double()
    scores = torch.randn(layer.weight.shape, dtype=torch.float64, requires_grad=True)
    layer.use_scores(scores, 0.3)
    x = torch.randn(3, 6, dtype=torch.float64) if cls == "linear" else torch.randn(2, 2, 4, 4, dtype=torch.float64)
    out = layer(x)
    g = torch.randn_like(out)
    (grad_s,) = torch.autograd.grad(out, scores, g)

    k = ops.keep_count(scores.numel(), 0.3)
    mask = ops.topk_mask(scores.detach(), k, backend="reference")
    w_masked = (layer.weight * mask).requires_grad_(True)
    ref = F.linear(x, w_masked) if cls == "linear" else F.conv2d(x, w_masked, padding=1)
    torch.testing.assert_close(out, ref)
    (grad_w,) = torch.autograd.grad(ref, w_masked, g)
    torch.testing.assert_close(grad_s, grad_w * layer.weight * torch.sign(scores.detach()))


# ----------------------------------------------------------------------------- batch norm


def test_multitask_bn_keeps_a_slot_per_task():
    bn = MultitaskNonAffineBN(3)
    assert bn.add_slot() == 0 and bn.add_slot() == 1
    a = torch.randn(64, 3, 4, 4) * 2 + 5
    b = torch.randn(64, 3, 4, 4) * 0.5 - 3
    bn.train()
    for slot, data in ((0, a), (1, b)):
        bn.task_slot = slot
        for _ in range(60):
            bn(data)
    assert torch.allclose(bn.running_mean[0], torch.full((3,), 5.0), atol=0.3)
    assert torch.allclose(bn.running_mean[1], torch.full((3,), -3.0), atol=0.3)
    bn.eval()
    bn.task_slot = 0
    out_a = bn(a)
    assert out_a.mean().abs() < 0.2  # task 0 normalised by its own statistics
    bn.task_slot = 1
    assert bn(a).mean() > 5  # task 1's statistics do not fit task 0's data: why a shared BN fails
    bn.task_slot = None
    before = bn.running_mean.clone()
    torch.testing.assert_close(bn(b), F.batch_norm(b, None, None, training=True))
    assert torch.equal(bn.running_mean, before)  # batch statistics update nothing
    bn.task_slot = 5
    with pytest.raises(IndexError, match="slot 5"):
        bn(a)


# ----------------------------------------------------------------------------- binding a task to a model


def _two_layer_model(k=3, extra=0, seed=0):
    import torch.nn as nn

    model = nn.Sequential(ImpressLinear(5, 4, seed=seed), MultitaskNonAffineBN(4), nn.ReLU(), ImpressLinear(4, 3, seed=seed + 1))
    g = _gen(7)
    for layer in (model[0], model[3]):
        for _ in range(k):
            layer.add_mask(torch.rand(layer.weight.shape, generator=g) < 0.5)
    for _ in range(extra):
        model[3].add_mask(torch.rand(model[3].weight.shape, generator=g) < 0.5, extra=True)
    return model


def _dense(model, x, alpha, last=None, slot=None):
    """The same network written densely: W_i * sum_k alpha[k, i] B_k, BN by hand."""
    w0 = model[0].weight * torch.einsum("k,koi->oi", alpha[:, 0], model[0].masks().float()[: alpha.shape[0]])
    h = F.linear(x, w0)
    bn = model[1]
    if slot is None:
        h = F.batch_norm(h, None, None, training=True)
    else:
        h = (h - bn.running_mean[slot]) / torch.sqrt(bn.running_var[slot] + bn.eps)
    masks1 = model[3].masks().float()[: alpha.shape[0]]
    w1 = model[3].weight * torch.einsum("k,koi->oi", alpha[:, 1], masks1)
    if last is not None:
        w1 = model[3].weight * torch.einsum("h,hoi->oi", last, model[3].masks(extra=True).float()[: last.shape[0]])
    return F.linear(torch.relu(h), w1)


def test_public_api_imports_from_the_package():
    import impresslearn

    for name in ("ImpressLinear", "ImpressConv2d", "MultitaskNonAffineBN", "convert", "create_model", "list_models",
                 "ImpressLearner", "TrainConfig", "task_bound", "bind_coefficients", "bind_scores", "set_bn_slot",
                 "add_bn_slot", "drop_bn_slots_from", "unbind"):  # fmt: skip
        assert hasattr(impresslearn, name) and name in impresslearn.__all__


def test_task_bound_computes_the_task_and_restores_the_previous_binding():
    from impresslearn import add_bn_slot, task_bound

    model = _two_layer_model(k=3).eval()
    assert add_bn_slot(model) == 0 and add_bn_slot(model) == 1
    model[1].running_mean[1] = torch.randn(4)
    model[1].running_var[1] = torch.rand(4) + 0.5
    x = torch.randn(6, 5)
    with pytest.raises(RuntimeError, match="task_bound"):  # nothing bound: the error names the fix
        model(x)
    alpha = torch.randn(2, 2)  # K' = 2 < K = 3
    with task_bound(model, alpha, bn_slot=1) as bound:
        torch.testing.assert_close(bound(x), _dense(model, x, alpha, slot=1))
    with pytest.raises(RuntimeError, match="no mask source"):  # restored to unbound
        model(x)
    with task_bound(model, 2):  # a mask index: the basis task of mask 2, batch statistics
        one_hot = torch.zeros(3, 2)
        one_hot[2] = 1
        torch.testing.assert_close(model(x), _dense(model, x, one_hot))
        with task_bound(model, alpha, bn_slot=0):  # nested: the outer task comes back
            pass
        torch.testing.assert_close(model(x), _dense(model, x, one_hot))
        assert model[1].task_slot is None
    with pytest.raises(ValueError, match="columns"), task_bound(model, torch.ones(3, 5)):
        pass
    with pytest.raises(IndexError, match="BN slot 2"), task_bound(model, alpha, bn_slot=2):
        pass
    with pytest.raises(RuntimeError, match="no mask source"):  # a failed bind restores too
        model(x)


def test_bind_functions_drive_a_model_without_the_learner():
    from impresslearn import bind_coefficients, bind_scores, drop_bn_slots_from, set_bn_slot, unbind

    model = _two_layer_model(k=3, extra=2).eval()
    x = torch.randn(6, 5)
    alpha = torch.randn(3, 2)
    extra = torch.tensor([0.0, 1.0])
    bind_coefficients(model, alpha, last_layer_extra=extra)  # hybrid: last layer on its extra masks
    torch.testing.assert_close(model(x), _dense(model, x, alpha, last=extra))
    bind_coefficients(model, alpha[:, :1], last_layer_extra=extra)  # d - 1 columns are enough then
    torch.testing.assert_close(model(x), _dense(model, x, alpha, last=extra))
    with pytest.raises(ValueError, match="bank holds 3 masks"):  # checked before any layer changes
        bind_coefficients(model, torch.randn(4, 2))
    torch.testing.assert_close(model(x), _dense(model, x, alpha, last=extra))
    with pytest.raises(ValueError, match="1 columns but the model has 2 masked layers"):
        bind_coefficients(model, alpha[:, :1])
    scores = [torch.randn(4, 5), torch.randn(3, 4)]
    bind_scores(model, scores, 0.5)
    assert model[0].source.scores is scores[0]
    with pytest.raises(ValueError, match=r"scores\[1\]"):
        bind_scores(model, [scores[0], torch.randn(4, 3)], 0.5)
    bind_coefficients(model, alpha, skip_last=True)  # hybrid training: the last layer keeps its scores
    assert model[3].source.scores is scores[1] and model[0].source.alpha.shape == (3,)
    model[1].add_slot(), model[1].add_slot()
    set_bn_slot(model, 1)
    drop_bn_slots_from(model, 1)
    assert model[1].num_slots == 1 and model[1].task_slot is None
    unbind(model)
    with pytest.raises(RuntimeError, match="bind_task"):
        model(x)


# ----------------------------------------------------------------------------- constructors


def test_constructors_take_nn_arguments_plus_seed_and_init():
    import torch.nn as nn

    a, b, c = ImpressLinear(5, 3, seed=4), ImpressLinear(5, 3, seed=4), ImpressLinear(5, 3, seed=5)
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, c.weight)
    assert torch.equal(a.weight, backbone_weight((3, 5), _gen(4), "signed_constant"))
    assert torch.equal(ImpressLinear(5, 3, seed=4, init="kaiming_normal").weight, backbone_weight((3, 5), _gen(4), "kaiming_normal"))
    torch.manual_seed(11)
    d = ImpressLinear(5, 3)  # seed=None: torch's global generator, like nn.Linear
    torch.manual_seed(11)
    assert torch.equal(d.weight, ImpressLinear(5, 3).weight)
    assert a.bias is None and not a.weight.requires_grad
    with pytest.raises(ValueError, match="init must be one of"):
        ImpressLinear(2, 2, init="xavier")
    with pytest.raises(TypeError, match="seed must be an int"):
        ImpressLinear(2, 2, seed="0")

    # bias=True: a frozen bias drawn from the same seed, added after the masked product
    biased = ImpressLinear(5, 3, bias=True, seed=4)
    assert torch.equal(biased.weight, a.weight) and not biased.bias.requires_grad
    assert biased.bias.abs().max() <= 1 / math.sqrt(5) and torch.equal(biased.bias, ImpressLinear(5, 3, True, seed=4).bias)
    mask = _masks(1, (3, 5))[0]
    biased.add_mask(mask)
    biased.use_coefficients(torch.ones(1))
    x = torch.randn(4, 5)
    torch.testing.assert_close(biased(x), F.linear(x, biased.weight * mask, biased.bias))

    # every nn.Conv2d padding: strings, padding modes, even kernels ('same' pads asymmetrically)
    for kwargs in (dict(padding="same", padding_mode="reflect"), dict(padding="valid"), dict(padding=1, padding_mode="circular"),
                   dict(kernel_size=4, padding="same", dilation=2), dict(padding=2, padding_mode="replicate", bias=True, stride=2)):  # fmt: skip
        kwargs = {"kernel_size": 3, **kwargs}
        conv = ImpressConv2d(2, 3, seed=0, **kwargs)
        dense = nn.Conv2d(2, 3, **{"bias": False, **kwargs})
        mask = _masks(1, conv.weight.shape)[0]
        conv.add_mask(mask)
        conv.use_coefficients(torch.ones(1))
        with torch.no_grad():
            dense.weight.copy_(conv.weight * mask)
            if conv.bias is not None:
                dense.bias.copy_(conv.bias)
        x = torch.randn(2, 2, 7, 6)
        torch.testing.assert_close(conv(x), dense(x), msg=str(kwargs))


# ----------------------------------------------------------------------------- state_dict, dtype, memory format


def _filled(model, k, extra, slots, seed=3):
    g = _gen(seed)
    for layer in (model[0], model[3]):
        for _ in range(k):
            layer.add_mask(torch.rand(layer.weight.shape, generator=g) < 0.5)
    for _ in range(extra):
        model[3].add_mask(torch.rand(model[3].weight.shape, generator=g) < 0.5, extra=True)
    for _ in range(slots):
        slot = model[1].add_slot()
        model[1].running_mean[slot] = torch.randn(4, generator=g)
        model[1].running_var[slot] = torch.rand(4, generator=g) + 0.5
    return model


@pytest.mark.parametrize("k, extra, slots", [(1, 0, 1), (11, 3, 2), (17, 9, 5)])
def test_state_dict_round_trip_restores_banks_of_any_size(k, extra, slots):
    import io

    from impresslearn import task_bound

    model = _filled(_two_layer_model(k=0), k, extra, slots).eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    fresh = _two_layer_model(k=0).eval()  # same seeds, empty banks, no BN slot
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=False))
    for a, b in ((model[0], fresh[0]), (model[3], fresh[3])):
        assert (b.num_masks, b.num_extra) == (a.num_masks, a.num_extra)
        assert torch.equal(a.bank, b.bank) and torch.equal(a.extra_bank, b.extra_bank)
    assert fresh[1].num_slots == slots
    x, alpha = torch.randn(5, 5), torch.randn(k, 2)
    extra_alpha = torch.randn(extra) if extra else None
    with task_bound(model, alpha, bn_slot=slots - 1, last_layer_extra=extra_alpha):
        want = model(x)
    with task_bound(fresh, alpha, bn_slot=slots - 1, last_layer_extra=extra_alpha):
        assert torch.equal(fresh(x), want)


def test_state_dict_refuses_another_seed_architecture_or_bad_counts():
    import torch.nn as nn

    state = _filled(_two_layer_model(k=0), 3, 1, 1).state_dict()
    other_seed = _two_layer_model(k=0, seed=9)
    with pytest.raises(RuntimeError, match=r"0: the state_dict's backbone weight differs .* another seed"):
        other_seed.load_state_dict(state)
    assert other_seed[0].num_masks == 0 and other_seed[0].bank.shape[0] == 0  # nothing was loaded over
    wider = nn.Sequential(ImpressLinear(5, 6, seed=0), MultitaskNonAffineBN(6), nn.ReLU(), ImpressLinear(6, 3, seed=1))
    with pytest.raises(RuntimeError, match="different architecture"):
        wider.load_state_dict(state)
    bad = dict(state)
    bad["3._extra_state"] = {"format": 1, "num_masks": 9, "num_extra": 1}  # 9 masks need 2 planes, the bank has 1
    with pytest.raises(RuntimeError, match=r"bank must be uint8\[2, 12\] for 9 masks"):
        _two_layer_model(k=0).load_state_dict(bad)
    plain = nn.Sequential(nn.Linear(5, 4, bias=False))
    with pytest.raises(RuntimeError, match="backbone weight differs"):  # an ordinary layer's weights are refused
        nn.Sequential(ImpressLinear(5, 4, seed=0)).load_state_dict(plain.state_dict(), strict=False)


def test_channels_last_and_dtype_changes_after_building():
    import torch.nn as nn

    from impresslearn import task_bound

    model = nn.Sequential(ImpressConv2d(3, 4, 3, padding=1, seed=0), MultitaskNonAffineBN(4), nn.ReLU(),
                          ImpressConv2d(4, 2, 3, seed=1))  # fmt: skip
    g = _gen(2)
    for layer in (model[0], model[3]):
        for _ in range(5):
            layer.add_mask(torch.rand(layer.weight.shape, generator=g) < 0.5)
    x, alpha = torch.randn(2, 3, 8, 8), torch.randn(5, 2)
    with task_bound(model, alpha):
        want = model(x)
        model.to(memory_format=torch.channels_last)
        assert not model[0].weight.is_contiguous()
        torch.testing.assert_close(model(x.to(memory_format=torch.channels_last)), want)
        model.double()
        assert model(x.double()).dtype == torch.float64
        torch.testing.assert_close(model(x.double()), want.double(), atol=1e-5, rtol=1e-5)
        model.to(torch.bfloat16)  # the float32 coefficients still drive a bfloat16 model
        low = model(x.bfloat16())
        assert low.dtype == torch.bfloat16
        torch.testing.assert_close(low.float(), want, atol=0.05 * want.abs().max().item(), rtol=0.05)
