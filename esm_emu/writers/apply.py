"""Write a `WritePlan`: each output under a temporary name then renamed, never over an input.

The inputs are not opened again: a netCDF output is a byte copy of its input with the plan's
checked values written in (`copy_and_modify`), a user_nl_clm its input with settings applied.
"""
from __future__ import annotations

from pathlib import Path

from ppe_ingest.base.atomic import atomic_path
from ppe_ingest.base.netcdf import copy_and_modify, history_line
from ppe_ingest.base.progress import progress
from ppe_ingest.ctsmio.user_nl import set_user_nl

from .plan import CLUSTER_KEY, WritePlan


def apply_plan(plan: WritePlan) -> dict[str, list[Path]]:
    """Write every output of `plan`; ``{"fsurdat": [...], "paramfile": [...], "user_nl": [...]}`` written."""
    written: dict[str, list[Path]] = {"fsurdat": [], "paramfile": [], "user_nl": []}
    for out in progress(plan.outputs, desc="CTSM files", unit="file", enabled=len(plan.outputs) >= 20):
        if out.kind == "user_nl":
            set_user_nl(out.src, out.dst, out.changes, history_comment=out.history)
        else:
            copy_and_modify(out.src, out.dst, out.changes, history_line(out.history), inputs=plan.inputs)
        written[out.kind].append(out.dst)
    if plan.cluster_key is not None:
        with atomic_path(plan.out_dir / CLUSTER_KEY, inputs=plan.inputs) as tmp:
            plan.cluster_key.to_csv(tmp, index=False)
    return written
