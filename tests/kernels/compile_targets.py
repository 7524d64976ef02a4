"""Compiles every Triton kernel for real GPUs (sm_80, sm_90), no GPU needed, as its launcher would.

The interpreter that runs the kernel tests on CPU skips what the compiler does: type
checks, Triton's specialisation of arguments, layouts, register allocation (ptxas).
Here every host launcher of ``impresslearn.kernels`` runs on ``meta`` tensors under
``recorded_launches()`` (nothing is allocated), at shapes chosen to hit what Triton
specialises: an int argument equal to 1 becomes a compile-time constant (it has no
``.to``, no tensor methods), and ints that are multiples of 16 get a divisibility hint
that changes the generated code. Each recorded launch then goes through Triton's own
binder (the one ``kernel[grid](...)`` uses, minus the driver) and is compiled down to a
cubin for each target. Run it where TRITON_INTERPRET is unset
(tests/kernels/test_compile.py does)::

    env -u TRITON_INTERPRET python tests/kernels/compile_targets.py [--targets 80,90] [--resources]

``--resources`` prints each compiled variant's registers, stack (spills) and shared
memory per thread block as ``cuobjdump --dump-resource-usage`` reads them from the cubin.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from typing import Callable, Iterator

import torch
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile as triton_compile, make_backend
from triton.runtime.jit import create_function_from_signature

TARGETS = (80, 90)  # A100 / RTX 30xx (sm_80 code also runs on sm_86 and sm_89), H100

# Shapes chosen for what Triton specialises. ONES: every count is 1 (constexpr);
# SIXTEENS: multiples of 16 (divisibility hints); ODD: neither. The bank shapes add
# K = 9 with n = 1, where mask index 8 gives a plane offset of 1 (the set_mask_ crash).
# (K masks, n weights):
BANK_SHAPES = ((1, 1), (9, 1), (16, 16), (9, 1001))
COMBINE_SHAPES = ((1, 1), (16, 2048), (9, 4099))
# (rows M, out N, in C, K):
LINEAR_SHAPES = ((1, 1, 1, 1), (16, 32, 64, 16), (7, 33, 70, 9))
# --all adds large K (a loop of 32 planes) and a full 64-row batch
ALL_COMBINE_SHAPES = COMBINE_SHAPES + ((250, 301),)
ALL_LINEAR_SHAPES = LINEAR_SHAPES + ((64, 64, 128, 250),)
HALF_DTYPES = (torch.float16, torch.bfloat16)


def _meta(*shape, dtype=torch.float32) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


def _bank(k: int, n: int) -> torch.Tensor:
    return _meta((k + 7) // 8, n, dtype=torch.uint8)


def launcher_calls(everything: bool = False) -> Iterator[tuple[str, Callable[[], object]]]:
    """(description, call) for every launcher at the shapes above; each call launches >= 1 kernel.

    fp32 at every shape; fp16 and bf16 (another element type in the loads, tensor-core
    dots) at the odd shape only, or at every shape with ``everything``.
    """
    from impresslearn.kernels import bank, combine, linear

    for k, n in BANK_SHAPES:
        yield f"pack K={k} n={n}", lambda k=k, n=n: bank.pack_masks(_meta(k, n, dtype=torch.bool))
        yield f"unpack K={k} n={n}", lambda k=k, n=n: bank.unpack_masks(_bank(k, n), k)
        for index in sorted({0, 1, 8} & set(range(8 * ((k + 7) // 8)))):
            yield f"set_mask K={k} n={n} index={index}", lambda k=k, n=n, i=index: bank.set_mask_(
                _bank(k, n), i, _meta(n, dtype=torch.bool)
            )

    combine_shapes = ALL_COMBINE_SHAPES if everything else COMBINE_SHAPES
    for k, n in combine_shapes:
        dtypes = (torch.float32,) + (HALF_DTYPES if everything or (k, n) == combine_shapes[-1] else ())
        for dtype in dtypes:
            for use_table in (True, False):
                yield f"combine K={k} n={n} {dtype} table={use_table}", lambda k=k, n=n, d=dtype, t=use_table: (
                    combine.combine_masks(_meta(n, dtype=d), _bank(k, n), _meta(k), use_table=t)
                )
            yield f"combine grad K={k} n={n} {dtype}", lambda k=k, n=n, d=dtype: combine.combine_masks_alpha_grad(
                _meta(n, dtype=d), _meta(n, dtype=d), _bank(k, n), k
            )
            # coefficients per block of output channels: groups of 100 weights (the last one shorter)
            yield f"combine rows K={k} n={n} {dtype}", lambda k=k, n=n, d=dtype: (
                combine.combine_masks_rows(_meta(n, dtype=d), _bank(k, n), _meta(k, -(-n // 100)), 100),
                combine.combine_masks_rows_alpha_grad(_meta(n, dtype=d), _meta(n, dtype=d), _bank(k, n), k, 100),
            )

    linear_shapes = ALL_LINEAR_SHAPES if everything else LINEAR_SHAPES
    for m, n, c, k in linear_shapes:
        odd = (m, n, c, k) == LINEAR_SHAPES[-1]
        for dtype in (torch.float32,) + (HALF_DTYPES if everything or odd else ()):
            def problem(m=m, n=n, c=c, k=k, d=dtype):
                return _meta(m, c, dtype=d), _meta(n, c, dtype=d), _bank(k, n * c), _meta(k), _meta(m, n, dtype=d)

            # split=2: the split-K slices a GPU picks for small batches (meta tensors get 1)
            splits = (1, 2) if everything or odd else (1,)
            yield f"linear fwd {m}x{n}x{c} K={k} {dtype}", lambda p=problem, ss=splits: [
                linear.linear_forward(x, w, b, a, split=s) for x, w, b, a, _ in [p()] for s in ss
            ]
            yield f"linear grad_x {m}x{n}x{c} K={k} {dtype}", lambda p=problem, ss=splits: [
                linear.linear_grad_input(g, w, b, a, split=s) for _, w, b, a, g in [p()] for s in ss
            ]
            yield f"linear grad_params {m}x{n}x{c} K={k} {dtype}", lambda p=problem: [
                linear.linear_grad_params(g, x, w, b, a, wg) for x, w, b, a, g in [p()] for wg in (True, False)
            ]


def recorded(everything: bool = False):
    """Every launch the launchers make at the shapes above, with its description."""
    from impresslearn.kernels._launch import recorded_launches

    for what, call in launcher_calls(everything):
        with recorded_launches() as launches:
            call()
        if not launches:
            raise AssertionError(f"{what}: the launcher launched nothing")
        for launch in launches:
            yield what, launch


def _variants(what: str, launch, everything: bool):
    """The launch as the GPU sees it, plus TF32 where an fp32 dot may use it (torch's setting)."""
    yield launch.kwargs
    if launch.kwargs.get("PRECISION") == "ieee" and launch.args[0].dtype == torch.float32:
        if everything or "16x32x64" in what:
            yield {**launch.kwargs, "PRECISION": "tf32"}


def specialise(kernel, target: GPUTarget, args: tuple, kwargs: dict):
    """(ASTSource, options) exactly as ``kernel[grid](*args, **kwargs)`` would compile them for ``target``."""
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    return ASTSource(kernel, signature, constexprs, attrs), options


def resource_usage(cubin: bytes) -> str:
    """``REG:n STACK:n SHARED:n LOCAL:n`` of the cubin's kernel, read by Triton's bundled cuobjdump."""
    from triton import knobs

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run(
            [knobs.nvidia.cuobjdump.path, "--dump-resource-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    return " ".join(f"{k}:{v}" for k, v in zip(("REG", "STACK", "SHARED", "LOCAL"), found.groups())) if found else out


def launched_kernels() -> set[str]:
    """Names of the kernels of impresslearn.kernels that a launcher launches (not device helpers)."""
    import triton

    from impresslearn.kernels import bank, combine, linear

    jitted = {
        name: fn for module in (bank, combine, linear) for name, fn in vars(module).items()
        if isinstance(fn, triton.runtime.JITFunction)
    }
    return {name for name in jitted if not any(f"{name}(" in fn.src for other, fn in jitted.items() if other != name)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default=",".join(map(str, TARGETS)), help="compute capabilities, e.g. 80,90")
    parser.add_argument("--resources", action="store_true", help="print registers/stack/shared per variant")
    parser.add_argument("--all", action="store_true", help="every dtype at every shape, and larger shapes")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        sys.exit("unset TRITON_INTERPRET: the interpreter does not compile")
    targets = [GPUTarget("cuda", int(cc), 32) for cc in args.targets.split(",")]

    done: dict[tuple, str] = {}
    for what, launch in recorded(args.all):
        for kwargs in _variants(what, launch, args.all):
            for target in targets:
                src, options = specialise(launch.kernel, target, launch.args, kwargs)
                key = (target.arch, src.hash(), options.hash())
                if key in done:
                    continue
                try:
                    compiled = triton_compile(src, target=target, options=options.__dict__)
                except Exception as exc:
                    print(f"FAILED sm_{target.arch} {src.name} ({what}; signature {src.signature}, "
                          f"constants {src.constants}): {type(exc).__name__}: {exc}")
                    return 1
                usage = resource_usage(compiled.asm["cubin"]) if args.resources else ""
                done[key] = f"sm_{target.arch} {src.name} warps={options.num_warps} {usage}  ({what})"
                if args.resources:
                    print(done[key], flush=True)
    kernels = sorted({line.split()[1] for line in done.values()})
    missed = launched_kernels() - set(kernels)
    if missed:
        print(f"FAILED: no launcher call above reaches {sorted(missed)}; add them to launcher_calls()")
        return 1
    print(f"compiled {len(done)} specialisations of {len(kernels)} kernels for "
          f"{', '.join(f'sm_{t.arch}' for t in targets)}: {', '.join(kernels)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
