import json
import math

import numpy as np
import pytest

from impresslearn.metrics import (AccuracyMatrix, average_accuracy, backward_transfer, forgetting, format_matrix,
                                  format_table)

NAN = math.nan
# Three tasks; task 0 falls from 0.9 to 0.6 (peak 0.9), task 1 rises from 0.8 to 0.85.
R = np.array([[0.9, NAN, NAN],
              [0.7, 0.8, NAN],
              [0.6, 0.85, 0.7]])


def test_hand_computed_values():
    assert average_accuracy(R) == pytest.approx((0.6 + 0.85 + 0.7) / 3)
    assert backward_transfer(R) == pytest.approx(((0.6 - 0.9) + (0.85 - 0.8)) / 2)
    assert forgetting(R) == pytest.approx(((0.9 - 0.6) + (0.8 - 0.85)) / 2)


def test_forgetting_uses_the_best_earlier_accuracy_not_the_first():
    R2 = np.array([[0.5, NAN, NAN], [0.9, 0.8, NAN], [0.6, 0.8, 0.7]])
    assert forgetting(R2) == pytest.approx(((0.9 - 0.6) + 0.0) / 2)
    assert backward_transfer(R2) == pytest.approx(((0.6 - 0.5) + 0.0) / 2)


def test_no_forgetting_gives_zero():
    R3 = np.tril(np.full((4, 4), 0.9)) + np.triu(np.full((4, 4), NAN), 1)
    assert backward_transfer(R3) == 0.0 and forgetting(R3) == 0.0
    assert average_accuracy(R3) == pytest.approx(0.9)


def test_single_task():
    assert backward_transfer([[0.5]]) == 0.0 and forgetting([[0.5]]) == 0.0 and average_accuracy([[0.5]]) == 0.5


def test_missing_diagonal_is_an_error():
    with pytest.raises(ValueError, match="missing for task"):
        backward_transfer(np.array([[NAN, NAN], [0.5, 0.5]]))
    with pytest.raises(ValueError, match="2-d"):
        average_accuracy(np.zeros(3))


def test_accuracy_matrix_grows_and_round_trips():
    m = AccuracyMatrix(3, ["a", "b", "c"])
    with pytest.raises(ValueError, match="no accuracy recorded"):
        m.average_accuracy()
    m.record(0, 0, 0.9)
    m.record(1, 0, 0.7)
    m.record(1, 1, 0.8)
    assert m.learned() == 2
    assert m.average_accuracy() == pytest.approx(0.75)  # over what is learned so far
    assert m.backward_transfer() == pytest.approx(-0.2)
    m.record(2, 0, 0.6)
    m.record(2, 1, 0.85)
    m.record(2, 2, 0.7)
    np.testing.assert_array_equal(m.values, R)
    again = AccuracyMatrix.from_dict(m.to_dict())
    np.testing.assert_array_equal(again.values, m.values)
    assert again.task_names == ["a", "b", "c"]
    assert m.summary()["forgetting"] == pytest.approx(forgetting(R))
    with pytest.raises(ValueError, match="fraction"):
        m.record(0, 0, 90.0)
    with pytest.raises(IndexError):
        m.record(3, 0, 0.5)


def test_formatting():
    table = format_matrix(R, ["a", "b", "c"])
    assert table.splitlines()[2] == "| a | 90.0 |  |  |"
    assert "| c | 60.0 | 85.0 | 70.0 |" in table
    assert format_table([{"k": 5, "acc": 0.91234}]) == "| k | acc |\n|---|---|\n| 5 | 0.91 |"


def test_accuracy_summary_reads_a_run_matrix_with_holes():
    from impresslearn.metrics import accuracy_summary

    rows = [[None if math.isnan(v) else float(v) for v in row] for row in R]
    assert accuracy_summary(rows) == pytest.approx({"bwt": backward_transfer(R), "forgetting": forgetting(R)})
    assert accuracy_summary([[0.5, 0.6]]) == {"bwt": 0.0, "forgetting": 0.0}


@pytest.mark.filterwarnings("ignore:.*optimiser steps:UserWarning")
def test_experiment_runs_report_bwt_and_forgetting_from_these_metrics(tmp_path):
    """A tiny real sweep: every new-task run stores BWT and forgetting, exactly 0 (no task changes)."""
    from pathlib import Path

    from impresslearn.experiments import load_config, run_sweep

    config = load_config(Path(__file__).parents[1] / "configs" / "fmnist_permuted.yaml", [
        "scenario.name=synthetic", "scenario.kwargs={train_size: 64, test_size: 32}", "basis.kinds=[random]",
        "model.kwargs={hidden: [16, 8]}", "evaluate.basis_gn=false", "num_new_tasks=2", "scenario.num_tasks=4",
        "evaluate.supsup=false", "evaluate.incorrect_mask=false"], quick=True)  # fmt: skip
    run_sweep(config, tmp_path, progress=False)
    results = json.loads((tmp_path / "results.json").read_text())["runs"]
    impress = [r["result"] for r in results if r["spec"]["run_kind"] == "impress"]
    assert impress and all(res["bwt"] == 0.0 and res["forgetting"] == 0.0 for res in impress)
