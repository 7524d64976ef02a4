"""One definition of bytes per task in the runner's report: two figures, labelled apart, both
``impresslearn.accounting``'s.

A tiny sweep (LeNet on synthetic data; 2 heterogeneous impressions, 3 random masks, SupSup; 2 new
tasks) is reported, and the numbers in its new-task table, its frontier table and results.csv are
checked against ``impresslearn.accounting`` computed here from the model itself:

- "bytes per new task": coefficients + BN statistics + fingerprint + the share of the bank masks
  no basis task owns, split over the run's new tasks (the heterogeneous masks are the basis tasks'
  own: not charged; the random masks' seed record is). The new-task table and the frontier's fp32
  row show the same number;
- "... + the basis masks it needs": the basis tasks' own masks added, spread over the new tasks;
  equal to the first figure for random masks and for SupSup;
- on this run and on the committed Split frontier records (older: no bytes_per_new_task), the
  second figure is the first plus the basis tasks' own masks over the new tasks.
"""

import csv
import json
from pathlib import Path

import pytest

from impresslearn import accounting
from impresslearn.experiments import config_from_dict, run_sweep
from impresslearn.experiments._sweep import recorded_task_bytes
from impresslearn.experiments.report import BYTES_PER_NEW_TASK, BYTES_WITH_BASIS_MASKS, render
from impresslearn.learner import ImpressLearner
from impresslearn.models import create_model

pytestmark = pytest.mark.filterwarnings("ignore:.*optimiser steps:UserWarning")  # tiny data on purpose

HIDDEN = [16, 8]
NEW_TASKS = 2
DENSITY = 0.5


def tiny_config():
    return config_from_dict({
        "name": "bytes_test",
        "scenario": {"name": "synthetic", "num_tasks": 4, "test_batch_size": 32,
                     "kwargs": {"num_classes": 3, "input_shape": [1, 8, 8], "train_size": 64, "test_size": 32}},
        "model": {"name": "lenet300", "kwargs": {"hidden": HIDDEN}},
        "densities": [DENSITY],
        "seeds": [0],
        "basis": {"kinds": ["heterogeneous", "random"], "counts": [2], "counts_by_kind": {"random": [3]}},
        "num_new_tasks": NEW_TASKS,
        "mask_train": {"optimizer": "adam", "lr": 0.03, "epochs": 1, "batch_size": 32},
        "alpha_train": {"optimizer": "adam", "lr": 0.03, "epochs": 1, "batch_size": 32},
        "evaluate": {"supsup": True, "incorrect_mask": False, "new_tasks": True, "label_free_matrix": False,
                     "frontier": True, "coefficient_dtypes": ["fp32", "fp16"]},
    })  # fmt: skip


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bytes")
    run_sweep(tiny_config(), folder, progress=False)
    text = render([folder], folder / "docs" / "results.md")
    return folder, text


def _model():
    return create_model("lenet300", seed=0, num_classes=3, in_features=64, hidden=HIDDEN)


def _table_rows(text: str, header_cell: str) -> tuple[list[str], dict[tuple, list[str]]]:
    """(header, rows by their first cells) of the markdown table whose header has ``header_cell``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| ") and header_cell in line)
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[tuple(cells[:3])] = cells
    return header, rows


def _number(cell: str) -> float:
    return float(cell.replace(",", ""))


def expected_figures(fingerprint: int) -> dict:
    """(bytes per new task, with the basis masks) per impression set, and per dtype, from accounting."""
    sizes, features = accounting.model_sizes(_model())
    one_mask = accounting.mask_bytes(sizes)
    random_learner = ImpressLearner(_model(), density=DENSITY)
    random_learner.add_random_masks(3, seed=0)
    random_bank = accounting.stored_bank_bytes(sizes, 3, random_learner.random_mask_draws)

    def new_task(k, share, dtype="fp32"):
        return accounting.task_bytes("new", k, sizes, features, coefficient_dtype=dtype, bank_share=share,
                                     fingerprint=fingerprint).total  # fmt: skip

    supsup = accounting.supsup_bytes_per_task(sizes, features)
    return {
        # the two heterogeneous masks are basis tasks 0 and 1's own: nothing of the bank is charged...
        "2": (new_task(2, 0), new_task(2, 2 * one_mask / NEW_TASKS), {"fp16": new_task(2, 0, "fp16")}),
        # ...a random bank's seed record is stored for the new tasks alone
        "r3": (new_task(3, random_bank / NEW_TASKS), new_task(3, random_bank / NEW_TASKS),
               {"fp16": new_task(3, random_bank / NEW_TASKS, "fp16")}),
        "SupSup": (supsup, supsup, {}),
    }


def _fingerprint_bytes(folder) -> int:
    payload = json.loads((folder / "results.json").read_text())
    (het,) = [r for r in payload["runs"] if r["label"].endswith("heterogeneousx2")]
    fingerprint = het["result"]["bytes_per_new_task"]["fingerprint"]
    assert fingerprint == 4 * 64 + 4  # fp16 mean and variance of the default 64 projections, fp32 entropy
    return fingerprint


def test_the_two_labels_cannot_be_mistaken(reported):
    _, text = reported
    assert BYTES_PER_NEW_TASK != BYTES_WITH_BASIS_MASKS and "basis masks" in BYTES_WITH_BASIS_MASKS
    header, _ = _table_rows(text, BYTES_WITH_BASIS_MASKS)
    assert header[-2:] == [BYTES_PER_NEW_TASK, BYTES_WITH_BASIS_MASKS]
    frontier_header, _ = _table_rows(text, "x fewer than SupSup")
    assert BYTES_PER_NEW_TASK in frontier_header and BYTES_WITH_BASIS_MASKS not in frontier_header
    assert "bytes / task" not in text and "bytes / new task" not in text  # the old, ambiguous labels


def test_new_task_table_shows_both_accounting_figures(reported):
    folder, text = reported
    expected = expected_figures(_fingerprint_bytes(folder))
    _, rows = _table_rows(text, BYTES_WITH_BASIS_MASKS)
    by_label = {cells[0]: cells for cells in rows.values()}
    for label, (new, with_basis, _) in expected.items():
        cells = by_label[label]
        assert (_number(cells[-2]), _number(cells[-1])) == (round(new), round(with_basis)), label
    # the heterogeneous impressions are where the two differ: by the two basis masks over 2 new tasks
    sizes, _ = accounting.model_sizes(_model())
    assert _number(by_label["2"][-1]) - _number(by_label["2"][-2]) == accounting.mask_bytes(sizes)


def test_frontier_table_shows_the_bytes_per_new_task_of_the_new_task_table(reported):
    folder, text = reported
    expected = expected_figures(_fingerprint_bytes(folder))
    header, rows = _table_rows(text, "x fewer than SupSup")
    column = header.index(BYTES_PER_NEW_TASK)
    sizes, _ = accounting.model_sizes(_model())
    for label, k in (("2", "2"), ("r3", "3")):
        new, _, per_dtype = expected[label]
        assert _number(rows[(label, k, "fp32")][column]) == round(new)
        assert _number(rows[(label, k, "fp16")][column]) == round(per_dtype["fp16"])
    assert _number(rows[("SupSup", "-", "fp32")][column]) == expected["SupSup"][0]
    owned = header.index("basis tasks' own masks (B, not charged)")
    assert _number(rows[("2", "2", "fp32")][owned]) == 2 * accounting.mask_bytes(sizes)


def test_results_csv_has_both_figures(reported):
    folder, _ = reported
    expected = expected_figures(_fingerprint_bytes(folder))
    with open(folder / "results.csv") as f:
        rows = list(csv.DictReader(f))
    labels = {"heterogeneous": "2", "random": "r3"}
    for row in rows:
        label = "SupSup" if row["run_kind"] == "supsup" else labels[row["basis_kind"]]
        new, with_basis, _ = expected[label]
        assert float(row["bytes_per_new_task"]) == pytest.approx(new)
        assert float(row["bytes_per_new_task_with_basis_masks"]) == pytest.approx(with_basis)


def test_the_learners_figure_is_the_new_task_figure_plus_the_basis_masks(reported):
    """The relation new_task_bytes documents, on this run and on the committed Split frontier runs
    (recorded before bytes_per_new_task: their fp32 frontier point is read instead)."""
    folder, _ = reported
    docs = Path(__file__).parents[2] / "docs" / "results"
    files = [folder / "results.json"] + sorted(docs.glob("frontier_split*/results.json"))
    checked = 0
    for path in files:
        for record in json.loads(path.read_text())["runs"]:
            if record["spec"]["run_kind"] != "impress":
                continue
            res = record["result"]
            new, with_basis = recorded_task_bytes(record)
            owned = res.get("basis_owned_bank_bytes", res["frontier"]["basis_owned_bank_bytes"])
            assert with_basis == pytest.approx(new + owned / len(res["tasks"])), (path, record["label"])
            checked += 1
    assert checked >= 2 + 2 * 3  # this run's two, and at least the committed runs of one set per file


def _record(run_kind, result):
    return {"spec": {"run_kind": run_kind}, "result": result}


def test_recorded_task_bytes_of_each_kind_of_record():
    frontier = {"basis_owned_bank_bytes": 100, "dtypes": {"fp16": {"bytes_per_task": {"total": 30.0}},
                                                          "fp32": {"bytes_per_task": {"total": 40.0}}}}  # fmt: skip
    assert recorded_task_bytes(_record("supsup", {"bytes_per_task": 500})) == (500, 500)
    assert recorded_task_bytes(_record("incorrect_mask", {"mean_accuracy": 0.1})) == (None, None)
    assert recorded_task_bytes(_record("impress", {"bytes_per_task": {"total": 90.0}, "frontier": frontier})) == (
        40.0, 90.0)  # an older record: its fp32 frontier point
    recorded = {"bytes_per_task": {"total": 90.0}, "bytes_per_new_task": {"total": 41.0}, "frontier": frontier}
    assert recorded_task_bytes(_record("impress", recorded)) == (41.0, 90.0)
    # a run without the frontier recorded before bytes_per_new_task: only the learner's figure
    assert recorded_task_bytes(_record("impress", {"bytes_per_task": {"total": 90.0}})) == (None, 90.0)
