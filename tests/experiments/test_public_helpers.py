"""The experiment modules reach other modules through public names only.

- the config checks the YAML sections and Table 2's rows share (``require``,
  ``check_positive_int``) are public in ``impresslearn.config``; no experiment module imports
  an underscored name from another module;
- the runner sizes a model's input from the keyword arguments its registered builder accepts,
  read through the public ``impresslearn.models.model_builder``.
"""

import ast
from pathlib import Path

import numpy as np
import pytest

import impresslearn.experiments
from impresslearn.config import ConfigError, check_positive_int, require
from impresslearn.experiments._runner import RunContext, factory_kwargs
from impresslearn.models import list_models

EXPERIMENTS = Path(impresslearn.experiments.__file__).parent


def test_no_experiment_module_imports_a_private_name():
    private = []
    for path in sorted(EXPERIMENTS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                private += [f"{path.name}: from {'.' * node.level}{node.module or ''} import {alias.name}"
                            for alias in node.names if alias.name.startswith("_")]  # fmt: skip
    assert private == []


@pytest.mark.parametrize("value", [1, 7, np.int64(3)])
def test_check_positive_int_accepts_integers_from_one_as_int(value):
    checked = check_positive_int(value, "k")
    assert checked == int(value) and type(checked) is int


@pytest.mark.parametrize("value", [0, -2, True, 2.0, "3", None])
def test_check_positive_int_refuses_by_key(value):
    with pytest.raises(ConfigError, match=r"^rows\[0\]\.basis_size: must be a positive integer, got"):
        check_positive_int(value, "rows[0].basis_size")


def test_check_positive_int_takes_none_only_when_allowed():
    assert check_positive_int(None, "k", allow_none=True) is None
    with pytest.raises(ConfigError, match="must be a positive integer or null, got 0"):
        check_positive_int(0, "k", allow_none=True)


def test_require_raises_with_the_key_in_front():
    require(True, "k", "never shown")
    with pytest.raises(ConfigError, match=r"^seeds: has duplicates$"):
        require(False, "seeds", "has duplicates")


def test_factory_kwargs_are_the_registered_builders_parameters():
    # every builder takes the keywords the runner always passes (a restatement of
    # inspect.signature here could not fail; these are what the runner relies on)
    for name in list_models():
        assert {"num_classes", "seed", "init"} <= factory_kwargs(name), name
    # what the runner reads them for: sizing the input to the data set
    assert {"in_features", "num_classes", "seed", "init"} <= factory_kwargs("lenet300")
    assert "in_channels" in factory_kwargs("resnet18_cifar") and "in_features" not in factory_kwargs("resnet18_cifar")


def test_factory_kwargs_refuses_an_unknown_model_naming_the_registered_ones():
    with pytest.raises(ValueError, match=r"unknown model 'lenet_300'; registered: .*lenet300"):
        factory_kwargs("lenet_300")


def test_new_learner_sizes_the_model_input_to_the_scenario(tmp_path):
    scenario = {"name": "synthetic", "num_tasks": 2, "seed": 0, "train_subset": None, "test_subset": None,
                "test_batch_size": 16, "kwargs": {"num_classes": 3, "input_shape": [2, 5, 5],
                                                  "train_size": 8, "test_size": 8}}  # fmt: skip
    ctx = RunContext(tmp_path)
    lenet = ctx.new_learner({"scenario": scenario, "model": {"name": "lenet300", "init": "signed_constant",
                                                             "kwargs": {"hidden": [6, 4]}}}, seed=0, density=0.5)
    assert lenet.model.impress_spec["kwargs"]["in_features"] == 2 * 5 * 5
    resnet = ctx.new_learner({"scenario": scenario, "model": {"name": "resnet18_cifar", "init": "signed_constant",
                                                              "kwargs": {"width": 4}}}, seed=0, density=0.5)
    assert resnet.model.impress_spec["kwargs"]["in_channels"] == 2
    assert "in_features" not in resnet.model.impress_spec["kwargs"]
