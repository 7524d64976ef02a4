"""Saving and loading an ``ImpressLearner``: what goes into the checkpoint file and every check on load.

The file format itself (safetensors + JSON header, checksums, atomic writes) is
:mod:`impresslearn.checkpoint`; this module decides the tensors and metadata of a learner and
refuses, with a ``CheckpointError`` naming the problem, anything that does not describe a
learner this build can rebuild: an unknown format or version, a backbone spec that does not
build (unknown keyword arguments) or would not fit in memory (checked on the meta device,
before a byte is allocated), a backbone whose SHA-256 differs, shapes that disagree, task
records that point outside the banks or BN slots, non-finite coefficients.

Learner format 2 adds ``random_masks`` (the seed of every ``add_random_masks`` call); format 1
files load with that list empty. Format 3 (what ``save`` writes) stores the banks without their
random masks, which load redraws from those seeds and checks against ``bank_sha256``, and the
coefficients in the learner's ``coefficient_dtype`` (:mod:`impresslearn.banks`).

Any format may carry task fingerprints (``learner.fingerprints``): per fingerprinted task
``fingerprints.<j>.mean`` / ``.var`` (fp16 ``[m]``) and ``.entropy`` (fp32 ``[1]``, NaN when not
measured), ``fingerprint: true`` in its task entry and one ``fingerprint_sketch``
(input size, sketch_dim, seed) for all. Files without them load with no fingerprints.

A task entry's ``granularity`` (``"layer"``, ``"channel"`` or a block size of output channels,
:mod:`impresslearn.tasks`) says how its coefficient columns map to layers; entries without it
(files written before it existed) are per layer.
"""

from __future__ import annotations

import copy
import os

import torch
import torch.nn as nn

from . import banks
from ._integers import is_count, is_integer
from .inference import TaskFingerprint
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .layers import one_hot_coefficients
from .tasks import TASK_KINDS, TaskRecord, check_granularity

FORMAT = "impresslearn.learner"
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
# learner_tensors_and_metadata's own form: every bank in full, coefficients in fp32
FULL_BANK_VERSION = 2


def learner_tensors_and_metadata(learner) -> tuple[dict, dict]:
    tensors = {}
    for i, layer in enumerate(learner.layers):
        tensors[f"layers.{i}.bank"] = layer.bank.detach().cpu().contiguous()
        tensors[f"layers.{i}.extra_bank"] = layer.extra_bank.detach().cpu().contiguous()
    for j, rec in enumerate(learner.tasks.values()):
        tensors[f"tasks.{j}.coefficients"] = rec.coefficients.detach().cpu().contiguous()
    sketch = None
    for j, name in enumerate(learner.tasks):
        fp = learner.fingerprints.get(name)
        if fp is None:
            continue
        for part, t in fp.stored_tensors().items():
            tensors[f"fingerprints.{j}.{part}"] = t
        sketch = dict(input_size=fp.input_size, sketch_dim=fp.sketch_dim, seed=fp.seed)
    for b, bn in enumerate(learner.bns):
        tensors[f"bns.{b}.running_mean"] = bn.running_mean.detach().cpu().contiguous()
        tensors[f"bns.{b}.running_var"] = bn.running_var.detach().cpu().contiguous()
    spec = copy.deepcopy(learner.backbone_spec())  # the model's own spec must not alias the metadata
    spec["weights_sha256"] = learner.weights_sha256()
    metadata = dict(
        format=FORMAT,
        learner_version=FULL_BANK_VERSION,
        backbone=spec,
        density=learner.density,
        num_masks=learner.num_masks,
        num_extra=[layer.num_extra for layer in learner.layers],
        layer_shapes=[list(layer.weight.shape) for layer in learner.layers],
        bn_features=[bn.num_features for bn in learner.bns],
        mask_owners=list(learner.mask_owners),
        random_masks=[dict(r) for r in learner.random_mask_draws],
        fingerprint_sketch=sketch,
        tasks=[
            dict(name=rec.name, kind=rec.kind, num_masks=rec.num_masks, bn_slot=rec.bn_slot,
                 mask_index=rec.mask_index, extra_index=rec.extra_index,
                 config=dict(rec.config) if rec.config is not None else None,
                 fingerprint=rec.name in learner.fingerprints, granularity=rec.granularity)  # fmt: skip
            for rec in learner.tasks.values()
        ],
    )
    return tensors, metadata


def save_learner(learner, path) -> None:
    """Write banks, task coefficients, BN statistics and the task registry (atomic).

    The backbone weights are not stored: load regenerates them from the spec's seed, and the
    random masks from theirs.
    """
    tensors, metadata = banks.compact_checkpoint(learner, *learner_tensors_and_metadata(learner), FORMAT_VERSION)
    save_checkpoint(path, tensors, metadata)


def _available_memory_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _build_backbone(spec: dict, device: torch.device, need) -> nn.Module:
    """The registered model of ``spec``: built on the meta device first, so a spec asking for more
    weights than this machine holds (or with arguments the builder does not take) is refused
    before anything is allocated."""
    from .layers import impress_layers
    from .models import create_model, list_models

    name, kwargs = spec.get("name"), spec.get("kwargs")
    need(isinstance(name, str) and name in list_models(), f"backbone model {name!r} is not registered here")
    need(isinstance(kwargs, dict), f"backbone kwargs must be a mapping, got {type(kwargs).__name__}")
    try:
        with torch.device("meta"):
            shell = create_model(name, **kwargs)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"backbone {name!r} with kwargs {kwargs} does not build: {exc}") from None
    weights = sum(layer.weight.numel() for layer in impress_layers(shell))
    del shell
    available = _available_memory_bytes(device)
    need(
        available is None or 4 * weights <= available,
        f"backbone {name!r} with kwargs {kwargs} has {weights:,} weights ({4 * weights / 1e9:.1f} GB in fp32); "
        f"this machine has {(available or 0) / 1e9:.1f} GB: refused before allocating",
    )
    return create_model(name, **kwargs)


def load_learner(cls, path, device="cpu", backend: str | None = None, *, model: nn.Module | None = None,
                 progress: bool = False):  # fmt: skip
    """Rebuild a ``cls`` (an ImpressLearner) from ``save_learner``; see the module doc for the checks."""
    tensors, meta = load_checkpoint(path)

    def need(cond: bool, what: str) -> None:
        if not cond:
            raise CheckpointError(f"{path}: {what}")

    need(isinstance(meta, dict) and meta.get("format") == FORMAT,
         f"not an ImpressLearner checkpoint (format {meta.get('format') if isinstance(meta, dict) else meta!r})")  # fmt: skip
    version = meta.get("learner_version")
    need(version in READABLE_VERSIONS,
         f"learner format version {version!r} is not supported (this build reads {READABLE_VERSIONS})")  # fmt: skip
    try:
        return _install(cls, path, tensors, meta, device, backend, model, progress, need)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        what = f"missing entry {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
        raise CheckpointError(f"{path}: {what}") from None


def _install(cls, path, tensors, meta, device, backend, model, progress, need):
    spec = dict(meta["backbone"])
    want_hash = spec.pop("weights_sha256")
    device = torch.device(device)
    if model is None:
        need(spec.get("kind") == "registry",
             "the backbone was built with convert(); pass model= built the same way (same architecture, seed, init)")  # fmt: skip
        model = _build_backbone(spec, device, need)
    density = meta["density"]
    need(isinstance(density, float) and 0 < density <= 1, f"density {density!r} is not in (0, 1]")
    learner = cls(model, density=density, device=device, backend=backend, progress=progress)
    got_hash = learner.weights_sha256()
    need(
        got_hash == want_hash,
        f"backbone mismatch: the regenerated weights hash to {got_hash[:16]}... but the checkpoint was "
        f"trained on {want_hash[:16]}... (different architecture, seed, init or torch RNG)",
    )
    shapes = [list(layer.weight.shape) for layer in learner.layers]
    need(shapes == meta["layer_shapes"], f"layer shapes {shapes} differ from the checkpoint's {meta['layer_shapes']}")
    need([bn.num_features for bn in learner.bns] == meta["bn_features"],
         "the model's BatchNorm layers differ from the checkpoint's")  # fmt: skip
    num_masks, num_extra, tasks = meta["num_masks"], meta["num_extra"], meta["tasks"]
    need(is_count(num_masks), f"num_masks {num_masks!r} is not a count")
    need(isinstance(num_extra, list) and len(num_extra) == learner.num_layers and all(is_count(h) for h in num_extra),
         f"num_extra {num_extra!r} is not one count per layer")  # fmt: skip
    need(isinstance(tasks, list), "tasks is not a list")
    if meta["learner_version"] >= 3:  # random masks stored as their seeds: redrawn, the bank hash checked
        banks.install_stored_banks(learner, tensors, meta, need)
        learner.coefficient_dtype = banks.check_coefficient_dtype(meta["coefficient_dtype"])
    else:
        for i, layer in enumerate(learner.layers):
            layer.load_banks_(tensors[f"layers.{i}.bank"], num_masks, tensors[f"layers.{i}.extra_bank"], num_extra[i])
    for b, bn in enumerate(learner.bns):
        bn.load_slots_(tensors[f"bns.{b}.running_mean"], tensors[f"bns.{b}.running_var"])
        need(bn.num_slots == len(tasks), f"BN {b} has {bn.num_slots} slots for {len(tasks)} tasks")
    owners = meta["mask_owners"]
    need(isinstance(owners, list) and len(owners) == num_masks and all(o is None or isinstance(o, str) for o in owners),
         "mask owner list does not match the bank")  # fmt: skip
    learner.mask_owners = list(owners)
    draws = meta.get("random_masks", [])
    need(isinstance(draws, list) and all(isinstance(r, dict) and set(r) == {"first", "count", "seed"}
                                         and all(is_integer(v) for v in r.values()) for r in draws),
         "random_masks is not a list of {first, count, seed}")  # fmt: skip
    learner.random_mask_draws = [dict(r) for r in draws]
    last_extra = num_extra[-1]
    for j, t in enumerate(tasks):
        name = t["name"]
        a = tensors[f"tasks.{j}.coefficients"]
        k = t["num_masks"]
        need(t["kind"] in TASK_KINDS, f"task {name!r}: kind {t['kind']!r} is not one of {TASK_KINDS}")
        granularity = t.get("granularity", "layer")  # absent before finer coefficients existed
        try:
            granularity = check_granularity(granularity)
        except ValueError as exc:
            raise CheckpointError(f"{path}: task {name!r}: {exc}") from None
        width = learner.coefficient_width(granularity)
        need(is_integer(k) and 1 <= k <= num_masks and tuple(a.shape) == (k, width),
             f"task {name!r}: coefficient shape {tuple(a.shape)} does not fit a bank of {num_masks} masks "
             f"and {width} columns (granularity {granularity!r})")  # fmt: skip
        need(a.is_floating_point() and bool(torch.isfinite(a).all()), f"task {name!r}: coefficients are not finite floats")
        need(t["bn_slot"] == j and is_integer(t["bn_slot"]),
             f"task {name!r}: BN slot {t['bn_slot']!r}, but task {j} owns slot {j}")  # fmt: skip
        mask_index, extra_index = t["mask_index"], t["extra_index"]
        if t["kind"] == "basis":
            need(is_integer(mask_index) and 0 <= mask_index < num_masks and torch.equal(
                 a.float(), one_hot_coefficients(learner.model, mask_index).cpu()),
                 f"task {name!r}: mask_index {mask_index!r} does not match its one-hot coefficients")  # fmt: skip
        if t["kind"] == "hybrid":
            need(is_integer(extra_index) and 0 <= extra_index < last_extra,
                 f"task {name!r}: extra_index {extra_index!r} is out of range: the last layer holds {last_extra} extra masks")  # fmt: skip
        rec = TaskRecord(name, t["kind"], a.to(learner.device, torch.float32), t["bn_slot"],
                         mask_index=mask_index, extra_index=extra_index, config=t["config"],
                         granularity=granularity)  # fmt: skip
        learner.tasks.add(rec)
    _install_fingerprints(learner, tensors, meta, need)
    return learner


def _install_fingerprints(learner, tensors, meta, need) -> None:
    """Every task entry marked ``fingerprint``: its fp16 mean and variance of the one stored
    sketch's shape, finite, variances > 0, and an entropy that is NaN (not measured) or >= 0."""
    sketch = meta.get("fingerprint_sketch")
    flags = [t.get("fingerprint", False) for t in meta["tasks"]]  # absent before fingerprints existed
    need(all(isinstance(f, bool) for f in flags), f"task fingerprint flags {flags[:5]} are not true/false")
    marked = [j for j, flag in enumerate(flags) if flag]
    if not marked:
        return
    need(isinstance(sketch, dict) and set(sketch) == {"input_size", "sketch_dim", "seed"}
         and is_count(sketch["input_size"], 1) and is_integer(sketch["seed"])
         and (sketch["sketch_dim"] is None or is_count(sketch["sketch_dim"], 1)),
         f"fingerprint_sketch {sketch!r} is not {{input_size, sketch_dim, seed}}")  # fmt: skip
    m = sketch["input_size"] if sketch["sketch_dim"] is None else sketch["sketch_dim"]
    for j in marked:
        name = meta["tasks"][j]["name"]
        mean, var, entropy = (tensors[f"fingerprints.{j}.{part}"] for part in ("mean", "var", "entropy"))
        need(mean.dtype == var.dtype == torch.float16 and tuple(mean.shape) == tuple(var.shape) == (m,),
             f"task {name!r}: fingerprint mean {tuple(mean.shape)} {mean.dtype} / var {tuple(var.shape)} "
             f"{var.dtype} are not fp16 [{m}]")  # fmt: skip
        need(bool(torch.isfinite(mean).all() and torch.isfinite(var).all() and (var > 0).all()),
             f"task {name!r}: fingerprint mean or variance is not finite, or a variance is <= 0")  # fmt: skip
        need(entropy.dtype == torch.float32 and tuple(entropy.shape) == (1,)
             and (bool(torch.isnan(entropy).all()) or bool(torch.isfinite(entropy).all() and (entropy >= 0).all())),
             f"task {name!r}: fingerprint entropy {entropy.tolist()} is not one fp32 value, NaN or >= 0")  # fmt: skip
        learner.fingerprints[name] = TaskFingerprint(
            mean=mean.clone(), var=var.clone(), input_size=sketch["input_size"], sketch_dim=sketch["sketch_dim"],
            seed=sketch["seed"], entropy=float(entropy[0]),
        )  # fmt: skip


__all__ = ["FORMAT", "FORMAT_VERSION", "READABLE_VERSIONS", "load_learner", "save_learner"]
