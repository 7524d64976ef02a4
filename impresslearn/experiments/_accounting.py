"""Paper Table 2, computed from real model objects: weights, layers, mask size, |alpha|, Phi, Cx.

The paper's definitions (section 4.3, Table 2 caption):

- ``O`` = number of weights of the masked layers (biases are zero and not counted);
- ``d`` = number of masked weight layers (every Linear and Conv2d);
- mask size = "the space on disk required to store each additional SupSup mask as 16-bit
  integers"; every row of the paper's column equals ``2 * O`` bits (O / 4096 kB, e.g. LeNet
  266,200 weights -> 64.99 kB), i.e. one 16-bit index per kept weight at density 1/8. We use
  the same rule to compare with the paper, and also give our stored size (1 bit per weight in
  a bank plane, docs/design.md, Formats) and the index size at the run's density;
- ``|alpha^t| = |M| * d`` float32 coefficients per new task;
- ``Phi = |alpha^t| * 4 B + |M| * mask / max_tasks`` (basis masks amortised over every task the
  data set can produce; an unbounded task count leaves only the alpha term);
- ``Cx = mask / Phi``, the saving over SupSup's one mask per task.

Per-task BatchNorm statistics (conv nets: a mean and a variance per channel per BN layer) are
per-task storage the paper does not count; they are reported beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from .. import accounting
from ..config import ConfigError, check_integer, check_positive_int, require
from ._config import check_folder_name

KIB = 1024.0
# 16-bit indices at density 1/8, as the paper's column works out (defined in impresslearn.accounting)
PAPER_MASK_BITS_PER_WEIGHT = accounting.PAPER_TABLE2_MASK_BITS_PER_WEIGHT
_TORCHVISION_PREFIX = "torchvision."


@dataclass(frozen=True)
class AccountingRow:
    dataset: str
    model: str                       # a registered model, or "torchvision.<name>" (converted)
    basis_size: int                  # |M|: the paper's choice, an input
    max_tasks: int | None = None     # None: unbounded (Permuted MNIST has 784! tasks)
    max_tasks_label: str = ""
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    density: float = 0.1
    note: str = ""

    def __post_init__(self) -> None:
        key = f"rows[{self.dataset}/{self.model}]"
        check_positive_int(self.basis_size, f"{key}.basis_size")
        check_positive_int(self.max_tasks, f"{key}.max_tasks", allow_none=True)
        require(0 < self.density <= 1, f"{key}.density", f"must lie in (0, 1], got {self.density!r}")


@dataclass(frozen=True)
class AccountingConfig:
    name: str
    rows: tuple
    description: str = ""
    seed: int = 0

    def __post_init__(self) -> None:
        check_folder_name(self.name, "name")
        require(len(self.rows) > 0, "rows", "must not be empty")
        object.__setattr__(self, "seed", check_integer(self.seed, "seed", minimum=0))


def accounting_config_from_dict(data: Mapping[str, Any]) -> AccountingConfig:
    known = {"name", "kind", "rows", "description", "seed", "quick"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"config: unknown key(s) {unknown} for an accounting config; known: {sorted(known)}")
    rows = []
    for i, r in enumerate(data.get("rows") or []):
        if not isinstance(r, Mapping):
            raise ConfigError(f"rows[{i}]: must be a mapping")
        fields = set(AccountingRow.__dataclass_fields__)
        bad = sorted(set(r) - fields)
        if bad:
            raise ConfigError(f"rows[{i}]: unknown key(s) {bad}; known: {sorted(fields)}")
        try:
            rows.append(AccountingRow(**r))
        except TypeError as exc:
            raise ConfigError(f"rows[{i}]: {exc}") from None
    return AccountingConfig(name=data.get("name", "accounting"), rows=tuple(rows),
                            description=data.get("description", ""), seed=data.get("seed", 0))


def build_model(model: str, kwargs: Mapping[str, Any], seed: int = 0):
    """A registered model, or a torchvision model converted to Impress layers."""
    from ..models import convert, create_model

    if model.startswith(_TORCHVISION_PREFIX):
        import torchvision

        name = model[len(_TORCHVISION_PREFIX):]
        factory = getattr(torchvision.models, name, None)
        if factory is None:
            raise ConfigError(f"model {model!r}: torchvision.models has no {name!r}")
        return convert(factory(**dict(kwargs)), seed=seed, init="signed_constant")
    return create_model(model, seed=seed, **dict(kwargs))


def count_model(model) -> dict:
    """Weights per masked layer and channels per multitask BN of a real model (what accounting reads)."""
    layer_sizes, bn_features = accounting.model_sizes(model)
    return {"layer_sizes": layer_sizes, "bn_features": bn_features}


def compute_row(row: AccountingRow, counts: Mapping[str, Any]) -> dict:
    sizes, features = counts["layer_sizes"], counts["bn_features"]
    o, d = sum(sizes), len(sizes)
    mask_kb = o * PAPER_MASK_BITS_PER_WEIGHT / 8 / KIB
    alpha = row.basis_size * d
    alpha_kb = accounting.coefficient_bytes(row.basis_size, d) / KIB
    amortised_kb = 0.0 if row.max_tasks is None else row.basis_size * mask_kb / row.max_tasks
    phi_kb = alpha_kb + amortised_kb
    bn_kb = accounting.bn_bytes_per_task(features) / KIB
    bank_plane_kb = accounting.mask_bytes(sizes) / KIB  # one mask as stored: a byte plane per layer
    k = sum_keep = round(row.density * o)
    index_bits = max(1, math.ceil(math.log2(max(o, 2))))
    return {
        "dataset": row.dataset,
        "max_tasks": row.max_tasks_label or ("unbounded" if row.max_tasks is None else str(row.max_tasks)),
        "model": row.model,
        "weights": o,
        "mask_kB": mask_kb,
        "basis_size": row.basis_size,
        "layers": d,
        "alpha_per_task": alpha,
        "phi_kB": phi_kb,
        "compression": mask_kb / phi_kb,
        "bn_stats_kB_per_task": bn_kb,
        "phi_with_bn_kB": phi_kb + bn_kb,
        "compression_with_bn": mask_kb / (phi_kb + bn_kb),
        "bank_plane_kB": bank_plane_kb,
        "density": row.density,
        "kept_weights": k,
        "index_mask_kB_at_density": sum_keep * index_bits / 8 / KIB,
        "note": row.note,
    }


def run_accounting(config: AccountingConfig, progress: bool = True) -> list[dict]:
    from tqdm.auto import tqdm

    cache: dict = {}
    out = []
    for row in tqdm(config.rows, desc=config.name, unit="model", disable=not progress):
        key = (row.model, tuple(sorted(dict(row.kwargs).items())))
        if key not in cache:
            model = build_model(row.model, row.kwargs, config.seed)
            cache[key] = count_model(model)
            del model
        out.append(compute_row(row, cache[key]))
    return out
