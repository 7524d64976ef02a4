"""The repository stands alone, and ``pip install .`` gives a working package.

The wheel test builds a real wheel (not the editable install the other tests use) from
the tracked files only, as a fresh clone has them, installs it into a new virtual
environment and runs ops from outside the source tree: the C++ kernels of ``_C`` and
the Triton kernels that setup.py maps from ``kernels/`` into ``impresslearn.kernels``.
Only the CPU part of ``_C`` is built (IMPRESSLEARN_BUILD_CUDA=0), to keep it to minutes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A reference to something outside the repository: the sibling folder of the project's
# working notes, the design document that lived there, or an absolute path into them.
OUTSIDE = re.compile(r"\.\./shared|\bDESIGN\b|\bSTYLE\.md\b|/work/(?:shared|notes|main)\b")


def _tracked_files() -> list[Path]:
    if (ROOT / ".git").exists() and shutil.which("git"):
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        return [ROOT / p for p in out.decode().split("\0") if p]
    skip = {".git", ".venv", "build", "build-cmake", "runs", ".hypothesis", ".pytest_cache"}
    return [p for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]


def test_no_file_refers_to_anything_outside_the_repository():
    offenders = []
    for path in _tracked_files():
        rel = path.relative_to(ROOT).as_posix()
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary: images, result blobs
        for lineno, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{rel}:{lineno}: {line.strip()[:120]}")
    assert not offenders, "references outside the repository:\n" + "\n".join(offenders)


def test_the_pattern_catches_what_it_must():
    # spelled in pieces, so that this file holds no such reference itself (it is scanned too)
    up, design, style = "../", "DES" + "IGN", "STY" + "LE.md"
    outside = (f"see {up}shared/reference/x.md", f"({design} section 2)", f"{design} 2", f"rule ({style})",
               "/wo" + "rk/notes/a.md")
    for bad in outside:
        assert OUTSIDE.search(bad), bad
    for fine in ("docs/design.md, Formats", "a design choice", "--out /shared/runs/imagenet"):
        assert not OUTSIDE.search(fine), fine


def test_design_doc_has_the_sections_comments_point_to():
    text = (ROOT / "docs" / "design.md").read_text()
    titles = set(re.findall(r"^##+ (.+)$", text, flags=re.M))
    cited = set()
    for path in _tracked_files():
        if path.suffix not in (".py", ".h", ".cpp", ".cu", ".md", ".txt") or not path.is_file():
            continue
        cited |= set(re.findall(r"docs/design\.md,? \(?([A-Z][A-Za-z ]*)", path.read_text(errors="ignore")))
    assert cited, "no comment points to docs/design.md"
    missing = sorted(c for c in cited if not any(c.startswith(t) for t in titles))
    assert not missing, f"cited sections missing from docs/design.md (titles: {sorted(titles)}): {missing}"


# ----------------------------------------------------------------------------- the wheel

_SMOKE = """
import os, sys
import torch
import impresslearn
from impresslearn import _backends, _extension, ops

site = os.path.realpath(sys.argv[1])
assert os.path.realpath(impresslearn.__file__).startswith(site), impresslearn.__file__
assert not {"triton", "torch._inductor"} & set(sys.modules), "import loaded Triton"
assert _extension.has_cpu_kernels(), _extension.unavailable_reason()

g = torch.Generator().manual_seed(0)
masks = torch.rand(11, 1001, generator=g) < 0.3
weight, alpha = torch.randn(1001, generator=g), torch.rand(11, generator=g)
ref_bank = ops.pack_masks(masks, backend="reference")
for backend in ("cpp", "gpu"):  # the C++ kernels, and the Triton kernels under the interpreter
    bank = ops.pack_masks(masks, backend=backend)
    assert torch.equal(bank, ref_bank), backend
    got = ops.combine_masks(weight, bank, alpha, backend=backend)
    torch.testing.assert_close(got, ops.combine_masks(weight, ref_bank, alpha, backend="reference"))
import impresslearn.kernels.combine as kernels_combine
assert os.path.realpath(kernels_combine.__file__).startswith(site), kernels_combine.__file__
print("wheel ok", _backends.select("combine_masks", "cpu"))
"""


def _venv_site_packages(venv: Path) -> Path:
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    )
    return Path(out.stdout.strip())


@pytest.mark.slow
def test_a_built_wheel_installs_and_runs_outside_the_source_tree(tmp_path):
    src = tmp_path / "src"
    for path in _tracked_files():  # what a fresh clone has: no build folders, no .so
        if path.is_file():
            dest = src / path.relative_to(ROOT)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH")}
    env.update(IMPRESSLEARN_BUILD_CUDA="0", IMPRESSLEARN_BUILD_CPU="1", MAX_JOBS=env.get("MAX_JOBS", "2"))
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), str(src)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800,
    )
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    (wheel,) = dist.glob("impresslearn-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("__init__", "_launch", "bank", "combine", "linear"):
        assert f"impresslearn/kernels/{module}.py" in names, f"the wheel lacks impresslearn/kernels/{module}.py"
    assert any(re.fullmatch(r"impresslearn/_C\..*\.so", n) for n in names), "the wheel lacks impresslearn/_C"
    assert not any(n.startswith(("tests/", "benchmarks/", "kernels/")) for n in names)

    # a fresh venv that sees this environment's torch (and triton) but not its editable impresslearn
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "--no-deps", "--no-index", "--ignore-installed", str(wheel)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert install.returncode == 0, install.stdout[-4000:] + install.stderr[-4000:]
    # only now, so pip never sees (nor tries to replace) the editable install of this environment
    site = _venv_site_packages(venv)
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    run_env = dict(env, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    smoke = subprocess.run(
        [str(venv / "bin" / "python"), "-c", textwrap.dedent(_SMOKE), str(site)],
        cwd=outside, env=run_env, capture_output=True, text=True, timeout=600,
    )
    assert smoke.returncode == 0, smoke.stdout[-4000:] + smoke.stderr[-4000:]
    assert smoke.stdout.strip() == "wheel ok cpp"
    info = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "impresslearn.info"], cwd=outside, env=run_env,
        capture_output=True, text=True, timeout=600,
    )
    assert info.returncode == 0, info.stderr[-4000:]
    assert "triton: kernels loaded, interpreted" in info.stdout and "cpu kernels: yes" in info.stdout
