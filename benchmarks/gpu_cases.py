"""GPU rows for benchmarks/kernels.py: ``gpu_cases(quick) -> list`` (read there by duck typing).

Rows (docs/design.md, Targets: the GPU rows; reported with the device by kernels.py):

* ``gpu_copy``: a device-to-device copy, the measured memory bandwidth that the
  combine rows are judged against (combine >= 70% of it);
* ``gpu_combine_fwd`` / ``gpu_combine_alpha_grad``: Triton combine (256-entry table,
  and the shift-and-mask variant the kernel docstring argues against) against the
  dense float reference ``alpha @ B_float``;
* ``gpu_linear_m<rows>``: fused Triton impress_linear against combine + cuBLAS at
  batch 1..256 (fused should be no slower up to 64 rows, ``FUSED_MAX_ROWS``);
* ``gpu_topk``: CUDA radix-select topk_mask against sort (GetSubnet) and torch.topk.

Each call is timed alone (kernels.py synchronises around it), so launch overhead is
in the numbers: sizes are chosen so that each call moves hundreds of MB.
Nothing here runs without CUDA; no speed is claimed from a machine without one.
"""

import functools

import torch
from _cases import Case


# kernels.py puts benchmarks/ on sys.path before it loads this file
GpuCase = functools.partial(Case, repeats=20, device="cuda")


def _combine_setup(n: int, k: int, p: float = 0.1):
    def setup():
        from impresslearn.ops.bank import unpack_masks_reference

        g = torch.Generator(device="cuda").manual_seed(0)
        planes = (k + 7) // 8
        # masks of density p, packed plane by plane (the full bool [K, n] never exists)
        bank = torch.zeros(planes, n, dtype=torch.uint8, device="cuda")
        for b in range(k):
            bits = (torch.rand(n, generator=g, device="cuda") < p).to(torch.uint8)
            bank[b // 8] |= bits << (b % 8)
        return dict(
            bank=bank,
            b_float=unpack_masks_reference(bank, k).float(),
            alpha=torch.rand(k, generator=g, device="cuda") / k,
            weight=torch.randn(n, generator=g, device="cuda"),
            grad=torch.randn(n, generator=g, device="cuda"),
            k=k,
        )

    return setup


def _combine_cases(quick: bool) -> list[Case]:
    from impresslearn.kernels import combine as kc

    n, k = (1 << 20, 64) if quick else (8 << 20, 256)
    planes = (k + 7) // 8
    sizes = dict(n=n, K=k, bank_MB=round(planes * n / 1e6, 1))
    moved = {"dense": 4 * k * n + 8 * n, "*": planes * n + 8 * n}
    ops = torch.ops.impresslearn
    fwd = GpuCase(
        name="gpu_combine_fwd",
        sizes=sizes,
        setup=_combine_setup(n, k),
        reference=lambda x: (x["alpha"] @ x["b_float"]) * x["weight"],
        reference_name="dense",
        candidates={
            "triton": lambda x: ops.combine_masks_triton(x["weight"], x["bank"], x["alpha"]),
            "triton-shift": lambda x: kc.combine_masks(x["weight"], x["bank"], x["alpha"], use_table=False),
        },
        bytes_moved=moved,
        target=">= 70% of the gpu_copy GB/s",
    )
    bwd = GpuCase(
        name="gpu_combine_alpha_grad",
        sizes=sizes,
        setup=_combine_setup(n, k),
        reference=lambda x: x["b_float"] @ (x["grad"] * x["weight"]),
        reference_name="dense",
        candidates={"triton": lambda x: ops.combine_masks_alpha_grad_triton(x["grad"], x["weight"], x["bank"], x["k"])},
        bytes_moved=moved,
        target=">= 70% of the gpu_copy GB/s",
    )
    return [fwd, bwd]


def _copy_case(quick: bool) -> Case:
    n = (64 << 20) if quick else (1 << 30)  # bytes

    def setup():
        src = torch.empty(n, dtype=torch.uint8, device="cuda").random_()
        return dict(src=src, dst=torch.empty_like(src))

    return GpuCase(
        name="gpu_copy",
        sizes=dict(MB=n // (1 << 20)),
        setup=setup,
        reference=lambda x: x["dst"].copy_(x["src"]),
        reference_name="copy",
        candidates={},
        bytes_moved=2 * n,
        target="measured device memory bandwidth",
    )


def _linear_cases(quick: bool) -> list[Case]:
    from impresslearn.ops import combine_masks

    out_f, in_f, k = (1024, 1024, 64) if quick else (4096, 4096, 64)
    rows_list = (1, 64) if quick else (1, 8, 32, 64, 128, 256)
    planes = (k + 7) // 8
    n = out_f * in_f
    cases = []
    for rows in rows_list:

        def setup(rows=rows):
            x = _combine_setup(n, k)()
            x["weight"] = x["weight"].view(out_f, in_f)
            del x["b_float"], x["grad"]
            x["x"] = torch.randn(rows, in_f, device="cuda")
            return x

        io = 4 * rows * (in_f + out_f)
        cases.append(
            GpuCase(
                name=f"gpu_linear_m{rows}",
                sizes=dict(rows=rows, out=out_f, inp=in_f, K=k),
                setup=setup,
                reference=lambda x: torch.nn.functional.linear(
                    x["x"], combine_masks(x["weight"], x["bank"], x["alpha"], backend="triton")
                ),
                reference_name="combine+cuBLAS",
                candidates={
                    "fused": lambda x: torch.ops.impresslearn.impress_linear_triton(
                        x["x"], x["weight"], x["bank"], x["alpha"]
                    )
                },
                # fused: read W and the bank once; unfused: combine reads both and writes
                # W_eff, the GEMM reads W_eff back
                bytes_moved={"fused": (4 + planes) * n + io, "*": (12 + planes) * n + io},
                target="fused no slower than combine + cuBLAS at rows <= 64",
                targets={("fused", "combine+cuBLAS"): 1.0} if rows <= 64 else {},
            )
        )
    return cases


def _topk_case(quick: bool) -> Case | None:
    from impresslearn import backends

    if not backends.has_cuda_kernels():
        return None
    n = (1 << 20) if quick else 25_000_000
    k = max(1, int(0.1 * n + 0.5))

    def setup():
        g = torch.Generator(device="cuda").manual_seed(0)
        scores = (torch.rand(n, generator=g, device="cuda") * 2 - 1) / 300**0.5
        return dict(scores=scores, n=n, k=k)

    def getsubnet(x):
        _, idx = x["scores"].abs().sort()
        out = torch.zeros(n, dtype=torch.bool, device="cuda")
        out[idx[n - k :]] = True
        return out

    def torch_topk(x):
        idx = torch.topk(x["scores"].abs(), k, sorted=False).indices
        out = torch.zeros(n, dtype=torch.bool, device="cuda")
        out[idx] = True
        return out

    return GpuCase(
        name="gpu_topk",
        sizes=dict(n=n, density=0.1),
        setup=setup,
        reference=getsubnet,
        reference_name="sort (GetSubnet)",
        baselines={"torch.topk": torch_topk},
        candidates={"cuda": lambda x: torch.ops.impresslearn.topk_mask_cuda(x["scores"], k)},
        # radix select reads the scores 4 times (one pass per byte of the key) + the write pass
        bytes_moved={"cuda": 21 * n, "*": 5 * n},
        target="faster than torch.topk",
        targets={("cuda", "torch.topk"): 1.0},
    )


def gpu_cases(quick: bool) -> list:
    if not torch.cuda.is_available():
        return []
    import impresslearn.ops

    impresslearn.ops.load_triton_ops()  # registered lazily; the cases call torch.ops.impresslearn.*_triton

    cases = [_copy_case(quick)]
    if hasattr(torch.ops.impresslearn, "combine_masks_triton"):
        cases += _combine_cases(quick)
    if hasattr(torch.ops.impresslearn, "impress_linear_triton"):
        cases += _linear_cases(quick)
    topk = _topk_case(quick)
    if topk is not None:
        cases.append(topk)
    return cases
