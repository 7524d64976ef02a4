"""``make gpu-check``: validate the GPU kernels on a machine with an NVIDIA GPU, in one report.

    python scripts/gpu_check.py [--out runs/gpu_check] [--budget 480]

Steps, each in its own process with a share of the time budget (8 minutes by default),
every one written into ``<out>/report.md``:

1. environment: ``python -m impresslearn.info`` and the architectures in ``_C``;
2. smoke: every op on every GPU kernel against the reference at ResNet-50 layer sizes
   (``--smoke`` runs this part alone), including what broke or could break on a GPU:
   mask indices 8-15 (Triton specialises a plane of 1 into a constant), TF32 through
   ``torch.backends.cuda.matmul.fp32_precision``, a bank past 65535 x 1024 weights
   (grid axis limits), a second GPU while the first is current, strided inputs to
   the registered ops; then a ``torch.profiler`` table of one topk_mask and one fused
   impress_linear call;
3. ``pytest -m gpu`` with the compiled kernels (TRITON_INTERPRET=0);
4. the GPU rows of ``benchmarks/kernels.py --quick``.

Exit status 0 only if every step passed. Without a CUDA device it stops at once
with a message (exit 2) instead of waiting on anything.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# ResNet-50 layers as (name, weights): conv1 7x7x3x64, a 3x3 64->64, the largest 3x3
# (512->512), a 1x1 2048->512, the 1000-class fc (2048 inputs)
RESNET50_LAYERS = (("conv1", 9408), ("layer1.conv2", 36864), ("layer4.conv2", 2359296),
                   ("layer4.conv3", 1048576), ("fc", 2048000))
MASK_COUNTS = (1, 9, 64, 250)


# ----------------------------------------------------------------------------- smoke (in-process)


class Smoke:
    """Runs named checks, records pass/fail with a detail line, never stops at the first failure."""

    def __init__(self):
        self.rows: list[tuple[str, bool, str]] = []

    def check(self, name: str, fn) -> None:
        import torch

        start = time.perf_counter()
        try:
            detail = fn() or ""
            torch.cuda.synchronize()
            ok = True
        except Exception as exc:  # a failed check is a row of the report, not the end of the run
            ok, detail = False, f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            traceback.print_exc()
        detail = f"{detail} ({time.perf_counter() - start:.2f} s)".strip()
        self.rows.append((name, ok, detail))
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)


def _equal(actual, expected, what: str) -> str:
    import torch

    if not torch.equal(actual.cpu(), expected.cpu()):
        differ = int((actual.cpu() != expected.cpu()).sum())
        raise AssertionError(f"{what}: {differ} elements differ from the reference")
    return "bit-exact"


def _close(actual, expected, dtype, what: str) -> str:
    import torch

    from impresslearn.ops.combine import TOLERANCES

    err = (actual.double().cpu() - expected.double().cpu()).abs().max().item()
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), **TOLERANCES[dtype], msg=what)
    return f"max |err| {err:.2e}"


def _masks(k: int, n: int, seed: int, device="cuda"):
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    return torch.rand(k, n, generator=g, device=device) < 0.3


def smoke(report: list[str]) -> bool:
    import torch

    from impresslearn import ops
    from impresslearn.ops.bank import pack_masks_reference, unpack_masks_reference
    from impresslearn.ops.combine import combine_masks_alpha_grad_reference, combine_masks_reference
    from impresslearn.ops.topk import topk_mask_reference

    s = Smoke()
    report_tail: list[str] = []
    dev = "cuda"
    dtypes = (torch.float32, torch.float16, torch.bfloat16)

    for layer, n in RESNET50_LAYERS:
        for k in MASK_COUNTS:
            masks = _masks(k, n, seed=k)
            bank = pack_masks_reference(masks)
            s.check(f"pack_masks triton {layer} K={k}", lambda: _equal(ops.pack_masks(masks, backend="triton"), bank, "pack"))
            s.check(f"unpack_masks triton {layer} K={k}",
                    lambda: _equal(ops.unpack_masks(bank, k, backend="triton"), masks, "unpack"))
            for dtype in dtypes:
                g = torch.Generator(device=dev).manual_seed(n + k)
                weight = torch.randn(n, generator=g, device=dev).to(dtype)
                alpha = torch.randn(k, generator=g, device=dev) / k
                grad = torch.randn(n, generator=g, device=dev).to(dtype)
                exact = weight.double() * (alpha.double() @ masks.double())
                s.check(f"combine_masks triton {layer} K={k} {dtype}",
                        lambda: _close(ops.combine_masks(weight, bank, alpha, backend="triton"), exact, dtype, "combine"))
                s.check(f"combine_masks_alpha_grad triton {layer} K={k} {dtype}", lambda: _close(
                    ops.combine_masks_alpha_grad(grad, weight, bank, k, backend="triton"),
                    masks.double() @ (grad.double() * weight.double()), torch.float32, "alpha grad"))
        for dtype in dtypes:
            scores = torch.randn(n, device=dev).to(dtype)
            for density in (0.01, 0.1, 0.5):
                kk = max(1, round(density * n))
                s.check(f"topk_mask cuda {layer} {dtype} density={density}", lambda: _equal(
                    ops.topk_mask(scores, kk, backend="cuda"), topk_mask_reference(scores, kk), "topk"))
            ties = torch.randint(-4, 5, (n,), device=dev).to(dtype)  # the threshold spans many tiles
            s.check(f"topk_mask cuda {layer} {dtype} ties", lambda: _equal(
                ops.topk_mask(ties, n // 10 + 1, backend="cuda"), topk_mask_reference(ties, n // 10 + 1), "topk"))

    # mask indices 8-15 (plane 1: a constexpr in Triton) and 16+, set and appended
    n = 36864
    masks = _masks(20, n, seed=3)

    def grow_bank():
        bank = pack_masks_reference(masks[:1])
        for i in range(1, 20):
            bank = ops.append_mask(bank, i, masks[i], backend="triton")
        for i in (8, 9, 15, 16):
            ops.set_mask_(bank, i, ~masks[i], backend="triton")
        expected = masks.clone()
        expected[[8, 9, 15, 16]] = ~expected[[8, 9, 15, 16]]
        return _equal(unpack_masks_reference(bank, 20), expected, "append/set")

    s.check("append_mask + set_mask_ triton, indices 1-19", grow_bank)

    def topk_into():
        bank = pack_masks_reference(masks)
        scores = torch.randn(n, device=dev)
        for index in (0, 9, 17):
            ops.topk_mask_into_(bank, index, scores, n // 10, backend="cuda")
        expected = masks.clone()
        for index in (0, 9, 17):
            expected[index] = topk_mask_reference(scores, n // 10)
        return _equal(unpack_masks_reference(bank, 20), expected, "topk_mask_into_")

    s.check("topk_mask_into_ cuda, indices 0, 9, 17", topk_into)

    # a bank past 65535 x 1024 weights: the weight blocks must be on grid axis x
    def long_bank():
        n = 70_000_000
        masks = _masks(9, n, seed=1)
        bank = ops.pack_masks(masks, backend="triton")
        _equal(bank, pack_masks_reference(masks), "pack 70M")
        return _equal(ops.unpack_masks(bank, 9, backend="triton"), masks, "unpack 70M")

    s.check("pack/unpack triton, 70M weights x 9 masks", long_bank)

    # fused linear at the fc layer, rows around the fused/cuBLAS threshold; fp32 with and
    # without TF32. The rule of tests/kernels/test_linear.py: at most twice the error of
    # PyTorch's own composition in the same dtype and setting (combine, then F.linear)
    def linear_case(rows, dtype, tf32):
        def run():
            previous = torch.backends.cuda.matmul.fp32_precision
            torch.backends.cuda.matmul.fp32_precision = "tf32" if tf32 else "ieee"
            try:
                out_f, in_f, k = 1000, 2048, 64
                g = torch.Generator(device=dev).manual_seed(rows)
                masks = _masks(k, out_f * in_f, seed=rows)
                bank = pack_masks_reference(masks)
                weight = (torch.randn(out_f, in_f, generator=g, device=dev) / in_f**0.5).to(dtype)
                alpha = torch.randn(k, generator=g, device=dev) / k**0.5
                x = torch.randn(rows, in_f, generator=g, device=dev).to(dtype)
                coeff = (alpha.double() @ masks.double()).view(out_f, in_f)
                exact_y = x.double() @ (weight.double() * coeff).T
                # y.sum() backward: dW_eff = 1^T x for every row of W_eff
                exact_grad_alpha = combine_masks_alpha_grad_reference(
                    x.double().sum(0).expand(out_f, in_f), weight.double(), bank, k)

                def forward_backward(backend):
                    a = alpha.clone().requires_grad_()
                    y = ops.impress_linear(x, weight, bank, a, backend=backend)
                    y.sum().backward()
                    return (y.double() - exact_y).abs().max().item(), (a.grad.double() - exact_grad_alpha).abs().max().item()

                torch_y, torch_alpha = forward_backward("reference")
                err_y, err_alpha = forward_backward("triton")
                if err_y > 2 * torch_y + 1e-5 or err_alpha > 2 * torch_alpha + 1e-5:
                    raise AssertionError(f"error y {err_y:.3g}, grad alpha {err_alpha:.3g} vs PyTorch's "
                                         f"{torch_y:.3g}, {torch_alpha:.3g}: more than twice")
                return f"max |err| y {err_y:.2e}, grad alpha {err_alpha:.2e} (PyTorch {torch_y:.2e}, {torch_alpha:.2e})"
            finally:
                torch.backends.cuda.matmul.fp32_precision = previous

        return run

    for rows in (1, 16, 64, 65, 256):
        for dtype in dtypes:
            s.check(f"impress_linear triton fc rows={rows} {dtype}", linear_case(rows, dtype, tf32=False))
    s.check("impress_linear triton fc rows=16 fp32 with TF32 allowed", linear_case(16, torch.float32, tf32=True))

    def conv():
        k = 9
        weight = torch.randn(512, 512, 3, 3, device=dev) / 48
        masks = _masks(k, weight.numel(), seed=2)
        bank, alpha = pack_masks_reference(masks), torch.randn(k, device=dev) / 3
        x = torch.randn(2, 512, 7, 7, device=dev)
        y = ops.impress_conv2d(x, weight, bank, alpha, padding=1, backend="triton")
        expected = torch.nn.functional.conv2d(x, combine_masks_reference(weight, bank, alpha), padding=1)
        return _close(y, expected, torch.float32, "conv")

    s.check("impress_conv2d triton layer4.conv2", conv)

    def refuses_strided():
        from impresslearn.kernels import combine as kernel

        weight = torch.randn(2 * 1000, device=dev)[::2]
        bank = torch.zeros(2, 1000, dtype=torch.uint8, device=dev)
        try:
            kernel.combine_masks(weight, bank, torch.randn(9, device=dev))
        except ValueError as exc:
            return f"refused: {exc}"
        raise AssertionError("a strided weight reached the kernel")

    s.check("launchers refuse a strided weight", refuses_strided)

    if torch.cuda.device_count() > 1:
        def second_gpu():
            torch.cuda.set_device(0)
            masks = _masks(9, 100_003, seed=4, device="cuda:1")
            bank = ops.pack_masks(masks, backend="triton")
            weight, alpha = torch.randn(100_003, device="cuda:1"), torch.randn(9, device="cuda:1")
            _close(ops.combine_masks(weight, bank, alpha, backend="triton"),
                   weight.double() * (alpha.double() @ masks.double()), torch.float32, "combine on cuda:1")
            scores = torch.randn(100_003, device="cuda:1")
            return _equal(ops.topk_mask(scores, 5000, backend="cuda"), topk_mask_reference(scores.cpu(), 5000), "topk")

        s.check("ops on cuda:1 while cuda:0 is current", second_gpu)
    else:
        s.rows.append(("ops on a second GPU", True, "skipped: one GPU visible"))

    def run_profile():
        report_tail.append(profile())
        return "table below"

    s.check("profile", run_profile)
    failed = [r for r in s.rows if not r[1]]
    report += [f"{len(s.rows) - len(failed)} of {len(s.rows)} smoke checks passed"
               + (f"; FAILED: {', '.join(r[0] for r in failed)}" if failed else "") + ".", "",
               "| check | result | detail |", "|---|---|---|"]
    report += [f"| {name} | {'ok' if ok else '**FAIL**'} | {detail} |" for name, ok, detail in s.rows]
    report += ["", *report_tail, ""]
    return not failed


def profile() -> str:
    """torch.profiler table for one topk_mask (ResNet-50's largest conv) and one fused impress_linear (fc)."""
    import torch
    from torch.profiler import ProfilerActivity, profile as torch_profile

    from impresslearn import ops
    from impresslearn.ops.bank import pack_masks_reference

    n = 2359296
    scores = torch.randn(n, device="cuda")
    masks = _masks(64, 1000 * 2048, seed=0)
    bank = pack_masks_reference(masks)
    weight = torch.randn(1000, 2048, device="cuda")
    alpha = torch.randn(64, device="cuda")
    x = torch.randn(16, 2048, device="cuda")
    for _ in range(3):  # compile and warm up outside the profile
        ops.topk_mask(scores, n // 10, backend="cuda")
        ops.impress_linear(x, weight, bank, alpha, backend="triton")
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        ops.topk_mask(scores, n // 10, backend="cuda")
        ops.impress_linear(x, weight, bank, alpha, backend="triton")
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="device_time_total", row_limit=20)
    return ("Profile: one topk_mask (n = 2,359,296, 10%) and one fused impress_linear (16 x 2048 -> 1000, K = 64)"
            f"\n\n```\n{table}\n```")


# ----------------------------------------------------------------------------- steps (subprocesses)


def _run(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[bool, str]:
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(1, timeout))
        ok, out = done.returncode == 0, done.stdout + done.stderr
        status = f"exit {done.returncode}"
    except subprocess.TimeoutExpired as exc:
        ok, status = False, f"TIMED OUT after {timeout:.0f} s"
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
    return ok, f"`{' '.join(cmd)}`: {status} in {time.perf_counter() - start:.0f} s\n\n```\n{out[-20000:]}\n```"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu_check", help="folder for report.md")
    parser.add_argument("--budget", type=float, default=480, help="seconds for all steps (default 480)")
    parser.add_argument("--smoke", type=Path, metavar="FILE",
                        help="run only the smoke checks and the profile, writing their table to FILE")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("gpu-check needs an NVIDIA GPU: torch.cuda.is_available() is False here "
              f"(torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}). Nothing was run.", file=sys.stderr)
        return 2
    os.environ["TRITON_INTERPRET"] = "0"  # the compiled kernels, before anything imports triton

    if args.smoke:
        section: list[str] = []
        ok = smoke(section)
        args.smoke.write_text("\n".join(section))
        return 0 if ok else 1

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "smoke.md").unlink(missing_ok=True)
    deadline = time.monotonic() + args.budget
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(ROOT)}
    py = sys.executable
    steps = [  # (title, command, share of what is left)
        ("Environment", [py, "-m", "impresslearn.info"], 0.05),
        ("Architectures in impresslearn._C (cuobjdump)", [py, str(ROOT / "tests/kernels/cuda_archs.py")], 0.05),
        ("Smoke and profile", [py, __file__, "--smoke", str(args.out / "smoke.md")], 0.4),
        ("pytest -m gpu", [py, "-m", "pytest", "-q", "-m", "gpu", "-n", "4", "-p", "no:randomly", "tests"], 0.75),
        ("GPU rows of benchmarks/kernels.py --quick",
         [py, "benchmarks/kernels.py", "--quick", "--only", "gpu_", "--out", str(args.out)], 1.0),
    ]
    report = [f"# gpu-check: {torch.cuda.get_device_name()} ({torch.cuda.device_count()} visible), "
              f"torch {torch.__version__}, CUDA {torch.version.cuda}", ""]
    passed = True
    for title, cmd, share in steps:
        left = deadline - time.monotonic()
        print(f"== {title} ({left * share:.0f} s of {left:.0f} s left)", flush=True)
        ok, text = _run(cmd, left * share, env)
        passed &= ok
        report += [f"## {title}: {'passed' if ok else 'FAILED'}", ""]
        if "--smoke" in cmd and (args.out / "smoke.md").exists():
            report += [(args.out / "smoke.md").read_text(), "", "<details><summary>log</summary>", "", text,
                       "", "</details>", ""]
        else:
            report += [text, ""]
        print(text[-3000:], flush=True)
    path = args.out / "report.md"
    path.write_text("\n".join(report))
    print(f"\ngpu-check {'passed' if passed else 'FAILED'}; report: {path}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
