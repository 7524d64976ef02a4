"""The frontier's preset and the frontier script's model selection (issue 14)."""

import argparse
import importlib.util
import json
import re
import sys
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
    sys.modules[spec.name] = module  # its dataclass resolves its annotations through sys.modules
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
    assert frontier.task_bytes("random", 500, "fp16")["task"] == 3_056
    assert frontier.task_bytes("supsup", 1, "fp32")["task"] == 33_275 >= 10 * 3_056


def test_the_per_channel_preset_meets_the_byte_budget_and_learns_per_block():
    preset = get_preset("random10-per4ch-fp16")
    full = preset.make_learner(create_model("lenet300", num_classes=10, seed=0), seed=1)
    full.register_task("t", torch.rand(10, full.coefficient_width(4)), granularity=4)
    assert full.bytes_per_task("t").total <= 33_275 / 10  # 2,116 B: alpha[10, 103] in fp16 + the seed record
    # what one more such task adds (the demo's summary line) counts its 103 columns, not one per layer
    assert full.storage_report(new_task_granularity=4)["new_task_bytes"] == full.bytes_per_task("t").coefficients
    assert full.storage_report()["new_task_bytes"] == 10 * 3 * 2
    small = preset.make_learner(create_model("lenet300", num_classes=10, seed=0, hidden=[32, 16]), seed=1)
    sc = create_scenario("synthetic", num_tasks=1, train_size=64, test_size=32, seed=0)
    preset.learn_alpha(small, "new", BatchLoader(sc.task(0).train, batch_size=32), preset.alpha.replace(epochs=1))
    assert small.tasks["new"].granularity == 4
    assert small.tasks["new"].coefficients.shape == (10, small.coefficient_width(4))


def test_unknown_presets_and_bad_fields_are_refused_by_name():
    with pytest.raises(KeyError, match=r"no preset named 'fast'; known presets: \['random10-per4ch-fp16', 'random500-fp16'\]"):
        get_preset("fast")
    with pytest.raises(ConfigError, match="coefficient_dtype"):
        Preset("p", 0.1, 10, "fp8", TrainConfig(), "")
    with pytest.raises(ConfigError, match="random_masks: must be >= 1"):
        Preset("p", 0.1, 0, "fp16", TrainConfig(), "")
    with pytest.raises(ValueError, match="granularity"):
        Preset("p", 0.1, 10, "fp16", TrainConfig(), "", granularity=0)
    assert set(PRESETS) == {"random500-fp16", "random10-per4ch-fp16"}


def test_the_demo_runs_with_the_preset_by_default(tmp_path, capsys):
    out = run_demo(tmp_path, capsys, "--basis-tasks", "1", "--new-tasks", "1",
                   "--train-subset", "300", "--test-subset", "128", "--mask-epochs", "1", "--alpha-epochs", "1")  # fmt: skip
    assert "1 basis tasks, 500 random masks, 1 new tasks" in out
    assert "new tasks: preset random500-fp16 (rmsprop lr 0.0005, 1 epochs, fp16 coefficients per layer)" in out
    # alpha[501, 3] in fp16 = 3,006 B (+ its task-inference fingerprint): a tenth of SupSup's mask at most
    new_task = re.search(r"a new task adds ([0-9.]+) KiB vs SupSup's 32.50 KiB", out)
    assert new_task and 10 * float(new_task.group(1)) <= 32.50
    assert "reloaded predictions identical: True" in out
    # stored: the basis mask (33,275 B) + the random draw's record and hash (56 B), not 16 MB of planes
    assert "32.55 KiB stored (random masks as their seed), coefficients 2.94 KiB (fp16)" in out
    # 16.8 MB of bank planes in memory; the file holds one plane (the basis mask) and no random bits
    assert (tmp_path / "demo" / "learner.safetensors").stat().st_size < 300_000


def _config(frontier, tmp_path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return frontier.FrontierConfig.from_yaml(path)


def test_the_frontier_report_chooses_the_learning_rate_on_validation_never_on_test(tmp_path, capsys):
    frontier = _frontier_script()
    row = dict(method="random", K=250, density=0.1, seconds=1.0)
    rows = [  # candidate b is better on test, a on validation: the report must pick a
        dict(row, seed=0, candidate="a", validation={"fp32": 0.8}, test={"fp32": 0.70, "fp16": 0.70, "bf16": 0.70}),
        dict(row, seed=0, candidate="b", validation={"fp32": 0.7}, test={"fp32": 0.90, "fp16": 0.90, "bf16": 0.90}),
        dict(row, seed=1, candidate="a", validation={"fp32": 0.8}, test={"fp32": 0.72, "fp16": 0.72, "bf16": 0.71}),
        dict(method="supsup", K=1, density=0.1, seed=0, candidate="m", seconds=1.0, validation={"fp32": 0.8},
             test={"fp32": 0.8}),
    ]  # fmt: skip
    out_file = tmp_path / "frontier.json"
    out_file.write_text(json.dumps(dict(settings={}, rows=rows)))
    config = _config(frontier, tmp_path, f"out: {out_file}\n")
    frontier.report_permuted(config, tmp_path / "f.png")
    out = capsys.readouterr().out
    # one row per bank: bytes with fp32 / fp16 coefficients, accuracy with fp32, fp16 and bf16 ones
    assert ("| random (stored as its seed) | 250 | a | 3,056 / 1,556 | 21.4 | 0 | 71.0 +- 1.4 | 71.0 +- 1.4 "
            "| 70.5 +- 0.7 | -9.0 | 2 |") in out  # fmt: skip
    assert "| SupSup (one mask per task) | - | m | 33,275 | 1.0 | 0 | 80.0 +- nan | - | - | - | 1 |" in out
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


class _TinyScenario:
    """Stands in for Permuted and Rotated Fashion-MNIST: 96 random 28x28 images per task (48 of them
    validate), 32 test images; rotated tasks rotate them (labels from the unrotated image, so that
    neighbouring angles share structure), permuted tasks permute their pixels with the task index."""

    requests: list = []

    def __init__(self, name, num_tasks, seed, angles=None):
        from impresslearn.scenarios import InMemoryDataset
        from impresslearn.scenarios.mnist import rotate_images

        assert name in ("rotated_fmnist", "permuted_fmnist") and (angles is None or len(angles) == num_tasks)
        _TinyScenario.requests.append((name, num_tasks, None if angles is None else list(angles)))
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(96 + 32, 1, 28, 28, generator=g)
        y = (x[:, 0, :14].mean(dim=(1, 2)) > x[:, 0, 14:].mean(dim=(1, 2))).long()

        def task_images(t):
            if angles is not None:
                return rotate_images(x, angles[t])
            order = torch.randperm(784, generator=torch.Generator().manual_seed(t))
            return x.reshape(-1, 784)[:, order].reshape(x.shape)

        self._tasks = [task_images(t) for t in range(num_tasks)]
        self._data = lambda t: argparse.Namespace(train=InMemoryDataset(self._tasks[t][:96], y[:96]),
                                                  test=InMemoryDataset(self._tasks[t][96:], y[96:]))  # fmt: skip

    def task(self, t):
        return self._data(t)


@pytest.fixture
def tiny_frontier(monkeypatch, tmp_path):
    """The frontier script on _TinyScenario: one-epoch candidates, 48 validation images, a fresh mask cache;
    ``trained`` counts the edge-popup masks it trains."""
    frontier = _frontier_script()
    _TinyScenario.requests.clear()
    monkeypatch.setattr(frontier, "create_scenario", _TinyScenario)
    monkeypatch.setattr(frontier, "VALIDATION_IMAGES", 48)
    monkeypatch.setattr(frontier, "MASK_CACHE", tmp_path / "masks")
    one_epoch = (TrainConfig(optimizer="adam", lr=0.03, epochs=1), TrainConfig(optimizer="rmsprop", lr=0.002, epochs=1))
    monkeypatch.setattr(frontier, "MASK_CANDIDATES", one_epoch)
    monkeypatch.setattr(frontier, "ALPHA_CANDIDATES", one_epoch)
    frontier.trained = []
    learn = frontier.ImpressLearner.learn_basis_mask

    def counting(learner, name, loader, cfg=TrainConfig(), **kw):
        frontier.trained.append(cfg.seed)
        return learn(learner, name, loader, cfg, **kw)

    monkeypatch.setattr(frontier.ImpressLearner, "learn_basis_mask", counting)
    return frontier


def test_the_rotated_frontier_trains_impressions_between_new_tasks_chooses_on_validation_and_resumes(
    tiny_frontier, tmp_path, capsys
):
    frontier = tiny_frontier
    out = tmp_path / "rotated.json"
    config = tmp_path / "rotated.yaml"
    config.write_text(f"scenario: rotated\nout: {out}\ntrain_images: 40\nseeds: [0, 1]\nspacings: [3]\n"
                      "trained_ks: [3, 4]\nrandom_ks: {default: [3]}\nmixed: [[2, 5]]\nfiner: [[3, 100]]\n")  # fmt: skip
    frontier.main([str(config)])
    # basis tasks at 0, 3, 6, 9 degrees; the new tasks of seeds 0 and 1 half-way between them
    assert _TinyScenario.requests == [("rotated_fmnist", 6, [0.0, 3.0, 6.0, 9.0, 1.5, 4.5])]
    rows = json.loads(out.read_text())["rows"]
    banks = (("supsup", 1, None), ("heterogeneous", 3, None), ("heterogeneous", 4, None), ("random", 3, "layer"),
             ("random", 3, 100), ("mixed", 5, None))  # fmt: skip
    for method, k, granularity in banks:
        mine = [r for r in rows if r["method"] == method and r["K"] == k and r.get("granularity") == granularity]
        assert sorted(r["angle"] for r in mine) == [1.5, 1.5, 4.5]  # both candidates on seed 0, one on seed 1
        seed0 = [r for r in mine if r["seed"] == 0]
        (seed1,) = [r for r in mine if r["seed"] == 1]
        assert seed1["candidate"] == max(seed0, key=lambda r: r["validation"]["fp32"])["candidate"]
        assert all(r["spacing"] == 3.0 for r in mine)
    assert {r["trained"] for r in rows if r["method"] == "mixed"} == {2}
    # 3 SupSup masks, then the 4 basis masks once (cached on disk for K = 3 and 4, every seed and the mixed bank)
    assert frontier.trained == [0, 0, 1, 0, 1, 2, 3]
    # a rerun finds every row done: nothing is trained again
    frontier.main([str(config)])
    assert len(json.loads(out.read_text())["rows"]) == len(rows) == 18 and len(frontier.trained) == 7
    capsys.readouterr()
    frontier.main([str(config), "--report", "--figure", str(tmp_path / "r.png")])
    table = capsys.readouterr().out
    assert "| 3 | SupSup | - | - |" in table and "| 33,275 | - |" in table
    # a new task stores alpha[K, 3] in fp32; the K trained masks are the basis tasks' own
    assert "| 3 | heterogeneous impressions | 3 | fp32, per layer |" in table and "| 36 | 99,825 |" in table
    # random banks in fp16: alpha[3, 3] + the seed record; per 100 channels alpha[3, 3 + 1 + 1] (300, 100, 10 outputs)
    assert "| 3 | random (stored as its seed) | 3 | fp16, per layer |" in table and "| 74 | - |" in table
    assert "| 3 | random (stored as its seed) | 3 | fp16, per 100 channels |" in table and "| 86 | - |" in table
    # mixed: alpha[5, 3] in fp16 + the 3 random masks' seed record; the 2 trained masks are basis tasks' own
    assert "| 3 | mixed (2 basis + 3 random) | 5 | fp16, per layer |" in table and "| 86 | 66,550 |" in table
    assert (tmp_path / "r.png").stat().st_size > 1000
    # a seed's new task must lie between two basis tasks of the bank
    with pytest.raises(SystemExit):
        frontier.main([str(config), "--seeds", "0,1,2"])
    assert "use K > 3" in capsys.readouterr().err


def test_the_permuted_frontier_trains_each_kind_of_bank_once_and_resumes(tiny_frontier, tmp_path, capsys):
    frontier = tiny_frontier
    out = tmp_path / "permuted.json"
    config = tmp_path / "permuted.yaml"
    config.write_text(f"out: {out}\ntrain_images: 40\nseeds: [0, 1]\ndensities: [0.2]\n"
                      "random_ks: {default: [3]}\ndensity: 0.2\ntrained_ks: [2, 3]\nmixed: [[2, 5]]\n")  # fmt: skip
    frontier.main([str(config)])
    rows = json.loads(out.read_text())["rows"]
    groups = {(r["method"], r["K"]) for r in rows}
    assert groups == {("supsup", 1), ("random", 3), ("heterogeneous", 2), ("heterogeneous", 3),
                      ("homogeneous", 2), ("homogeneous", 3), ("mixed", 5)}  # fmt: skip
    assert all(r["density"] == 0.2 for r in rows) and len(rows) == 7 * 3
    assert {r["trained"] for r in rows if r["method"] == "mixed"} == {2}
    # tasks 0..12: new tasks 1 and 2, basis tasks 10, 11, 12
    assert _TinyScenario.requests == [("permuted_fmnist", frontier.BASIS_FIRST_TASK + 3, None)]
    # SupSup: 2 candidates + 1; heterogeneous: tasks 10-12 with seeds 0-2; homogeneous: task 10 with
    # seeds 1 and 2 (its seed 0 is heterogeneous mask 0); nothing retrained for K = 2 or for the mixed bank
    assert frontier.trained == [0, 0, 1, 0, 1, 2, 1, 2]
    for r in rows:
        assert set(r["test"]) == ({"fp32"} if r["method"] == "supsup" else {"fp32", "fp16", "bf16"})
    frontier.main([str(config)])
    assert len(json.loads(out.read_text())["rows"]) == len(rows) and len(frontier.trained) == 8
    capsys.readouterr()
    frontier.main([str(config), "--report", "--figure", str(tmp_path / "p.png")])
    table = capsys.readouterr().out
    assert "| mixed (trained + random) | 2 + 3 |" in table and "| homogeneous (K masks of one task) | 3 |" in table
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_bytes_per_new_task_by_bank_kind():
    frontier = _frontier_script()
    mask = 33_275  # LeNet-300-100: one bit per weight
    # heterogeneous: alpha[10, 3]; the 10 masks are their basis tasks' own SupSup masks
    assert frontier.task_bytes("heterogeneous", 10, "fp32") == dict(task=120, basis=10 * mask)
    # homogeneous: the 9 masks beyond the basis task's own are the new task's share (counted for T = 1)
    assert frontier.task_bytes("homogeneous", 10, "fp16") == dict(task=60 + 9 * mask, basis=mask)
    # mixed: 10 trained masks owned by basis tasks + 240 random ones stored as one draw record and a hash
    assert frontier.task_bytes("mixed", 250, "fp16", trained=10) == dict(task=1_500 + 56, basis=10 * mask)
    assert frontier.task_bytes("random", 250, "fp16") == dict(task=1_556, basis=0)


def test_the_frontier_config_refuses_unknown_keys_and_bad_values_by_name(tmp_path):
    frontier = _frontier_script()
    for text, message in [
        ("densitys: [0.1]\n", "unknown key.*densitys"),
        ("densities: [0.1, 1.5]\n", r"densities\[1\]: must be <= 1"),
        ("densities: []\n", "densities: must be a non-empty list"),
        ("random_ks: {0.1: [0]}\n", r"random_ks\[0.1\]\[0\]: must be >= 1"),
        ("mixed: [[10, 5]]\n", r"mixed\[0\]\[1\] \(K\): must be >= 11"),
        ("mixed: [10]\n", r"mixed\[0\]: must be \[trained masks, K\]"),
        ("seeds: [0, 9]\n", "seeds: must be < 9"),
        ("scenario: split\n", "scenario: must be one of"),
        ("only: [random, rotations]\n", "only: 'rotations' is not a permuted method"),
        ("scenario: rotated\nspacings: [0]\ntrained_ks: [5]\n", r"spacings\[0\]: must be > 0"),
        ("train_images: 1.5\n", "train_images: must be an integer"),
        ("scenario: rotated\nspacings: [3]\ntrained_ks: [5]\nfiner: [[10, 0]]\n", r"finer\[0\]\[1\]: granularity must"),
        ("scenario: rotated\nspacings: [3]\ntrained_ks: [5]\nfiner: [[10, layer]]\n", r"finer\[0\]\[1\]: per-layer"),
        ("scenario: rotated\nspacings: [3]\ntrained_ks: [5]\nfiner: [10]\n", r"finer\[0\]: must be \[K, granularity\]"),
        ("finer: [[10, 4]]\n", "finer: Rotated only"),
    ]:
        with pytest.raises(ConfigError, match=message):
            _config(frontier, tmp_path, text)
    with pytest.raises(ConfigError, match="no such config file"):
        frontier.FrontierConfig.from_yaml(tmp_path / "missing.yaml")
    config = _config(frontier, tmp_path, "random_ks: {0.1: [10, 500], default: [250]}\n")
    assert config.ks_at(0.1) == (10, 500) and config.ks_at(0.05) == (250,)
    overridden = frontier.FrontierConfig.from_yaml(tmp_path / "config.yaml", random_ks={"default": [7]}, seeds=None)
    assert overridden.ks_at(0.1) == (7,) and overridden.seeds == (0, 1, 2)  # None leaves the config's value
    # the shipped configs parse, and the documented reproduce commands use them
    for name in ("frontier_permuted", "frontier_rotated"):
        frontier.FrontierConfig.from_yaml(ROOT / "configs" / f"{name}.yaml")


def test_two_runs_appending_to_one_results_file_keep_each_others_rows(tmp_path):
    frontier = _frontier_script()
    path = tmp_path / "rows.json"
    first, second = [], []
    record_a, record_b = frontier.recorder(path, first, {}), frontier.recorder(path, second, {})
    record_a(dict(seed=0))
    record_b(dict(seed=1))  # b never read the file, yet keeps a's row
    record_a(dict(seed=2))
    assert [r["seed"] for r in frontier.load_rows(path)] == [0, 1, 2] == [r["seed"] for r in first]
