"""The runner's ``alpha_granularity``: new tasks learn alpha per channel or per block of channels.

- the new tasks' coefficients have the granularity's columns (``accounting.coefficient_width``),
  with and without a validation split, and every byte count of the run (the learner's, the
  frontier's per dtype) counts those columns through ``accounting.task_bytes(num_columns=)``;
- the report names the granularity in the frontier table and the scale line;
- bad values, and evaluations that read one coefficient column per layer, are refused by name;
- configs without the key, or with ``layer``, keep their run ids.
"""

import json

import pytest

from impresslearn import accounting
from impresslearn.banks import COEFFICIENT_DTYPES
from impresslearn.experiments import ConfigError, config_from_dict, expand, run_sweep
from impresslearn.experiments.report import render
from impresslearn.models import create_model

pytestmark = pytest.mark.filterwarnings("ignore:.*optimiser steps:UserWarning")  # tiny data on purpose

HIDDEN = [16, 8]  # LeNet with 16, 8 and 3 output channels: per block of 4, 4 + 2 + 1 = 7 columns
EVALUATE = {"supsup": True, "incorrect_mask": False, "new_tasks": True, "label_free_matrix": False,
            "frontier": True, "coefficient_dtypes": ["fp32", "fp16"]}


def granularity_config(**changes):
    data = {
        "name": "granularity_test",
        "scenario": {"name": "synthetic", "num_tasks": 2, "test_batch_size": 48,
                     "kwargs": {"num_classes": 3, "input_shape": [1, 8, 8], "train_size": 96, "test_size": 48}},
        "model": {"name": "lenet300", "kwargs": {"hidden": HIDDEN}},
        "seeds": [0],
        "basis": {"kinds": ["random"], "counts": [3]},
        "num_new_tasks": 1,
        "mask_train": {"optimizer": "adam", "lr": 0.03, "epochs": 1, "batch_size": 32},
        "alpha_train": {"optimizer": "adam", "lr": 0.03, "epochs": 1, "batch_size": 32},
        "alpha_granularity": 4,
        "evaluate": dict(EVALUATE),
    }
    data.update(changes)
    return config_from_dict(data)


def sizes_and_features():
    return accounting.model_sizes(create_model("lenet300", num_classes=3, in_features=64, hidden=HIDDEN, seed=0))


@pytest.mark.parametrize("validation", [None, {"images": 32, "alpha_candidates": [{"lr": 0.05}, {"lr": 0.01}]}],
                         ids=["all training data", "validation split"])
def test_new_tasks_learn_and_are_counted_at_the_configured_granularity(tmp_path, validation):
    config = granularity_config(validation=validation)
    assert config.alpha_granularity == 4
    run_sweep(config, tmp_path, progress=False)
    payload = json.loads((tmp_path / "results.json").read_text())
    (impress,) = [r for r in payload["runs"] if r["spec"]["run_kind"] == "impress"]
    assert impress["spec"]["alpha_granularity"] == 4
    sizes, features = sizes_and_features()
    columns = accounting.coefficient_width([16, 8, 3], 4)
    assert columns == 7
    result = impress["result"]
    # the learner's own count: alpha[3, 7] in fp32 (per layer it would be alpha[3, 3])
    assert result["bytes_per_task"]["coefficients"] == 4 * 3 * columns
    fingerprint = result["frontier"]["dtypes"]["fp32"]["bytes_per_task"]["fingerprint"]
    for dtype in ("fp32", "fp16"):
        stored = result["frontier"]["dtypes"][dtype]["bytes_per_task"]
        expected = accounting.task_bytes("new", 3, sizes, features, coefficient_dtype=dtype, num_columns=columns,
                                         bank_share=stored["bank_share"], fingerprint=fingerprint)  # fmt: skip
        assert stored == expected.to_dict()
        assert stored["coefficients"] == COEFFICIENT_DTYPES[dtype].itemsize * 3 * columns
    text = render([tmp_path], tmp_path / "docs" / "results.md")
    assert "| r3 | 3 | fp16, per 4 channels |" in text and "| SupSup | - | fp32 |" in text
    assert "epoch(s), batch 32, coefficients per 4 channels;" in text


def test_the_written_config_reads_back_with_its_granularity(tmp_path):
    config = granularity_config(alpha_granularity="channel")
    again = config_from_dict(json.loads(json.dumps(config.to_dict())))
    assert again.alpha_granularity == "channel" and again == config
    assert granularity_config(alpha_granularity=1).alpha_granularity == "channel"  # one spelling


def test_per_layer_configs_keep_their_run_ids():
    layer = granularity_config(alpha_granularity="layer")
    without = config_from_dict({k: v for k, v in layer.to_dict().items() if k != "alpha_granularity"})
    assert without.alpha_granularity == "layer"
    assert [r.run_id for r in expand(layer)] == [r.run_id for r in expand(without)]
    assert all("alpha_granularity" not in r.params for r in expand(layer))  # as before the key existed
    finer = {r.run_id for r in expand(granularity_config())}
    assert {r.run_id for r in expand(layer) if r.run_kind == "supsup"} <= finer  # SupSup learns no alpha
    assert not {r.run_id for r in expand(layer) if r.run_kind == "impress"} & finer


@pytest.mark.parametrize("changes, message", [
    (dict(alpha_granularity=0), "alpha_granularity: granularity must be 'layer', 'channel' or a block size"),
    (dict(alpha_granularity="row"), "alpha_granularity: granularity must be"),
    (dict(alpha_granularity=True), "alpha_granularity: granularity must be"),
    (dict(alpha_granularity=2.0), "alpha_granularity: granularity must be"),
    (dict(evaluate={**EVALUATE, "hybrid": True}), "evaluate.hybrid: must be false with alpha_granularity 4"),
    (dict(evaluate={**EVALUATE, "label_free_matrix": True}), "evaluate.label_free_matrix: must be false with"),
    (dict(evaluate={**EVALUATE, "gn": True, "gn_num_tasks": 1, "gn_basis_kind": "random"}),
     "evaluate.gn: must be false with alpha_granularity 4"),
    (dict(evaluate={**EVALUATE, "basis_gn": True}), "evaluate.basis_gn: must be false with alpha_granularity 4"),
])  # fmt: skip
def test_bad_granularities_and_per_layer_evaluations_are_refused_by_name(changes, message):
    with pytest.raises(ConfigError, match=message):
        granularity_config(**changes)
