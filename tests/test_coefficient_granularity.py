"""Coefficients per output channel or per block of channels (``granularity``), from the binding API
to the learner: what each layer computes, the Eq. 2 penalty, the bytes, the checkpoint, inference."""

from __future__ import annotations

import pytest
import torch

from impresslearn import ImpressLearner, TrainConfig, _extension, inference, ops
from impresslearn.accounting import coefficient_bytes, coefficient_width
from impresslearn.checkpoint import CheckpointError, save_checkpoint
from impresslearn.layers import bind_coefficients, coefficient_columns, impress_layers, task_bound
from impresslearn.banks import compact_checkpoint
from impresslearn.learner_io import FORMAT_VERSION, learner_tensors_and_metadata
from impresslearn.models import create_model
from impresslearn.objectives import AlphaObjective, eq2_penalty
from impresslearn.scenarios import BatchLoader, create_scenario
from impresslearn.tasks import TaskRecord, check_granularity, columns_per_layer

pytestmark = pytest.mark.filterwarnings("ignore:.*optimiser steps:UserWarning")
needs_cpp = pytest.mark.skipif(not _extension.has_cpu_kernels(), reason="impresslearn._C has no C++ kernels")
ALPHA_CFG = TrainConfig(epochs=2, lr=0.05, optimizer="adam", lam=0.005)
CHANNELS = [32, 16, 10]  # the tiny LeNet's output channels per masked layer


def _tiny_lenet(seed=0):
    return create_model("lenet300", num_classes=10, seed=seed, hidden=[32, 16])


def _learner(k=11, **kw):
    learner = ImpressLearner(_tiny_lenet(), density=0.1, **kw)
    learner.add_random_masks(k, seed=3)
    return learner


def _task(t=0):
    sc = create_scenario("synthetic", num_tasks=2, train_size=256, test_size=128, seed=0)
    task = sc.task(t)
    return BatchLoader(task.train, batch_size=64, shuffle=True, seed=0), BatchLoader(task.test, batch_size=128)


# ----------------------------------------------------------------------------- the granularity value


def test_granularity_spellings_and_columns():
    assert check_granularity("layer") == "layer" and check_granularity("channel") == "channel"
    assert check_granularity(1) == "channel" and check_granularity(32) == 32
    assert columns_per_layer(CHANNELS, "layer") == [1, 1, 1]
    assert columns_per_layer(CHANNELS, "channel") == CHANNELS
    assert columns_per_layer(CHANNELS, 5) == [7, 4, 2]  # the last block of each layer is shorter
    assert columns_per_layer(CHANNELS, 100) == [1, 1, 1]
    for bad in ("row", 0, -3, 2.0, True, None):
        with pytest.raises(ValueError, match="granularity must be 'layer', 'channel' or a block size"):
            check_granularity(bad)


def test_only_new_tasks_have_finer_coefficients():
    with pytest.raises(ValueError, match="only new tasks have finer coefficients"):
        TaskRecord("b", "basis", torch.ones(1, 58), 0, mask_index=0, granularity="channel")


# ----------------------------------------------------------------------------- binding


def test_each_layer_uses_its_own_columns_per_block_of_channels():
    model = _tiny_lenet()
    learner = ImpressLearner(model)
    learner.add_random_masks(9, seed=1)
    block = 5
    widths = coefficient_columns(model, block)
    assert widths == [7, 4, 2]
    alpha = torch.randn(9, sum(widths))
    bind_coefficients(model, alpha, granularity=block)
    start = 0
    for layer, width in zip(impress_layers(model), widths):
        w_eff = layer.effective_weight()
        for c in range(layer.weight.shape[0]):  # each channel is the per-layer combine with its block's column
            column = alpha[:, start + c // block].contiguous()
            row = ops.combine_masks(layer.weight, layer.bank, column, backend="reference")[c]
            torch.testing.assert_close(w_eff[c], row, atol=1e-5, rtol=1e-5)
        start += width


@needs_cpp
def test_equal_columns_give_the_per_layer_logits_bit_for_bit():
    model = _tiny_lenet()
    learner = ImpressLearner(model, backend="cpp")
    learner.add_random_masks(13, seed=2)
    per_layer = torch.randn(13, 3)
    per_channel = torch.cat([per_layer[:, i : i + 1].expand(13, c) for i, c in enumerate(CHANNELS)], dim=1)
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad(), task_bound(model, per_layer):
        want = model(x)
    with torch.no_grad(), task_bound(model, per_channel, granularity="channel"):
        got = model(x)
    assert torch.equal(got, want)


def test_bind_refuses_a_wrong_width_and_hybrid_by_name():
    model = _tiny_lenet()
    ImpressLearner(model).add_random_masks(4, seed=0)
    with pytest.raises(ValueError, match=r"alpha has 57 columns but granularity 'channel' needs 58 .*32 \+ 16 \+ 10"):
        bind_coefficients(model, torch.ones(4, 57), granularity="channel")
    with pytest.raises(ValueError, match="hybrid task .* per-layer coefficients only"):
        bind_coefficients(model, torch.ones(4, 58), granularity="channel", skip_last=True)
    layer = impress_layers(model)[0]
    with pytest.raises(ValueError, match=r"32 output channels in blocks of 8 must be \[K', 4\]"):
        layer.use_coefficients(torch.ones(4, 3), block=8)


# ----------------------------------------------------------------------------- the objective


def test_objective_alpha_shape_and_hybrid_refused():
    learner = _learner()
    objective = AlphaObjective(learner, granularity=4)
    assert objective.alpha.shape == (11, 8 + 4 + 3)
    assert torch.all(objective.alpha == 1 / 11)
    objective.discard()
    with pytest.raises(ValueError, match="hybrid tasks have per-layer coefficients only"):
        AlphaObjective(learner, hybrid=True, granularity="channel")


def test_eq2_penalty_per_column_averaged_per_layer():
    alpha = torch.rand(6, 3)
    paper = eq2_penalty(alpha, 0.5)
    assert torch.allclose(eq2_penalty(alpha, 0.5, columns_per_layer=[1, 1, 1]), paper)
    # every column of a layer equal to the layer's column: the paper's penalty, whatever the widths
    widened = torch.cat([alpha[:, i : i + 1].expand(6, c) for i, c in enumerate([4, 2, 3])], dim=1)
    assert torch.allclose(eq2_penalty(widened, 0.5, columns_per_layer=[4, 2, 3]), paper)
    # a layer's term is the mean over its columns
    cols = torch.tensor([[0.5, 2.0, 1.0]])
    want = 0.5 * (((0.5 - 1) ** 2 + (2.0 - 1) ** 2) / 2 + 0.0)
    assert torch.allclose(eq2_penalty(cols, 0.5, columns_per_layer=[2, 1]), torch.tensor(want))
    with pytest.raises(ValueError, match="fewer than the 4"):
        eq2_penalty(cols, 0.5, columns_per_layer=[2, 2])


# ----------------------------------------------------------------------------- the learner


@pytest.mark.parametrize("granularity", ["channel", 4])
def test_learn_save_load_same_predictions(tmp_path, granularity):
    learner = _learner(fingerprint_examples=64)
    train, test = _task()
    history = learner.learn_alpha("fine", train, ALPHA_CFG, granularity=granularity)
    width = coefficient_width(CHANNELS, granularity)
    assert history.task.coefficients.shape == (11, width)
    assert history.task.granularity == check_granularity(granularity)
    learner.learn_alpha("coarse", train, ALPHA_CFG)
    x, _ = next(iter(test))
    path = tmp_path / "learner.safetensors"
    learner.save(path)
    loaded = ImpressLearner.load(path)
    for name in ("fine", "coarse"):
        assert loaded.tasks[name].granularity == learner.tasks[name].granularity
        assert torch.equal(loaded.predict(name, x), learner.predict(name, x))
    assert loaded.state_sha256() == learner.state_sha256()


def test_bytes_per_task_count_k_times_columns():
    learner = _learner(coefficient_dtype="fp16", fingerprint_examples=0)
    train, _ = _task()
    learner.learn_alpha("channel", train, ALPHA_CFG, granularity="channel")
    learner.learn_alpha("block", train, ALPHA_CFG, granularity=8)
    learner.learn_alpha("layer", train, ALPHA_CFG)
    assert learner.bytes_per_task("channel").coefficients == 2 * 11 * 58
    assert learner.bytes_per_task("block").coefficients == 2 * 11 * (4 + 2 + 2)
    assert learner.bytes_per_task("layer").coefficients == 2 * 11 * 3
    assert coefficient_bytes(11, coefficient_width(CHANNELS, 8), "fp16") == 2 * 11 * 8
    report = learner.storage_report()
    assert report["coefficient_bytes"] == 2 * 11 * (58 + 8 + 3)


def test_register_task_checks_the_width_of_its_granularity():
    learner = _learner()
    learner.register_task("ok", torch.full((11, 58), 0.1), granularity="channel")
    assert learner.tasks["ok"].granularity == "channel"
    with pytest.raises(ValueError, match=r"coefficients must be \[K_t, 15\] .*granularity 4"):
        learner.register_task("bad", torch.ones(11, 58), granularity=4)


def test_inference_by_fingerprint_works_and_per_layer_methods_refuse():
    learner = _learner(fingerprint_examples=64)
    for t in range(2):
        train, _ = _task(t)
        learner.learn_alpha(f"task {t}", train, ALPHA_CFG, granularity="channel" if t else "layer")
    _, test = _task(1)
    x, _ = next(iter(test))
    assert learner.infer_task(x) in learner.tasks  # 'auto': every task has a fingerprint
    for method in ("oneshot", "binary", "exhaustive", "calibrated"):
        with pytest.raises(ValueError, match=r"one coefficient column per layer, but task\(s\) \['task 1'\]"):
            learner.infer_task(x, method=method)
        # the module function is the one place that refuses (the learner's method calls it)
        with pytest.raises(ValueError, match=r"one coefficient column per layer, but task\(s\) \['task 1'\]"):
            inference.infer_task(learner, x, method=method)
    learner.fingerprints.pop("task 1")
    with pytest.raises(ValueError, match="give every candidate a fingerprint"):
        learner.infer_task(x)
    assert learner.infer_task(x, method="oneshot", candidates=["task 0"]) == "task 0"


def test_checkpoints_without_granularity_load_per_layer_and_bad_values_are_refused(tmp_path):
    learner = _learner(fingerprint_examples=0)
    train, test = _task()
    learner.learn_alpha("old", train, ALPHA_CFG)
    tensors, metadata = compact_checkpoint(learner, *learner_tensors_and_metadata(learner), FORMAT_VERSION)
    for entry in metadata["tasks"]:
        del entry["granularity"]  # as files written before granularity existed
    save_checkpoint(tmp_path / "old.safetensors", tensors, metadata)
    loaded = ImpressLearner.load(tmp_path / "old.safetensors")
    x, _ = next(iter(test))
    assert loaded.tasks["old"].granularity == "layer"
    assert torch.equal(loaded.predict("old", x), learner.predict("old", x))
    metadata["tasks"][0]["granularity"] = "rows"
    save_checkpoint(tmp_path / "bad.safetensors", tensors, metadata)
    with pytest.raises(CheckpointError, match="task 'old': granularity must be 'layer', 'channel'"):
        ImpressLearner.load(tmp_path / "bad.safetensors")
    metadata["tasks"][0]["granularity"] = "channel"  # 3 columns where per channel needs 58
    save_checkpoint(tmp_path / "wide.safetensors", tensors, metadata)
    with pytest.raises(CheckpointError, match=r"coefficient shape \(11, 3\) does not fit .* 58 columns"):
        ImpressLearner.load(tmp_path / "wide.safetensors")


def test_conv_layers_take_per_channel_coefficients():
    from impresslearn.layers import ImpressConv2d, ImpressLinear

    model = torch.nn.Sequential(ImpressConv2d(3, 6, 3, padding=1, seed=0), torch.nn.Flatten(),
                                ImpressLinear(6 * 5 * 5, 4, seed=1))  # fmt: skip
    for layer in impress_layers(model):
        for j in range(5):
            layer.add_mask(torch.rand(layer.weight.shape, generator=torch.Generator().manual_seed(j)) < 0.5)
    alpha = torch.randn(5, 3 + 2)  # blocks of 2 channels: ceil(6/2) + ceil(4/2) columns
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad(), task_bound(model, alpha, granularity=2):
        got = model(x)
    conv, linear = impress_layers(model)
    w_conv = ops.combine_masks_rows(conv.weight, conv.bank, alpha[:, :3].contiguous(), 2, backend="reference")
    w_lin = ops.combine_masks_rows(linear.weight, linear.bank, alpha[:, 3:].contiguous(), 2, backend="reference")
    want = torch.nn.functional.linear(torch.nn.functional.conv2d(x, w_conv, padding=1).flatten(1), w_lin)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert conv.source is None  # task_bound restored what was bound before (nothing)
