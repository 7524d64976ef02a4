"""Small-K overhead: one alpha-training step of LeNet-300-100 at K = 25, batch 128.

    python benchmarks/small_k_step.py                # the three steps, timed round-robin
    python benchmarks/small_k_step.py --profile      # and torch.profiler's table of the alpha step
    python benchmarks/small_k_step.py --k 250 --steps 50

Three steps on the same batch and the same optimiser (RMSprop), timed one round of
``--steps`` steps each in turn, ``--rounds`` times, so load from other processes falls
on all three alike:

    alpha (impresslearn)   the library's alpha step: alpha[K, d] bound to the model's
                           ImpressLinear layers (public API: bind_coefficients), the
                           C++ combine kernels on the byte-plane bank
    alpha (dense masks)    the same step written densely: every layer keeps its masks
                           unpacked as fp32 B[K, n] and builds W * (alpha @ B) itself
    plain dense LeNet      an ordinary LeNet-300-100 training step, its weights trained

Targets (issue 16): the library's step no slower than the dense-mask one, and within
1.5x of the plain dense step. Prints min, p20 and median per step, and the process
CPU time per step (all threads), and the ratios of each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from impresslearn import ImpressLearner, bind_coefficients
from impresslearn.ops import unpack_masks
from impresslearn.layers import impress_layers
from impresslearn.models import create_model

HIDDEN = (300, 100)


def impress_step(k: int, lr: float):
    """The library's alpha step; returns (step function, alpha)."""
    model = create_model("lenet300", num_classes=10, seed=0)
    learner = ImpressLearner(model, density=0.1)
    learner.add_random_masks(k, seed=0)
    layers = impress_layers(model)
    alpha = torch.full((k, len(layers)), 1.0 / k, requires_grad=True)
    bind_coefficients(model, alpha)
    opt = torch.optim.RMSprop([alpha], lr=lr)

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step, model, layers


def dense_mask_step(layers, k: int, lr: float):
    """The same step with fp32 masks B[K, n] unpacked once per layer."""
    weights = [layer.weight.detach().clone() for layer in layers]
    masks = [unpack_masks(layer.bank, k).float() for layer in layers]
    alpha = torch.full((k, len(layers)), 1.0 / k, requires_grad=True)
    opt = torch.optim.RMSprop([alpha], lr=lr)

    def forward(x):
        h = x.flatten(1)
        for i, (w, b) in enumerate(zip(weights, masks)):
            h = F.linear(h, w * (alpha[:, i] @ b).view_as(w))
            if i < len(weights) - 1:
                h = F.relu(h)
        return h

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(forward(x), y).backward()
        opt.step()

    return step


def plain_dense_step(lr: float):
    g = torch.Generator().manual_seed(0)
    sizes = (784, *HIDDEN, 10)
    weights = [(torch.randn(o, i, generator=g) / i**0.5).requires_grad_() for i, o in zip(sizes, sizes[1:])]
    opt = torch.optim.RMSprop(weights, lr=lr)

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        h = x.flatten(1)
        for i, w in enumerate(weights):
            h = F.linear(h, w)
            if i < len(weights) - 1:
                h = F.relu(h)
        F.cross_entropy(h, y).backward()
        opt.step()

    return step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=25, help="basis masks (default 25)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100, help="steps per round")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's table of the alpha step")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    lr = 1e-3
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (args.batch,), generator=g)

    impress, model, layers = impress_step(args.k, lr)
    steps = {
        "alpha (impresslearn)": impress,
        "alpha (dense masks)": dense_mask_step(layers, args.k, lr),
        "plain dense LeNet": plain_dense_step(lr),
    }
    print(f"LeNet-300-100, K = {args.k}, batch {args.batch}, {args.threads} threads, "
          f"{args.rounds} rounds x {args.steps} steps; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")  # fmt: skip
    for step in steps.values():  # warm-up: allocator, lazy init, optimiser state
        for _ in range(5):
            step(x, y)
    wall = {name: [] for name in steps}
    cpu = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                step(x, y)
            wall[name].append((time.perf_counter() - t0) / args.steps)
            cpu[name].append((time.process_time() - c0) / args.steps)

    stats = {}
    print(f"\n  {'step':<24}{'min ms':>9}{'p20 ms':>9}{'median ms':>11}{'cpu ms':>9}")
    for name in steps:
        s = dict(min=min(wall[name]), p20=float(np.percentile(wall[name], 20)), median=statistics.median(wall[name]),
                 cpu=statistics.median(cpu[name]))  # fmt: skip
        stats[name] = s
        print(f"  {name:<24}{s['min'] * 1e3:>9.3f}{s['p20'] * 1e3:>9.3f}{s['median'] * 1e3:>11.3f}{s['cpu'] * 1e3:>9.3f}")
    ours, dense_masks, plain = (stats[n] for n in steps)
    print()
    for other, name, target in ((dense_masks, "alpha (dense masks)", 1.0), (plain, "plain dense LeNet", 1.5)):
        ratios = {key: ours[key] / other[key] for key in ("min", "p20", "median", "cpu")}
        verdict = "met" if ratios["p20"] <= target else "MISSED"
        print(f"  impresslearn / {name}: " + ", ".join(f"{key} {r:.2f}x" for key, r in ratios.items())
              + f"  (target <= {target:g}x on p20: {verdict})")  # fmt: skip
    print(f"\n  load average at end {os.getloadavg()[0]:.2f}")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                impress(x, y)
        print(f"\ntorch.profiler, alpha (impresslearn), {args.steps} steps, by self CPU time:")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    return 0


if __name__ == "__main__":
    sys.exit(main())
