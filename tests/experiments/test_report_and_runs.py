"""Tiny end-to-end runs of each config family on synthetic stand-ins; report; Table 2 accounting."""

import json
from pathlib import Path

import pytest

from impresslearn.experiments import load_config, run_sweep
from impresslearn.experiments._accounting import AccountingRow, compute_row, count_model, run_accounting
from impresslearn.experiments._accounting import accounting_config_from_dict
from impresslearn.experiments.report import render

CONFIGS = Path(__file__).parents[2] / "configs"

# Synthetic stand-ins with the data's shapes and classes per task (no files needed).
STAND_INS = {
    "fig3_permuted_mnist": {"num_classes": 10, "input_shape": [1, 28, 28]},
    "fig6_gn_permuted_mnist": {"num_classes": 10, "input_shape": [1, 28, 28]},
    # conv nets: small images keep the CPU test short (the model adapts: global average pooling)
    "fig4_split_cifar100": {"num_classes": 5, "input_shape": [3, 8, 8]},
    "fig10_hybrid_split_cifar100": {"num_classes": 5, "input_shape": [3, 8, 8]},
    "fig5_split_imagenet": {"num_classes": 10, "input_shape": [3, 8, 8]},
    # the frontier on Split: validation choice, fp32/fp16 frontier points, SupSup (binary tasks)
    "frontier_split": {"num_classes": 2, "input_shape": [1, 8, 8]},
}


def _synthetic(name, extra=()):
    shape = STAND_INS[name]
    return ["scenario.name=synthetic",
            f"scenario.kwargs={{num_classes: {shape['num_classes']}, input_shape: {shape['input_shape']}, "
            "train_size: 64, test_size: 32}", *extra]


CASES = [pytest.param(name, [], id=name) for name in sorted(STAND_INS) if name != "fig5_split_imagenet"] + [
    # ImageNet's ResNet-50 takes minutes per run on 2 cores: by default the same config runs with
    # a tiny ResNet of the same family; the real ResNet-50 runs under -m slow.
    pytest.param("fig5_split_imagenet", ["model.name=resnet18_cifar", "model.kwargs={num_classes: 10, width: 4}"],
                 id="fig5_split_imagenet-small-resnet"),
    pytest.param("fig5_split_imagenet", ["basis.counts=[1]"], id="fig5_split_imagenet-resnet50",
                 marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name, extra", CASES)
def test_config_family_runs_end_to_end_on_synthetic(name, extra, tmp_path, request):
    if request.node.get_closest_marker("slow") and "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("ResNet-50 end to end takes minutes on 2 cores: run with -m slow")
    config = load_config(CONFIGS / f"{name}.yaml", _synthetic(name, extra), quick=True)
    context = {}
    outcome = run_sweep(config, tmp_path, context=context, progress=False)
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["complete"] and len(payload["runs"]) == len(outcome.executed) > 0
    for record in payload["runs"]:
        res = record["result"]
        assert res["mean_accuracy"] is None or 0.0 <= res["mean_accuracy"] <= 1.0
        if record["spec"]["run_kind"] == "impress":
            assert len(res["accuracies"]) == len(res["tasks"]) == len(config.new_task_indices)
            assert ("accuracy_matrix_no_labels" in res) == record["spec"]["label_free_matrix"]
        if "coefficient_dtypes" in record["spec"]:
            assert list(res["frontier"]["dtypes"]) == sorted(record["spec"]["coefficient_dtypes"])
        if "validation" in record["spec"] and record["spec"]["run_kind"] in ("supsup", "impress"):
            assert res["validation"]["chosen_override"] in record["spec"]["validation"]["alpha_candidates"] + \
                record["spec"]["validation"]["mask_candidates"]
        if record["spec"]["run_kind"] == "gn":
            assert res["num_stored_tasks"] == config.evaluate.gn_num_tasks
            assert 0.0 <= res["identification_rate"] <= 1.0
    # Masks are shared: each distinct (task, popup seed) is trained once in the sweep...
    trained = context["runner"].trained_masks
    cached = len(list((tmp_path / "cache" / "masks").glob("*.safetensors")))
    assert trained == cached
    # ...and a rerun trains nothing and computes nothing.
    context2 = {}
    again = run_sweep(config, tmp_path, context=context2, progress=False)
    assert again.executed == [] and "runner" not in context2


def test_masks_shared_across_counts_and_runs(tmp_path):
    config = load_config(CONFIGS / "fmnist_permuted.yaml", [
        "scenario.name=synthetic", "scenario.kwargs={train_size: 64, test_size: 32}", "basis.counts=[1, 2]",
        "basis.kinds=[heterogeneous, homogeneous]", "model.kwargs={hidden: [16, 8]}", "evaluate.basis_gn=false",
        "scenario.num_tasks=4"], quick=True)
    context = {}
    run_sweep(config, tmp_path, context=context, progress=False)
    # distinct masks: het tasks 0, 1; hom task 0 with a second seed; SupSup mask of new task 2
    assert context["runner"].trained_masks == 4
    # A killed sweep's masks are reused from the disk cache by the next process.
    (tmp_path / "runs").rename(tmp_path / "old_runs")
    context2 = {}
    run_sweep(config, tmp_path, context=context2, progress=False)
    assert context2["runner"].trained_masks == 0


def test_report_renders_tables_and_plots(tmp_path):
    config = load_config(CONFIGS / "fmnist_permuted.yaml", [
        "scenario.name=synthetic", "scenario.kwargs={train_size: 64, test_size: 32}",
        "model.kwargs={hidden: [16, 8]}", "basis.kinds=[heterogeneous, random]"], quick=True)
    out = tmp_path / "res"
    run_sweep(config, out, progress=False)
    md = tmp_path / "docs" / "results.md"
    text = render([out], md, intro="Scale: tiny.")
    assert "## fmnist_permuted" in text and "Scale: tiny." in text
    assert "| X |" in text and "| SupSup |" in text and "| 2 |" in text and "| r2 |" in text
    assert "basis-GN" in text
    png = tmp_path / "docs" / "results" / "fmnist_permuted" / "accuracy_by_impressions.png"
    assert png.is_file() and png.stat().st_size > 1000
    assert "](results/fmnist_permuted/accuracy_by_impressions.png)" in text
    # sections a benchmark script appended below the marker survive a new report word for word
    from impresslearn.experiments.report import KEEP_MARKER

    appended = f"{KEEP_MARKER}\n\n## Frontier\n\n| K | bytes |\n|---|---|\n| 500 | 3056 |\n"
    md.write_text(text + "\n" + appended)
    again = render([out], md, intro="Scale: tiny.")
    assert again.endswith(appended) and again.count("## fmnist_permuted") == 1 and again.count(KEEP_MARKER) == 1
    # a hand edit of a result in results.json is refused, not rendered
    from impresslearn.cli import main

    payload = json.loads((out / "results.json").read_text())
    payload["runs"][0]["result"]["mean_accuracy"] = 0.99
    (out / "results.json").write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="was changed after the run wrote it"):
        render([out], md)
    assert main(["report", str(out), "--out", str(tmp_path / "edited.md")]) == 2
    assert not (tmp_path / "edited.md").exists()
    # ... and so is the same edit with the record's checksum removed
    del payload["runs"][0]["checksum"]
    (out / "results.json").write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="checksum missing or mismatched"):
        render([out], md)


def test_table2_lenet_row_matches_the_paper_from_the_real_model():
    from impresslearn.models import create_model

    counts = count_model(create_model("lenet300", num_classes=10, in_features=784))
    assert counts == {"layer_sizes": [784 * 300, 300 * 100, 100 * 10], "bn_features": []}
    rot = compute_row(AccountingRow(dataset="RotatedMNIST", model="lenet300", basis_size=5, max_tasks=359), counts)
    # paper Table 2: mask 64.9 kB, |alpha| 15, Phi 0.96 kB, Cx 67.4
    assert round(rot["mask_kB"], 1) == 65.0 and rot["alpha_per_task"] == 15
    assert round(rot["phi_kB"], 2) == 0.96 and round(rot["compression"], 1) == 67.4
    perm = compute_row(AccountingRow(dataset="PermutedMNIST", model="lenet300", basis_size=100), counts)
    assert perm["alpha_per_task"] == 300 and round(perm["phi_kB"], 2) == 1.17 and round(perm["compression"], 1) == 55.5


def test_accounting_config_runs_and_rejects_typos(tmp_path):
    from impresslearn.experiments._config import ConfigError

    cfg = accounting_config_from_dict({"name": "t", "kind": "accounting", "rows": [
        {"dataset": "C", "model": "resnet18_cifar", "basis_size": 10, "max_tasks": 20,
         "kwargs": {"num_classes": 5, "width": 4}}]})
    (row,) = run_accounting(cfg, progress=False)
    assert row["layers"] == 21 and row["bn_stats_kB_per_task"] > 0  # 17 convs + 3 shortcuts + fc
    with pytest.raises(ConfigError, match="basis_sise"):
        accounting_config_from_dict({"rows": [{"dataset": "x", "model": "lenet300", "basis_sise": 3}]})
