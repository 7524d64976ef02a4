"""scripts/dispatch_overhead.py runs, prints every figure it promises, and leaves IMPRESSLEARN_BACKEND as it was."""

from __future__ import annotations

import os
import re

import pytest

from impresslearn import backends
from scripts import dispatch_overhead as script


@pytest.mark.parametrize("before", [None, "reference"])
def test_prints_each_case_and_the_request_read_and_restores_the_environment(before, monkeypatch, capsys):
    if before is None:
        monkeypatch.delenv(backends.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(backends.ENV_VAR, before)
    script.main(["--number", "20", "--repeat", "1"])
    out = capsys.readouterr().out
    assert os.environ.get(backends.ENV_VAR) == before
    for label, op, *_ in script.CASES:
        assert re.search(rf"^{re.escape(label)} +[0-9.]+ +[0-9.]+ +[0-9.]+x  \({op} -> \w+\)$", out, re.M), out
    assert re.search(
        r"^reading IMPRESSLEARN_BACKEND .*: [0-9.]+ us unset, [0-9.]+ us set; one combine_masks call "
        r"\(64 weights, K = 3\): [0-9.]+ us, of which the read unset is [0-9.]+%$",
        out,
        re.M,
    ), out


def test_the_read_it_times_is_the_request_select_follows(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, " reference ")
    assert backends.requested_backend() == "reference"
    assert backends.select("combine_masks", "cpu") == "reference"
    assert backends.requested_backend("cpp") == "cpp"  # an explicit argument wins over the variable
    monkeypatch.setenv(backends.ENV_VAR, "  ")
    assert backends.requested_backend() is None  # blank: automatic
