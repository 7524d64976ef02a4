"""Model registry and factory (timm style: ``@register_model`` + ``create_model``).

Every registered builder takes ``num_classes``, ``seed`` and ``init`` keywords (plus its own)
and returns a model whose Linear and Conv2d layers are all Impress layers with a backbone
regenerated from ``seed``. ``create_model`` records the name and keyword arguments on the
model as ``model.impress_spec``, which a checkpoint stores to rebuild the same backbone.
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a builder under its function name."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models() -> list[str]:
    """The names :func:`create_model` accepts, sorted."""
    return sorted(_MODELS)


def model_builder(name: str) -> Callable[..., nn.Module]:
    """The builder registered as ``name``; its signature lists the keyword arguments
    :func:`create_model` accepts for it (e.g. to size a model's input to a data set)."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    return _MODELS[name]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name`` (see :func:`list_models`) with its keyword arguments."""
    model = model_builder(name)(**kwargs)
    model.impress_spec = {"kind": "registry", "name": name, "kwargs": dict(kwargs)}
    return model
