"""The demo end to end at a tiny size: table, storage line, checkpoint reload."""

import argparse

import pytest

from impresslearn import demo
from impresslearn.scenarios import DataNotFoundError, create_scenario


def run_demo(tmp_path, capsys, *flags: str) -> str:
    """Run the demo on the real Fashion-MNIST files with ``flags``; its printed output."""
    try:
        create_scenario("permuted_fmnist", num_tasks=1, train_subset=10, test_subset=10).task(0)
    except DataNotFoundError as exc:
        pytest.skip(f"Fashion-MNIST not installed: {exc}")
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    args = parser.parse_args([*flags, "--no-progress", "--out", str(tmp_path / "demo")])
    assert demo.main(args) == 0
    return capsys.readouterr().out


def test_demo_runs_and_reloads_identically(tmp_path, capsys):
    out = run_demo(tmp_path, capsys, "--preset", "none", "--basis-tasks", "2", "--new-tasks", "1", "--random-masks", "2",
                   "--train-subset", "600", "--test-subset", "256", "--alpha-epochs", "1")  # fmt: skip
    assert "| permuted_fmnist/2    | new   |" in out
    assert "task inference without labels (input fingerprints, over all 3 tasks" in out
    assert "reloaded predictions identical: True" in out
    # bytes from impresslearn.accounting: alpha[4, 3] in fp32 and the 260-B input fingerprint, SupSup
    # one bit per LeNet weight (266,200 / 8)
    assert "a new task adds 308 B vs SupSup's 32.50 KiB" in out
    assert (tmp_path / "demo" / "learner.safetensors").exists()


@pytest.mark.parametrize("flags, named", [(["--random-masks", "10"], "--random-masks"), (["--alpha-lr", "0.1"], "--alpha-lr"),
                                          (["--density", "0.2"], "--density")])  # fmt: skip
def test_flags_that_would_change_the_default_preset_are_refused_by_name(flags, named):
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    with pytest.raises(SystemExit, match=f"demo: {named} would change the preset random500-fp16; add --preset none"):
        demo.main(parser.parse_args(flags))
    with pytest.raises(SystemExit, match="no preset named 'fast'"):
        demo.main(parser.parse_args(["--preset", "fast"]))
