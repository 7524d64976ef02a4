"""pytest-benchmark suite over the kernel ops at small sizes (seconds in all).

    .venv/bin/python -m pytest benchmarks/test_kernels_benchmark.py --benchmark-only

Not collected by the default test run (testpaths is tests/). The cases are the ones
of benchmarks/kernels.py at its --quick sizes; every implementation of a case is a
parametrized test, grouped by case so pytest-benchmark compares them side by side.
Each candidate's result is also checked against its reference once, so a fast
wrong kernel fails here rather than topping the table.
"""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

_spec = importlib.util.spec_from_file_location(
    "impresslearn_bench_kernels", Path(__file__).resolve().parent / "kernels.py"
)
kernels = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = kernels  # dataclasses look their module up while the class is built
_spec.loader.exec_module(kernels)

pytest.importorskip("pytest_benchmark")

torch.set_num_threads(2)
CASES = {case.name: case for case in kernels.cpu_cases(quick=True)}
IMPLS = [
    (case_name, role, impl_name)
    for case_name, case in CASES.items()
    for role, impls in (("reference", {case.reference_name: case.reference}), ("baseline", case.baselines), ("candidate", case.candidates))
    for impl_name in impls
]
_INPUTS: dict = {}


def _inputs(case_name):
    if case_name not in _INPUTS:
        _INPUTS.clear()  # one case's inputs alive at a time
        _INPUTS[case_name] = CASES[case_name].setup()
    return _INPUTS[case_name]


def _impl(case, role, name):
    if role == "reference":
        return case.reference
    return (case.baselines if role == "baseline" else case.candidates)[name]


def _agrees(case_name, got, x):
    if case_name == "topk_mask":  # exact, against the stable-sort reference (ties to the lower index)
        from impresslearn.ops.topk import topk_mask_reference

        return torch.equal(got, topk_mask_reference(x["scores"], x["k"]))
    return torch.allclose(got, CASES[case_name].reference(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case_name,role,impl_name", IMPLS, ids=[f"{c}-{i}" for c, _, i in IMPLS])
def test_kernel(benchmark, case_name, role, impl_name):
    case = CASES[case_name]
    benchmark.group = case_name
    x = _inputs(case_name)
    fn = _impl(case, role, impl_name)
    result = benchmark(fn, x)
    if role == "candidate":
        assert _agrees(case_name, result, x)
