"""Registry and factory, and the synthetic scenario (no files) the other tests train on."""

import pytest
import torch

from impresslearn.scenarios import Scenario, Task, create_scenario, list_scenarios, register_scenario


def test_every_documented_scenario_is_registered():
    names = {"permuted_mnist", "rotated_mnist", "split_cifar100", "split_imagenet", "permuted_fmnist",
             "rotated_fmnist", "split_fmnist", "synthetic"}
    assert names <= set(list_scenarios())


def test_mnist_like_scenarios_register_under_their_declared_name_and_data_set():
    from impresslearn.scenarios import mnist, resolve_scenario

    expected = {
        "permuted_mnist": (mnist.PermutedMNIST, "mnist", 10),
        "permuted_fmnist": (mnist.PermutedFashionMNIST, "fashion_mnist", 10),
        "rotated_mnist": (mnist.RotatedMNIST, "mnist", 10),
        "rotated_fmnist": (mnist.RotatedFashionMNIST, "fashion_mnist", 10),
        "split_mnist": (mnist.SplitMNIST, "mnist", 5),
        "split_fmnist": (mnist.SplitFashionMNIST, "fashion_mnist", 5),
    }
    for name, (cls, dataset, default_num_tasks) in expected.items():
        assert resolve_scenario(name) is cls
        assert (cls.name, cls.dataset, cls.default_num_tasks) == (name, dataset, default_num_tasks)
    with pytest.raises(TypeError, match="dataset= \\(one of \\['fashion_mnist', 'mnist'\\]\\).*'emnist'"):
        class Unknown(mnist.PermutedScenario, name="_test_only", dataset="emnist"):
            pass
    with pytest.raises(TypeError, match="takes name= and dataset="):
        class Unnamed(mnist.PermutedScenario, dataset="mnist"):
            pass
    assert "_test_only" not in list_scenarios()


def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match="unknown scenario 'nope'; known: .*synthetic"):
        create_scenario("nope")


def test_register_twice_is_refused():
    from impresslearn.scenarios import _registry

    try:
        @register_scenario("_test_only")
        class Tiny(Scenario):
            pass

        assert "_test_only" in list_scenarios()
        with pytest.raises(ValueError, match="already registered"):
            register_scenario("_test_only")(lambda: None)
    finally:
        _registry._SCENARIOS.pop("_test_only", None)


def test_synthetic_tasks_are_deterministic_and_distinct():
    a = create_scenario("synthetic", num_tasks=3, seed=0)
    b = create_scenario("synthetic", num_tasks=3, seed=0, cache_size=0)
    assert (a.name, a.num_tasks, a.num_classes, a.input_shape) == ("synthetic", 3, 10, (1, 28, 28))
    t = a.task(1)
    assert isinstance(t, Task) and t.name == "synthetic/1" and (len(t.train), len(t.test)) == (1000, 500)
    assert torch.equal(t.train.inputs, b.task(1).train.inputs)
    assert not torch.equal(a.task(0).train.inputs, t.train.inputs)
    assert a.task(1) is t  # cached
    assert t.train.targets.min() == 0 and t.train.targets.max() == 9
    assert list(task.index for task in a) == [0, 1, 2]


def _centroids(dataset, num_classes):
    x, y = dataset.tensors
    return torch.stack([x[y == c].flatten(1).mean(0) for c in range(num_classes)])


def _accuracy(centroids, dataset):
    x, y = dataset.tensors
    return (torch.cdist(x.flatten(1), centroids).argmin(1) == y).float().mean().item()


def test_synthetic_rule_is_learnable_and_task_specific():
    sc = create_scenario("synthetic", num_tasks=2, num_classes=10, input_shape=(1, 8, 8), train_size=500,
                         test_size=500, noise=1.0)
    c0 = _centroids(sc.task(0).train, 10)
    assert _accuracy(c0, sc.task(0).test) > 0.95      # learnable from the training split
    assert _accuracy(c0, sc.task(1).test) < 0.3       # another task's rule: about chance (0.1)


def test_task_index_is_checked():
    sc = create_scenario("synthetic", num_tasks=2)
    with pytest.raises(IndexError, match="tasks 0..1, asked for task 2"):
        sc.task(2)
    with pytest.raises(TypeError):
        sc.task(1.0)
    with pytest.raises(ValueError, match="num_tasks"):
        create_scenario("synthetic", num_tasks=0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(train_subset=0), "train_subset must be a positive int"),
    (dict(test_subset=2.5), "test_subset must be a positive int"),
    (dict(subset_mode="last"), "subset_mode must be 'first' or 'random'"),
])
def test_bad_subset_options_fail_at_construction(tmp_path, kwargs, message):
    # Checked before looking for files: the error is about the option, not missing data.
    with pytest.raises(ValueError, match=message):
        create_scenario("permuted_mnist", root=tmp_path, **kwargs)
