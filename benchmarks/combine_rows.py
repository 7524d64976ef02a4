"""combine_masks_rows (coefficients per block of output channels) against combine_masks (per layer).

Both run the same cpp inner loops per weight; the rows op adds a table set per block of channels
and splits the work at block boundaries. Times are CPU time of the process (all threads), which a
busy shared machine distorts far less than wall time (there, 2-thread wall times of these cases
varied 2x between runs). Printed per case: median CPU time of each (p20-p80), and the ratio
rows / per-layer measured in this one run, forward and alpha gradient; then one alpha
training step (forward, backward, optimiser step) of LeNet-300-100 at K = 250, batch 128, at each
granularity, against the per-layer step::

    OMP_NUM_THREADS=2 python benchmarks/combine_rows.py
"""

from __future__ import annotations

import os
import statistics
import time

import torch

from impresslearn import ImpressLearner, ops
from impresslearn.models import create_model
from impresslearn.objectives import AlphaObjective
from impresslearn.ops import pack_masks

# (label, output channels, weights per channel, K, channels per block)
CASES = [
    ("LeNet-300-100 layer 1, per channel", 300, 784, 250, 1),
    ("LeNet-300-100 layer 1, blocks of 32", 300, 784, 250, 32),
    ("n = 4M, K = 256, per channel (1024 weights)", 4096, 1024, 256, 1),
    ("n = 4M, K = 256, blocks of 32 channels", 4096, 1024, 256, 32),
    ("ResNet-18-like conv 3x3 256->256, per channel", 256, 2304, 250, 1),
]


def timed(fn, repeats: int) -> tuple[float, float, float]:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    q = statistics.quantiles(times, n=5)
    return statistics.median(times) * 1e3, q[0] * 1e3, q[-1] * 1e3


def main() -> None:
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}, "
          f"ISA {__import__('impresslearn._C', fromlist=['cpu_isa']).cpu_isa()}")  # fmt: skip
    print("| case | op | per layer CPU ms (p20-p80) | rows CPU ms (p20-p80) | rows / per layer |")
    print("|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    for label, channels, per_channel, k, block in CASES:
        n = channels * per_channel
        bank = pack_masks(torch.rand(k, n, generator=g) < 0.1)
        weight, grad = torch.randn(channels, per_channel, generator=g), torch.randn(channels, per_channel, generator=g)
        column = torch.randn(k, generator=g)
        alpha = torch.randn(k, -(-channels // block), generator=g)
        repeats = max(5, int(2e8 // (n * k)))
        pairs = {
            "forward": (lambda: ops.combine_masks(weight, bank, column, backend="cpp"),
                        lambda: ops.combine_masks_rows(weight, bank, alpha, block, backend="cpp")),
            "alpha grad": (lambda: ops.combine_masks_alpha_grad(grad, weight, bank, k, backend="cpp"),
                           lambda: ops.combine_masks_rows_alpha_grad(grad, weight, bank, k, block, backend="cpp")),
        }  # fmt: skip
        for op, (layer_fn, rows_fn) in pairs.items():
            a, a20, a80 = timed(layer_fn, repeats)
            b, b20, b80 = timed(rows_fn, repeats)
            print(f"| {label} | {op} | {a:.2f} ({a20:.2f}-{a80:.2f}) | {b:.2f} ({b20:.2f}-{b80:.2f}) | {b / a:.2f} |",
                  flush=True)  # fmt: skip


def training_steps() -> None:
    learner = ImpressLearner(create_model("lenet300", seed=0), density=0.1, fingerprint_examples=0)
    learner.add_random_masks(250, seed=0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(128, 1, 28, 28, generator=g), torch.randint(0, 10, (128,), generator=g)
    print("\n| LeNet-300-100 alpha step, K = 250, batch 128 | alpha shape | CPU ms (p20-p80) | / per layer |")
    print("|---|---|---|---|")
    base = None
    for granularity in ("layer", 32, "channel"):
        objective = AlphaObjective(learner, granularity=granularity)
        optimizer = torch.optim.Adam(objective.parameters(), lr=0.01)

        def step():
            loss = objective(x, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        median, p20, p80 = timed(step, 30)
        base = base or median
        print(f"| {granularity} | {tuple(objective.alpha.shape)} | {median:.2f} ({p20:.2f}-{p80:.2f}) | "
              f"{median / base:.2f} |", flush=True)  # fmt: skip
        objective.discard()


if __name__ == "__main__":
    main()
    training_steps()
