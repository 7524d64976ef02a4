"""``python -m impresslearn.info`` and ``impresslearn.backends.cpu_isa``: one answer, and a bad
``IMPRESSLEARN_CPU_ISA`` is named rather than crashing the report."""

import os
import subprocess
import sys
import textwrap

import pytest

from impresslearn import _extension, backends, info

needs_cpu_kernels = pytest.mark.skipif(not _extension.has_cpu_kernels(), reason="impresslearn._C has no C++ kernels")


@needs_cpu_kernels
def test_info_reports_the_isa_the_public_function_gives(monkeypatch):
    monkeypatch.delenv("IMPRESSLEARN_CPU_ISA", raising=False)
    isa, supported = backends.cpu_isa()
    assert isa in supported and supported[0] == "portable"
    assert f"cpu kernels ISA: {isa} (this CPU runs {', '.join(supported)};" in info.report()


@needs_cpu_kernels
def test_a_bad_isa_variable_is_a_clear_error_and_info_names_it():
    # the kernels read the variable once per process: set it before Python starts
    code = textwrap.dedent("""
        from impresslearn import backends, info
        try:
            backends.cpu_isa()
        except ValueError as exc:
            print("refused:", exc)
        print(info.report())
    """)
    env = dict(os.environ, IMPRESSLEARN_CPU_ISA="bogus", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    named = "IMPRESSLEARN_CPU_ISA=bogus is not an ISA: use portable, avx2, avx512 or auto"
    assert f"refused: impresslearn: {named}" in done.stdout
    assert f"cpu kernels ISA: none: impresslearn: {named}" in done.stdout


def test_without_cpu_kernels_both_say_so(monkeypatch):
    monkeypatch.setattr(_extension, "has_cpu_kernels", lambda: False)
    assert backends.cpu_isa() == ("no C++ kernels", [])
    assert "cpu kernels ISA: - (no C++ kernels)" in info.report()


def test_a_build_from_before_the_isa_dispatch_is_named(monkeypatch):
    class OldBuild:  # an _C without cpu_isa()
        WITH_CPU = True

    monkeypatch.setattr(_extension, "extension", lambda: OldBuild())
    monkeypatch.setattr(_extension, "has_cpu_kernels", lambda: True)
    isa, supported = backends.cpu_isa()
    assert supported == [] and "predates the ISA dispatch: rebuild" in isa
    assert info._cpu_isa() == f"- ({isa})"
