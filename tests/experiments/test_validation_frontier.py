"""The runner's validation choice and accuracy-per-byte frontier (opt-in config sections).

- the choice reads only the validation split carved from the training set: scrambling the test
  labels changes test accuracy, never a validation accuracy or the choice;
- each coefficient dtype's bytes are those of ``impresslearn.accounting``, its accuracy that of
  the coefficients rounded as ``impresslearn.banks`` stores them;
- bad keys and values of the new sections are refused by name, before anything trains;
- configs without the sections keep their run ids (finished results are reused).
"""

import json

import pytest
import torch

from impresslearn import accounting
from impresslearn.banks import COEFFICIENT_DTYPES, stored_bank_bytes
from impresslearn.experiments import ConfigError, config_from_dict, expand, run_sweep
from impresslearn.experiments._runner import choose_on_validation
from impresslearn.experiments.report import render
from impresslearn.models import create_model
from impresslearn.scenarios import InMemoryDataset
from impresslearn.scenarios.synthetic import Synthetic


class ScrambledTestLabels(Synthetic):
    """The synthetic scenario with every test label replaced by a seeded random one (training
    data unchanged): anything chosen on test data would see a different world."""

    def build_task(self, t):
        train, test = super().build_task(t)
        x, y = test.tensors
        g = torch.Generator().manual_seed(1234 + t)
        return train, InMemoryDataset(x, torch.randint(0, self.num_classes, y.shape, generator=g))


def scrambled_synthetic(**kwargs):
    return ScrambledTestLabels(**kwargs)


SYNTHETIC_KWARGS = {"num_classes": 3, "input_shape": [1, 8, 8], "train_size": 96, "test_size": 48}
EVALUATE = {"supsup": True, "incorrect_mask": False, "new_tasks": True, "label_free_matrix": False,
            "frontier": True, "coefficient_dtypes": ["fp32", "fp16", "bf16"]}


def frontier_config(scenario_name="synthetic", **changes):
    data = {
        "name": "frontier_test",
        "scenario": {"name": scenario_name, "num_tasks": 3, "test_batch_size": 48, "kwargs": dict(SYNTHETIC_KWARGS)},
        "model": {"name": "resnet18_cifar", "kwargs": {"width": 4}},
        "seeds": [0],
        "basis": {"kinds": ["heterogeneous", "random"], "counts": [2], "counts_by_kind": {"random": [5]}},
        "num_new_tasks": 1,
        "mask_train": {"optimizer": "adam", "lr": 0.03, "epochs": 1, "batch_size": 32},
        "alpha_train": {"optimizer": "adam", "lr": 0.03, "epochs": 1, "batch_size": 32},
        "evaluate": dict(EVALUATE),
        "validation": {"images": 32, "alpha_candidates": [{"lr": 0.05}, {"optimizer": "rmsprop", "lr": 0.002}],
                       "mask_candidates": [{"lr": 0.03}, {"lr": 0.003}]},
    }
    data.update(changes)
    return config_from_dict(data)


@pytest.fixture(scope="module")
def frontier_runs(tmp_path_factory):
    """The same sweep on the synthetic scenario and on its copy with scrambled test labels."""
    out = {}
    for scenario in ("synthetic", f"{__name__}.scrambled_synthetic"):
        folder = tmp_path_factory.mktemp("frontier")
        run_sweep(frontier_config(scenario), folder, progress=False)
        out[scenario] = (folder, json.loads((folder / "results.json").read_text()))
    return out


def _by_label(payload):
    return {r["label"]: r["result"] for r in payload["runs"]}


def test_validation_choice_never_reads_test_labels(frontier_runs):
    (_, plain), (_, scrambled) = frontier_runs.values()
    plain, scrambled = _by_label(plain), _by_label(scrambled)
    assert plain.keys() == scrambled.keys() and len(plain) == 3  # SupSup, heterogeneous x2, random x5
    test_changed = False
    for label, result in plain.items():
        other = scrambled[label]
        # every candidate's validation accuracies, and so the choice, are the same bit for bit ...
        assert result["validation"] == other["validation"], label
        assert len(result["validation"]["candidates"]) == 2
        chosen = result["validation"]["chosen"]
        means = [c["mean_validation_accuracy"] for c in result["validation"]["candidates"]]
        assert means[chosen] == max(means)
        # ... while the test accuracies the report shows come from the (scrambled) test set
        test_changed |= result["accuracies"] != other["accuracies"]
    assert test_changed


def test_choice_takes_the_best_mean_and_the_first_on_ties():
    phase = {"optimizer": "adam", "lr": 0.03}
    candidates = [{"lr": 0.1}, {"lr": 0.01}, {"optimizer": "rmsprop", "lr": 0.001}]
    choice = choose_on_validation(phase, candidates, [[0.5, 0.7], [0.7, 0.6], [0.6, 0.7]])
    assert choice["chosen"] == 1 and choice["chosen_override"] == {"lr": 0.01}
    assert choice["candidates"][0]["mean_validation_accuracy"] == pytest.approx(0.6)
    assert [c["name"] for c in choice["candidates"]] == ["adam lr 0.1", "adam lr 0.01", "rmsprop lr 0.001"]
    assert choose_on_validation(phase, candidates, [[0.5], [0.5], [0.4]])["chosen"] == 0


def test_later_seeds_reuse_the_first_seeds_choice(tmp_path):
    config = frontier_config(seeds=[0, 1], basis={"kinds": ["random"], "counts": [3]})
    run_sweep(config, tmp_path, progress=False)
    runs = {(r["spec"]["run_kind"], r["spec"]["seed"]): r for r in json.loads((tmp_path / "results.json").read_text())["runs"]}
    for kind in ("supsup", "impress"):
        first, second = runs[(kind, 0)]["result"]["validation"], runs[(kind, 1)]["result"]["validation"]
        assert len(first["candidates"]) == 2 and first["chosen_on_seed"] == 0
        assert len(second["candidates"]) == 1 and second["chosen_on_seed"] == 0
        assert second["chosen_by_run"] == runs[(kind, 0)]["run_id"]
        assert second["chosen_override"] == first["chosen_override"]


def test_frontier_bytes_per_dtype_are_the_accounting_ones(frontier_runs):
    folder, payload = frontier_runs["synthetic"]
    sizes, features = accounting.model_sizes(create_model("resnet18_cifar", num_classes=3, in_channels=1, width=4,
                                                          seed=0))
    runs = {r["label"]: r for r in payload["runs"]}
    supsup = runs["supsup seed=0 s=0.1"]["result"]
    assert supsup["bytes_per_task"] == accounting.supsup_bytes_per_task(sizes, features)
    for label, count, kind in (("heterogeneous", 2, "heterogeneous"), ("random", 5, "random")):
        result = runs[f"impress seed=0 s=0.1 {label}x{count}"]["result"]
        frontier = result["frontier"]
        owned = 0 if kind == "random" else 2 * accounting.mask_bytes(sizes)  # tasks 0 and 1 own their masks
        assert frontier["basis_owned_bank_bytes"] == owned
        draws = [{"first": 0, "count": count, "seed": 0}] if kind == "random" else []
        unowned = stored_bank_bytes(sizes, count, draws) - owned
        assert (unowned > 0) == (kind == "random")
        fingerprint = frontier["dtypes"]["fp32"]["bytes_per_task"]["fingerprint"]
        assert fingerprint > 0
        for dtype in COEFFICIENT_DTYPES:
            stored = frontier["dtypes"][dtype]["bytes_per_task"]
            expected = accounting.task_bytes("new", count, sizes, features, coefficient_dtype=dtype,
                                             bank_share=unowned, fingerprint=fingerprint)
            assert stored == expected.to_dict()
            assert stored["coefficients"] == COEFFICIENT_DTYPES[dtype].itemsize * count * len(sizes)
        # fp32 is the run's own evaluation; rounded dtypes are scored on the same test set
        assert frontier["dtypes"]["fp32"]["accuracies"] == result["accuracies"]
        assert frontier["dtypes"]["fp16"]["bytes_per_task"]["total"] < frontier["dtypes"]["fp32"]["bytes_per_task"]["total"]
    # the report gains the frontier table and figure
    md = folder / "docs" / "results.md"
    text = render([folder], md)
    assert "Accuracy per byte" in text and "| SupSup | - | fp32 |" in text and "| r5 | 5 | fp16 |" in text
    assert (folder / "docs" / "results" / "frontier_test" / "frontier.png").stat().st_size > 1000


def test_rounded_coefficients_are_what_is_scored():
    """evaluate_rounded binds the coefficients as the dtype stores them: with alpha values that
    fp16 cannot hold exactly, the fp16 score is that of a learner storing fp16."""
    from impresslearn import ImpressLearner, TrainConfig
    from impresslearn.experiments._runner import evaluate_rounded
    from impresslearn.scenarios import BatchLoader

    scenario = Synthetic(num_tasks=1, num_classes=3, input_shape=(1, 8, 8), train_size=64, test_size=64)
    task = scenario.task(0)
    learners = {}
    for dtype in ("fp32", "fp16"):
        learner = ImpressLearner(create_model("resnet18_cifar", num_classes=3, in_channels=1, width=4, seed=0),
                                 density=0.1, coefficient_dtype=dtype, fingerprint_examples=0)
        learner.add_random_masks(3, seed=0)
        learner.learn_alpha("t", BatchLoader(task.train, batch_size=32, shuffle=True, seed=0),
                            TrainConfig(epochs=1, lr=0.05, batch_size=32))
        learners[dtype] = learner
    test = BatchLoader(task.test, batch_size=64)
    logits = {}
    for dtype in learners:
        evaluate_rounded(learners["fp32"], "t", dtype, test)
        logits[dtype] = learners["fp32"].model(task.test.tensors[0])
    assert torch.equal(logits["fp16"], learners["fp16"].predict("t", task.test.tensors[0]))
    assert torch.equal(logits["fp32"], learners["fp32"].predict("t", task.test.tensors[0]))


@pytest.mark.parametrize("key, value, message", [
    ("validation", {"images": 0}, "validation.images: must be a positive integer"),
    ("validation", {"images": 10, "alpha_candidates": [{"optimiser": "adam"}]},
     r"validation.alpha_candidates\[0\]: unknown key\(s\) \['optimiser'\]"),
    ("validation", {"images": 10, "mask_candidates": [{"lr": 0.1}, {"lr": -1}]},
     r"validation.mask_candidates\[1\].lr: must be > 0"),
    ("validation", {"images": 10, "alpha_candidates": {"lr": 0.1}}, "validation.alpha_candidates: must be a list"),
    ("validation", {"images": 10, "holdout": 3}, r"validation: unknown key\(s\) \['holdout'\]"),
    ("validation", {"images": 10, "alpha_candidates": [{"lr": 0.1}, {"lr": 0.1, "weight_decay": 0.1}]},
     "validation.alpha_candidates: candidates must differ in optimizer or lr"),
    ("validation", {"images": 96}, "validation.images: 96 validation images leave none of scenario.train_subset=96"),
    ("evaluate", {**EVALUATE, "coefficient_dtypes": ["fp8"]}, "evaluate.coefficient_dtypes: unknown dtype 'fp8'"),
    ("evaluate", {**EVALUATE, "frontier": "yes"}, "evaluate.frontier: must be true or false"),
    ("evaluate", {**EVALUATE, "frontier": False}, "evaluate.coefficient_dtypes: .*evaluate.frontier: true"),
])
def test_config_errors_name_the_bad_key(key, value, message):
    changes = {key: value}
    if "train_subset" in message:
        changes["scenario"] = {"name": "synthetic", "num_tasks": 3, "train_subset": 96}
    with pytest.raises(ConfigError, match=message):
        frontier_config(**changes)


def test_configs_without_the_new_sections_keep_their_run_ids():
    no_frontier = {**EVALUATE, "frontier": False, "coefficient_dtypes": ["fp32"]}
    plain = frontier_config(validation=None, evaluate=no_frontier)
    ids = {r.run_id for r in expand(plain)}
    with_frontier = frontier_config(validation=None)
    with_validation = frontier_config(evaluate=no_frontier)
    # the opt-in sections change exactly the runs that use them
    assert {r.run_id for r in expand(with_frontier) if r.run_kind == "supsup"} <= ids
    assert not {r.run_id for r in expand(with_frontier) if r.run_kind == "impress"} & ids
    assert not {r.run_id for r in expand(with_validation) if r.run_kind in ("supsup", "impress")} & ids
    # and a config without them resolves each run to the parameters it had before they existed
    for run in expand(plain):
        assert "validation" not in run.params and "coefficient_dtypes" not in run.params
