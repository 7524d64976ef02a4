"""The frontier's preset and the frontier script's model selection (issue 14)."""

import argparse
import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch

from impresslearn import TrainConfig
from impresslearn.config import ConfigError
from impresslearn.models import create_model
from impresslearn.presets import PRESETS, Preset, get_preset
from impresslearn.scenarios import BatchLoader, create_scenario
from tests.test_demo import run_demo

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:.*optimiser steps:UserWarning")  # tiny data on purpose


def _frontier_script():
    spec = importlib.util.spec_from_file_location("frontier", ROOT / "benchmarks" / "frontier.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_preset_meets_the_byte_budget_and_builds_its_learner():
    preset = get_preset("random500-fp16")
    learner = preset.make_learner(create_model("lenet300", num_classes=10, seed=0, hidden=[32, 16]), seed=3)
    assert learner.num_masks == 500 and learner.coefficient_dtype == "fp16" and learner.density == 0.1
    assert learner.random_mask_draws == [dict(first=0, count=500, seed=3)]
    learner.register_task("t", torch.rand(500, learner.num_layers))
    b = learner.bytes_per_task("t")
    assert b.coefficients == 500 * 3 * 2 and b.bank_share == 56  # the 500 masks are one seed record + hash
    # on the full LeNet-300-100 the preset stores 3,056 B per new task against SupSup's 33,275 B
    frontier = _frontier_script()
    assert frontier.task_bytes("random", 500, "fp16", 1) == 3_056
    assert frontier.task_bytes("supsup", 1, "fp32", 0) == 33_275 >= 10 * 3_056


def test_unknown_presets_and_bad_fields_are_refused_by_name():
    with pytest.raises(KeyError, match=r"no preset named 'fast'; known presets: \['random500-fp16'\]"):
        get_preset("fast")
    with pytest.raises(ConfigError, match="coefficient_dtype"):
        Preset("p", 0.1, 10, "fp8", TrainConfig(), "")
    with pytest.raises(ConfigError, match="random_masks: must be >= 1"):
        Preset("p", 0.1, 0, "fp16", TrainConfig(), "")
    assert set(PRESETS) == {"random500-fp16"}


def test_the_demo_runs_with_the_preset(tmp_path, capsys):
    out = run_demo(tmp_path, capsys, "--preset", "random500-fp16", "--basis-tasks", "1", "--new-tasks", "1",
                   "--train-subset", "300", "--test-subset", "128", "--mask-epochs", "1", "--alpha-epochs", "1")  # fmt: skip
    assert "1 basis tasks, 500 random masks, 1 new tasks" in out
    # alpha[501, 3] in fp16 = 3,006 B (+ its task-inference fingerprint): a tenth of SupSup's mask at most
    new_task = re.search(r"a new task adds ([0-9.]+) KiB vs SupSup's 32.50 KiB", out)
    assert new_task and 10 * float(new_task.group(1)) <= 32.50
    assert "reloaded predictions identical: True" in out
    # stored: the basis mask (33,275 B) + the random draw's record and hash (56 B), not 16 MB of planes
    assert "32.55 KiB stored (random masks as their seed), coefficients 2.94 KiB (fp16)" in out
    # 16.8 MB of bank planes in memory; the file holds one plane (the basis mask) and no random bits
    assert (tmp_path / "demo" / "learner.safetensors").stat().st_size < 300_000


def test_the_frontier_report_chooses_the_learning_rate_on_validation_never_on_test(tmp_path, capsys):
    frontier = _frontier_script()
    row = dict(method="random", K=250, seconds=1.0)
    rows = [  # candidate b is better on test, a on validation: the report must pick a
        dict(row, seed=0, candidate="a", validation={"fp32": 0.8}, test={"fp32": 0.70, "fp16": 0.70, "bf16": 0.70}),
        dict(row, seed=0, candidate="b", validation={"fp32": 0.7}, test={"fp32": 0.90, "fp16": 0.90, "bf16": 0.90}),
        dict(row, seed=1, candidate="a", validation={"fp32": 0.8}, test={"fp32": 0.72, "fp16": 0.72, "bf16": 0.71}),
        dict(method="supsup", K=1, seed=0, candidate="m", seconds=1.0, validation={"fp32": 0.8}, test={"fp32": 0.8}),
    ]  # fmt: skip
    out_file = tmp_path / "frontier.json"
    out_file.write_text(json.dumps(dict(settings={}, rows=rows)))
    frontier.report(argparse.Namespace(out=out_file, figure=tmp_path / "f.png"))
    out = capsys.readouterr().out
    assert "| random (stored as its seed) | 250 | fp32 | a | 3,056 | 10.9 | 71.0 +- 1.4 | 2 |" in out
    assert "| SupSup (one mask per task) | - | fp32 | m | 33,275 | 1.0 | 80.0 +- nan | 1 |" in out
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_the_readme_preset_snippet_runs():
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    (snippet,) = [b for b in blocks if "get_preset(" in b]
    task = create_scenario("synthetic", num_tasks=1, train_size=128, test_size=32, seed=0).task(0)
    scope = dict(create_model=create_model, loader=BatchLoader(task.train, batch_size=64))
    exec(snippet, scope)
    learner = scope["learner"]
    assert learner.num_masks == 500 and learner.tasks["task 1"].coefficients.shape == (500, 3)
    assert learner.bytes_per_task("task 1").coefficients == 3_000


class _TinyRotated:
    """Stands in for rotated Fashion-MNIST: 96 random 28x28 images rotated per task (48 of them
    validate), labels from the unrotated image so that neighbouring angles share structure."""

    requests: list = []

    def __init__(self, name, num_tasks, angles, seed):
        from impresslearn.scenarios import InMemoryDataset
        from impresslearn.scenarios.mnist import rotate_images

        assert name == "rotated_fmnist" and len(angles) == num_tasks
        _TinyRotated.requests.append(list(angles))
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(96 + 32, 1, 28, 28, generator=g)
        y = (x[:, 0, :14].mean(dim=(1, 2)) > x[:, 0, 14:].mean(dim=(1, 2))).long()
        self._tasks = [
            argparse.Namespace(train=InMemoryDataset(rotate_images(x[:96], a), y[:96]),
                               test=InMemoryDataset(rotate_images(x[96:], a), y[96:]))
            for a in angles
        ]  # fmt: skip

    def task(self, t):
        return self._tasks[t]


def test_the_rotated_frontier_trains_impressions_between_new_tasks_chooses_on_validation_and_resumes(
    tmp_path, monkeypatch, capsys
):
    frontier = _frontier_script()
    _TinyRotated.requests.clear()
    monkeypatch.setattr(frontier, "create_scenario", _TinyRotated)
    monkeypatch.setattr(frontier, "VALIDATION_IMAGES", 48)
    one_epoch = [TrainConfig(optimizer="adam", lr=0.03, epochs=1), TrainConfig(optimizer="rmsprop", lr=0.002, epochs=1)]
    monkeypatch.setattr(frontier, "MASK_CANDIDATES", one_epoch)
    monkeypatch.setattr(frontier, "ALPHA_CANDIDATES", one_epoch)
    out = tmp_path / "rotated.json"
    argv = ["frontier.py", "--scenario", "rotated", "--spacings", "3", "--ks", "2,3", "--seeds", "0,1",
            "--train-images", "40", "--out", str(out)]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    frontier.main()
    # basis tasks at 0, 3, 6 degrees; the new tasks of seeds 0 and 1 half-way between them
    assert _TinyRotated.requests == [[0.0, 3.0, 6.0, 1.5, 4.5]]
    rows = json.loads(out.read_text())["rows"]
    for method, k in (("supsup", 1), ("heterogeneous", 2), ("heterogeneous", 3)):
        mine = [r for r in rows if r["method"] == method and r["K"] == k and r["spacing"] == 3.0]
        assert sorted(r["angle"] for r in mine) == [1.5, 1.5, 4.5]  # both candidates on seed 0, one on seed 1
        seed0 = [r for r in mine if r["seed"] == 0]
        (seed1,) = [r for r in mine if r["seed"] == 1]
        assert seed1["candidate"] == max(seed0, key=lambda r: r["validation"]["fp32"])["candidate"]
    # a rerun finds every row done: nothing is trained again
    frontier.main()
    assert len(json.loads(out.read_text())["rows"]) == len(rows) == 9
    monkeypatch.setattr("sys.argv", argv + ["--report"])
    capsys.readouterr()
    frontier.main()
    table = capsys.readouterr().out
    assert "| 3 | SupSup | - |" in table and "| 33,275 | - |" in table
    # a new task stores alpha[K, 3] in fp32 only; the K trained masks are the basis tasks' own
    assert "| 3 | heterogeneous impressions | 3 |" in table and "| 36 | 99,825 |" in table
    # a seed's new task must lie between two basis tasks of the bank
    monkeypatch.setattr("sys.argv", argv[:6] + ["2", "--seeds", "0,1,2", "--out", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit, match="use K > 3"):
        frontier.main()
