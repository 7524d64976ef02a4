"""scripts/train_imagenet.py end to end: two CPU processes on gloo (torchrun), crash and resume.

A tiny generated ImageFolder (10 classes of 16x16 JPEGs: 5 tasks of 2 classes) and a
reduced ResNet (width 4, one block per stage) keep each launch to seconds of compute; most
of a launch is importing torch in two processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from impresslearn.learner import ImpressLearner
from impresslearn.models import create_model
from impresslearn.ops import pack_masks, unpack_masks
from scripts import train_imagenet as script

from ._imagefolder import make_image_folder

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "train_imagenet.py"
NUM_TASKS, NUM_BASIS = 5, 3  # heterogeneous: tasks 0-2 are basis tasks, 3-4 new tasks
ARGS = [
    "--num-tasks", str(NUM_TASKS), "--classes-per-task", "2", "--image-size", "16",
    "--arch", "resnet18_cifar", "--model-kwargs", '{"width": 4, "blocks": [1, 1, 1, 1]}',
    "--num-basis", str(NUM_BASIS), "--mask-epochs", "2", "--alpha-epochs", "2", "--alpha-lr", "0.05",
    "--batch-size", "4", "--workers", "0", "--seed", "3",
]  # fmt: skip


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagenet")
    return make_image_folder(root, num_classes=2 * NUM_TASKS, train_per_class=8, val_per_class=4, size=16)


def torchrun(data_root: Path, out: Path, *extra: str, nproc: int = 2) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("IMPRESSLEARN_BACKEND", None)
    env.pop("TRITON_INTERPRET", None)  # the script runs the cpp kernels; nothing to interpret
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(SCRIPT), "--data-root", str(data_root), "--out", str(out), *ARGS, *extra]  # fmt: skip
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def checkpoint(out: Path) -> ImpressLearner:
    return ImpressLearner.load(out / script.CHECKPOINT)


def test_two_ranks_crash_and_resume_equal_an_uninterrupted_run(data_root, tmp_path):
    # Uninterrupted: both phases on two ranks.
    whole = tmp_path / "whole"
    proc = ok(torchrun(data_root, whole))
    assert "2 at a time" in proc.stdout and "on 2 ranks" in proc.stdout
    ranks = [json.loads((whole / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["bank_sha256"] == ranks[1]["bank_sha256"]  # the same bank, bit for bit, on both ranks
    assert ranks[0]["state_sha256"] == ranks[1]["state_sha256"]

    # Crash 1: mid-way through phase 1's second round (after its masks trained, before the gather).
    resumed = tmp_path / "resumed"
    proc = torchrun(data_root, resumed, "--simulate-crash-after", "2")
    assert proc.returncode != 0 and "simulated crash" in proc.stdout
    assert list(checkpoint(resumed).tasks) == ["split_imagenet/0", "split_imagenet/1"]
    # Crash 2: mid-way through phase 2's second new task (after its first alpha step).
    proc = torchrun(data_root, resumed, "--simulate-crash-after", "4")
    assert proc.returncode != 0 and "resumed from" in proc.stdout and "2 tasks" in proc.stdout
    assert len(checkpoint(resumed).tasks) == 4
    proc = ok(torchrun(data_root, resumed))
    assert "resumed from" in proc.stdout and "4 tasks" in proc.stdout
    assert "phase 2: 1 new tasks left" in proc.stdout  # finished tasks were not redone

    # On CPU a resumed run replays exactly: the whole state (banks, alphas, BN) is the same bytes.
    assert json.loads((resumed / "rank1.json").read_text())["state_sha256"] == ranks[0]["state_sha256"]
    a, b = checkpoint(whole), checkpoint(resumed)
    assert list(a.tasks) == list(b.tasks) == [f"split_imagenet/{t}" for t in range(NUM_TASKS)]
    assert [r.kind for r in a.tasks.values()] == ["basis"] * NUM_BASIS + ["new"] * (NUM_TASKS - NUM_BASIS)
    for la, lb in zip(a.layers, b.layers):
        assert torch.equal(la.bank, lb.bank)  # bit-exact banks
    for name in a.tasks:
        torch.testing.assert_close(a.tasks[name].coefficients, b.tasks[name].coefficients, rtol=0, atol=1e-6)
    for bn_a, bn_b in zip(a.bns, b.bns):
        torch.testing.assert_close(bn_a.running_mean, bn_b.running_mean, rtol=0, atol=1e-6)
        torch.testing.assert_close(bn_a.running_var, bn_b.running_var, rtol=0, atol=1e-6)
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for name in a.tasks:
        assert torch.equal(a.predict(name, x).argmax(1), b.predict(name, x).argmax(1))
    # a new task really moved alpha away from its 1/K start
    alpha = a.tasks["split_imagenet/3"].coefficients
    assert not torch.allclose(alpha, torch.full_like(alpha, 1.0 / NUM_BASIS))

    results = json.loads((resumed / script.RESULTS).read_text())
    assert sorted(results["tasks"]) == sorted(a.tasks)
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in results["tasks"].values())
    assert results["memory"]["bank_bytes"] == sum(layer.weight.numel() for layer in a.layers)  # K=3: one plane
    assert results["memory"]["supsup_fp32_bytes"] == NUM_BASIS * results["memory"]["weights"] * 4


def test_single_process_run_and_refusal_to_resume_another_backbone(data_root, tmp_path):
    # Without torchrun the script runs in-process on a one-rank group (same code path).
    out = str(tmp_path / "run")
    base = ["--data-root", str(data_root), "--out", out, *ARGS, "--num-basis", "1", "--num-new", "1", "--mask-epochs", "1"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads only contend with other test processes
    try:
        assert script.main(base) == 0
    finally:
        torch.set_num_threads(threads)
    learner = checkpoint(Path(out))
    assert list(learner.tasks) == ["split_imagenet/0", "split_imagenet/1"] and learner.num_masks == 1
    with pytest.raises(SystemExit, match="use another --out"):
        script.main([*base, "--init", "kaiming_normal"])
    assert not torch.distributed.is_initialized()  # the group is torn down even on refusal


def test_mask_from_bank_reads_one_mask_of_a_packed_bank():
    masks = torch.rand(11, 37, generator=torch.Generator().manual_seed(1)) < 0.3
    bank = pack_masks(masks, backend="reference")
    for k in range(11):
        assert torch.equal(script.mask_from_bank(bank, k), masks[k])
    assert torch.equal(unpack_masks(bank, 11, backend="reference"), masks)


def test_task_index_of_learner_names():
    assert script.task_index("split_imagenet/7") == 7
    assert script.task_index("split_imagenet/0#mask12") == 0


def test_bad_model_kwargs_are_refused():
    with pytest.raises(SystemExit, match=r"--model-kwargs must be a JSON object, got \[1, 2\]"):
        script.parse_args(["--data-root", "x", "--out", "y", "--model-kwargs", "[1, 2]"])
    with pytest.raises(SystemExit, match=r"--model-kwargs is not valid JSON .*: \"\{'width': 8\}\""):
        script.parse_args(["--data-root", "x", "--out", "y", "--model-kwargs", "{'width': 8}"])


def test_resnet50_bank_bytes_at_250_masks():
    """The honest figure behind docs/design.md's '<= 0.8 GB' target: 32 byte planes over every conv/linear weight."""
    learner = ImpressLearner(create_model("resnet50", num_classes=1000, seed=0))
    mem = script.memory_report(learner, planned_masks=250)
    assert mem["layers"] == 54 and mem["weights"] == 25_502_912
    assert mem["planned_bank_bytes"] == 25_502_912 * 32 == 816_093_184  # 0.816 GB = 0.760 GiB
    assert mem["supsup_fp32_bytes"] == 250 * 25_502_912 * 4  # 25.5 GB


def test_homogeneous_basis_masks_are_seeds_on_task_0(data_root, tmp_path):
    out = tmp_path / "hom"
    argv = ["--data-root", str(data_root), "--out", str(out), *ARGS, "--basis", "homogeneous",
            "--num-basis", "2", "--num-new", "1", "--mask-epochs", "1", "--alpha-epochs", "1"]  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert script.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    learner = checkpoint(out)
    assert list(learner.tasks) == ["split_imagenet/0#mask0", "split_imagenet/0#mask1", "split_imagenet/1"]
    masks = learner.layers[0].masks()
    assert not torch.equal(masks[0], masks[1])  # other scores seeds, other masks on the same backbone
    results = json.loads((out / script.RESULTS).read_text())
    assert results["tasks"]["split_imagenet/0#mask1"]["task"] == 0
