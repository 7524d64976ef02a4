"""impresslearn._integers: the one rule for what an integer argument or stored count is."""

import numpy as np
import pytest

from impresslearn._integers import is_count, is_integer


@pytest.mark.parametrize("value", [0, -3, 2**70, np.int64(5), np.uint8(7)])
def test_any_integer_type_is_an_integer(value):
    assert is_integer(value)


@pytest.mark.parametrize("value", [True, False, np.bool_(True), 8.0, "8", None, np.float32(2.0)])
def test_bools_floats_and_strings_are_not(value):
    assert not is_integer(value)
    assert not is_count(value)


def test_a_count_is_an_integer_of_at_least_the_minimum():
    assert is_count(0) and is_count(np.int32(4), 4) and not is_count(3, 4) and not is_count(-1)
    assert not is_count(True, 1)  # a bool is never a count, even where it would pass the bound


def test_the_layers_follow_the_rule():
    """ImpressLinear's seed, BN slots and mask indices: numpy integers in (kept as int), bools out."""
    import torch

    from impresslearn.layers import ImpressLinear, add_bn_slot, drop_bn_slots_from, one_hot_coefficients, set_bn_slot
    from impresslearn.models import create_model

    layer = ImpressLinear(5, 3, seed=np.int64(4))
    assert type(layer.seed) is int and torch.equal(layer.weight, ImpressLinear(5, 3, seed=4).weight)
    with pytest.raises(TypeError, match="seed must be an int or None, got bool"):
        ImpressLinear(5, 3, seed=True)
    model = create_model("resnet18_cifar", num_classes=10, seed=0, in_channels=1, width=4)
    add_bn_slot(model)
    set_bn_slot(model, np.int64(0))
    with pytest.raises(TypeError, match="BN slot must be an int or None, got bool"):
        set_bn_slot(model, True)
    with pytest.raises(ValueError, match="slot must be an int >= 0, got True"):
        drop_bn_slots_from(model, True)
    with pytest.raises(ValueError, match="mask index must be an int >= 0, got False"):
        one_hot_coefficients(model, False)


def test_the_scenarios_and_the_sweep_follow_the_rule(tmp_path):
    """BatchLoader, create_scenario, granularity and run_sweep's max_runs: numpy integers in, bools out."""
    import torch

    from impresslearn.experiments._sweep import run_sweep
    from impresslearn.scenarios import BatchLoader, InMemoryDataset, create_scenario
    from impresslearn.tasks import check_granularity

    with pytest.raises(TypeError, match="targets must be a torch.Tensor"):
        InMemoryDataset(torch.zeros(6, 2), np.zeros(6, dtype=np.int64))  # said "must be int64, got int64"
    data = InMemoryDataset(torch.zeros(6, 2), torch.zeros(6, dtype=torch.int64))
    assert len(list(BatchLoader(data, batch_size=np.int64(4)))) == 2
    with pytest.raises(ValueError, match="batch_size"):
        BatchLoader(data, batch_size=True)
    assert create_scenario("synthetic", num_tasks=np.int64(2), train_size=8, test_size=8, seed=0).num_tasks == 2
    with pytest.raises(ValueError, match="num_tasks"):
        create_scenario("synthetic", num_tasks=True, train_size=8, test_size=8, seed=0)
    assert check_granularity(np.int64(4)) == 4 and check_granularity(np.int8(1)) == "channel"
    with pytest.raises(ValueError, match="granularity must be .*got True"):
        check_granularity(True)
    for bad in (True, 2.0):  # refused before the output folder is locked or the config read
        with pytest.raises(ValueError, match=f"max_runs must be a positive integer or None, got {bad!r}"):
            run_sweep(None, tmp_path / "out", max_runs=bad)
    assert not (tmp_path / "out").exists()
