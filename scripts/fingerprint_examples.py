"""How many training inputs a task's fingerprint needs: task identification against examples read.

The learner reads the first ``fingerprint_examples`` inputs of a task's (shuffled) training
loader into its fingerprint (``impresslearn.learner.FINGERPRINT_EXAMPLES``). This script measures
how the ``fingerprint`` method's identification (``infer_task``'s default whenever every candidate
has a fingerprint) depends on that number.

Scenario: Permuted Fashion-MNIST, ``--tasks`` tasks (default 10), a LeNet-300-100 learner
(density 0.1, 8 random masks) with each task stored through ``register_task`` and its fingerprint's
sketch measured by ``learner.measure_fingerprint(loader, max_examples=n)`` (the learner's own pass
before ``learn_*``'s training) and kept with ``learner.add_fingerprint``. The sketch reads the
inputs only, so the tasks need no training for this measurement, and the entropy baseline (a
forward per input, which the ``fingerprint`` method does not read) is not measured.

Every task's 60,000 training images are split into the first 50,000 (the fingerprint reads its
first ``n`` in the order of a loader shuffled with the seed) and the last 10,000 (validation:
where a default would be chosen). The 10,000 test images of every task are scored only to report.
For each ``n``, seed and split: the share of batches of ``b`` images (b = 1 is one image at a
time, the hardest case) whose task is named correctly among all ``--tasks`` candidates, as mean
and spread (min..max) over the seeds; and how far the ``n``-example moments are from the
50,000-example ones (the largest ``|mean_n - mean_all| / sd_all`` and ``|var_n / var_all - 1|``
over tasks and sketch directions).

Each task's loader is shuffled with its own seed, so the tasks' fingerprints read different
source images, as tasks with their own data would. ``--same-images`` gives every task the same
order: Permuted and Rotated tasks are the same images transformed, so their fingerprints then
share their sampling noise, which cancels when they are compared, and far fewer inputs suffice
(an upper bound that only such benchmarks reach).

    OMP_NUM_THREADS=1 nice -n 19 python scripts/fingerprint_examples.py            # under 6 minutes
    OMP_NUM_THREADS=1 nice -n 19 python scripts/fingerprint_examples.py --quick    # a smoke run, 30 s
    ... --scenario rotated_fmnist --spacing 3                                      # a harder case
    ... --scenario rotated_fmnist --spacing 3 --same-images --examples 256 1024 4096

The runs behind ``FINGERPRINT_EXAMPLES`` (its comment has the figures) are the first and the
third (one thread on a 2-core Zen 1 shared with other work, about 5 minutes each).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from impresslearn import ImpressLearner, inference
from impresslearn.models import create_model
from impresslearn.scenarios import BatchLoader, create_scenario
from impresslearn.validation import VALIDATION_IMAGES, validation_split

RANDOM_MASKS = 8


def identified(x: torch.Tensor, task: int, fingerprints: list, batch_sizes) -> dict[int, tuple[int, int]]:
    """(found, batches) per batch size: ``infer_task``'s fingerprint score of a batch is the mean of
    its examples' log-likelihoods, so one ``[T, N]`` product scores every batch size at once."""
    per_example = inference.fingerprint_log_likelihoods(x, fingerprints)  # [T, N]
    out = {}
    for b in batch_sizes:
        batches = per_example.shape[1] // b
        scores = per_example[:, : batches * b].reshape(len(fingerprints), batches, b).mean(dim=2)
        out[b] = (int((scores.argmax(dim=0) == task).sum()), batches)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", default="permuted_fmnist", choices=["permuted_fmnist", "rotated_fmnist"])
    p.add_argument("--spacing", type=float, default=3.0, help="rotated_fmnist: degrees between tasks")
    p.add_argument("--tasks", type=int, default=10)
    p.add_argument("--examples", type=int, nargs="+", default=[16, 64, 256, 1024, 4096, 8192, 16384, 0],
                   help="fingerprint sizes to measure (0: every training image of the split)")  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 128])
    p.add_argument("--eval-images", type=int, default=10_000, help="validation and test images scored per task")
    p.add_argument("--same-images", action="store_true",
                   help="every task's fingerprint reads the same source images (one loader order for all tasks)")
    p.add_argument("--quick", action="store_true", help="3 tasks, one seed, 2,000 images scored")
    args = p.parse_args()
    if args.quick:
        args.tasks, args.seeds, args.eval_images = 3, [0], 2000
    start = time.time()
    kwargs = dict(num_tasks=args.tasks, seed=0)
    if args.scenario == "rotated_fmnist":
        kwargs["angles"] = [args.spacing * t for t in range(args.tasks)]
    sc = create_scenario(args.scenario, **kwargs)
    learner = ImpressLearner(create_model("lenet300", seed=0), density=0.1)
    learner.add_random_masks(RANDOM_MASKS, seed=0)
    names = [f"t{t}" for t in range(args.tasks)]
    fit_sets, evaluation = [], {"validation": [], "test": []}
    for t, name in enumerate(names):
        learner.register_task(name, torch.full((RANDOM_MASKS, learner.num_layers), 1.0 / RANDOM_MASKS))
        train, validation = validation_split(sc.task(t).train, VALIDATION_IMAGES)
        fit_sets.append(train)
        evaluation["validation"].append(validation.inputs[: args.eval_images])
        evaluation["test"].append(sc.task(t).test.inputs[: args.eval_images])
    print(f"{args.scenario}" + (f" at {args.spacing:g} degrees" if args.scenario == "rotated_fmnist" else "")
          + f", {args.tasks} tasks, fingerprint sketch m=64, {len(fit_sets[0])} fingerprint / "
          f"{len(evaluation['validation'][0])} validation / {len(evaluation['test'][0])} test images per task, "
          f"seeds {args.seeds}{', the same source images for every task' if args.same_images else ''}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}")  # fmt: skip

    def fingerprints(n: int, seed: int) -> list:
        for t, name in enumerate(names):
            order = 1000 * seed + (0 if args.same_images else t)
            loader = BatchLoader(fit_sets[t], batch_size=128, shuffle=True, seed=order)
            # the sketch only (learner.measure_fingerprint without a task): no forward for the entropy baseline
            sketch = learner.measure_fingerprint(loader, max_examples=n or len(fit_sets[t]))
            learner.add_fingerprint(name, sketch)
        return [learner.fingerprints[name] for name in names]

    # the moments of every training image of the split, to say how far the n-example ones are
    whole = fingerprints(0, 0)
    whole_mean = torch.stack([fp.mean.float() for fp in whole])
    whole_var = torch.stack([fp.var.float() for fp in whole])
    # the learner's own inference agrees with the vectorised scoring below (one batch checked)
    x = evaluation["test"][1][:32]
    res = learner.infer_task(x, method="fingerprint")
    assert res == names[int(inference.fingerprint_log_likelihoods(x, whole).mean(1).argmax())], res

    header = " | ".join(f"{split} b={b}" for split in ("validation", "test") for b in args.batch_sizes)
    print(f"\n| examples | max mean shift (sd) | max var error | {header} |")
    print("|---" * (3 + 2 * len(args.batch_sizes)) + "|")
    for n in args.examples:
        rates = {(split, b): [] for split in evaluation for b in args.batch_sizes}
        shifts, var_errors = [], []
        for seed in args.seeds:
            fps = fingerprints(n, seed)
            mean = torch.stack([fp.mean.float() for fp in fps])
            var = torch.stack([fp.var.float() for fp in fps])
            shifts.append(float(((mean - whole_mean).abs() / whole_var.sqrt()).max()))
            var_errors.append(float((var / whole_var - 1).abs().max()))
            for split, inputs in evaluation.items():
                counts = [identified(x, t, fps, args.batch_sizes) for t, x in enumerate(inputs)]
                for b in args.batch_sizes:
                    found, total = (sum(c[b][i] for c in counts) for i in (0, 1))
                    rates[split, b].append(found / total)

        def cell(values):
            mean = statistics.fmean(values)
            if len(values) == 1:
                return f"{mean:.2%}"
            return f"{mean:.2%} ({min(values):.2%}..{max(values):.2%})"

        label = n or f"all {len(fit_sets[0])}"
        cells = " | ".join(cell(rates[key]) for key in rates)
        print(f"| {label} | {statistics.fmean(shifts):.3f} | {statistics.fmean(var_errors):.3f} | {cells} |", flush=True)
    print(f"\n{time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
