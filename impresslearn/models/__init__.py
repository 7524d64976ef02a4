"""Models whose every Linear and Conv2d is masked over a frozen random backbone.

``create_model(name, ...)`` builds a registered model; ``convert(model, seed=...)`` swaps the
layers of any model. ``list_models()`` names the registered ones, ``model_builder(name)`` gives
one's builder (its signature: the keyword arguments it takes).
"""

from . import lenet, resnet  # noqa: F401  (registers the built-in models)
from ._registry import create_model, list_models, model_builder, register_model
from .convert import convert, init_backbone_

__all__ = ["convert", "create_model", "init_backbone_", "list_models", "model_builder", "register_model"]
