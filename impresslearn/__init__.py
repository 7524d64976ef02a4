"""impresslearn: continual learning with combined task impressions (ImpressLearn).

A frozen random backbone, binary supermasks learned per task with edge-popup
(SupSup), a byte-packed bank of a few basis masks, and every new task learned
as a small matrix of per-layer coefficients that mix them.
"""

from . import ops
from ._backends import BackendUnavailable
from .learner import ImpressLearner, TaskRecord, TrainConfig

__version__ = "0.1.0"

__all__ = ["BackendUnavailable", "ImpressLearner", "TaskRecord", "TrainConfig", "ops", "__version__"]
