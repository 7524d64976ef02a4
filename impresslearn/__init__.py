"""impresslearn: continual learning with combined task impressions (ImpressLearn).

A frozen random backbone, binary supermasks learned per task with edge-popup
(SupSup), a byte-packed bank of a few basis masks, and every new task learned
as a small matrix of per-layer coefficients that mix them.

The layers (``ImpressLinear``, ``ImpressConv2d``, ``MultitaskNonAffineBN``), ``convert``
and the model registry work without the learner; ``task_bound`` and the ``bind_*``
functions bind one task to a whole model for a user's own loop.
"""

from . import ops
from ._backends import BackendUnavailable
from .layers import (
    ImpressConv2d,
    ImpressLinear,
    ImpressMultiheadAttention,
    MultitaskNonAffineBN,
    add_bn_slot,
    bind_coefficients,
    bind_scores,
    drop_bn_slots_from,
    impress_layers,
    multitask_bns,
    one_hot_coefficients,
    set_bn_slot,
    task_bound,
    unbind,
)
from .learner import ImpressLearner, TaskRecord, TrainConfig
from .models import convert, create_model, list_models, register_model

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailable",
    "ImpressConv2d",
    "ImpressLearner",
    "ImpressLinear",
    "ImpressMultiheadAttention",
    "MultitaskNonAffineBN",
    "TaskRecord",
    "TrainConfig",
    "__version__",
    "add_bn_slot",
    "bind_coefficients",
    "bind_scores",
    "convert",
    "create_model",
    "drop_bn_slots_from",
    "impress_layers",
    "list_models",
    "multitask_bns",
    "one_hot_coefficients",
    "ops",
    "register_model",
    "set_bn_slot",
    "task_bound",
    "unbind",
]
