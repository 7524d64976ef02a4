"""Learning alpha with a large bank: time per epoch and the bank's memory against K (issue 14.2).

LeNet-300-100 at density 0.1 on Fashion-MNIST-sized batches (random inputs: the time of a step
does not depend on the pixel values). For each K the script draws K random masks, times
``--steps`` optimiser steps of ``AlphaObjective`` (after ``--warmup`` untimed ones) and
extrapolates an epoch of 60,000 images; it also times a plain dense LeNet-300-100 step with
the same batch as the reference, and a save + load of the learner (load redraws the random
masks from their seed, ``impresslearn.banks``). Memory: the bank's byte planes, the same masks
as fp32 tensors (how SupSup's code holds them) and what the checkpoint stores.

    OMP_NUM_THREADS=1 nice python benchmarks/large_k.py [--ks 10,100,250,500,1000] [--steps 10]
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from impresslearn import ImpressLearner, accounting
from impresslearn.banks import stored_bank_bytes
from impresslearn.models import create_model
from impresslearn.objectives import AlphaObjective

DENSITY = 0.1
EPOCH_IMAGES = 60_000


def _timed_steps(loss_fn, params, x, y, warmup: int, steps: int) -> float:
    """Median seconds of one optimiser step (forward, backward, RMSprop update)."""
    optimizer = torch.optim.RMSprop(params, lr=0.002)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        loss = loss_fn(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def dense_step_seconds(x, y, warmup: int, steps: int) -> float:
    """A plain LeNet-300-100 (nn.Linear, every weight trained): the reference step."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 300), torch.nn.ReLU(),
                                torch.nn.Linear(300, 100), torch.nn.ReLU(), torch.nn.Linear(100, 10))  # fmt: skip
    return _timed_steps(lambda a, b: F.cross_entropy(model(a), b), list(model.parameters()), x, y, warmup, steps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ks", type=lambda s: [int(v) for v in s.split(",")], default=[10, 100, 250, 500, 1000])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args()
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1 or any(k < 1 for k in args.ks):
        p.error("--steps, --batch-size and --ks must be positive, --warmup non-negative")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 1, 28, 28, generator=generator)
    y = torch.randint(0, 10, (args.batch_size,), generator=generator)
    steps_per_epoch = math.ceil(EPOCH_IMAGES / args.batch_size)
    dense = dense_step_seconds(x, y, args.warmup, args.steps)
    print(f"LeNet-300-100, density {DENSITY}, batch {args.batch_size}, {steps_per_epoch} steps per epoch of "
          f"{EPOCH_IMAGES:,} images; torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"load average {os.getloadavg()[0]:.1f}; median of {args.steps} steps after {args.warmup} "
          "warm-up")  # fmt: skip
    print(f"plain dense LeNet-300-100 step: {1000 * dense:.1f} ms ({dense * steps_per_epoch:.1f} s per epoch)")
    print("| K | alpha step (ms) | x dense step | s per epoch | bank in memory (MB) | as fp32 masks (MB) "
          "| stored in checkpoint (B) | draw K masks (s) | save + load (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    folder = tempfile.TemporaryDirectory()
    for k in args.ks:
        learner = ImpressLearner(create_model("lenet300", seed=0), density=DENSITY)
        t0 = time.perf_counter()
        learner.add_random_masks(k, seed=k)
        draw = time.perf_counter() - t0
        objective = AlphaObjective(learner)
        step = _timed_steps(objective, list(objective.parameters()), x, y, args.warmup, args.steps)
        objective.discard()
        sizes, _ = accounting.model_sizes(learner.model)
        in_memory = sum(layer.bank.numel() for layer in learner.layers)
        assert in_memory == accounting.bank_bytes(sizes, k)
        path = Path(folder.name) / f"k{k}.safetensors"
        t0 = time.perf_counter()
        learner.save(path)
        ImpressLearner.load(path)
        round_trip = time.perf_counter() - t0
        print(f"| {k} | {1000 * step:.1f} | {step / dense:.1f} | {step * steps_per_epoch:.1f} | "
              f"{in_memory / 1e6:.2f} | {accounting.dense_float_masks_bytes(sizes, k) / 1e6:.1f} | "
              f"{stored_bank_bytes(sizes, k, learner.random_mask_draws)} | {draw:.1f} | {round_trip:.1f} |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
