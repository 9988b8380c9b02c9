"""`write_ctsm_files`: the checked plan of what goes where, then its writing."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from .plan import TOL_DEG, plan_ctsm_files


def write_ctsm_files(out_dir, fsurdat=None, paramfile=None, user_nl=None, values=None, table=None,
                     settings: Mapping | None = None, per_gridcell_paramfiles: bool = False,
                     per_cluster_paramfiles: bool = False, tol_deg: float = TOL_DEG,
                     allow_outside_table: bool = False, log=print) -> dict[str, list[Path]]:
    """Write new CTSM files in `out_dir` from `settings` (name -> value) and/or a parameter map.

    `values` is a Dataset (or a path to one) ``theta(gridcell|site, param)``; `table` a
    ParamTable or a path (default: configs/params_hydrology.csv). Returns
    ``{"fsurdat": [...], "paramfile": [...], "user_nl": [...]}`` of the paths written.
    Paramfile parameters that vary across the map go, per option, into one paramfile per
    gridcell/site, one per cluster (the map's ``cluster``/``theta_cluster`` from k-means, as
    CTSM is calibrated over basins), or else their median into one paramfile. Every value is
    checked before the first file is written (table bounds unless `allow_outside_table`, which
    records itself in each file's history; physical validity always); `log` gets the plan's notes.
    """
    from .apply import apply_plan

    plan = plan_ctsm_files(out_dir, fsurdat=fsurdat, paramfile=paramfile, user_nl=user_nl, values=values,
                           table=table, settings=settings, per_gridcell_paramfiles=per_gridcell_paramfiles,
                           per_cluster_paramfiles=per_cluster_paramfiles, tol_deg=tol_deg,
                           allow_outside_table=allow_outside_table)
    for note in plan.notes:
        log(note)
    return apply_plan(plan)
