"""How TrainConfig's defaults were chosen: a short sweep on a validation split of training data.

Permuted Fashion-MNIST, LeNet-300-100, density 0.1. Every task's 60,000 training images are
split into the first 50,000 (train) and the last 10,000 (validation); the test set is never
read. For each candidate (optimizer, lr, epochs) the script trains

- a mask with edge-popup on task 0 and reports its validation accuracy, and
- alpha for task 3 over a bank of 3 basis masks (tasks 0-2, trained with the first candidate
  that reached the best mask accuracy) plus 20 random masks, and reports its validation accuracy.

Run it niced on a shared machine (one thread: 36 minutes on a 2-core machine at load 11;
``--quick`` 3 minutes)::

    nice -n 19 python scripts/choose_train_defaults.py [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from impresslearn import ImpressLearner, TrainConfig
from impresslearn.models import create_model
from impresslearn.scenarios import BatchLoader, create_scenario
from impresslearn.validation import VALIDATION_IMAGES, validation_split

CANDIDATES = [
    TrainConfig(optimizer="sgd", lr=0.1, epochs=1),  # the old defaults
    TrainConfig(optimizer="sgd", lr=0.1, epochs=3),
    TrainConfig(optimizer="rmsprop", lr=0.002, epochs=3),  # paper Table 3 (LeNet-300-100)
    TrainConfig(optimizer="adam", lr=0.003, epochs=3),
    TrainConfig(optimizer="adam", lr=0.01, epochs=1),
    TrainConfig(optimizer="adam", lr=0.01, epochs=3),
    TrainConfig(optimizer="adam", lr=0.03, epochs=3),
    TrainConfig(optimizer="adam", lr=0.1, epochs=3),
]


def _row(what: str, cfg: TrainConfig, accuracy: float, seconds: float) -> None:
    print(f"| {what} | {cfg.optimizer} | {cfg.lr} | {cfg.epochs} | {accuracy:.4f} | {seconds:.1f} |", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="5,000 training images per task (a smoke run)")
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    sc = create_scenario("permuted_fmnist", num_tasks=4, seed=0)
    data = [validation_split(sc.task(t).train, VALIDATION_IMAGES, 5000 if args.quick else None) for t in range(4)]

    def loaders(t):
        return (BatchLoader(data[t][0], batch_size=args.batch_size, shuffle=True, seed=t),
                BatchLoader(data[t][1], batch_size=1000))  # fmt: skip

    print(f"train {len(data[0][0])} / validation {len(data[0][1])} images per task, batch {args.batch_size}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
    print("| what | optimizer | lr | epochs | validation accuracy | seconds |")
    print("|---|---|---|---|---|---|")
    best_mask, best_cfg = -1.0, None
    for cfg in CANDIDATES:
        learner = ImpressLearner(create_model("lenet300", seed=0), density=0.1)
        train, val = loaders(0)
        t0 = time.perf_counter()
        learner.learn_basis_mask("t0", train, cfg)
        acc = learner.evaluate("t0", val)
        _row("mask", cfg, acc, time.perf_counter() - t0)
        if acc > best_mask:
            best_mask, best_cfg = acc, cfg
    bank = ImpressLearner(create_model("lenet300", seed=0), density=0.1)
    for t in range(3):
        bank.learn_basis_mask(f"t{t}", loaders(t)[0], best_cfg)
    bank.add_random_masks(20, seed=0)
    with tempfile.TemporaryDirectory() as folder:
        bank_path = Path(folder) / "bank.safetensors"
        bank.save(bank_path)  # every alpha candidate starts from the same bank
        for cfg in CANDIDATES:
            learner = ImpressLearner.load(bank_path)
            train, val = loaders(3)
            t0 = time.perf_counter()
            learner.learn_alpha("t3", train, cfg)
            acc = learner.evaluate("t3", val)
            _row(f"alpha (K={learner.num_masks})", cfg, acc, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
