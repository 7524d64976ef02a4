"""Custom data: CustomScenario from tensors or any Dataset, dotted import paths (YAML), registering
twice, and (x, y, t) batches through BatchLoader and the learner."""

import sys
import textwrap

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from impresslearn.scenarios import (
    BatchLoader,
    CustomScenario,
    Scenario,
    create_scenario,
    list_scenarios,
    register_scenario,
)
from impresslearn.scenarios import _registry


def _tensor_tasks(n_tasks=3, n_train=40, n_test=20, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    tasks = []
    for t in range(n_tasks):
        x = torch.randn(n_train + n_test, 1, 6, 6, generator=g) + t
        y = torch.randint(0, classes, (n_train + n_test,), generator=g)
        y[0] = classes - 1
        tasks.append(((x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])))
    return tasks


class _Triples(Dataset):
    """A Dataset of (x, y, task_label) examples with no tensors attribute (the DataLoader path)."""

    def __init__(self, x, y, t):
        self.x, self.y, self.t = x, y, t

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i], self.t


def test_scenario_from_tensors():
    tasks = _tensor_tasks()
    sc = CustomScenario(tasks, name="shifted")
    assert (sc.num_tasks, sc.num_classes, sc.input_shape) == (3, 4, (1, 6, 6))
    task = sc.task(2)
    assert task.name == "shifted/2" and (len(task.train), len(task.test)) == (40, 20)
    assert torch.equal(task.train.inputs, tasks[2][0][0])
    small = CustomScenario(tasks, num_tasks=2, train_subset=10, test_subset=5, subset_mode="random", seed=1)
    assert small.num_tasks == 2 and (len(small.task(1).train), len(small.task(1).test)) == (10, 5)
    assert isinstance(small, Scenario) and small.spec["num_tasks"] == 2


def test_scenario_from_any_dataset_needs_num_classes():
    x, y = torch.randn(30, 5), torch.randint(0, 3, (30,))
    pair = (_Triples(x, y, 0), _Triples(x, y, 0))
    with pytest.raises(ValueError, match="pass num_classes="):
        CustomScenario([pair])
    sc = CustomScenario([pair], num_classes=3)
    assert sc.num_classes == 3 and sc.input_shape == (5,) and sc.task(0).train is pair[0]


@pytest.mark.parametrize("tasks, message", [
    ([], "non-empty sequence"),
    ([("only one side",)], "must be a (train, test) pair"),
    ([((torch.randn(4, 2), torch.rand(4)), (torch.randn(4, 2), torch.zeros(4, dtype=torch.long)))],
     "targets must be a 1-d integer tensor"),
    ([((torch.zeros(4, 2, dtype=torch.uint8), torch.zeros(4, dtype=torch.long)),) * 2], "must be floating point"),
    ([((torch.randn(3, 2), torch.tensor([0, -1, 1])),) * 2], "class labels must be >= 0"),
    ([((torch.randn(0, 2), torch.zeros(0, dtype=torch.long)),) * 2], "is empty"),
    ([(torch.randn(4, 2), torch.randn(4, 2))], "must be a torch Dataset or an (inputs, targets) pair"),
])
def test_bad_custom_data_is_refused_clearly(tasks, message):
    with pytest.raises(ValueError) as info:
        CustomScenario(tasks)
    assert message in str(info.value)


def test_num_tasks_beyond_the_data_is_refused():
    with pytest.raises(ValueError, match="num_tasks=5 but only 3 tasks"):
        CustomScenario(_tensor_tasks(), num_tasks=5)


def test_registering_the_same_class_twice_is_harmless():
    source = textwrap.dedent("""
        @register_scenario("_test_notebook")
        class Notebook(CustomScenario):
            def __init__(self, **options):
                super().__init__(tasks, name="notebook", **options)
    """)
    try:
        for _ in range(2):  # a notebook cell run twice defines a new class object each time
            namespace = {"register_scenario": register_scenario, "CustomScenario": CustomScenario,
                         "tasks": _tensor_tasks(), "__name__": "__main__"}
            exec(source, namespace)
        assert create_scenario("_test_notebook").num_tasks == 3
        assert type(create_scenario("_test_notebook")) is namespace["Notebook"]  # the latest definition
        assert "_test_notebook" in list_scenarios()
        with pytest.raises(ValueError, match="already registered"):
            register_scenario("_test_notebook")(CustomScenario)  # a different class: refused
    finally:
        _registry._SCENARIOS.pop("_test_notebook", None)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_cl_data.py").write_text(textwrap.dedent("""
        import torch
        from impresslearn.scenarios import CustomScenario

        def shifted(num_tasks=3, seed=0, **options):
            g = torch.Generator().manual_seed(seed)
            x, y = torch.randn(96, 1, 6, 6, generator=g), torch.arange(96) % 4
            tasks = [((x[:64] + t, y[:64]), (x[64:] + t, y[64:])) for t in range(6)]
            return CustomScenario(tasks, name="shifted", num_tasks=num_tasks, seed=seed, **options)

        class Namespace:
            shifted = staticmethod(shifted)

        not_a_scenario = dict
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_cl_data"
    sys.modules.pop("my_cl_data", None)


def test_dotted_import_path(user_module):
    for name in ("my_cl_data.shifted", "my_cl_data:shifted", "my_cl_data:Namespace.shifted"):
        sc = create_scenario(name, num_tasks=2, seed=0)
        assert sc.num_tasks == 2 and sc.task(1).name == "shifted/1"
    with pytest.raises(TypeError, match="returned a dict, not a Scenario"):
        create_scenario("my_cl_data.not_a_scenario")
    with pytest.raises(ValueError, match="has no attribute 'missing'"):
        create_scenario("my_cl_data.missing")
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
        create_scenario("no_such_module_xyz.f")


def test_yaml_config_runs_a_user_scenario_by_dotted_path(user_module, tmp_path):
    import json

    from impresslearn.experiments import ConfigError, config_from_dict, run_sweep

    data = {"name": "custom", "scenario": {"name": "my_cl_data.shifted", "num_tasks": 3, "train_subset": 48},
            "model": {"name": "lenet300", "kwargs": {"hidden": [16, 8]}}, "basis": {"counts": [1]},
            "num_new_tasks": 1, "mask_train": {"epochs": 1, "lr": 0.05, "optimizer": "adam", "batch_size": 16},
            "alpha_train": {"epochs": 1, "lr": 0.05, "optimizer": "adam", "batch_size": 16},
            "evaluate": {"supsup": False, "incorrect_mask": False, "label_free_matrix": False}}
    outcome = run_sweep(config_from_dict(data), tmp_path / "out", progress=False)
    (record,) = outcome.records
    assert record["result"]["tasks"] == [1] and 0.0 <= record["result"]["mean_accuracy"] <= 1.0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["complete"]
    bad = dict(data, scenario={"name": "my_cl_data.nope", "num_tasks": 3})
    with pytest.raises(ConfigError, match="scenario.name: .*has no attribute 'nope'"):
        config_from_dict(bad)


def test_batch_loader_keeps_task_labels():
    x, y = torch.randn(10, 3), torch.arange(10) % 2
    t = torch.full((10,), 7)
    fast = list(BatchLoader(TensorDataset(x, y, t), batch_size=4, shuffle=True, seed=0))
    assert [len(b) for b in fast] == [3, 3, 3] and all(isinstance(b, tuple) for b in fast)
    assert torch.equal(torch.cat([b[2] for b in fast]), t)
    slow = list(BatchLoader(_Triples(x, y, 7), batch_size=4))
    assert all(isinstance(b, tuple) and len(b) == 3 for b in slow)
    assert torch.equal(torch.cat([b[0] for b in slow]), x) and torch.cat([b[2] for b in slow]).tolist() == [7] * 10
    plain = list(BatchLoader(TensorDataset(x, y), batch_size=4))
    assert all(len(b) == 2 for b in plain)


def test_learner_trains_on_task_labelled_batches():
    from impresslearn import ImpressLearner
    from impresslearn.config import TrainConfig
    from impresslearn.models import create_model

    sc = CustomScenario(_tensor_tasks(n_train=64))
    train = sc.task(0).train
    x, y = train.tensors
    loader = BatchLoader(TensorDataset(x, y, torch.zeros_like(y)), batch_size=16, shuffle=True)
    learner = ImpressLearner(create_model("lenet300", in_features=36, num_classes=4, hidden=[16, 8], seed=0),
                             density=0.2)
    with pytest.warns(UserWarning, match="optimiser steps"):
        learner.learn_basis_mask("a", loader, TrainConfig(epochs=1, lr=0.05, optimizer="adam"))
    assert 0.0 <= learner.evaluate("a", loader) <= 1.0


def test_readme_custom_scenario_snippet_runs():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (snippet,) = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "CustomScenario(" in b]
    namespace = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    scenario = namespace["scenario"]
    assert (scenario.num_tasks, scenario.num_classes, scenario.input_shape) == (3, 10, (1, 28, 28))
    assert scenario.task(2).name == "scaled/2" and len(scenario.task(2).test) == 100
