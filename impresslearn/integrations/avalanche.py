"""ImpressLearn as an Avalanche strategy: ``pip install impresslearn[avalanche]``.

::

    from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
    from avalanche.training.plugins import EvaluationPlugin
    from impresslearn import ImpressLearner, TrainConfig
    from impresslearn.integrations.avalanche import ImpressLearnStrategy
    from impresslearn.models import create_model

    learner = ImpressLearner(create_model("lenet300", num_classes=10, seed=0), density=0.1)
    metrics = EvaluationPlugin(accuracy_metrics(epoch=True, experience=True), loss_metrics(epoch=True))
    strategy = ImpressLearnStrategy(learner=learner, basis_experiences=2, random_masks=20, evaluator=metrics,
                                    alpha_train=TrainConfig(lam=0.005))  # else TrainConfig's default recipe
    for experience in benchmark.train_stream:
        strategy.train(experience)
        strategy.eval(benchmark.test_stream)

Training runs in Avalanche's own loop (``SupervisedTemplate``), so its metrics, loggers and
plugins see every minibatch's loss and output. Each training experience becomes one stored task
of the learner, named ``"experience <n>"``: the first ``basis_experiences`` learn an edge-popup
mask each (:class:`~impresslearn.objectives.EdgePopupObjective`, a basis task), every later one
learns alpha over the bank (:class:`~impresslearn.objectives.AlphaObjective`, Eq. 1-2), optionally
after ``random_masks`` uniform random masks were added. The phase's ``TrainConfig`` sets the
optimiser, epochs and minibatch size; the loss Avalanche sees is the objective's (cross-entropy
plus Eq. 2's penalty).

Evaluation, with the task label: a label that exactly one training experience carried selects
that experience's task. Task-free (``task_free=True``, or a label no single experience owns, as
in class- or domain-incremental benchmarks whose experiences all carry label 0): the task is
inferred per minibatch by ``learner.infer_task`` (``gn_method``, default ``'auto'``: each
task's input fingerprint, read from up to ``learner.fingerprint_examples`` training inputs of
its experience; a task without one makes it fall back to GN).

Fingerprints follow ``learn_*``'s policy (the learner's class docstring): the part that depends
on the experience's inputs alone, their sketch, is measured in ``_before_training_exp``, before
any training step, so inputs it cannot read (fewer than 2, a NaN, moments beyond fp16, an input
size or sketch other than the stored fingerprints') refuse the experience there and leave the
learner as it was (no random masks added, no BN slot, no task). That pass puts back the global
RNGs (torch's CPU one, numpy's, Python's) a data set's transforms may draw from, so training
sees the batches it would without it. The entropy baseline needs the trained task and is
measured after training; when that fails (NaN logits), a :class:`TrainedExperienceNotStoredError`
holds the trained task: ``strategy.store_trained(error)`` stores it (input fingerprint, no
entropy baseline), ``error.objective.discard()`` drops it.

Checkpointing is Avalanche's own (``save_checkpoint`` / ``maybe_load_checkpoint``): the
strategy, its learner and its task map pickle with it; after loading, use ``strategy.learner``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

try:
    from avalanche.models import MultiTaskModule
    from avalanche.training.plugins.evaluation import default_evaluator
    from avalanche.training.templates import SupervisedTemplate
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "impresslearn.integrations.avalanche needs Avalanche: pip install 'impresslearn[avalanche]' "
        f"(avalanche-lib); import failed with: {exc}") from exc

from ..config import TrainConfig, check_integer
from ..inference import DEFAULT_METHOD, TaskFingerprint
from ..learner import TrainedTaskNotStoredError
from ..objectives import AlphaObjective, EdgePopupObjective, TaskObjective, TrainingHistory


class TrainedExperienceNotStoredError(TrainedTaskNotStoredError):
    """An experience trained, but its task's entropy baseline (the one part of its fingerprint that
    needs the trained task) could not be measured, so nothing was stored; the strategy holds nothing
    open. As :class:`~impresslearn.learner.TrainedTaskNotStoredError` (``objective``, still open
    with its BN slot; ``fingerprint``, the input sketch measured before training, entropy NaN), plus
    what the strategy needs to store it as a trained experience: ``config`` (the phase's
    ``TrainConfig``) and ``task_labels``. ``history.steps`` counts Avalanche's training iterations;
    ``history.loss`` is empty (Avalanche's metrics and loggers recorded the losses).
    ``strategy.store_trained(error)`` stores the task and maps its labels as any experience's;
    ``error.objective.discard()`` drops it. Do one of them before training the next experience,
    which takes the BN slot.
    """

    def __init__(self, name: str, objective, history: TrainingHistory, fingerprint: TaskFingerprint,
                 cause: Exception, *, config: TrainConfig, task_labels: Iterable[int]):  # fmt: skip
        super().__init__(name, objective, history, fingerprint, cause)
        self.config, self.task_labels = config, frozenset(task_labels)

    def _subject(self) -> str:
        return self.name

    def _how_to_keep(self) -> str:
        # not the learner's error.objective.commit, which would bypass the strategy's task map
        return ("strategy.store_trained(error) stores it with its input fingerprint and no entropy baseline "
                "(fingerprint=False: without a fingerprint), error.objective.discard() drops it")


class ImpressLearnModule(MultiTaskModule):
    """The learner's model as an Avalanche ``MultiTaskModule``.

    While an experience trains, ``objective`` is the open training objective (a submodule, so
    ``parameters()`` are exactly what trains); its logits answer every forward. Otherwise a
    minibatch is answered by the stored task its label selects, or by the task ``infer_task`` picks.
    """

    def __init__(self, learner, *, task_free: bool = False, gn_method: str = DEFAULT_METHOD):
        super().__init__()
        self.learner = learner  # not a submodule: Avalanche's optimiser must not see the frozen backbone
        self.task_free = bool(task_free)
        self.gn_method = gn_method
        self.objective: TaskObjective | None = None
        self.training_labels: set[int] = set()  # labels of the experience that is training
        self.tasks_by_label: dict[int, list[str]] = {}
        self.last_inferred: list[str] = []  # tasks picked in the last task-free forward (evidence)

    def task_for_label(self, label: int) -> str | None:
        """The stored task a label selects, or None (no single experience owns it: infer it)."""
        names = self.tasks_by_label.get(int(label), [])
        return names[0] if len(names) == 1 and not self.task_free else None

    def forward(self, x: torch.Tensor, task_labels: Any = None) -> torch.Tensor:
        if self.objective is not None and self.training:
            return self.objective.logits(x)
        if task_labels is None or self.task_free:
            return self._forward_task_free(x)
        if isinstance(task_labels, int):
            return self.forward_single_task(x, task_labels)
        out = None
        for label in torch.unique(task_labels).tolist():
            rows = task_labels == label
            logits = self.forward_single_task(x[rows], int(label))
            if out is None:
                out = logits.new_zeros(x.shape[0], logits.shape[1])
            out[rows] = logits
        return out

    def forward_single_task(self, x: torch.Tensor, task_label: int) -> torch.Tensor:
        if self.objective is not None and task_label in self.training_labels:  # eval while it trains
            return self.objective.logits(x)
        name = self.task_for_label(task_label)
        if name is None:
            return self._forward_task_free(x)
        return self.learner.predict(name, x)

    def _forward_task_free(self, x: torch.Tensor) -> torch.Tensor:
        if self.learner.num_tasks == 0:
            raise RuntimeError("no task is stored yet: train on an experience before evaluating")
        with torch.enable_grad():  # GN (the fallback) needs gradients; Avalanche evaluates under no_grad
            name = self.learner.infer_task(x, method=self.gn_method)
        self.last_inferred.append(name)
        return self.learner.predict(name, x)


class ImpressLearnStrategy(SupervisedTemplate):
    """ImpressLearn in Avalanche's training loop (see the module docstring).

    ``learner``: an :class:`~impresslearn.ImpressLearner` (its model's head must have as many
    outputs as the benchmark's largest class label + 1). ``basis_experiences``: how many
    training experiences learn basis masks; later ones learn alpha. ``random_masks`` (seeded
    by ``random_seed``) are added to the bank before the first alpha experience. ``hybrid``:
    alpha experiences also train a last-layer mask (paper A.5). ``task_free``: evaluate without
    task labels. Everything else (``evaluator``, ``plugins``, ``eval_every``, ``eval_mb_size``)
    is ``SupervisedTemplate``'s.
    """

    def __init__(
        self,
        *,
        learner,
        basis_experiences: int,
        mask_train: TrainConfig = TrainConfig(),
        alpha_train: TrainConfig = TrainConfig(),
        random_masks: int = 0,
        random_seed: int = 0,
        hybrid: bool = False,
        task_free: bool = False,
        gn_method: str = DEFAULT_METHOD,
        eval_mb_size: Optional[int] = None,
        plugins: Optional[Sequence[Any]] = None,
        evaluator: Union[Any, Callable[[], Any]] = default_evaluator,
        eval_every: int = -1,
        **template_kwargs,
    ):
        basis_experiences = check_integer(basis_experiences, "basis_experiences", minimum=0)
        random_masks = check_integer(random_masks, "random_masks", minimum=0)
        for key, value in (("mask_train", mask_train), ("alpha_train", alpha_train)):
            if not isinstance(value, TrainConfig):
                raise TypeError(f"{key} must be an impresslearn TrainConfig, got {type(value).__name__}")
        if basis_experiences == 0 and random_masks == 0 and learner.num_masks == 0:
            raise ValueError("the bank would stay empty: set basis_experiences or random_masks (or add masks "
                             "to the learner first)")
        self.learner = learner
        self.basis_experiences = basis_experiences
        self.mask_train = mask_train
        self.alpha_train = alpha_train
        self.random_masks = random_masks
        self.random_seed = random_seed
        self.hybrid = bool(hybrid)
        self.trained_experiences = 0  # experiences committed so far (basis first, then alpha)
        self.random_masks_added = False
        self.task_records: list = []  # what each committed experience stored
        self._experience_sketch: TaskFingerprint | None = None  # the training experience's, measured before training
        module = ImpressLearnModule(learner, task_free=task_free, gn_method=gn_method)
        super().__init__(
            model=module, optimizer=_idle_optimizer(), criterion=F.cross_entropy,
            train_mb_size=mask_train.batch_size, train_epochs=mask_train.epochs,
            eval_mb_size=eval_mb_size or max(mask_train.batch_size, alpha_train.batch_size),
            device=learner.device, plugins=plugins, evaluator=evaluator, eval_every=eval_every, **template_kwargs)

    # -- which phase ------------------------------------------------------------------------
    @property
    def module(self) -> ImpressLearnModule:
        return self.model

    def _phase(self) -> tuple[str, TrainConfig]:
        if self.trained_experiences < self.basis_experiences:
            return "basis", self.mask_train
        return "alpha", self.alpha_train

    def task_name(self, experience) -> str:
        return f"experience {experience.current_experience}"

    # -- Avalanche hooks ------------------------------------------------------------------------
    def _before_training_exp(self, **kwargs):
        phase, cfg = self._phase()
        self.train_epochs, self.train_mb_size = cfg.epochs, cfg.batch_size
        self.learner.tasks.check_new_name(self.task_name(self.experience))  # before any training
        classes = list(getattr(self.experience, "classes_in_this_experience", None) or [])
        outputs = self.learner.layers[-1].weight.shape[0]
        if classes and max(classes) >= outputs:
            raise ValueError(
                f"{self.task_name(self.experience)} has class labels up to {max(classes)} but the model has "
                f"{outputs} outputs: build it with num_classes >= {max(classes) + 1}, or number each "
                "experience's classes from 0 (task-incremental benchmarks)")
        # the fingerprint's input part before anything changes: a refusal costs no training
        self._experience_sketch = self._measure_input_sketch(cfg)
        seed = cfg.seed + self.trained_experiences
        if phase == "basis":
            objective = EdgePopupObjective(self.learner, seed=seed)
        else:
            if self.random_masks and not self.random_masks_added:
                self.learner.add_random_masks(self.random_masks, seed=self.random_seed)
                self.random_masks_added = True
            objective = AlphaObjective(self.learner, lam=cfg.lam, hybrid=self.hybrid, seed=seed)
        self.module.objective = objective.to(self.device)
        self.module.training_labels = {int(t) for t in getattr(self.experience, "task_labels", [0])}
        super()._before_training_exp(**kwargs)

    def make_optimizer(self, **kwargs):
        """A fresh optimiser from the phase's TrainConfig over the open objective's parameters."""
        if self.module.objective is None:
            return  # evaluation: nothing trains
        _, cfg = self._phase()
        self.optimizer = cfg.make_optimizer(self.module.objective.parameters())
        self.optimized_param_id = {}  # Avalanche's bookkeeping: an optimiser exists

    def criterion(self):
        loss = self._criterion(self.mb_output.float(), self.mb_y)
        objective = self.module.objective
        if self.is_training and objective is not None:
            penalty = objective.penalty()
            if penalty is not None:
                loss = loss + penalty
        return loss

    def _after_training_exp(self, **kwargs):
        objective = self.module.objective
        if objective is not None:
            _, cfg = self._phase()
            name = self.task_name(self.experience)
            labels = self.module.training_labels
            sketch, self._experience_sketch = self._experience_sketch, None
            fingerprint = None
            if sketch is not None:
                try:
                    entropy = objective.output_entropy(self._fingerprint_inputs(cfg))
                except Exception as exc:
                    self._let_go_of_objective()  # the error keeps it, open (train's handler would discard it)
                    history = TrainingHistory(loss=(), val_accuracy=None, steps=self.clock.train_exp_iterations)
                    raise TrainedExperienceNotStoredError(name, objective, history, sketch, exc, config=cfg,
                                                          task_labels=labels) from exc  # fmt: skip
                fingerprint = replace(sketch, entropy=entropy)
            # any error here (diverged alpha, say): train's handler discards the objective
            self._store_experience(objective, name, cfg, labels, fingerprint)
            self._let_go_of_objective()
        super()._after_training_exp(**kwargs)

    def _let_go_of_objective(self) -> None:
        self.module.objective = None
        self.module.training_labels = set()
        self.optimizer = _idle_optimizer()  # drop the objective's optimiser state

    def store_trained(self, error: TrainedExperienceNotStoredError, *, fingerprint: bool = True):
        """Store the task a :class:`TrainedExperienceNotStoredError` holds, as the experience would
        have been: with its input fingerprint (entropy NaN: fingerprint inference works, only the
        ``calibrated`` method needs the baseline) or, ``fingerprint=False``, without one. Returns
        its ``TaskRecord``."""
        if not isinstance(error, TrainedExperienceNotStoredError):
            raise TypeError(f"store_trained takes a TrainedExperienceNotStoredError, got {type(error).__name__}")
        if error.objective.learner is not self.learner:
            raise ValueError(f"{error.name} was trained on another learner than this strategy's")
        return self._store_experience(error.objective, error.name, error.config, error.task_labels,
                                      error.fingerprint if fingerprint else None)  # fmt: skip

    def _store_experience(self, objective: TaskObjective, name: str, cfg: TrainConfig, labels: Iterable[int],
                          fingerprint: TaskFingerprint | None):  # fmt: skip
        record = objective.commit(name, config=cfg, fingerprint_inputs=fingerprint)
        self.task_records.append(record)
        for label in labels:
            self.module.tasks_by_label.setdefault(label, []).append(name)
        self.trained_experiences += 1
        return record

    def _fingerprint_inputs(self, cfg: TrainConfig):
        """The experience's training inputs, shuffled by a seeded generator (the fingerprint reads
        the first ``learner.fingerprint_examples``): the same order each call within an experience,
        so the sketch before training and the entropy after it read the same inputs."""
        generator = torch.Generator().manual_seed(cfg.seed + self.trained_experiences)
        return torch.utils.data.DataLoader(self.experience.dataset, batch_size=cfg.batch_size, shuffle=True,
                                           generator=generator)  # fmt: skip

    def _measure_input_sketch(self, cfg: TrainConfig) -> TaskFingerprint | None:
        """The sketch of the experience's inputs, checked against the stored fingerprints (raises what
        ``learner.measure_fingerprint`` raises), or None when the learner keeps no fingerprints: the
        learner's own pass before ``learn_*``'s training, which puts back the global RNGs (torch's
        CPU one, numpy's, Python's) a data set's transforms may draw from."""
        return self.learner.input_sketch(self._fingerprint_inputs(cfg))

    # -- Avalanche checkpointing (save_checkpoint pickles the strategy with dill) ----------------
    def __getstate__(self):
        # Between experiences the optimiser holds nothing: each experience builds its own from its
        # TrainConfig. It is left out because dill cannot pickle torch 2.14's optimisers (their
        # defaults hold a typing_extensions sentinel), which would break Avalanche's checkpoints.
        state = self.__dict__.copy()
        state["optimizer"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self.optimizer is None:
            self.optimizer = _idle_optimizer()

    def train(self, experiences, eval_streams=None, **kwargs):
        try:
            return super().train(experiences, eval_streams, **kwargs)
        except BaseException:
            # An experience that stopped with an error stores nothing and gives its BN slot back
            # (a TrainedExperienceNotStoredError's objective is no longer the module's: the error keeps it).
            self._experience_sketch = None
            objective = self.module.objective
            if objective is not None:
                objective.discard()
                self.module.objective = None
                self.module.training_labels = set()
            raise


def _idle_optimizer() -> torch.optim.Optimizer:
    # Avalanche wants an optimiser between experiences too; each experience gets its own from its
    # TrainConfig (make_optimizer), over exactly that experience's objective.
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)


__all__ = ["ImpressLearnModule", "ImpressLearnStrategy", "TrainedExperienceNotStoredError"]
