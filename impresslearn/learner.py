"""ImpressLearner: continual learning with combined task impressions (the paper, end to end).

Notation (DESIGN section 1): ``d`` masked layers, a bank of ``K`` basis masks per layer, every
stored task ``t`` a coefficient matrix ``A_t`` of shape ``[K_t, d]`` over the first ``K_t``
masks (a basis task is the one-hot column of its mask in every layer; a new task is learned
by Eq. 1-2). The learner owns the model's mask sources: before each forward it binds either
edge-popup scores, a task's coefficients, or the GN superposition ``alpha' = A^T beta``.

Every stored task also owns one slot of per-task BatchNorm statistics (conv nets).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .layers import impress_layers, multitask_bns
from .ops import keep_count

OPTIMIZERS = ("sgd", "adam", "rmsprop")
TASK_KINDS = ("basis", "new", "hybrid")
GN_METHODS = ("oneshot", "binary")
FORMAT = "impresslearn.learner"
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------- config


from .config import TrainConfig  # noqa: E402  (the one training config, shared with the YAML configs)


@dataclass
class TaskRecord:
    """A stored task: its coefficients ``A_t[K_t, d]`` and what else it owns.

    ``mask_index``: a basis task's mask in the bank. ``extra_index``: a hybrid task's mask in
    the last layer's extra bank. ``bn_slot``: its slot of per-task BatchNorm statistics.
    """

    name: str
    kind: str
    coefficients: torch.Tensor
    bn_slot: int
    mask_index: int | None = None
    extra_index: int | None = None
    config: dict | None = field(default=None)

    @property
    def num_masks(self) -> int:
        return self.coefficients.shape[0]


# ----------------------------------------------------------------------------- learner


class ImpressLearner:
    """Learns basis masks with edge-popup and new tasks as coefficients over them (ImpressLearn).

    ``model`` must have its Linear/Conv2d layers converted to Impress layers (``create_model``
    or ``convert``). ``backend`` is passed to every op (None: the dispatch rule decides).
    """

    def __init__(
        self,
        model: nn.Module,
        density: float = 0.1,
        device: str | torch.device = "cpu",
        backend: str | None = None,
        *,
        progress: bool = False,
    ):
        keep_count(1, density)  # validates density in (0, 1]
        self.model = model.to(device)
        self.density = float(density)
        self.device = torch.device(device)
        self.backend = backend
        self.progress = progress
        self.layers = impress_layers(self.model)
        if not self.layers:
            raise ValueError("model has no ImpressLinear/ImpressConv2d layer: build it with create_model or convert")
        self.bns = multitask_bns(self.model)
        for p in self.model.parameters():
            p.requires_grad_(False)  # the backbone is frozen; only scores or alpha train
        for layer in self.layers:
            layer.backend = backend
        self.tasks: OrderedDict[str, TaskRecord] = OrderedDict()
        # task that trained each bank mask, or None (random / added masks)
        self.mask_owners: list[str | None] = [None] * self.layers[0].num_masks
        self._stack_cache: tuple | None = None

    # -- sizes ------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_masks(self) -> int:
        return self.layers[0].num_masks

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    # -- binding sources ------------------------------------------------------------------
    def _bind_coefficients(self, alpha: torch.Tensor, *, last_extra: torch.Tensor | None = None, skip_last=False):
        """Layer i uses column i of alpha[K', d]; the last layer may use extra coefficients instead."""
        d = self.num_layers
        for i, layer in enumerate(self.layers):
            if i == d - 1 and (skip_last or last_extra is not None):
                if last_extra is not None:
                    layer.use_coefficients(None, last_extra)
                continue
            layer.use_coefficients(alpha[:, i])

    def _set_bn_slot(self, slot: int | None) -> None:
        for bn in self.bns:
            bn.task_slot = slot

    def _add_bn_slot(self) -> int:
        slot = self.num_tasks
        for bn in self.bns:
            if bn.num_slots != slot:
                raise RuntimeError(f"BN has {bn.num_slots} slots for {slot} stored tasks")
            bn.add_slot()
        return slot

    def _drop_bn_slots_from(self, slot: int) -> None:
        for bn in self.bns:
            bn.load_slots_(bn.running_mean[:slot].clone(), bn.running_var[:slot].clone())

    def bind_task(self, name: str) -> TaskRecord:
        """Make the model compute task ``name`` (its coefficients and BN slot)."""
        rec = self._task(name)
        extra = None
        if rec.kind == "hybrid":
            extra = F.one_hot(torch.tensor(rec.extra_index), rec.extra_index + 1).to(self.device, torch.float32)
        self._bind_coefficients(rec.coefficients, last_extra=extra)
        self._set_bn_slot(rec.bn_slot)
        return rec

    def _task(self, name: str) -> TaskRecord:
        if name not in self.tasks:
            known = ", ".join(self.tasks) or "none"
            raise KeyError(f"no task named {name!r} (stored tasks: {known})")
        return self.tasks[name]

    def _check_new_name(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"task name must be a non-empty string, got {name!r}")
        if name in self.tasks:
            raise ValueError(f"a task named {name!r} is already stored")

    def _one_hot(self, index: int) -> torch.Tensor:
        """A_t of a basis mask: one-hot column at ``index`` in every layer, over K_t = index + 1 masks."""
        a = torch.zeros(index + 1, self.num_layers, device=self.device)
        a[index] = 1.0
        return a

    def _register(self, rec: TaskRecord) -> TaskRecord:
        self.tasks[rec.name] = rec
        self._stack_cache = None
        return rec

    # -- training loop --------------------------------------------------------------------
    def _fit(
        self,
        params: list[torch.Tensor],
        loader,
        cfg: TrainConfig,
        bind: Callable[[], None],
        penalty: Callable[[], torch.Tensor] | None,
        desc: str,
    ) -> float:
        """Minimise CE (+ penalty) over ``params``; returns the mean loss of the last epoch."""
        optimizer = cfg.make_optimizer(params)
        self.model.train()
        last = float("nan")
        for epoch in range(cfg.epochs):
            total, batches = 0.0, 0
            bar = tqdm(loader, desc=f"{desc} epoch {epoch + 1}/{cfg.epochs}", disable=not self.progress, leave=False)
            for x, y in bar:
                x, y = x.to(self.device), y.to(self.device)
                bind()
                loss = F.cross_entropy(self.model(x), y)
                if penalty is not None:
                    loss = loss + penalty()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item()
                batches += 1
                if batches % 20 == 0:
                    bar.set_postfix(loss=f"{total / batches:.3f}")
            if batches == 0:
                raise ValueError(f"{desc}: the loader yielded no batches")
            last = total / batches
        self.model.eval()
        return last

    def _new_scores(self, layers, seed: int) -> list[nn.Parameter]:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        from .layers import edge_popup_scores

        return [nn.Parameter(edge_popup_scores(layer.weight.shape, generator).to(self.device)) for layer in layers]

    # -- step 1: basis masks ---------------------------------------------------------------
    def learn_basis_mask(self, name: str, loader, cfg: TrainConfig = TrainConfig()) -> int:
        """Train a mask for task ``name`` with edge-popup; append it to the bank; returns its index.

        The task is stored as a basis task (one-hot ``A_t``) with its own BN slot. Homogeneous
        masks: call again on the same data under other names with other ``cfg.seed``.
        """
        self._check_new_name(name)
        scores = self._new_scores(self.layers, cfg.seed)
        for layer, s in zip(self.layers, scores):
            layer.use_scores(s, self.density)
        slot = self._add_bn_slot()
        try:
            self._set_bn_slot(slot)
            self._fit(scores, loader, cfg, bind=lambda: None, penalty=None, desc=f"mask {name}")
        except BaseException:
            self._drop_bn_slots_from(slot)
            raise
        finally:
            for layer in self.layers:
                layer.clear_source()
        index = self.num_masks
        for layer, s in zip(self.layers, scores):
            layer.add_mask_from_scores(s.detach(), self.density)
        self.mask_owners.append(name)
        self._register(TaskRecord(name, "basis", self._one_hot(index), slot, mask_index=index, config=asdict(cfg)))
        return index

    def add_random_masks(self, count: int, seed: int = 0) -> list[int]:
        """Append ``count`` uniformly random masks with exactly ``k_i`` ones per layer (seeded, on the CPU)."""
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be an int >= 1, got {count!r}")
        generator = torch.Generator(device="cpu").manual_seed(seed)
        indices = []
        for _ in range(count):
            # top-k of uniform scores is a uniformly random k-subset; topk gives exactly k_i ones
            indices.append(self.num_masks)
            for layer in self.layers:
                layer.add_mask_from_scores(torch.rand(layer.weight.shape, generator=generator), self.density)
            self.mask_owners.append(None)
        self._stack_cache = None
        return indices

    def add_masks(self, masks: Sequence[torch.Tensor], owner: str | None = None) -> list[int]:
        """Append already-trained masks: ``masks[i]`` is ``bool[m, *weight_i.shape]`` (or ``[m, n_i]``).

        All layers must bring the same number ``m`` of masks; everything is checked before any
        bank changes. Returns the new mask indices.
        """
        if len(masks) != self.num_layers:
            raise ValueError(f"need masks for {self.num_layers} layers, got {len(masks)}")
        counts = set()
        for i, (m, layer) in enumerate(zip(masks, self.layers)):
            n = layer.weight.numel()
            if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or m.dim() < 1 or m[0].numel() != n:
                raise ValueError(f"masks[{i}] must be bool[m, {n}] (or [m, *weight shape]) for layer {i}")
            counts.add(m.shape[0])
        if len(counts) != 1 or 0 in counts:
            raise ValueError(f"every layer needs the same number (>= 1) of masks, got {sorted(counts)}")
        m = counts.pop()
        start = self.num_masks
        for layer, stack in zip(self.layers, masks):
            for j in range(m):
                layer.add_mask(stack[j])
        self.mask_owners.extend([owner] * m)
        self._stack_cache = None
        return list(range(start, start + m))

    # -- step 2: new tasks ----------------------------------------------------------------
    def _penalty(self, alpha: torch.Tensor, cols: int, lam: float) -> Callable[[], torch.Tensor] | None:
        if lam == 0.0:
            return None
        # Eq. 2: lam * sum_i (sum_k |alpha[k, i]| - 1)^2 over the layers alpha drives
        return lambda: lam * ((alpha[:, :cols].abs().sum(dim=0) - 1.0) ** 2).sum()

    def _fit_alpha(self, loader, cfg: TrainConfig, hybrid: bool, desc: str):
        k, d = self.num_masks, self.num_layers
        if k < 1:
            raise RuntimeError("the bank is empty: learn basis masks or add masks before learning alpha")
        if hybrid and d < 2:
            raise ValueError("hybrid needs at least two masked layers (alpha below, a new mask in the last)")
        alpha = nn.Parameter(torch.full((k, d), 1.0 / k, device=self.device))
        params, scores = [alpha], None
        cols = d - 1 if hybrid else d
        if hybrid:
            scores = self._new_scores(self.layers[-1:], cfg.seed)[0]
            self.layers[-1].use_scores(scores, self.density)
            params.append(scores)
        try:
            self._fit(
                params, loader, cfg,
                bind=lambda: self._bind_coefficients(alpha, skip_last=hybrid),
                penalty=self._penalty(alpha, cols, cfg.lam), desc=desc,
            )  # fmt: skip
        finally:
            for layer in self.layers:
                layer.clear_source()
        result = alpha.detach().clone()
        if hybrid:
            result[:, -1] = 0.0  # the last layer uses the task's own mask, not the bank
        return result, scores

    def learn_alpha(self, name: str, loader, cfg: TrainConfig = TrainConfig(), hybrid: bool = False) -> torch.Tensor:
        """Learn a new task as ``alpha[K, d]`` over the bank (paper Eq. 1-2); returns alpha.

        ``alpha`` starts at 1/K; only alpha trains (and, with ``hybrid``, a new edge-popup mask in
        the last layer, paper A.5, stored in that layer's extra bank).
        """
        self._check_new_name(name)
        slot = self._add_bn_slot()
        try:
            self._set_bn_slot(slot)
            alpha, scores = self._fit_alpha(loader, cfg, hybrid, desc=f"alpha {name}")
        except BaseException:
            self._drop_bn_slots_from(slot)
            raise
        extra_index = None
        if hybrid:
            extra_index = self.layers[-1].add_mask_from_scores(scores.detach(), self.density, extra=True)
        kind = "hybrid" if hybrid else "new"
        self._register(TaskRecord(name, kind, alpha, slot, extra_index=extra_index, config=asdict(cfg)))
        return alpha.clone()

    def register_task(self, name: str, coefficients: torch.Tensor, kind: str = "new") -> TaskRecord:
        """Store a task whose ``A_t[K_t, d]`` was obtained elsewhere (e.g. another rank); fresh BN slot."""
        self._check_new_name(name)
        if kind not in ("basis", "new"):
            raise ValueError(f"register_task stores 'basis' or 'new' tasks, got {kind!r}")
        a = torch.as_tensor(coefficients, dtype=torch.float32)
        if a.dim() != 2 or a.shape[1] != self.num_layers or not 1 <= a.shape[0] <= self.num_masks:
            raise ValueError(
                f"coefficients must be [K_t, {self.num_layers}] with 1 <= K_t <= {self.num_masks}, got {tuple(a.shape)}"
            )
        if not torch.isfinite(a).all():
            raise ValueError("coefficients must be finite")
        mask_index = None
        if kind == "basis":
            hot = (a != 0).sum(dim=0)
            if not (hot == 1).all() or not (a.argmax(dim=0) == a.shape[0] - 1).all():
                raise ValueError("a basis task's coefficients are one-hot on its mask (the last row) in every layer")
            mask_index = a.shape[0] - 1
        slot = self._add_bn_slot()
        return self._register(TaskRecord(name, kind, a.to(self.device).clone(), slot, mask_index=mask_index))

    # -- evaluation -----------------------------------------------------------------------
    @torch.no_grad()
    def _accuracy(self, loader) -> float:
        self.model.eval()
        correct = total = 0
        for x, y in loader:
            x, y = x.to(self.device), y.to(self.device)
            correct += (self.model(x).argmax(dim=1) == y).sum().item()
            total += y.numel()
        if total == 0:
            raise ValueError("the loader yielded no examples")
        return correct / total

    @torch.no_grad()
    def predict(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Logits of task ``name`` for a batch (task label given)."""
        self.bind_task(name)
        self.model.eval()
        return self.model(x.to(self.device))

    def evaluate(self, name: str, loader) -> float:
        """Accuracy of task ``name`` on ``loader`` (task label given)."""
        self.bind_task(name)
        return self._accuracy(loader)

    def evaluate_mask(self, mask_index: int, loader) -> float:
        """Accuracy of one basis mask alone (the paper's "incorrect mask" check on another task).

        BN (conv nets) uses the slot of the task that trained the mask, or batch statistics.
        """
        if not isinstance(mask_index, int) or not 0 <= mask_index < self.num_masks:
            raise IndexError(f"mask index {mask_index!r} out of range for a bank of {self.num_masks} masks")
        self._bind_coefficients(self._one_hot(mask_index))
        owner = self.mask_owners[mask_index]
        self._set_bn_slot(self.tasks[owner].bn_slot if owner in self.tasks else None)
        return self._accuracy(loader)

    # -- task inference (GN) ----------------------------------------------------------------
    def _stacked(self, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A[T, K, d] (zero-padded to the current K) and the hybrid last-layer one-hots E[T, H]."""
        key = (names, self.num_masks, self.layers[-1].num_extra)
        if self._stack_cache is not None and self._stack_cache[0] == key:
            return self._stack_cache[1], self._stack_cache[2]
        k, d, h = self.num_masks, self.num_layers, self.layers[-1].num_extra
        a = torch.zeros(len(names), k, d, device=self.device)
        e = torch.zeros(len(names), h, device=self.device) if h else None
        for t, name in enumerate(names):
            rec = self.tasks[name]
            # Unit L1 norm per layer (Eq. 2's target): a bias-free ReLU net's predictions do not
            # change when a layer's weight is scaled, but the entropy gradient does; without this
            # a new task whose alpha sums to 1.7 per layer outweighs every one-hot basis task.
            norm = rec.coefficients.abs().sum(dim=0, keepdim=True).clamp_min(1e-12)
            a[t, : rec.num_masks] = rec.coefficients / norm
            if rec.kind == "hybrid":
                e[t, rec.extra_index] = 1.0
        if e is not None and not e.any():
            e = None
        self._stack_cache = (key, a, e)
        return a, e

    def _entropy_grad(self, x: torch.Tensor, a: torch.Tensor, e: torch.Tensor | None) -> torch.Tensor:
        """dH/dbeta at beta = 1/T for the superposition of the tasks in ``a`` (ONE combine per layer)."""
        t = a.shape[0]
        beta = torch.full((t,), 1.0 / t, device=self.device, requires_grad=True)
        alpha = torch.einsum("t,tkd->kd", beta, a)  # alpha' = A^T beta: [K, d] whatever T is
        extra = beta @ e if e is not None else None
        if extra is not None:
            # last layer: its bank part plus the hybrid masks, both weighted by beta
            for layer_i, layer in enumerate(self.layers[:-1]):
                layer.use_coefficients(alpha[:, layer_i])
            self.layers[-1].use_coefficients(alpha[:, -1], extra)
        else:
            self._bind_coefficients(alpha)
        self._set_bn_slot(None)  # a mixture of tasks has no BN slot: batch statistics
        self.model.eval()
        logits = self.model(x)
        entropy = -(F.softmax(logits, dim=1) * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
        (grad,) = torch.autograd.grad(entropy, beta)
        return grad

    def infer_task(self, x: torch.Tensor, method: str = "oneshot", candidates: Sequence[str] | None = None) -> str:
        """The stored task a batch ``x`` most likely comes from, without its label (SupSup GN).

        ``oneshot``: argmin_t dH/dbeta_t at beta = 1/T (H = mean output entropy). ``binary``:
        repeat on the better half until one task is left (log2 T forwards). Either way each
        forward is one combine of ``alpha' = A^T beta`` per layer, so it does not grow with T.

        Measured limit (``benchmarks/gn_identification.py``: Permuted Fashion-MNIST, LeNet-300-100,
        5 basis + 30 random masks, 8 new tasks at about 60% accuracy): basis tasks are found in
        100% of batches of 128, new (alpha) tasks in 0%, one-shot and binary alike. Per-layer
        effective-weight-norm calibration, per-task temperature scaling, normalising the
        superposition's scale and up to 30 Adam steps on beta did not change that; even the
        T-forward brute force (each task alone, lowest entropy) finds only a third of the new
        tasks' batches after temperature scaling: such alpha tasks are confident on other tasks'
        data, so output entropy barely tells them apart.
        """
        if method not in GN_METHODS:
            raise ValueError(f"method must be one of {GN_METHODS}, got {method!r}")
        names = tuple(self.tasks) if candidates is None else tuple(candidates)
        if not names:
            raise ValueError("no stored tasks to infer from")
        for n in names:
            self._task(n)
        x = x.to(self.device)
        a, e = self._stacked(names)
        if method == "oneshot":  # the whole stack as it is: no gather copy of A[T, K, d]
            return names[int(self._entropy_grad(x, a, e).argmin())]
        alive = torch.arange(len(names), device=self.device)
        while True:
            grad = self._entropy_grad(x, a[alive], e[alive] if e is not None else None)
            if alive.numel() == 1:
                return names[int(alive[int(grad.argmin())])]
            keep = (alive.numel() + 1) // 2
            alive = alive[torch.argsort(grad, stable=True)[:keep]]
            if alive.numel() == 1:
                return names[int(alive[0])]

    def basis_gn(self, train_loader, test_loader, cfg: TrainConfig = TrainConfig()) -> dict:
        """basis-GN: fit Eq. 1-2 on labelled data of an unnamed task, without storing it.

        Returns ``picked`` (argmax_k sum_i |alpha[k, i]|), ``alpha``, ``accuracy`` of the fit on
        ``test_loader`` and ``mask_accuracy`` of the picked mask alone.
        """
        slot = self._add_bn_slot()  # a temporary slot, dropped below
        try:
            self._set_bn_slot(slot)
            alpha, _ = self._fit_alpha(train_loader, cfg, hybrid=False, desc="basis-GN")
            self._bind_coefficients(alpha)
            self._set_bn_slot(slot)
            accuracy = self._accuracy(test_loader)
        finally:
            self._drop_bn_slots_from(slot)
        picked = int(alpha.abs().sum(dim=1).argmax())
        return dict(picked=picked, alpha=alpha, accuracy=accuracy, mask_accuracy=self.evaluate_mask(picked, test_loader))

    # -- storage --------------------------------------------------------------------------
    def _bn_bytes_per_task(self) -> int:
        return sum(2 * bn.num_features * 4 for bn in self.bns)  # fp32 mean and var

    def bytes_per_task(self, name: str) -> dict:
        """What task ``name`` stores, in bytes, next to SupSup's one bit-packed mask per task.

        ``mask_bits``: a basis task's bank mask, a hybrid task's last-layer mask (1 bit per weight).
        ``coefficients``: A_t in fp32. ``bn_stats``: its per-task BN statistics (conv nets).
        """
        rec = self._task(name)
        mask_bits = 0
        if rec.kind == "basis":
            mask_bits = sum(math.ceil(layer.weight.numel() / 8) for layer in self.layers)
        elif rec.kind == "hybrid":
            mask_bits = math.ceil(self.layers[-1].weight.numel() / 8)
        coefficients = rec.coefficients.numel() * 4
        bn = self._bn_bytes_per_task()
        supsup = sum(math.ceil(layer.weight.numel() / 8) for layer in self.layers) + bn
        total = mask_bits + coefficients + bn
        return dict(mask_bits=mask_bits, coefficients=coefficients, bn_stats=bn, total=total, supsup=supsup)

    def storage_report(self) -> dict:
        """Bytes of everything stored (banks, coefficients, BN statistics) vs SupSup for the same tasks."""
        banks = sum(layer.bank.numel() + layer.extra_bank.numel() for layer in self.layers)
        coefficients = sum(rec.coefficients.numel() * 4 for rec in self.tasks.values())
        bn = self._bn_bytes_per_task() * self.num_tasks
        total = banks + coefficients + bn
        t = self.num_tasks
        supsup_per_task = sum(math.ceil(layer.weight.numel() / 8) for layer in self.layers) + self._bn_bytes_per_task()
        return dict(
            num_tasks=t,
            num_masks=self.num_masks,
            num_layers=self.num_layers,
            bank_bytes=banks,
            coefficient_bytes=coefficients,
            bn_bytes=bn,
            total_bytes=total,
            bytes_per_task=total / t if t else float("nan"),
            supsup_total_bytes=supsup_per_task * t,
            supsup_bytes_per_task=supsup_per_task,
            compression=(supsup_per_task * t / total) if t else float("nan"),
        )

    # -- checkpoints ----------------------------------------------------------------------
    def backbone_spec(self) -> dict:
        spec = getattr(self.model, "impress_spec", None)
        if spec is None:
            raise ValueError("the model has no impress_spec: build it with create_model or convert")
        return dict(spec)

    def weights_sha256(self) -> str:
        from .checkpoint import weights_sha256

        return weights_sha256(layer.weight.detach().cpu() for layer in self.layers)

    def save(self, path) -> None:
        """Write banks, task coefficients, BN statistics and the task registry (atomic).

        The backbone weights are not stored: load regenerates them from the spec's seed.
        """
        from .checkpoint import save_checkpoint

        tensors = {}
        for i, layer in enumerate(self.layers):
            tensors[f"layers.{i}.bank"] = layer.bank.detach().cpu().contiguous()
            tensors[f"layers.{i}.extra_bank"] = layer.extra_bank.detach().cpu().contiguous()
        for j, rec in enumerate(self.tasks.values()):
            tensors[f"tasks.{j}.coefficients"] = rec.coefficients.detach().cpu().contiguous()
        for b, bn in enumerate(self.bns):
            tensors[f"bns.{b}.running_mean"] = bn.running_mean.detach().cpu().contiguous()
            tensors[f"bns.{b}.running_var"] = bn.running_var.detach().cpu().contiguous()
        spec = self.backbone_spec()
        spec["weights_sha256"] = self.weights_sha256()
        metadata = dict(
            format=FORMAT,
            learner_version=FORMAT_VERSION,
            backbone=spec,
            density=self.density,
            num_masks=self.num_masks,
            num_extra=[layer.num_extra for layer in self.layers],
            layer_shapes=[list(layer.weight.shape) for layer in self.layers],
            bn_features=[bn.num_features for bn in self.bns],
            mask_owners=self.mask_owners,
            tasks=[
                dict(
                    name=rec.name, kind=rec.kind, num_masks=rec.num_masks, bn_slot=rec.bn_slot,
                    mask_index=rec.mask_index, extra_index=rec.extra_index, config=rec.config,
                )  # fmt: skip
                for rec in self.tasks.values()
            ],
        )
        save_checkpoint(path, tensors, metadata)

    @classmethod
    def load(
        cls,
        path,
        device: str | torch.device = "cpu",
        backend: str | None = None,
        *,
        model: nn.Module | None = None,
        progress: bool = False,
    ) -> "ImpressLearner":
        """Rebuild a learner from ``save``: regenerate the backbone, check its hash, install the rest.

        For a registered model the backbone is rebuilt from the stored spec; for a ``convert``ed
        one pass ``model=`` built the same way. A backbone whose SHA-256 differs from the stored
        one is refused (``CheckpointError``).
        """
        from .checkpoint import CheckpointError, load_checkpoint
        from .models import create_model

        tensors, meta = load_checkpoint(path)

        def need(cond: bool, what: str) -> None:
            if not cond:
                raise CheckpointError(f"{path}: {what}")

        need(meta.get("format") == FORMAT, f"not an ImpressLearner checkpoint (format {meta.get('format')!r})")
        need(
            meta.get("learner_version") == FORMAT_VERSION,
            f"learner format version {meta.get('learner_version')!r} is not supported (this build reads {FORMAT_VERSION})",
        )
        spec = dict(meta["backbone"])
        want_hash = spec.pop("weights_sha256")
        if model is None:
            need(
                spec.get("kind") == "registry",
                "the backbone was built with convert(); pass model= built the same way (same architecture, seed, init)",
            )
            model = create_model(spec["name"], **spec["kwargs"])
        learner = cls(model, density=meta["density"], device=device, backend=backend, progress=progress)
        got_hash = learner.weights_sha256()
        need(
            got_hash == want_hash,
            f"backbone mismatch: the regenerated weights hash to {got_hash[:16]}... but the checkpoint was "
            f"trained on {want_hash[:16]}... (different architecture, seed, init or torch RNG)",
        )
        shapes = [list(layer.weight.shape) for layer in learner.layers]
        need(shapes == meta["layer_shapes"], f"layer shapes {shapes} differ from the checkpoint's {meta['layer_shapes']}")
        need(
            [bn.num_features for bn in learner.bns] == meta["bn_features"],
            "the model's BatchNorm layers differ from the checkpoint's",
        )
        try:
            for i, layer in enumerate(learner.layers):
                layer.load_banks_(
                    tensors[f"layers.{i}.bank"], meta["num_masks"], tensors[f"layers.{i}.extra_bank"], meta["num_extra"][i]
                )
            for b, bn in enumerate(learner.bns):
                bn.load_slots_(tensors[f"bns.{b}.running_mean"], tensors[f"bns.{b}.running_var"])
                need(bn.num_slots == len(meta["tasks"]), f"BN {b} has {bn.num_slots} slots for {len(meta['tasks'])} tasks")
            learner.mask_owners = list(meta["mask_owners"])
            need(len(learner.mask_owners) == meta["num_masks"], "mask owner list does not match the bank")
            for j, t in enumerate(meta["tasks"]):
                a = tensors[f"tasks.{j}.coefficients"]
                need(
                    t["kind"] in TASK_KINDS and tuple(a.shape) == (t["num_masks"], learner.num_layers)
                    and 1 <= t["num_masks"] <= meta["num_masks"],
                    f"task {t['name']!r}: bad kind or coefficient shape {tuple(a.shape)}",
                )  # fmt: skip
                rec = TaskRecord(
                    t["name"], t["kind"], a.to(learner.device, torch.float32), t["bn_slot"],
                    mask_index=t["mask_index"], extra_index=t["extra_index"], config=t["config"],
                )  # fmt: skip
                learner._register(rec)
        except KeyError as exc:
            raise CheckpointError(f"{path}: missing entry {exc}") from None
        except ValueError as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"{path}: {exc}") from None
        return learner
