"""The model registry: `emulator.model.name` in YAML -> the core network class that builds it."""
from __future__ import annotations

from typing import Callable, Mapping

from torch import nn

from ppe_ingest.base.errors import UserError

_REGISTRY: dict[str, type] = {}


def register_model(name: str) -> Callable[[type], type]:
    """Class decorator: make a model available to configs as `emulator.model.name: <name>`."""

    def deco(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = cls
        cls.model_name = name
        return cls

    return deco


def available_models() -> list[str]:
    """Names usable as `emulator.model.name`."""
    return sorted(_REGISTRY)


def build_model(cfg: Mapping, dims: Mapping[str, int]) -> nn.Module:
    """Instantiate the model named by cfg['name'] with `dims` (n_forcing, n_cond, n_param, n_response)."""
    name = cfg.get("name")
    if name not in _REGISTRY:
        raise UserError(f"emulator.model.name: {name!r} is not one of {', '.join(available_models())}")
    return _REGISTRY[name].from_config(cfg, dims)


def is_tabular(cfg: Mapping) -> bool:
    """True for models that map parameters to summary outputs (no time axis)."""
    return bool(getattr(_REGISTRY.get(cfg.get("name")), "tabular", False))
