"""The model zoo: core networks behind a small registry, chosen by `emulator.model.name` in YAML.

A sequence core maps normalised inputs to normalised responses:
``core(x (B,T,F), c (B,C), state) -> (y (B,T,R), state)`` where `c` is the conditioning vector
(normalised static fields then parameters) and `state` a pair of tensors (None to start fresh).
A tabular core maps normalised parameters to normalised summary outputs: ``core(theta (B,P)) -> (B,R)``.
"""
from __future__ import annotations

# importing the zoo modules registers their models
from . import ensemble, gp, lstm, tabular, transformer  # noqa: F401
from .registry import available_models, build_model, is_tabular, register_model

__all__ = ["available_models", "build_model", "is_tabular", "register_model"]
