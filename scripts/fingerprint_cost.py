"""What a learned task's fingerprint costs next to its training: one epoch against the fingerprint's passes.

``learn_*`` read the fingerprint's input sketch in a pass before training (so that inputs it
cannot read refuse the task before any training) and its entropy baseline in a pass after it,
each over the loader's first ``FINGERPRINT_EXAMPLES`` inputs. This script times, on the first task
of Permuted Fashion-MNIST (60,000 training images, ``TrainConfig()``'s batch size) with a
LeNet-300-100 learner (density 0.1, K = 8 random masks), in one run, each the median of
``--repeats``:

- the sketch pass (``learner.measure_fingerprint(loader)``: reading and projecting, no forward);
- the entropy pass (``objective.output_entropy(loader)``: a forward per input);
- one training epoch of alpha (``fit`` with ``TrainConfig(epochs=1)``) and of an edge-popup mask,

and prints each pass as a share of the alpha epoch.

    OMP_NUM_THREADS=1 nice -n 19 python scripts/fingerprint_cost.py     # about a minute
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from dataclasses import replace

import torch

from impresslearn import ImpressLearner, TrainConfig
from impresslearn.learner import FINGERPRINT_EXAMPLES
from impresslearn.models import create_model
from impresslearn.objectives import AlphaObjective, EdgePopupObjective, fit
from impresslearn.scenarios import BatchLoader, create_scenario

RANDOM_MASKS = 8


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    cfg = replace(TrainConfig(), epochs=1)
    sc = create_scenario("permuted_fmnist", num_tasks=1, seed=0)
    train = sc.task(0).train
    loader = BatchLoader(train, batch_size=cfg.batch_size, shuffle=True, seed=0)
    learner = ImpressLearner(create_model("lenet300", seed=0), density=0.1)
    learner.add_random_masks(RANDOM_MASKS, seed=0)
    print(f"Permuted Fashion-MNIST task 0, {len(train)} training images, batch {cfg.batch_size}, LeNet-300-100, "
          f"K = {RANDOM_MASKS}, fingerprint_examples {FINGERPRINT_EXAMPLES}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")  # fmt: skip

    sketch = timed(lambda: learner.measure_fingerprint(loader), args.repeats)

    def epoch(make):
        objective = make()
        try:
            fit(objective, loader, cfg)
        finally:
            objective.discard()

    alpha_epoch = timed(lambda: epoch(lambda: AlphaObjective(learner)), args.repeats)
    mask_epoch = timed(lambda: epoch(lambda: EdgePopupObjective(learner)), args.repeats)
    objective = AlphaObjective(learner)
    try:
        entropy = timed(lambda: objective.output_entropy(loader), args.repeats)
    finally:
        objective.discard()
    print(f"sketch pass before training  {sketch:7.3f} s  {sketch / alpha_epoch:6.1%} of an alpha epoch")
    print(f"entropy pass after training  {entropy:7.3f} s  {entropy / alpha_epoch:6.1%} of an alpha epoch")
    print(f"one alpha epoch              {alpha_epoch:7.3f} s")
    print(f"one edge-popup mask epoch    {mask_epoch:7.3f} s  (sketch pass {sketch / mask_epoch:.1%} of it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
