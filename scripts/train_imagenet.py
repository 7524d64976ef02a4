"""Split ImageNet with a masked ResNet-50 on one or many processes (torchrun).

Launch (one node, 8 GPUs)::

    torchrun --nproc-per-node 8 scripts/train_imagenet.py --data-root /data/imagenet --out runs/imagenet

or as a single process (``python scripts/train_imagenet.py ...``). See ``docs/imagenet.md``.

Phase 1, basis masks: the basis jobs (one per basis task, heterogeneous; or one per seed on
task 0, homogeneous) are dealt to the ranks in rounds of ``world_size``. Every rank builds
the same backbone from ``--seed`` (its SHA-256 is compared across ranks before any
training), trains its job's mask with edge-popup on a private worker learner, and after
each round the new masks are all-gathered as packed ``uint8`` byte planes (bit-exact) with
their BatchNorm statistics and appended to the shared learner in job order, so every rank
holds the same bank bit for bit.

Phase 2, new tasks: ``alpha[K, d]`` is learned (paper Eq. 1-2) with DistributedDataParallel
over the alpha parameter alone, on a DistributedSampler shard per rank. The frozen backbone
and the banks never go through DDP (no buffer broadcast: the banks are identical by
construction and checked). The task's BN statistics are averaged over the ranks at the end.

After every finished task (a round of phase 1, a new task of phase 2) rank 0 writes the
learner's checkpoint atomically. A rerun with the same ``--out`` resumes from it: finished
tasks are neither lost nor redone, and a task interrupted mid-way restarts from its seed,
so the result equals an uninterrupted run's.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from impresslearn import ImpressLearner, TrainConfig, accounting, ops
from impresslearn.checkpoint import atomic_write
from impresslearn.layers import one_hot_coefficients
from impresslearn.models import create_model
from impresslearn.objectives import AlphaObjective
from impresslearn.tasks import bank_sha256, bn_slot_statistics, load_bn_slot_statistics_
from impresslearn.scenarios import BatchLoader, create_scenario

CHECKPOINT = "checkpoint.safetensors"
RESULTS = "results.json"
CRASH_EXIT_CODE = 75  # what --simulate-crash-after exits with (EX_TEMPFAIL: "try again")




def derive_seed(*parts) -> int:
    """A 62-bit seed from ints and strings, the same in every process (``hash`` is salted)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 2


# ----------------------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--data-root", required=True, help="ImageNet in the ImageFolder layout: <root>/train/<wnid>/*, <root>/val/<wnid>/*")
    data.add_argument("--num-tasks", type=int, default=None, help="tasks to use (default: every whole group of classes, 100 for ImageNet)")
    data.add_argument("--classes-per-task", type=int, default=10)
    data.add_argument("--image-size", type=int, default=224, help="crop size (small values for tests)")
    data.add_argument("--train-subset", type=int, default=None, help="first N training images per task")
    data.add_argument("--test-subset", type=int, default=None, help="first N validation images per task")
    data.add_argument("--workers", type=int, default=8, help="data loader processes per rank")
    model = p.add_argument_group("model")
    model.add_argument("--arch", default="resnet50", help="registered model (impresslearn.models.list_models())")
    model.add_argument("--model-kwargs", default="{}", help='extra JSON keyword arguments of the model, e.g. \'{"width": 8}\'')
    model.add_argument("--init", default="signed_constant", choices=("signed_constant", "kaiming_normal"))
    model.add_argument("--density", type=float, default=0.1, help="fraction of weights a mask keeps")
    model.add_argument("--backend", default=None, help="ops backend (default: automatic)")
    basis = p.add_argument_group("phase 1: basis masks")
    basis.add_argument("--basis", choices=("heterogeneous", "homogeneous"), default="heterogeneous")
    basis.add_argument("--num-basis", type=int, default=25, help="basis masks: tasks 0..N-1 (heterogeneous) or N seeds on task 0 (homogeneous)")
    basis.add_argument("--mask-epochs", type=int, default=10)
    basis.add_argument("--mask-lr", type=float, default=0.1)
    basis.add_argument("--mask-optimizer", default="sgd", choices=("sgd", "adam", "rmsprop"))
    new = p.add_argument_group("phase 2: new tasks (alpha)")
    new.add_argument("--num-new", type=int, default=None, help="new tasks after the basis tasks (default: all the rest)")
    new.add_argument("--alpha-epochs", type=int, default=5)
    new.add_argument("--alpha-lr", type=float, default=0.0025, help="paper Table 3 (ResNet-50, Split ImageNet)")
    new.add_argument("--alpha-optimizer", default="adam", choices=("sgd", "adam", "rmsprop"))
    new.add_argument("--lam", type=float, default=0.005, help="lambda of Eq. 2 (paper Table 3)")
    run = p.add_argument_group("run")
    run.add_argument("--batch-size", type=int, default=96, help="per rank (paper Table 3: 96)")
    run.add_argument("--seed", type=int, default=0, help="backbone, scores and data order")
    run.add_argument("--out", required=True, help="checkpoint and results folder; a rerun resumes from it")
    run.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto", help="autocast on GPU (auto: bf16 where supported); never on CPU")
    run.add_argument("--no-channels-last", action="store_true", help="keep NCHW inputs on GPU")
    run.add_argument("--progress", action="store_true", help="tqdm bars on rank 0")
    run.add_argument("--simulate-crash-after", type=int, default=None, metavar="N",
                     help="testing: once N tasks are checkpointed, exit abruptly (code 75) mid-way through the next")  # fmt: skip
    return p


def parse_args(argv=None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    try:
        args.model_kwargs = json.loads(args.model_kwargs)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--model-kwargs is not valid JSON ({exc}): {args.model_kwargs!r}") from None
    if not isinstance(args.model_kwargs, dict):
        raise SystemExit(f"--model-kwargs must be a JSON object, got {args.model_kwargs!r}")
    for name in ("num_basis", "mask_epochs", "alpha_epochs", "batch_size", "classes_per_task", "image_size"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    return args


# ----------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """Join the torchrun job (env:// rendezvous), or a one-process group when run directly.

    nccl on GPUs, gloo on CPU. A one-process group keeps a single code path: every collective
    below is a no-op copy at world size 1.
    """
    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    timeout = datetime.timedelta(minutes=int(os.environ.get("IMPRESSLEARN_DIST_TIMEOUT_MIN", "60")))
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group(backend, timeout=timeout, device_id=device if cuda else None)
    else:
        rank, world, local_rank = 0, 1, 0
        device = torch.device("cuda", 0) if cuda else torch.device("cpu")
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    # CPU threads: torchrun sets OMP_NUM_THREADS=1 per process unless told otherwise; set
    # OMP_NUM_THREADS=<cores / nproc-per-node> for CPU runs (docs/imagenet.md).
    return Dist(rank, world, local_rank, device)


def log(env: Dist, *parts) -> None:
    if env.main:
        print(*parts, flush=True)


def all_gather_object(obj):
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def check_same_everywhere(what: str, value: str) -> None:
    """Raise on every rank unless ``value`` (a digest) is the same on every rank."""
    values = all_gather_object(value)
    if len(set(values)) != 1:
        listed = ", ".join(f"rank {r}: {v[:16]}" for r, v in enumerate(values))
        raise RuntimeError(f"{what} differs across ranks ({listed}); every rank must run the same "
                           "code, torch version and --seed/--arch/--init")  # fmt: skip


def all_gather_tensor(t: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
    """all_gather of a tensor of the same shape on every rank (via ``device``: nccl needs GPU
    tensors); results on the CPU, bit-exact (a gather copies bytes, it never adds)."""
    t = t.to(device)
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [o.cpu() for o in out]


# ----------------------------------------------------------------------------- learner state


def build_learner(args, env: Dist, num_classes: int) -> ImpressLearner:
    model = create_model(args.arch, num_classes=num_classes, seed=args.seed, init=args.init, **args.model_kwargs)
    return ImpressLearner(model, density=args.density, device=env.device, backend=args.backend,
                          progress=args.progress and env.main)  # fmt: skip


def mask_from_bank(bank: torch.Tensor, index: int) -> torch.Tensor:
    """Mask ``index`` of a byte-plane bank as bool[n]: bit ``index % 8`` of plane ``index // 8``."""
    plane = index // 8
    return ops.unpack_masks(bank[plane : plane + 1], 8)[index % 8]


# ----------------------------------------------------------------------------- data


def make_scenario(args):
    return create_scenario(
        "split_imagenet", num_tasks=args.num_tasks, root=args.data_root, seed=args.seed,
        train_subset=args.train_subset, test_subset=args.test_subset,
        classes_per_task=args.classes_per_task, image_size=args.image_size,
    )  # fmt: skip


@dataclass(frozen=True)
class Job:
    """A basis mask to train: its task name in the learner, the data task, the scores seed."""

    name: str
    task: int
    seed: int


def basis_jobs(args, scenario) -> list[Job]:
    if args.basis == "heterogeneous":
        if args.num_basis >= scenario.num_tasks:
            raise SystemExit(f"--num-basis {args.num_basis} leaves no new task among {scenario.num_tasks} tasks")
        return [Job(scenario.task_name(t), t, derive_seed("scores", args.seed, t)) for t in range(args.num_basis)]
    name = scenario.task_name(0)
    return [Job(f"{name}#mask{s}", 0, derive_seed("scores", args.seed, 0, s)) for s in range(args.num_basis)]


def new_tasks(args, scenario) -> list[int]:
    first = args.num_basis if args.basis == "heterogeneous" else 1
    last = scenario.num_tasks if args.num_new is None else min(scenario.num_tasks, first + args.num_new)
    return list(range(first, last))


def task_index(name: str) -> int:
    """The data task of a learner task name: ``split_imagenet/7`` or ``split_imagenet/0#mask3``."""
    return int(name.split("/")[-1].split("#")[0])


class _Shard(torch.utils.data.Dataset):
    """Every ``world``-th example from ``rank``: an exact, unpadded split for evaluation."""

    def __init__(self, dataset, rank: int, world: int):
        self.dataset, self.indices = dataset, range(rank, len(dataset), world)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[self.indices[i]]


# ----------------------------------------------------------------------------- mixed precision


def amp_dtype(args, env: Dist) -> torch.dtype | None:
    """The autocast dtype: GPU only (on CPU the kernels and the reference run in fp32)."""
    if env.device.type != "cuda" or args.amp == "off":
        return None
    if args.amp == "fp16" or (args.amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def autocast(args, env: Dist, *, allow_fp16: bool = True):
    """bf16 (or fp16) autocast on GPU. The learner's own mask loop has no GradScaler, so
    fp16 is refused there (``allow_fp16=False``) and that phase runs in fp32."""
    dtype = amp_dtype(args, env)
    if dtype is None or (dtype == torch.float16 and not allow_fp16):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


def to_device(x: torch.Tensor, args, env: Dist) -> torch.Tensor:
    x = x.to(env.device, non_blocking=True)
    # channels_last on the activations only: cuDNN follows the input's format, and the
    # combined weight stays contiguous as the combine op requires
    if env.device.type == "cuda" and not args.no_channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(learner: ImpressLearner, name: str, dataset, args, env: Dist) -> float:
    """Task-``name`` accuracy over ``dataset``, each rank on its shard, counts all-reduced."""
    learner.bind_task(name)
    learner.model.eval()
    loader = torch.utils.data.DataLoader(_Shard(dataset, env.rank, env.world), batch_size=args.batch_size,
                                         num_workers=args.workers)  # fmt: skip
    counts = torch.zeros(2, dtype=torch.float64)
    for x, y in loader:
        with autocast(args, env):
            logits = learner.model(to_device(x, args, env))
        counts[0] += (logits.argmax(dim=1).cpu() == y).sum().item()
        counts[1] += y.numel()
    counts = counts.to(env.device)
    dist.all_reduce(counts)
    return float(counts[0] / counts[1])


# ----------------------------------------------------------------------------- checkpoints and results


class Progress:
    """Checkpoint + results after each finished task, and the simulated crash for tests."""

    def __init__(self, args, env: Dist, learner: ImpressLearner, results: dict):
        self.args, self.env, self.learner, self.results = args, env, learner, results
        self.out = Path(args.out)

    def task_done(self) -> None:
        """Rank 0 writes the checkpoint (atomic), then the results; all ranks wait for it."""
        if self.env.main:
            self.learner.save(self.out / CHECKPOINT)
            self.results["storage"] = self.learner.storage_report()
            write_json(self.out / RESULTS, self.results)
        dist.barrier()

    def maybe_crash(self) -> None:
        """Testing: exit without cleanup mid-way into a task once N tasks are checkpointed."""
        n = self.args.simulate_crash_after
        if n is not None and self.learner.num_tasks >= n:
            log(self.env, f"simulated crash: {self.learner.num_tasks} tasks are checkpointed; exiting mid-task")
            sys.stdout.flush()
            os._exit(CRASH_EXIT_CODE)


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True, default=str))


# ----------------------------------------------------------------------------- phase 1


def train_basis(args, env: Dist, scenario, learner: ImpressLearner, progress: Progress) -> None:
    """Deal the basis jobs to the ranks in rounds; gather each round's masks into the shared bank."""
    jobs = basis_jobs(args, scenario)
    done = [j for j in jobs if j.name in learner.tasks]
    if [j.name for j in jobs[: len(done)]] != [j.name for j in done] or learner.num_masks < len(done):
        raise RuntimeError(f"{args.out}: the checkpoint's basis tasks are not a prefix of this run's jobs; "
                           "resume with the same --basis/--num-basis/--seed")  # fmt: skip
    todo = jobs[len(done) :]
    if not todo:
        return
    log(env, f"phase 1: {len(todo)} basis masks left of {len(jobs)} ({args.basis}), {env.world} at a time")
    cfg_base = dict(epochs=args.mask_epochs, lr=args.mask_lr, optimizer=args.mask_optimizer,
                    momentum=0.9, weight_decay=0.0, lam=0.0)  # fmt: skip
    # A private learner on the same seeded backbone trains this rank's masks, so the shared
    # learner only ever receives masks in job order, identical on every rank.
    worker = build_learner(args, env, scenario.num_classes)
    sizes = [layer.weight.numel() for layer in learner.layers]
    for start in range(0, len(todo), env.world):
        round_jobs = todo[start : start + env.world]
        mine = round_jobs[env.rank] if env.rank < len(round_jobs) else None
        if mine is not None:
            task = scenario.task(mine.task)
            torch.manual_seed(mine.seed)  # random crops in-process draw from the global RNG
            loader = BatchLoader(task.train, batch_size=args.batch_size, shuffle=True,
                                 seed=derive_seed("data", args.seed, mine.name), num_workers=args.workers)  # fmt: skip
            t0 = time.perf_counter()
            with autocast(args, env, allow_fp16=False):
                history = worker.learn_basis_mask(mine.name, loader, TrainConfig(seed=mine.seed, **cfg_base))
            index = history.task.mask_index
            print(f"[rank {env.rank}] mask {mine.name}: {time.perf_counter() - t0:.1f} s", flush=True)
            # The new mask as a one-mask byte plane per layer (bit 0), layers end to end.
            packed = torch.cat([ops.pack_masks(mask_from_bank(layer.bank, index).view(1, -1)) for layer in worker.layers], dim=1)
            stats = bn_slot_statistics(worker.bns, history.task.bn_slot)
            progress.maybe_crash()
        else:  # fewer jobs than ranks in the last round: send zeros, ignored below
            packed = torch.zeros(1, sum(sizes), dtype=torch.uint8)
            stats = torch.zeros(sum(2 * bn.num_features for bn in learner.bns))
        planes = all_gather_tensor(packed.reshape(-1), env.device)
        all_stats = all_gather_tensor(stats, env.device)
        for r, job in enumerate(round_jobs):
            flat = ops.unpack_masks(planes[r].view(1, -1), 1)[0]
            masks = [m.view(1, -1) for m in torch.split(flat, sizes)]
            (index,) = learner.add_masks(masks, owner=job.name)
            rec = learner.register_task(job.name, one_hot_coefficients(learner.model, index), kind="basis")
            load_bn_slot_statistics_(learner.bns, rec.bn_slot, all_stats[r])
        check_same_everywhere("the bank after a round of basis masks", bank_sha256(learner.layers))
        for job in round_jobs:
            acc = evaluate(learner, job.name, scenario.task(job.task).test, args, env)
            progress.results["tasks"][job.name] = dict(kind="basis", task=job.task, accuracy=acc, mask_index=learner.tasks[job.name].mask_index)
            log(env, f"basis {job.name}: mask {learner.tasks[job.name].mask_index}, accuracy {acc:.4f}")
        progress.task_done()


# ----------------------------------------------------------------------------- phase 2


def peak_memory_reset(env: Dist) -> None:
    if env.device.type == "cuda":
        torch.cuda.synchronize(env.device)
        torch.cuda.reset_peak_memory_stats(env.device)


def peak_memory_bytes(env: Dist) -> tuple[str, int]:
    if env.device.type == "cuda":
        torch.cuda.synchronize(env.device)
        return "torch.cuda.max_memory_allocated", torch.cuda.max_memory_allocated(env.device)
    return "process peak RSS (ru_maxrss)", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def learn_new_task(args, env: Dist, scenario, learner: ImpressLearner, t: int, progress: Progress) -> None:
    name = scenario.task_name(t)
    task = scenario.task(t)
    # Everything random in this task derives from (seed, task, rank): a task redone after a
    # crash replays exactly.
    torch.manual_seed(derive_seed("alpha", args.seed, t, env.rank))
    cfg = TrainConfig(epochs=args.alpha_epochs, lr=args.alpha_lr, optimizer=args.alpha_optimizer,
                      momentum=0.9, lam=args.lam, seed=derive_seed("alpha", args.seed, t))  # fmt: skip
    # alpha[K, d] is the objective's only parameter; the model (banks, backbone) stays outside its
    # module tree, so DDP all-reduces alpha's gradient and broadcasts nothing else. The objective
    # reserves the task's BN slot, which trains with it.
    objective = AlphaObjective(learner, lam=cfg.lam, seed=cfg.seed)
    ddp = nn.parallel.DistributedDataParallel(objective, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    optimizer = cfg.make_optimizer(objective.parameters())
    sampler = torch.utils.data.DistributedSampler(task.train, num_replicas=env.world, rank=env.rank, shuffle=True,
                                                  seed=derive_seed("data", args.seed, name))  # fmt: skip
    loader = torch.utils.data.DataLoader(task.train, batch_size=args.batch_size, sampler=sampler,
                                         num_workers=args.workers, pin_memory=env.device.type == "cuda")  # fmt: skip
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype(args, env) == torch.float16)
    t0, steps, first_step = time.perf_counter(), 0, True
    try:
        for epoch in range(cfg.epochs):
            sampler.set_epoch(epoch)
            total = torch.zeros(2, dtype=torch.float64)
            for x, y in loader:
                x, y = to_device(x, args, env), y.to(env.device, non_blocking=True)
                if first_step:
                    peak_memory_reset(env)
                with autocast(args, env):
                    loss = ddp(x, y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                if first_step:
                    what, peak = peak_memory_bytes(env)
                    progress.results.setdefault("memory", {})["alpha_step_peak"] = dict(what=what, bytes=peak, rank=env.rank)
                    log(env, f"peak memory of an alpha step (K={learner.num_masks}, batch {args.batch_size}): "
                             f"{peak / 2**20:.1f} MiB [{what}]")  # fmt: skip
                    first_step = False
                    progress.maybe_crash()
                total += torch.tensor([loss.item() * y.numel(), y.numel()], dtype=torch.float64)
                steps += 1
            total = total.to(env.device)
            dist.all_reduce(total)
            log(env, f"alpha {name} epoch {epoch + 1}/{cfg.epochs}: loss {float(total[0] / total[1]):.4f}")
    except BaseException:
        objective.discard()
        raise
    # Every rank saw other data: average the task's BN statistics, then take rank 0's alpha and
    # statistics verbatim so that every rank stores the same bytes.
    stats = bn_slot_statistics(learner.bns, objective.bn_slot).to(env.device)
    dist.all_reduce(stats)
    stats /= env.world
    dist.broadcast(stats, 0)
    with torch.no_grad():
        dist.broadcast(objective.alpha.data, 0)
    load_bn_slot_statistics_(learner.bns, objective.bn_slot, stats.cpu())
    objective.commit(name, config=cfg)
    check_same_everywhere(f"the learner state after task {name}", learner.state_sha256())
    acc = evaluate(learner, name, task.test, args, env)
    progress.results["tasks"][name] = dict(kind="new", task=t, accuracy=acc, steps=steps,
                                           seconds=round(time.perf_counter() - t0, 2))  # fmt: skip
    log(env, f"new {name}: accuracy {acc:.4f} ({steps} steps on each of {env.world} ranks)")
    progress.task_done()


# ----------------------------------------------------------------------------- memory report


def memory_report(learner: ImpressLearner, planned_masks: int) -> dict:
    """Bank bytes now and at the planned K, next to SupSup's fp32 masks (one float per weight per mask)."""
    sizes, _ = accounting.model_sizes(learner.model)
    return dict(
        weights=sum(sizes),
        layers=learner.num_layers,
        masks=learner.num_masks,
        bank_bytes=accounting.bank_bytes(sizes, learner.num_masks),
        planned_masks=planned_masks,
        planned_bank_bytes=accounting.bank_bytes(sizes, planned_masks),
        supsup_fp32_bytes=accounting.dense_float_masks_bytes(sizes, planned_masks),
    )


def print_memory(env: Dist, mem: dict) -> None:
    log(env, f"backbone: {mem['layers']} masked layers, {mem['weights']:,} weights")
    log(env, f"banks: {mem['bank_bytes']:,} bytes now ({mem['masks']} masks); at K={mem['planned_masks']}: "
             f"{mem['planned_bank_bytes']:,} bytes = {mem['planned_bank_bytes'] / 1e9:.3f} GB "
             f"({mem['planned_bank_bytes'] / 2**30:.3f} GiB); SupSup's fp32 masks: "
             f"{mem['supsup_fp32_bytes'] / 1e9:.1f} GB")  # fmt: skip


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    env = init_distributed()
    try:
        out = Path(args.out)
        if env.main:
            out.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        scenario = make_scenario(args)
        ckpt = out / CHECKPOINT
        if ckpt.exists():
            learner = ImpressLearner.load(ckpt, device=env.device, backend=args.backend, progress=args.progress and env.main)
            log(env, f"resumed from {ckpt}: {learner.num_tasks} tasks, {learner.num_masks} masks")
            want = dict(name=args.arch, kwargs=dict(num_classes=scenario.num_classes, seed=args.seed, init=args.init, **args.model_kwargs))
            got = {k: learner.backbone_spec().get(k) for k in ("name", "kwargs")}
            if json.loads(json.dumps(got)) != json.loads(json.dumps(want)):
                raise SystemExit(f"{ckpt} was trained with backbone {got}, this run asks for {want}: use another --out")
        else:
            learner = build_learner(args, env, scenario.num_classes)
        # Same seed -> same backbone on every rank, or nothing below is meaningful.
        check_same_everywhere("the backbone's SHA-256", learner.weights_sha256())
        check_same_everywhere("the learner state at start", learner.state_sha256())
        results = {"args": {k: v for k, v in vars(args).items()}, "world_size": env.world, "tasks": {}}
        if (out / RESULTS).exists():
            previous = json.loads((out / RESULTS).read_text())
            results["tasks"] = {k: v for k, v in previous.get("tasks", {}).items() if k in learner.tasks}
            results["memory"] = previous.get("memory", {})
        progress = Progress(args, env, learner, results)
        # A crash between the checkpoint and the results file loses at most the last accuracy:
        # measure it again rather than leave a hole.
        for name, rec in learner.tasks.items():
            if name not in results["tasks"]:
                t = task_index(name)
                acc = evaluate(learner, name, scenario.task(t).test, args, env)
                results["tasks"][name] = dict(kind=rec.kind, task=t, accuracy=acc)

        train_basis(args, env, scenario, learner, progress)
        mem = memory_report(learner, learner.num_masks)
        results.setdefault("memory", {}).update(mem)
        print_memory(env, mem)
        todo = [t for t in new_tasks(args, scenario) if scenario.task_name(t) not in learner.tasks]
        log(env, f"phase 2: {len(todo)} new tasks left, alpha over K={learner.num_masks} masks on {env.world} ranks")
        for t in todo:
            learn_new_task(args, env, scenario, learner, t, progress)

        digest = learner.state_sha256()
        check_same_everywhere("the final learner state", digest)
        # Each rank records what it holds, so a test can compare the ranks' banks directly.
        write_json(out / f"rank{env.rank}.json", dict(rank=env.rank, bank_sha256=bank_sha256(learner.layers), state_sha256=digest))
        if env.main:
            results["state_sha256"] = digest
            results["storage"] = learner.storage_report()
            write_json(out / RESULTS, results)
            accs = [v["accuracy"] for v in results["tasks"].values() if v["kind"] == "new"]
            if accs:
                print(f"done: {len(accs)} new tasks, mean accuracy {sum(accs) / len(accs):.4f}; state {digest[:16]}")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
