"""CTSM files from parameter values: `write_ctsm_files` is a checked plan (`plan`) then its writing
(`apply`); `esm-emu write-ctsm` is in `cli`. Light to import: the command line loads it at start."""
from __future__ import annotations

from .plan import Assignment, Output, WritePlan, plan_ctsm_files
from .write import write_ctsm_files

__all__ = ["Assignment", "Output", "WritePlan", "plan_ctsm_files", "write_ctsm_files"]
