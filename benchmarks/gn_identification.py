"""How often label-free task inference (GN) finds the right task, for basis and new tasks.

    python benchmarks/gn_identification.py                 # 5 basis + 30 random masks, 8 new tasks
    python benchmarks/gn_identification.py --quick         # 3 basis + 10 random, 3 new: a smoke run

Builds a Permuted Fashion-MNIST learner (LeNet-300-100, density 0.1): basis tasks learned
as edge-popup masks, random masks added, new tasks learned as alpha over the bank (paper
Eq. 1-2). Then, on test batches of 128 of every task, it prints how often

- ``infer_task(method="oneshot")`` and ``infer_task(method="binary")`` name the right task
  (one combine per layer per forward whatever T is), separately for basis and new tasks;
- the brute-force entropy rule finds it: each task bound alone (T forwards, the cost GN
  avoids), pick the task of lowest mean output entropy, on raw logits and after per-task
  temperature scaling fitted on the task's own training images. This is a rough ceiling for
  any GN rule that reads output entropy: where it fails, confidence does not tell the tasks apart.

The learner is cached (``--checkpoint``) so that reruns measure without retraining.
Never a test: it trains for minutes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from impresslearn import ImpressLearner, TrainConfig  # noqa: E402
from impresslearn.models import create_model  # noqa: E402
from impresslearn.scenarios import BatchLoader, create_scenario  # noqa: E402


def build(args, sc) -> ImpressLearner:
    torch.manual_seed(args.seed)
    learner = ImpressLearner(create_model("lenet300", seed=args.seed), density=args.density)
    mask_cfg = TrainConfig(epochs=args.mask_epochs, lr=0.01, optimizer="adam", momentum=0.9, seed=args.seed)
    alpha_cfg = TrainConfig(epochs=args.alpha_epochs, lr=0.05, optimizer="adam", momentum=0.9, seed=args.seed)

    def train(t):
        return BatchLoader(sc.task(t).train, batch_size=128, shuffle=True, seed=t)

    for t in range(args.basis_tasks):
        learner.learn_basis_mask(sc.task(t).name, train(t), mask_cfg)
    learner.add_random_masks(args.random_masks, seed=args.seed)
    for t in range(args.basis_tasks, sc.num_tasks):
        learner.learn_alpha(sc.task(t).name, train(t), alpha_cfg)
    return learner


def fit_temperatures(learner: ImpressLearner, sc, names: list[str], images: int = 2000) -> dict[str, float]:
    """Per task, the scale g of its logits that minimises NLL on its own training images
    (temperature scaling; labels are given at training time in GN). Makes entropies comparable
    across tasks whose logits differ in scale (an alpha task's are ~50x a basis mask's here)."""
    temps = {}
    for t, name in enumerate(names):
        x, y = next(iter(BatchLoader(sc.task(t).train, batch_size=images)))
        with torch.no_grad():
            logits = learner.predict(name, x)
        log_g = torch.zeros((), requires_grad=True)
        opt = torch.optim.LBFGS([log_g], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(logits * log_g.exp(), y)
            loss.backward()
            return loss

        opt.step(closure)
        temps[name] = log_g.exp().item()
    return temps


@torch.no_grad()
def brute_force_entropy(learner: ImpressLearner, x: torch.Tensor, names: list[str], temps=None) -> str:
    """The task whose own network (bound alone, its BN slot) gives ``x`` the lowest mean entropy."""
    best, best_h = None, float("inf")
    for name in names:
        logits = learner.predict(name, x) * (temps[name] if temps else 1.0)
        h = -(F.softmax(logits, 1) * F.log_softmax(logits, 1)).sum(1).mean().item()
        if h < best_h:
            best, best_h = name, h
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--basis-tasks", type=int, default=5)
    p.add_argument("--random-masks", type=int, default=30)
    p.add_argument("--new-tasks", type=int, default=8)
    p.add_argument("--train-subset", type=int, default=5000)
    p.add_argument("--test-subset", type=int, default=1024, help="test images per task (batches of 128)")
    p.add_argument("--mask-epochs", type=int, default=1)
    p.add_argument("--alpha-epochs", type=int, default=2)
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", type=Path, default=Path("runs/gn_identification/learner.safetensors"))
    p.add_argument("--rebuild", action="store_true", help="retrain even if the checkpoint exists")
    p.add_argument("--quick", action="store_true", help="3 basis, 10 random masks, 3 new tasks, 2000 images")
    args = p.parse_args()
    if args.quick:
        args.basis_tasks, args.random_masks, args.new_tasks, args.train_subset, args.test_subset = 3, 10, 3, 2000, 256
        args.checkpoint = args.checkpoint.with_name("learner_quick.safetensors")

    num_tasks = args.basis_tasks + args.new_tasks
    sc = create_scenario(
        "permuted_fmnist", num_tasks=num_tasks, seed=args.seed,
        train_subset=args.train_subset, test_subset=args.test_subset,
    )  # fmt: skip
    start = time.perf_counter()
    if args.checkpoint.exists() and not args.rebuild:
        learner = ImpressLearner.load(args.checkpoint)
        built = "loaded"
    else:
        learner = build(args, sc)
        args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        learner.save(args.checkpoint)
        built = "trained"
    names = [sc.task(t).name for t in range(num_tasks)]
    if list(learner.tasks) != names:
        raise SystemExit(f"{args.checkpoint} holds other tasks ({list(learner.tasks)[:3]}...): pass --rebuild")
    print(f"Permuted Fashion-MNIST, LeNet-300-100, density {args.density}: {args.basis_tasks} basis tasks, "
          f"{args.random_masks} random masks (K = {learner.num_masks}), {args.new_tasks} new tasks, "
          f"{args.train_subset} train images per task; {built} in {time.perf_counter() - start:.0f} s")  # fmt: skip
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    temps = fit_temperatures(learner, sc, names)
    print("temperature-scaling factors g (logits * g): " + ", ".join(f"{g:.3g}" for g in temps.values()))
    rules = {
        "oneshot": lambda x: learner.infer_task(x, method="oneshot"),
        "binary": lambda x: learner.infer_task(x, method="binary"),
        "brute force, raw logits": lambda x: brute_force_entropy(learner, x, names),
        "brute force, temperature-scaled": lambda x: brute_force_entropy(learner, x, names, temps),
    }
    hits = {rule: {"basis": [0, 0], "new": [0, 0]} for rule in rules}
    for t, name in enumerate(names):
        kind = learner.tasks[name].kind
        acc = learner.evaluate(name, BatchLoader(sc.task(t).test, batch_size=512))
        found = []
        for rule, infer in rules.items():
            n_hit = n = 0
            for x, _ in BatchLoader(sc.task(t).test, batch_size=128):
                n_hit += infer(x) == name
                n += 1
            hits[rule][kind][0] += n_hit
            hits[rule][kind][1] += n
            found.append(f"{n_hit}/{n}")
        print(f"  {name:<20} {kind:<5} acc {acc:.3f}  found: " + ", ".join(f"{r} {f}" for r, f in zip(rules, found)))
    print()
    print(f"| {'rule':<34} | {'basis tasks':>16} | {'new tasks':>16} |")
    print(f"|{'-' * 36}|{'-' * 18}|{'-' * 18}|")
    for rule, h in hits.items():
        cells = [f"{a}/{b} = {a / b:.1%}" if b else "-" for a, b in (h["basis"], h["new"])]
        print(f"| {rule:<34} | {cells[0]:>16} | {cells[1]:>16} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
