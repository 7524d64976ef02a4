"""The GPU code in the built ``impresslearn._C``, as ``cuobjdump`` lists it, against what was asked for.

    python tests/kernels/cuda_archs.py [--expect "8.0;8.6;8.9;9.0+PTX"]

Prints the SASS architectures (``sm_XY``: code the driver loads as is on devices of
compute capability X.Y' with Y' >= Y) and the PTX ones (``compute_XY``: compiled by
the driver at load for X.Y and newer). With ``--expect`` (a TORCH_CUDA_ARCH_LIST)
exits 1 unless the library holds exactly that. cuobjdump is Triton's bundled copy
(``triton.knobs.nvidia.cuobjdump``), else the one on PATH.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cuobjdump() -> str:
    try:
        from triton import knobs

        return knobs.nvidia.cuobjdump.path
    except Exception:  # no triton, or a triton without the bundled tools
        found = shutil.which("cuobjdump")
        if found is None:
            raise FileNotFoundError("cuobjdump not found: install triton or the CUDA toolkit") from None
        return found


def library() -> Path:
    """The compiled extension's file, found without importing it."""
    spec = importlib.util.find_spec("impresslearn._C")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("impresslearn._C is not built")
    return Path(spec.origin)


def archs_in(path: Path) -> dict[str, list[int]]:
    """{"sass": [80, 86, ...], "ptx": [90]} of the fat binary in ``path``."""
    found = {}
    for kind, flag, pattern in (("sass", "--list-elf", r"\.sm_(\d+)a?\.cubin"), ("ptx", "--list-ptx", r"\.sm_(\d+)a?\.ptx")):
        out = subprocess.run([cuobjdump(), flag, str(path)], capture_output=True, text=True).stdout
        found[kind] = sorted({int(m) for m in re.findall(pattern, out)})
    return found


def requested(arch_list: str) -> dict[str, list[int]]:
    """What TORCH_CUDA_ARCH_LIST asks for: "8.0;8.6 9.0+PTX" -> SASS 80, 86, 90 and PTX 90."""
    sass, ptx = set(), set()
    for entry in re.split(r"[;\s]+", arch_list.strip()):
        if not entry:
            continue
        arch = entry.removesuffix("+PTX")
        if not re.fullmatch(r"\d+\.\d+a?", arch):
            raise ValueError(f"TORCH_CUDA_ARCH_LIST entry {entry!r} is not like 8.6 or 9.0+PTX")
        number = int(arch.rstrip("a").replace(".", ""))
        sass.add(number)
        if entry.endswith("+PTX"):
            ptx.add(number)
    return {"sass": sorted(sass), "ptx": sorted(ptx)}


def default_arch_list() -> str:
    """setup.py's DEFAULT_CUDA_ARCHS, read without running setup.py."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "DEFAULT_CUDA_ARCHS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise LookupError("setup.py defines no DEFAULT_CUDA_ARCHS")


def describe(archs: dict[str, list[int]]) -> str:
    sass = " ".join(f"sm_{a}" for a in archs["sass"]) or "none"
    ptx = " ".join(f"compute_{a}" for a in archs["ptx"]) or "none"
    return f"SASS {sass}; PTX {ptx}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expect", help="a TORCH_CUDA_ARCH_LIST the library must hold exactly")
    args = parser.parse_args(argv)
    path = library()
    found = archs_in(path)
    print(f"{path.name}: {describe(found)}")
    if args.expect is not None:
        want = requested(args.expect)
        if found != want:
            print(f"expected {describe(want)} (TORCH_CUDA_ARCH_LIST={args.expect!r})")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
