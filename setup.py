"""Builds ``impresslearn._C`` from ``csrc/``; every part optional, switchable by environment.

IMPRESSLEARN_BUILD_CPU   auto (default) build the C++/OpenMP CPU kernels; 1 require them; 0 skip them.
IMPRESSLEARN_BUILD_CUDA  auto (default) build csrc/cuda when nvcc and a CUDA build of
                         torch are found; 1 require it; 0 skip it.
TORCH_CUDA_ARCH_LIST     GPU architectures (default DEFAULT_CUDA_ARCHS: A100, RTX 30xx/40xx/A6000,
                         H100, and PTX that newer GPUs compile at load; each one adds compile time).
MAX_JOBS                 parallel compile jobs (ninja).

A part left on "auto" or default that fails to build is dropped with a warning: the
package then runs on the reference backend and ``python -m impresslearn.info`` says why.
A part forced with 1 that fails stops the build.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import traceback
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent.resolve()
# sm_80 code also runs on 8.6/8.7 devices; 8.6 and 8.9 get their own code for speed;
# +PTX lets devices newer than 9.0 (Blackwell) JIT the kernels instead of failing
DEFAULT_CUDA_ARCHS = "8.0;8.6;8.9;9.0+PTX"


def _flags(name: str) -> list[str]:
    lines = (ROOT / "csrc" / name).read_text().splitlines()
    return [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, default).strip().lower()
    if value not in ("0", "1", "auto"):
        sys.exit(f"{name} must be 0, 1 or auto, got {value!r}")
    return value


def _find_cuda_home() -> None:
    """Point CUDA_HOME at a real toolkit when nvcc on PATH is only a wrapper script.

    torch guesses CUDA_HOME from ``which nvcc``; a wrapper in /usr/local/bin makes
    that /usr/local, which has no CUDA headers. Must run before cpp_extension loads.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    candidates = sorted(glob.glob("/usr/local/cuda*/bin/nvcc"), reverse=True)
    if candidates:
        os.environ["CUDA_HOME"] = str(Path(candidates[0]).parent.parent)


def _cuda_reason() -> str | None:
    import torch
    from torch.utils import cpp_extension

    if torch.version.cuda is None:
        return "torch is a CPU-only build"
    home = cpp_extension.CUDA_HOME
    if home is None or not Path(home, "bin", "nvcc").exists():
        return "nvcc not found (set CUDA_HOME to the CUDA toolkit)"
    return None


def _extensions(with_cpu: bool, with_cuda: bool):
    from torch.utils import cpp_extension

    sources = ["csrc/bindings.cpp"]
    macros = []
    if with_cpu:
        sources += sorted(glob.glob("csrc/cpu/*.cpp"))
        macros.append(("WITH_CPU", "1"))
    cxx = _flags("cxx_flags.txt")
    kwargs = dict(
        name="impresslearn._C",
        sources=sources,
        include_dirs=[str(ROOT / "csrc")],
        define_macros=macros,
        extra_compile_args={"cxx": cxx},
        extra_link_args=["-fopenmp"],
    )
    if with_cuda:
        kwargs["sources"] += sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
        kwargs["define_macros"].append(("WITH_CUDA", "1"))
        kwargs["extra_compile_args"]["nvcc"] = _flags("nvcc_flags.txt")
        return [cpp_extension.CUDAExtension(**kwargs)]
    return [cpp_extension.CppExtension(**kwargs)]


def _build_ext_class():
    from torch.utils.cpp_extension import BuildExtension

    class OptionalBuildExt(BuildExtension):
        """Builds _C; on failure retries without CUDA, then without the extension."""

        def run(self):
            try:
                super().run()
            except Exception:
                plan = self.distribution.impresslearn_plan
                traceback.print_exc()
                if plan["cuda"] and plan["cuda_mode"] != "1":
                    print("impresslearn: CUDA part failed to build; retrying with CPU kernels only", file=sys.stderr)
                    plan["cuda"] = False
                    self.extensions = self.distribution.ext_modules = _extensions(plan["cpu"], False)
                    try:
                        super().run()
                        return
                    except Exception:
                        traceback.print_exc()
                if "1" in (plan["cpu_mode"], plan["cuda_mode"]):
                    raise
                print(
                    "impresslearn: _C failed to build; the package will run on the reference backend",
                    file=sys.stderr,
                )

    return OptionalBuildExt.with_options(use_ninja=shutil.which("ninja") is not None)


def main():
    cpu_mode = _env("IMPRESSLEARN_BUILD_CPU", "auto")
    cuda_mode = _env("IMPRESSLEARN_BUILD_CUDA", "auto")
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    _find_cuda_home()

    ext_modules, cmdclass, plan = [], {}, {}
    try:
        import torch  # noqa: F401  (build with --no-build-isolation against the venv's torch)
    except ImportError:
        print("impresslearn: torch is not installed; building without _C", file=sys.stderr)
    else:
        with_cpu = cpu_mode != "0"
        with_cuda = False
        if cuda_mode != "0":
            reason = _cuda_reason()
            if reason and cuda_mode == "1":
                sys.exit(f"IMPRESSLEARN_BUILD_CUDA=1 but {reason}")
            with_cuda = reason is None
            if reason:
                print(f"impresslearn: skipping the CUDA kernels: {reason}", file=sys.stderr)
        plan = dict(cpu=with_cpu, cuda=with_cuda, cpu_mode=cpu_mode, cuda_mode=cuda_mode)
        if with_cpu or with_cuda:
            ext_modules = _extensions(with_cpu, with_cuda)
            cmdclass = {"build_ext": _build_ext_class()}

    from setuptools import Distribution

    class _Distribution(Distribution):
        impresslearn_plan = plan

    setup(
        distclass=_Distribution,
        packages=_subpackages() + ["impresslearn.kernels"],
        package_dir={"impresslearn": "impresslearn", "impresslearn.kernels": "kernels"},
        ext_modules=ext_modules,
        cmdclass=cmdclass,
    )


def _subpackages() -> list[str]:
    found = []
    for init in sorted(ROOT.glob("impresslearn/**/__init__.py")):
        found.append(".".join(init.parent.relative_to(ROOT).parts))
    return found


if __name__ == "__main__":
    main()
