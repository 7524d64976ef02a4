"""Task inference without labels: which stored task does a batch come from, and how sure is it.

Every stored task ``t`` is a coefficient matrix ``A_t[K_t, d]`` over the bank (a basis task is
one-hot). Given a batch ``x`` and candidate tasks, each method scores every candidate
(higher = more likely) and picks the best; :func:`infer_task` returns all of it as a
:class:`TaskInference`, :func:`infer_task_name` only the name.

Methods (``T`` candidates, one "forward" = one combine per layer plus the network's forward):

``oneshot``     SupSup's one-shot GN: ``beta = 1/T``, the superposition
                ``W_i * sum_k (sum_t beta_t A_t[k, i]) B_i[k]`` is ONE combine per layer
                (``alpha' = A^T beta``), score ``-dH/dbeta_t`` (H = mean output entropy).
                One forward + backward, flat in T.
``binary``      SupSup's binary GN: one-shot, keep the better half, repeat: log2(T) forwards.
``iterative``   SupSup's multi-step GN: ``beta = softmax(z)``, ``steps`` gradient steps on z
                that lower H (the steepest coordinate moves by ``lr``), score ``z``.
                ``steps`` forwards + backwards, flat in T.
``exhaustive``  every candidate bound alone (its own BN statistics), score ``-H_t(x)``: the
                lowest mean output entropy. T combines per layer and T forwards, run in chunks
                of tasks as one batched forward (a bmm / grouped convolution per layer); when
                T > K the first layer is computed once per bank mask and mixed per task.
``calibrated``  exhaustive, each ``H_t`` minus the mean entropy the task had on its own
                training data (stored in its :class:`TaskFingerprint`).
``fingerprint`` no forward at all: the batch's inputs are projected onto ``m`` fixed random
                directions and scored by their mean log-likelihood under each task's stored
                diagonal Gaussian of those projections (:func:`task_fingerprint`). One
                ``[N, D] x [D, m]`` product plus ``O(N m T)``; ``4 m + 4`` bytes per task (fp16).

The batch-level ``confidence`` is the same for every method: the share of the batch's
examples that, scored one by one with the method's per-example criterion (output entropy of
the task bound alone for the GN and entropy methods, input log-likelihood for the
fingerprint), prefer the pick to the runner-up. 0.5 is a coin flip, 1.0 unanimous.

Inference never changes what the model computes afterwards: the layers' mask sources and
the BN slots in place before the call are restored. GN needs gradients; it enables them
locally, so every method works under ``torch.no_grad()`` and ``torch.inference_mode()``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

from . import ops
from ._callers import caller_outside_package
from ._integers import is_count
from .layers import ImpressConv2d, ImpressLinear, set_bn_slot

GN_METHODS = ("oneshot", "binary", "iterative")
"""The methods that read the entropy gradient of the superposition (SupSup's GN)."""
METHODS = GN_METHODS + ("exhaustive", "calibrated", "fingerprint")
DEFAULT_METHOD = "auto"
"""``fingerprint`` when every candidate has one; else ``exhaustive`` among basis tasks only, else
``binary``: chosen by measurement in ``benchmarks/task_inference.py`` (see :func:`infer_task`)."""

# Bytes of effective weights one chunk of the exhaustive forward may hold (all layers, all
# tasks of the chunk): 256 MB keeps LeNet-300-100 at 64 tasks per chunk, ResNet-18 at ~5.
EXHAUSTIVE_CHUNK_BYTES = 256 * 2**20


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class TaskInference:
    """The pick, a score for every candidate, and how much of the batch agrees.

    ``scores[j]`` belongs to ``candidates[j]``; higher is more likely; its unit depends on
    ``method`` (``-dH/dbeta``, ``-H``, a log-likelihood). ``margin`` is the pick's score minus
    the runner-up's (0 with one candidate). ``confidence`` is the share of the batch's
    examples that prefer the pick to the runner-up (1.0 with one candidate).
    """

    task: str
    method: str
    candidates: tuple[str, ...]
    scores: tuple[float, ...]
    margin: float
    confidence: float
    runner_up: str | None = None

    def ranking(self) -> list[tuple[str, float]]:
        """Candidates with their scores, best first."""
        return sorted(zip(self.candidates, self.scores), key=lambda p: -p[1])


@dataclass(frozen=True)
class TaskFingerprint:
    """A few hundred bytes that describe a task's inputs (and, optionally, its output entropy).

    ``mean`` and ``var`` (fp16, ``[m]``) are the moments of the task's training inputs
    projected onto ``m = sketch_dim`` fixed random directions drawn from ``seed`` (or of the
    raw input features when ``sketch_dim`` is None). ``entropy`` is the mean output entropy
    of the task on those inputs (for the ``calibrated`` method), NaN when not measured.
    """

    mean: torch.Tensor
    var: torch.Tensor
    input_size: int
    sketch_dim: int | None
    seed: int
    entropy: float = float("nan")

    def __post_init__(self):
        m = self.input_size if self.sketch_dim is None else self.sketch_dim
        for name, t in (("mean", self.mean), ("var", self.var)):
            if not isinstance(t, torch.Tensor) or t.shape != (m,):
                raise ValueError(f"fingerprint {name} must be a tensor of shape [{m}], got {getattr(t, 'shape', t)}")
        # var finite too: a checkpoint refuses an infinite one, so it must not exist in memory either
        if not bool((self.var > 0).all()) or not bool(torch.isfinite(self.var).all()) or not bool(
                torch.isfinite(self.mean).all()):  # fmt: skip
            raise ValueError("fingerprint var must be finite and > 0 and mean finite")

    @property
    def nbytes(self) -> int:
        """Bytes it adds to a stored task: the two fp16 vectors and the fp32 entropy."""
        return self.mean.numel() * self.mean.element_size() + self.var.numel() * self.var.element_size() + 4

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        """Its tensors as a checkpoint stores them (and ``state_sha256`` hashes them): fp16 ``mean``
        and ``var`` on the CPU, the fp32 ``entropy`` as a ``[1]`` tensor."""
        return dict(mean=self.mean.detach().to("cpu", torch.float16).contiguous(),
                    var=self.var.detach().to("cpu", torch.float16).contiguous(),
                    entropy=torch.tensor([self.entropy], dtype=torch.float32))  # fmt: skip

    def same_sketch(self, other: "TaskFingerprint") -> bool:
        return (self.input_size, self.sketch_dim, self.seed) == (other.input_size, other.sketch_dim, other.seed)


# ----------------------------------------------------------------------------- checks


def _check_batch(x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"the batch must be a tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"the batch must be [N, ...] with N examples, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("the batch is empty (0 examples): task inference needs at least one example")
    if not x.is_floating_point():
        raise TypeError(f"the batch must be floating point, got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).flatten(1).any(dim=1).sum())
        raise ValueError(f"the batch holds NaN or infinite values ({bad} of {x.shape[0]} examples)")


def _candidate_names(learner, candidates: Sequence[str] | None) -> tuple[str, ...]:
    if candidates is None:
        names = tuple(learner.tasks)
        if not names:
            raise ValueError("no stored tasks to infer from")
        return names
    if isinstance(candidates, str):
        raise TypeError("candidates must be a sequence of task names, not one string")
    names = tuple(candidates)
    if not names:
        raise ValueError("candidates is empty: give at least one stored task name (or None for all)")
    unknown = [n for n in names if n not in learner.tasks]
    if unknown:
        known = ", ".join(list(learner.tasks)[:10]) or "none"
        raise KeyError(f"unknown candidate task(s) {unknown[:5]} (stored tasks: {known}{', ...' if len(learner.tasks) > 10 else ''})")
    seen, dupes = set(), []
    for n in names:
        if n in seen and n not in dupes:
            dupes.append(n)
        seen.add(n)
    if dupes:
        raise ValueError(f"candidates name task(s) {dupes[:5]} more than once")
    return names


# ----------------------------------------------------------------------------- binding


def _layers_and_bns(learner):
    return learner.layers, learner.bns


@contextlib.contextmanager
def _restored_sources(learner):
    """Put back the mask sources and BN slots (and train/eval mode) found on entry."""
    layers, bns = _layers_and_bns(learner)
    sources = [layer.source for layer in layers]
    slots = [bn.task_slot for bn in bns]
    training = learner.model.training
    try:
        yield
    finally:
        for layer, src in zip(layers, sources):
            layer.source = src
        for bn, slot in zip(bns, slots):
            bn.task_slot = slot
        learner.model.train(training)


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-example output entropy (nats) over the last dimension."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


# ----------------------------------------------------------------------------- GN (superposition)

_STACK_CACHE: dict[int, tuple] = {}


def stacked_coefficients(learner, names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``A[T, K, d]`` of the tasks ``names`` (zero-padded to the current K) and hybrid one-hots ``E[T, H]``.

    Each task's column is scaled to unit L1 norm per layer (Eq. 2's target): a bias-free ReLU
    net's predictions do not change when a layer's weight is scaled, but the entropy gradient
    does; without it a new task whose alpha sums to 1.7 per layer outweighs every one-hot
    basis task (measured: 0/75 basis batches found by the literal SupSup rule).
    """
    layers, _ = _layers_and_bns(learner)
    names = tuple(names)
    k, d, h = layers[0].num_masks, len(layers), layers[-1].num_extra
    records = [learner.tasks[n] for n in names]
    key = (names, k, h, tuple(id(r.coefficients) for r in records))
    cached = _STACK_CACHE.get(id(learner))
    if cached is not None and cached[0] == key:
        return cached[1], cached[2]
    device = records[0].coefficients.device
    with torch.inference_mode(False):
        a = torch.zeros(len(names), k, d, device=device)
        e = torch.zeros(len(names), h, device=device) if h else None
        for t, rec in enumerate(records):
            norm = rec.coefficients.abs().sum(dim=0, keepdim=True).clamp_min(1e-12)
            a[t, : rec.num_masks] = rec.coefficients / norm
            if rec.extra_index is not None:  # a hybrid task's own last-layer mask
                e[t, : rec.extra_index + 1] = rec.last_layer_extra()
        if e is not None and not e.any():
            e = None
    _STACK_CACHE.clear()  # one learner's stack at a time: a 1000-task stack is K*d*4 KB
    # the coefficient tensors are held too, so their ids cannot be reused while the key is alive
    _STACK_CACHE[id(learner)] = (key, a, e, [r.coefficients for r in records])
    return a, e


def _superposition_entropy(learner, x: torch.Tensor, beta: torch.Tensor, a: torch.Tensor, e) -> torch.Tensor:
    """Mean output entropy of the superposition ``alpha' = A^T beta`` (ONE combine per layer)."""
    layers, _ = _layers_and_bns(learner)
    alpha = torch.einsum("t,tkd->kd", beta, a)
    extra = beta @ e if e is not None else None
    d = len(layers)
    for i, layer in enumerate(layers):
        if i == d - 1 and extra is not None:
            layer.use_coefficients(alpha[:, i], extra)  # its bank part plus the hybrid masks
        else:
            layer.use_coefficients(alpha[:, i])
    set_bn_slot(learner.model, None)  # a mixture of tasks has no BN slot: batch statistics
    return _entropy(learner.model(x)).mean()


def _entropy_grad(learner, x, a, e) -> torch.Tensor:
    """dH/dbeta at beta = 1/T for the tasks stacked in ``a``."""
    t = a.shape[0]
    beta = torch.full((t,), 1.0 / t, device=a.device, requires_grad=True)
    (grad,) = torch.autograd.grad(_superposition_entropy(learner, x, beta, a, e), beta)
    return grad


def _gn_scores(learner, x, names, method: str, steps: int, lr: float) -> tuple[torch.Tensor, int | None]:
    """Scores over ``names`` (higher = better) and, for binary, the index of the last one eliminated."""
    a, e = stacked_coefficients(learner, names)
    if method == "oneshot":
        return -_entropy_grad(learner, x, a, e), None
    if method == "iterative":
        # gradient steps on the logits of beta, each scaled so the steepest coordinate moves by
        # lr: Adam's per-coordinate scaling would move every task by the same amount and
        # throw away the ranking the gradient carries (measured: 0/3 basis batches at T = 30)
        z = torch.zeros(a.shape[0], device=a.device, requires_grad=True)
        for _ in range(steps):
            (g,) = torch.autograd.grad(_superposition_entropy(learner, x, torch.softmax(z, 0), a, e), z)
            with torch.no_grad():
                z -= lr * g / g.abs().max().clamp_min(1e-30)
        return z.detach().clone(), None
    # binary: halve on the one-shot gradient; a task's score is the round it survived to,
    # ties within a round broken by that round's gradient (so the winner scores highest)
    total = a.shape[0]
    scores = torch.full((total,), -math.inf, device=a.device)
    alive = torch.arange(total, device=a.device)
    round_ = 0
    last_out = None
    while True:
        grad = _entropy_grad(learner, x, a[alive], e[alive] if e is not None else None)
        order = torch.argsort(grad, stable=True)
        # rank within the round: -grad normalised to (0, 1) so rounds dominate
        span = (grad.max() - grad.min()).clamp_min(1e-30)
        scores[alive] = round_ + (grad.max() - grad) / span
        if alive.numel() == 1:
            return scores, last_out
        keep = (alive.numel() + 1) // 2
        last_out = int(alive[order[keep]]) if keep < alive.numel() else None
        alive = alive[order[:keep]]
        round_ += 2
        if alive.numel() == 1:
            scores[alive] = round_
            return scores, last_out


# ----------------------------------------------------------------------------- exhaustive (batched)


def _stacked_weights(layer, column: int, is_last: bool, records, device) -> torch.Tensor:
    """``W_eff`` of layer ``column`` for each task in ``records``: ``[c, *weight.shape]`` (c combines)."""
    out = torch.empty(len(records), *layer.weight.shape, device=device, dtype=layer.weight.dtype)
    for j, rec in enumerate(records):
        if is_last and rec.extra_index is not None:  # a hybrid task's own last-layer mask, from the extra bank
            coefficients, bank = rec.last_layer_extra().to(device), layer.extra_bank
        else:
            coefficients, bank = rec.coefficients[:, column].contiguous(), layer.bank
        out[j] = ops.combine_masks(layer.weight, bank[: ops.num_planes(coefficients.shape[0])], coefficients, backend=layer.backend)
    return out


def _per_mask_linear(layer, x: torch.Tensor, chunk_bytes: int) -> torch.Tensor:
    """``Z[k] = x @ (W * B_k)^T`` for every bank mask: ``[K, N, out]``.

    A linear layer fed the shared batch computes ``sum_k alpha[k] Z[k]`` for any task, so
    ``T`` tasks cost ``K`` products plus a ``[T, K] x [K, N*out]`` mix instead of T combines
    and T products: the win when T > K.
    """
    k, n = layer.num_masks, layer.weight.numel()
    out_features = layer.weight.shape[0]
    flat_w = layer.weight.reshape(1, -1)
    z = torch.empty(k, x.shape[0], out_features, device=x.device, dtype=x.dtype)
    step = max(1, chunk_bytes // max(1, 4 * n))
    for start in range(0, k, step):
        stop = min(k, start + step)
        masks = ops.unpack_masks(layer.bank, stop, backend=layer.backend)[start:stop]
        masked = (masks.to(flat_w.dtype) * flat_w).reshape((stop - start) * out_features, -1)
        z[start:stop] = (x @ masked.T).reshape(x.shape[0], stop - start, out_features).transpose(0, 1)
    return z


class _ExhaustiveForward:
    """Runs ``c`` tasks, each alone, through the model in one forward (see :func:`exhaustive_entropies`).

    Rows ``j*N:(j+1)*N`` of every activation belong to task ``j``; the shared batch enters with
    ``N`` rows and is spread over the tasks by the first module that depends on the task. Every
    masked layer and BN computes its task per group: a Linear is a bmm over stacked effective
    weights (or the per-mask mix of :func:`_per_mask_linear`), a Conv2d a grouped convolution,
    a BN normalises each group with its task's slot. Other modules must act per example
    (ReLU, pooling, flatten and residual adds do).
    """

    def __init__(self, learner, x: torch.Tensor, num_tasks: int, chunk_bytes: int):
        self.learner = learner
        self.x = x
        self.n = x.shape[0]
        self.chunk_bytes = chunk_bytes
        layers, _ = _layers_and_bns(learner)
        self.per_mask: dict[int, torch.Tensor] = {}
        for i, layer in enumerate(layers):
            # only the first masked layer: it is the first module whose input the task changes, so
            # its input is the same for every chunk and its per-mask products can be kept
            self.per_mask[i] = (
                i == 0 and len(layers) > 1 and isinstance(layer, ImpressLinear) and num_tasks > layer.num_masks
                and layer.num_masks * self.n * layer.weight.shape[0] * 4 <= chunk_bytes
            )  # fmt: skip

    def _spread(self, inp: torch.Tensor, c: int) -> torch.Tensor:
        return inp.repeat(c, *([1] * (inp.dim() - 1))) if inp.shape[0] == self.n else inp

    def logits(self, records) -> torch.Tensor:
        learner, n = self.learner, self.n
        layers, bns = _layers_and_bns(learner)
        c = len(records)
        device = self.x.device
        slots = [rec.bn_slot for rec in records]
        forwards = {}
        for i, layer in enumerate(layers):
            is_last = i == len(layers) - 1
            if self.per_mask[i] is not False:
                forwards[layer] = self._per_mask_forward(layer, i, records)
            elif isinstance(layer, ImpressConv2d):
                forwards[layer] = self._conv_forward(layer, _stacked_weights(layer, i, is_last, records, device), c)
            elif isinstance(layer, ImpressLinear):
                forwards[layer] = self._linear_forward(_stacked_weights(layer, i, is_last, records, device), c)
            else:  # pragma: no cover - impress_layers returns only these two
                raise TypeError(f"cannot batch {type(layer).__name__}")
        for bn in bns:
            forwards[bn] = self._bn_forward(bn, slots, c)
        try:
            for module, forward in forwards.items():
                module.forward = forward  # an instance attribute shadows the class's forward
            logits = learner.model(self.x)
        finally:
            for module in forwards:
                vars(module).pop("forward", None)
        if logits.shape[0] == n and c > 1:  # no module depended on the task (cannot happen with a masked layer)
            logits = self._spread(logits, c)
        return logits.reshape(c, n, -1)

    def _per_mask_forward(self, layer, column: int, records):
        n = self.n

        def forward(inp):
            if inp.shape[0] != n:  # not the shared batch: the per-mask route does not apply
                w = _stacked_weights(layer, column, False, records, inp.device)
                return self._linear_forward(w, len(records))(inp)
            if self.per_mask[column] is True:
                self.per_mask[column] = _per_mask_linear(layer, inp, self.chunk_bytes)
            z = self.per_mask[column]
            alpha = torch.zeros(len(records), z.shape[0], device=z.device, dtype=z.dtype)
            for j, rec in enumerate(records):
                alpha[j, : rec.num_masks] = rec.coefficients[:, column]
            return (alpha @ z.reshape(z.shape[0], -1)).reshape(len(records) * n, -1)

        return forward

    def _linear_forward(self, w: torch.Tensor, c: int):
        n = self.n

        def forward(inp):
            if inp.shape[0] == n:  # the shared batch: one GEMM against all c weights
                y = inp @ w.reshape(-1, w.shape[-1]).T
                return y.reshape(n, c, -1).transpose(0, 1).reshape(c * n, -1)
            return torch.bmm(inp.reshape(c, n, -1), w.transpose(1, 2)).reshape(c * n, -1)

        return forward

    def _conv_forward(self, layer, w: torch.Tensor, c: int):
        n = self.n

        def forward(inp):
            conv = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation)
            if inp.shape[0] == n:  # the shared batch: one convolution with all c weights stacked
                y = F.conv2d(inp, w.reshape(-1, *w.shape[2:]), None, groups=layer.groups, **conv)
            else:
                _, ch, hh, ww = inp.shape
                grouped = inp.reshape(c, n, ch, hh, ww).transpose(0, 1).reshape(n, c * ch, hh, ww)
                y = F.conv2d(grouped, w.reshape(-1, *w.shape[2:]), None, groups=layer.groups * c, **conv)
            return y.reshape(n, c, -1, *y.shape[2:]).transpose(0, 1).reshape(c * n, -1, *y.shape[2:])

        return forward

    def _bn_forward(self, bn, slots: list[int], c: int):
        def forward(inp):
            grouped = self._spread(inp, c).reshape(c, self.n, *inp.shape[1:])
            shape = (c, 1, bn.num_features) + (1,) * (inp.dim() - 2)
            mean = bn.running_mean[slots].reshape(shape)
            var = bn.running_var[slots].reshape(shape)
            return ((grouped - mean) * torch.rsqrt(var + bn.eps)).reshape(c * self.n, *inp.shape[1:])

        return forward


def exhaustive_entropies(learner, x: torch.Tensor, names: Sequence[str], *, chunk_bytes: int = EXHAUSTIVE_CHUNK_BYTES) -> torch.Tensor:
    """Per-example output entropy ``[T, N]`` of each task in ``names`` bound alone (its BN slot).

    Tasks run in chunks whose stacked effective weights fit in ``chunk_bytes``; a linear layer
    that sees the shared batch is computed once per bank mask when T > K (:func:`_per_mask_linear`).
    """
    layers, _ = _layers_and_bns(learner)
    per_task = sum(layer.weight.numel() * layer.weight.element_size() for layer in layers)
    chunk = max(1, min(len(names), chunk_bytes // max(1, per_task)))
    records = [learner.tasks[n] for n in names]
    out = []
    learner.model.eval()
    with torch.no_grad():
        runner = _ExhaustiveForward(learner, x, len(records), chunk_bytes)
        for start in range(0, len(records), chunk):
            out.append(_entropy(runner.logits(records[start : start + chunk])))
    return torch.cat(out)


# ----------------------------------------------------------------------------- fingerprints


@functools.lru_cache(maxsize=8)
def _projection(input_size: int, sketch_dim: int, seed: int) -> torch.Tensor:
    """Fixed random directions ``[D, m]`` (Gaussian / sqrt(D)), drawn on the CPU so any machine gets the same."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(input_size, sketch_dim, generator=g) / math.sqrt(input_size)


def _sketch(x: torch.Tensor, input_size: int, sketch_dim: int | None, seed: int) -> torch.Tensor:
    flat = x.reshape(x.shape[0], -1).float()
    if flat.shape[1] != input_size:
        raise ValueError(f"the batch has {flat.shape[1]} input features per example but the fingerprints {input_size}")
    if sketch_dim is None:
        return flat
    return flat @ _projection(input_size, sketch_dim, seed).to(flat.device)


def _batches(inputs) -> Iterable[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        yield inputs
        return
    for item in inputs:
        yield item[0] if isinstance(item, (tuple, list)) else item


# a variance floor relative to the mean variance: keeps constant pixels (an image's border)
# from turning one stray value into an unbounded log-likelihood penalty
_VAR_FLOOR = 1e-2


def _check_read_limit(max_examples, minimum: int) -> None:
    if max_examples is not None and not is_count(max_examples, minimum):  # x[:max_examples - total] reads any int
        raise ValueError(f"max_examples must be an int >= {minimum} or None, got {max_examples!r}")


def _check_measured_task(learner, name, bind) -> None:
    """``learner`` with exactly one of ``name`` (a stored task) and ``bind`` (a task not stored yet), or none."""
    if (learner is None) != (name is None and bind is None) or (name is not None and bind is not None):
        raise ValueError("give learner with name or bind (to measure the entropy baseline), or none of them")


@dataclass
class _InputSums:
    """What one pass over a task's inputs adds up: examples, their size, the sketch's first and second
    moments' sums (float64, empty when no sketch is read) and the output entropy's sum."""

    total: int = 0
    input_size: int | None = None
    s1: torch.Tensor | None = None
    s2: torch.Tensor | None = None
    entropy_sum: float = 0.0


def _read_inputs(inputs, *, sketch_dim: int | None, seed: int, max_examples: int | None, read_sketch: bool,
                 learner, name: str | None, bind, process_group) -> _InputSums:  # fmt: skip
    """ONE pass over at most ``max_examples`` inputs: their sketch's sums (``read_sketch``) and, with
    ``learner``, the task's output entropy (bound by ``name`` or ``bind``), summed over ``process_group``.
    A generator of batches can be read only once, so both come from the same pass."""
    sums = _InputSums()
    try:
        with contextlib.ExitStack() as stack:
            if learner is not None:
                if name is not None:
                    _candidate_names(learner, [name])
                stack.enter_context(_restored_sources(learner))
                stack.enter_context(torch.no_grad())
                if name is not None:
                    learner.bind_task(name)
                else:
                    bind()
                learner.model.eval()
            for x in _batches(inputs):
                if max_examples is not None:
                    x = x[: max_examples - sums.total]
                _check_batch(x)
                if sums.input_size is None:
                    sums.input_size = x[0].numel()
                if read_sketch:
                    z = _sketch(x, sums.input_size, sketch_dim, seed).double()
                    sums.s1 = z.sum(0) if sums.s1 is None else sums.s1 + z.sum(0)
                    sums.s2 = (z * z).sum(0) if sums.s2 is None else sums.s2 + (z * z).sum(0)
                elif x[0].numel() != sums.input_size:
                    raise ValueError(f"the inputs change size: {x[0].numel()} features per example, earlier {sums.input_size}")
                sums.total += x.shape[0]
                if learner is not None:
                    sums.entropy_sum += float(_entropy(learner.model(x.to(learner.device))).sum())
                if max_examples is not None and sums.total >= max_examples:
                    break  # before the loader draws (and perhaps loads) another batch
    except Exception as exc:
        if process_group is None:
            raise
        _check_ranks_agree(exc, sums.total, sums.input_size, sketch_dim, seed, process_group)  # raises on every rank
    if sums.s1 is None:  # no sketch read: empty sums, so the ranks' all-reduce has the same shape everywhere
        sums.s1 = sums.s2 = torch.zeros(0, dtype=torch.float64)
    if process_group is not None:
        _check_ranks_agree(None, sums.total, sums.input_size, sketch_dim, seed, process_group)
        sums.s1, sums.s2, sums.total, sums.entropy_sum = _sum_over_ranks(sums.s1, sums.s2, sums.total,
                                                                         sums.entropy_sum, process_group)  # fmt: skip
    return sums


def _mean_entropy(sums: _InputSums) -> float:
    """The entropy baseline: the task's mean output entropy over the inputs read; a non-finite one
    (NaN or infinite logits) is refused, never stored as 'not measured'."""
    entropy = sums.entropy_sum / sums.total
    if not math.isfinite(entropy):
        raise FloatingPointError(
            f"the task's mean output entropy on its inputs is {entropy}: its logits are not finite (a diverged "
            "run, or BatchNorm statistics that overflowed)"
        )
    return entropy


def task_fingerprint(
    inputs, *, sketch_dim: int | None = 64, seed: int = 0, learner=None, name: str | None = None,
    max_examples: int | None = 10_000, process_group=None, bind: Callable[[], None] | None = None,
) -> TaskFingerprint:  # fmt: skip
    """Fingerprint of a task from its training inputs, to compute when the task is registered.

    ``inputs``: a tensor ``[N, ...]`` or an iterable of batches (``x`` or ``(x, y)``), at most
    ``max_examples`` used. With ``learner`` and ``name`` it also stores the task's mean output
    entropy on those inputs (for the ``calibrated`` method; :func:`task_entropy`, read in the same
    pass). ``4 * sketch_dim + 4`` bytes.
    ``bind`` instead of ``name``: a callable that makes ``learner.model`` compute a task not yet
    stored (its coefficients and BN slot), so that a commit can measure the fingerprint before
    it changes the learner. The moments are stored in fp16: inputs whose sketch does not fit
    (a mean or variance above 65504, a variance below 6e-8) are refused with a ``ValueError``
    asking to normalise them, never stored as infinities or zeros. Without ``learner`` the
    fingerprint depends on the inputs alone (entropy NaN), so every refusal but the entropy's
    (a non-finite one is a ``FloatingPointError``) can be had before a task is trained:
    ``learn_*`` measure it so, and add the entropy after training.

    Distributed training: the statistics are those of the inputs this process reads, so under
    DDP (a ``DistributedSampler``) each rank would fingerprint only its shard, and the ranks'
    learners would differ. Pass ``process_group`` (e.g. ``torch.distributed.group.WORLD``)
    to sum the moments over its ranks: every rank of the group must then call this with its
    shard (a collective; ``max_examples`` counts per rank) and gets the same fingerprint.
    It is never done implicitly, since a call made on one rank alone would wait forever.
    A rank that fails to read its shard (no inputs, a NaN, a model that refuses them) still
    joins the collectives, so every rank raises (that rank its own error, the others a
    ``RuntimeError`` saying another rank failed) instead of the others waiting forever; so do
    ranks whose inputs differ in size or that ask for different sketches (``sketch_dim``, ``seed``).
    """
    if sketch_dim is not None and not is_count(sketch_dim, 1):
        raise ValueError(f"sketch_dim must be an int >= 1 or None, got {sketch_dim!r}")
    sketch_dim = None if sketch_dim is None else int(sketch_dim)  # numpy's too; stored as JSON
    if not is_count(seed, 0) or seed >= 2**63:  # torch.Generator's seed range
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    seed = int(seed)
    _check_read_limit(max_examples, 2)
    _check_measured_task(learner, name, bind)
    sums = _read_inputs(inputs, sketch_dim=sketch_dim, seed=seed, max_examples=max_examples, read_sketch=True,
                        learner=learner, name=name, bind=bind, process_group=process_group)  # fmt: skip
    if sums.total < 2:
        raise ValueError(f"a fingerprint needs at least 2 examples, got {sums.total}")
    mean = sums.s1 / sums.total
    var = (sums.s2 / sums.total - mean * mean).clamp_min(0.0)
    var = var.clamp_min(_VAR_FLOOR * float(var.mean()) + 1e-12)
    mean16, var16 = mean.to(torch.float16).cpu(), var.to(torch.float16).cpu()
    if not bool(torch.isfinite(mean16).all() and torch.isfinite(var16).all() and (var16 > 0).all()):
        raise ValueError(
            f"the inputs' sketch moments do not fit the fingerprint's fp16 (largest |mean| {float(mean.abs().max()):.3g}, "
            f"variances {float(var.min()):.3g} to {float(var.max()):.3g}; fp16 holds 6e-8 to 65504): normalise the "
            "inputs (e.g. to mean 0 and standard deviation 1, as the scenarios do)"
        )
    return TaskFingerprint(
        mean=mean16, var=var16, input_size=sums.input_size, sketch_dim=sketch_dim, seed=seed,
        entropy=_mean_entropy(sums) if learner is not None else float("nan"),
    )  # fmt: skip


def task_entropy(learner, inputs, *, name: str | None = None, bind: Callable[[], None] | None = None,
                 max_examples: int | None = 10_000, process_group=None) -> float:  # fmt: skip
    """The part of a fingerprint that needs the trained task: its mean output entropy (nats) on
    at most ``max_examples`` of ``inputs`` (the ``calibrated`` method's baseline), the task given by
    ``name`` or ``bind`` as in :func:`task_fingerprint`, and summed over ``process_group`` likewise.

    ``dataclasses.replace(task_fingerprint(inputs), entropy=task_entropy(learner, inputs, ...))`` is
    the fingerprint ``task_fingerprint(inputs, learner=, ...)`` reads in one pass when both read the
    same inputs. Raises ``FloatingPointError`` for a non-finite entropy (NaN logits), ``ValueError``
    for no inputs, a NaN in them or inputs that change size.
    """
    if learner is None:
        raise ValueError("task_entropy needs the learner whose task it measures")
    _check_read_limit(max_examples, 1)
    _check_measured_task(learner, name, bind)
    sums = _read_inputs(inputs, sketch_dim=None, seed=0, max_examples=max_examples, read_sketch=False,
                        learner=learner, name=name, bind=bind, process_group=process_group)  # fmt: skip
    if sums.total < 1:
        raise ValueError("the inputs yielded no examples: the entropy baseline needs at least one")
    return _mean_entropy(sums)


def _collective_device(group) -> torch.device:
    """Where a collective's tensor must live: NCCL reduces CUDA tensors only, gloo and the others CPU ones."""
    import torch.distributed as dist

    nccl = dist.get_backend(group) == "nccl"
    return torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")


def _check_ranks_agree(error: Exception | None, total: int, input_size: int | None, sketch_dim: int | None, seed: int,
                       group) -> None:  # fmt: skip
    """Raise on every rank of ``group`` (the same decision everywhere, from one all-reduce) when a rank
    failed to read its shard (``error``) or read nothing, or the ranks' input sizes or sketches differ.

    Each value goes in as ``v`` and ``-v`` under MAX, giving the largest and the smallest of the
    ranks' values at once (int64: a seed is exact, where float64 would round it above 2**53).
    """
    import torch.distributed as dist

    unknown = torch.iinfo(torch.int64).min  # a failed rank's input size: below every real one, never negated

    def both(value):
        return [value, -value] if value is not None else [unknown, unknown]

    failed, empty = error is not None, error is None and total == 0
    size = None if failed or empty else input_size
    local = torch.tensor([int(failed), int(empty), *both(size), *both(-1 if sketch_dim is None else sketch_dim),
                          *both(seed)], dtype=torch.int64, device=_collective_device(group))  # fmt: skip
    dist.all_reduce(local, op=dist.ReduceOp.MAX, group=group)
    any_failed, any_empty, size_max, size_min, sketch_max, sketch_min, seed_max, seed_min = local.cpu().tolist()
    if failed:
        raise error
    if any_failed:
        raise RuntimeError("another rank of process_group failed to read its inputs (its own error says why); "
                           "no fingerprint was made on any rank")  # fmt: skip
    if any_empty:
        raise ValueError("a rank of process_group read no inputs; every rank needs at least one batch")
    if size_max != -size_min:
        raise ValueError(f"the ranks of process_group read inputs of different sizes ({-size_min} to {size_max} "
                         "features per example): their moments cannot be summed")  # fmt: skip
    if sketch_max != -sketch_min or seed_max != -seed_min:
        raise ValueError("the ranks of process_group asked for different sketches (sketch_dim or seed differ)")


def _sum_over_ranks(s1: torch.Tensor, s2: torch.Tensor, total: int, entropy_sum: float, group):
    """The sums of every rank of ``group``, in one all-reduce (float64: exact counts up to 2**53)."""
    import torch.distributed as dist

    m = s1.numel()
    packed = torch.cat([s1.double(), s2.double(), torch.tensor([float(total), entropy_sum], dtype=torch.float64,
                                                               device=s1.device)]).to(_collective_device(group))  # fmt: skip
    dist.all_reduce(packed, group=group)
    packed = packed.to(s1.device)
    return packed[:m], packed[m : 2 * m], int(packed[2 * m].item()), float(packed[2 * m + 1])


_FINGERPRINT_CACHE: dict = {}


def _stacked_fingerprints(fingerprints: tuple, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean[T, m]`` and ``var[T, m]`` in fp32, kept for the last candidate list (1000 stacks ~ ms)."""
    key = (tuple(id(fp) for fp in fingerprints), str(device))
    if _FINGERPRINT_CACHE.get("key") != key:
        with torch.inference_mode(False):
            mean = torch.stack([fp.mean for fp in fingerprints]).float().to(device)
            var = torch.stack([fp.var for fp in fingerprints]).float().to(device)
        # the fingerprints are held too, so their ids cannot be reused while the key is alive
        _FINGERPRINT_CACHE.update(key=key, held=fingerprints, value=(mean, var))
    return _FINGERPRINT_CACHE["value"]


def fingerprint_log_likelihoods(x: torch.Tensor, fingerprints: Sequence[TaskFingerprint]) -> torch.Tensor:
    """Per-example log-likelihood ``[T, N]`` of the batch's sketch under each task's diagonal Gaussian."""
    if len(fingerprints) == 0:
        raise ValueError("no fingerprints to score the batch against")
    _check_batch(x)
    first = fingerprints[0]
    for fp in fingerprints[1:]:
        if not fp.same_sketch(first):
            raise ValueError("the fingerprints were computed with different sketches (input size, sketch_dim or seed)")
    z = _sketch(x, first.input_size, first.sketch_dim, first.seed)  # [N, m]
    mean, var = _stacked_fingerprints(tuple(fingerprints), z.device)
    inv = 1.0 / var
    # sum_j (z_j - mu_j)^2 / var_j expanded into three products: O(N m T), no [T, N, m] tensor
    quad = (z * z) @ inv.T - 2.0 * z @ (mean * inv).T + (mean * mean * inv).sum(1)
    return (-0.5 * (quad + torch.log(var).sum(1) + z.shape[1] * math.log(2 * math.pi))).T


def _fingerprints_for(learner, names, fingerprints) -> list[TaskFingerprint]:
    source = fingerprints if fingerprints is not None else getattr(learner, "fingerprints", None)
    missing = [n for n in names if source is None or n not in source]
    if missing:
        raise ValueError(
            f"task(s) {missing[:5]} have no fingerprint: compute one with task_fingerprint(train inputs) when the "
            "task is registered and pass fingerprints={name: fingerprint}"
        )
    return [source[n] for n in names]


# ----------------------------------------------------------------------------- entry points


def _pairwise_confidence(per_example: torch.Tensor, best: int, second: int) -> float:
    """Share of examples whose per-example score (higher = better, ``[T, N]``) prefers best to second."""
    return float((per_example[best] > per_example[second]).float().mean())


def _auto_method(learner, names, fingerprints) -> str:
    """The measured choice (``benchmarks/task_inference.py``, docs/results.md):

    ``fingerprint`` whenever every candidate has one (100% of batches in every scenario measured);
    else ``exhaustive`` when every candidate is a basis task (Rotated: 85-100%, binary 45-65%);
    else ``binary``: an alpha task is more confident than a basis task on the basis task's own
    data, so exhaustive found 0% of basis batches once alpha tasks were candidates, binary 100%.

    When some candidates have a fingerprint and others not, the fallback is not silent: a
    ``UserWarning`` names the tasks without one (the user believes fingerprints are used, and GN
    misses alpha tasks' batches), once per call site and set of tasks (Python's warning filter).
    """
    source = fingerprints if fingerprints is not None else getattr(learner, "fingerprints", None)
    have = [n for n in names if source is not None and n in source]
    if len(have) == len(names):
        return "fingerprint"
    method = "exhaustive" if all(learner.tasks[n].kind == "basis" for n in names) else "binary"
    if have:
        missing = [n for n in names if n not in have]
        warnings.warn(
            f"task inference 'auto': {len(missing)} of {len(names)} candidates have no fingerprint ({missing[:5]}), "
            f"so {method!r} scores all of them instead of the fingerprints (measured less reliable, GN misses most "
            "alpha tasks' batches: docs/results.md); add theirs with learner.add_fingerprint, or pass candidates or "
            "method explicitly",
            stacklevel=caller_outside_package(),  # the user's infer_task or learner.infer_task line
        )  # fmt: skip
    return method


def _refuse_finer_coefficients(learner, names: Sequence[str], method: str) -> None:
    """Every method but ``fingerprint`` combines one coefficient column per layer (GN's Eq. 1 over
    stacked ``A_t``, exhaustive's per-task forward): a task with finer coefficients (per channel or
    per block) would be read wrongly, so it is refused by name rather than scored."""
    if method == "fingerprint":
        return
    finer = [n for n in names if learner.tasks[n].granularity != "layer"]
    if finer:
        raise ValueError(
            f"task inference by {method!r} combines one coefficient column per layer, but task(s) {finer[:5]} have "
            "finer coefficients; give every candidate a fingerprint (learn_* stores one; add_fingerprint) and use "
            "method='auto' or 'fingerprint'"
        )


def infer_task(
    learner,
    x: torch.Tensor,
    method: str = DEFAULT_METHOD,
    candidates: Sequence[str] | None = None,
    *,
    fingerprints: Mapping[str, TaskFingerprint] | None = None,
    steps: int = 10,
    lr: float = 1.0,
) -> TaskInference:
    """Which of ``candidates`` (default: every stored task) the batch ``x`` comes from, with evidence.

    ``learner``: an ``ImpressLearner`` (read through ``model``, ``layers``, ``bns``, ``tasks``).
    ``method``: one of :data:`METHODS` (module docstring: what each computes and costs).
    ``fingerprints``: ``{name: TaskFingerprint}`` for ``fingerprint`` and ``calibrated``
    (default: ``learner.fingerprints`` when the learner keeps them). ``steps``, ``lr``: the
    gradient steps of ``iterative``.

    Raises ``ValueError`` for an empty batch, NaN or inf in it, an empty or duplicated
    candidate list, a batch whose example size differs from the fingerprints'; ``KeyError`` for
    an unknown candidate. ``'auto'`` warns when it falls back to GN because only some candidates
    have a fingerprint (:func:`_auto_method`).

    The batch is taken to come from ONE task: a batch that mixes tasks still gets one pick (the
    task its examples favour on average) and a ``confidence`` below 1 (the share of its examples
    that prefer the pick to the runner-up, near 0.5 for an even mix of two), so a low confidence
    is the sign to look at. Examples whose tasks may differ can be inferred one at a time (a batch
    of 1), at a cost in accuracy: with fingerprints, 96% of single images among 10 Permuted
    Fashion-MNIST tasks, 27% among 10 rotated 3 degrees apart (``scripts/fingerprint_examples.py``).

    Measured (``benchmarks/task_inference.py``; Fashion-MNIST, LeNet-300-100, K = 100, batches
    of 128; docs/results.md has the tables). Batches identified: ``fingerprint`` 100% everywhere
    (250 alpha tasks among T = 1000: 500/500; Rotated at 12 degrees among 30: 60/60) already
    at 68 bytes per task (m = 16); m = 64 (260 B, the default) also holds 100% / 98% on
    rotations 3 / 1 degrees apart, where m = 16 falls to 78 / 27% (those fingerprints read the
    same 1,000 source images for every task, whose shared noise cancels; from each task's own
    1,000 images 3 degrees apart gives 89% among 10 tasks: docs/results.md); GN (oneshot/binary/iterative) 90-100% of Permuted basis
    batches but 0-12% of alpha batches and 10-65% on Rotated; ``exhaustive`` 85-100% on
    Rotated but 0% of basis batches once alpha tasks are candidates. CPU time per batch (one
    thread) at T = 10 / 1000: fingerprint 2.2 / 6.1 ms, oneshot 28 / 42 ms, binary 75 / 192 ms,
    iterative 173 / 187 ms, exhaustive 44 / 2034 ms (calibrated as exhaustive).
    """
    if method not in METHODS + ("auto",):
        raise ValueError(f"method must be 'auto' or one of {METHODS}, got {method!r}")
    _check_batch(x)
    names = _candidate_names(learner, candidates)
    if method == "auto":
        method = _auto_method(learner, names, fingerprints)
    _refuse_finer_coefficients(learner, names, method)
    if not is_count(steps, 1):
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    device = learner.layers[0].weight.device
    x = x.to(device)
    per_example = None
    runner_up = None
    with _restored_sources(learner):
        if method in GN_METHODS:
            with torch.inference_mode(False), torch.enable_grad():
                learner.model.eval()
                scores, eliminated_last = _gn_scores(learner, x.clone(), names, method, steps, lr)
            runner_up = eliminated_last
        elif method in ("exhaustive", "calibrated"):
            per_example = -exhaustive_entropies(learner, x, names)
            if method == "calibrated":
                baselines = torch.tensor([fp.entropy for fp in _fingerprints_for(learner, names, fingerprints)])
                if not bool(torch.isfinite(baselines).all()):
                    raise ValueError("calibrated needs fingerprints with an entropy baseline: task_fingerprint(..., learner=, name=)")
                per_example = per_example + baselines.to(per_example.device)[:, None]
            scores = per_example.mean(dim=1)
        else:
            per_example = fingerprint_log_likelihoods(x, _fingerprints_for(learner, names, fingerprints))
            scores = per_example.mean(dim=1)
        scores = scores.detach().float().cpu()
        best = int(scores.argmax())
        if len(names) == 1:
            return TaskInference(names[0], method, names, (float(scores[0]),), 0.0, 1.0, None)
        if runner_up is None:
            runner_up = int(torch.topk(scores, 2).indices[1])
        if per_example is None:
            # GN has no per-example score: judge pick vs runner-up by their own output entropy
            per_example = -exhaustive_entropies(learner, x, [names[best], names[runner_up]])
            confidence = _pairwise_confidence(per_example, 0, 1)
        else:
            confidence = _pairwise_confidence(per_example.cpu(), best, runner_up)
    return TaskInference(
        task=names[best], method=method, candidates=names, scores=tuple(scores.tolist()),
        margin=float(scores[best] - scores[runner_up]), confidence=confidence, runner_up=names[runner_up],
    )  # fmt: skip


def infer_task_name(learner, x: torch.Tensor, method: str = DEFAULT_METHOD, candidates: Sequence[str] | None = None, **kwargs) -> str:
    """The name :func:`infer_task` picks, and nothing else."""
    return infer_task(learner, x, method, candidates, **kwargs).task
