"""DATA_ASSIMILATION: after each model segment, update the parameters from what CTSM just did.

For the segment just run, the hook reads the case's CTSM history (`<case>.clm2.<tape>.*.nc` in
RUNDIR, 1-D `gridcell` or lat/lon output) newer than the last recorded cycle, pairs the
configured response with the observations at the nearest gridcells (daily means), and takes a
few gradient steps on the parameters through a frozen forward model of `esm_emu.forward` (the
emulator, or the built-in simulator), anchored on CTSM's own output
(`esm_emu.inverse.anchored`: y_CTSM + F(theta) - F(theta_now)). It then writes the
next segment's paramfile and `user_nl_clm`, regenerates the land namelist (CIME only redoes the
coupler's between cycles), and appends the cycle to the state file. A cycle whose history was
already assimilated is not redone; a restarted or resubmitted case continues with the next one.
"""
from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from esm_emu.forward import load_forward
from esm_emu.inverse.anchored import anchored_update, forward_inputs
from esm_emu.metrics import pooled_nse
from ppe_ingest.base.errors import UserError
from ppe_ingest.ctsmio.history import history_files, read_history
from ppe_ingest.ctsmio.surfdata import static_field_names
from ppe_ingest.ctsmio.user_nl import read_user_nl, set_user_nl
from ppe_ingest.obs.io import paired_with_gridcells, read_observations

from .case import open_case, regenerate_lnd_namelist
from .config import load_case_config
from .params import fixed_parameters, initial_parameters, write_parameter_set
from .prerun import check_single_instance
from .state import latest, read_state, write_state


def run_da(caseroot, cycle: int) -> dict | None:
    """Assimilate the segment CIME just ran as DA cycle `cycle`; return the record (None if already done)."""
    case = open_case(caseroot)
    check_single_instance(case)
    root = case.caseroot
    cfg = load_case_config(root)
    if cfg["da"] is None:
        raise UserError(f"{root}/esm-emu/config.yaml: da: not configured, but DATA_ASSIMILATION_SCRIPT "
                        "calls the esm-emu DA hook; add a da section and re-install")
    state = read_state(root)
    last = latest(state)
    after = last["last_day"] if last else None
    var = cfg["observations"]["variable"]
    user_nl_path = root / "user_nl_clm"
    user_nl = read_user_nl(user_nl_path) if user_nl_path.exists() else {}

    files = history_files(case.require("RUNDIR"), case.require("CASE"), cfg["history_tape"])
    fsurdat = user_nl.get("fsurdat") or cfg["fsurdat"]
    probe = read_history(files, [var], after)  # cheap check before the forward model is loaded
    if probe["days"].size == 0:
        done = last["cycle"] if last else None
        print(f"esm-emu da: CIME cycle {cycle}: no history after {after} in RUNDIR; "
              f"cycle {done} already recorded, nothing to do")
        return None

    da, obs_cfg = cfg["da"], cfg["observations"]
    fwd = load_forward(da["forward"]["kind"], da["forward"]["checkpoint"], list(da["parameters"]),
                       response_names=(var,), static_fields=static_field_names(Path(fsurdat)) if fsurdat else ())
    hist = read_history(files, [var] + [n for n in fwd.forcing_names if n != var], after)
    theta_now = dict(last["parameters"]) if last else initial_parameters(cfg, user_nl)
    obs, usable = read_observations(obs_cfg["file"], var, obs_cfg["mask"])
    cell, y_obs, y_model = paired_with_gridcells(obs, usable, var, hist["days"], hist["data"][var],
                                                 hist["lat"], hist["lon"], obs_cfg["max_distance_deg"])
    if (cell < 0).all():
        raise UserError(f"{obs_cfg['file']}: no observation site lies within "
                        f"{obs_cfg['max_distance_deg']} deg of a gridcell in the history files")
    if obs_cfg["routing"] == "gamma":  # gauge streamflow: CTSM's runoff and the forward model's, routed alike
        fwd, y_model = _routed(fwd, y_model, var, obs_cfg)
    n_obs = int(np.isfinite(y_obs).sum())
    objective = 1.0 - pooled_nse(y_model, y_obs)
    n = len(state["cycles"])
    record = {"cycle": n, "cime_cycle": int(cycle), "first_day": str(hist["days"][0]),
              "last_day": str(hist["days"][-1]), "history_files": [f.name for f in files],
              "n_obs": n_obs, "objective": _num(objective), "parameters_before": theta_now}
    if n_obs < 2:
        theta_new, predicted = dict(theta_now), objective
        print(f"esm-emu da: cycle {n}: {n_obs} usable observations in {record['first_day']}..{record['last_day']}; "
              "parameters unchanged")
    else:
        use = cell >= 0
        forcing, static = forward_inputs(fwd, hist, cell[use], fsurdat)
        theta_new, predicted = anchored_update(
            fwd, forcing, static, y_model[use], y_obs[use], theta_now, da["parameters"], da["steps"], da["lr"],
            var, fixed=fixed_parameters(cfg, fwd.param_names), where="da.parameters")
    record["parameters"] = theta_new
    record["objective_predicted"] = _num(predicted)

    settings = write_parameter_set(root, cfg, theta_new, f"after_cycle_{n:03d}")
    set_user_nl(user_nl_path if user_nl_path.exists() else None, user_nl_path, settings,
                history_comment="set by esm-emu DATA_ASSIMILATION")
    record["user_nl"] = settings
    record["namelist_regenerated"] = regenerate_lnd_namelist(case)
    record["forward"] = {"kind": fwd.kind, "checkpoint_sha256": fwd.checkpoint_sha256}
    record["time"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    state["cycles"].append(record)
    write_state(root, state)

    changes = ", ".join(f"{k} {theta_now[k]:.4g} -> {v:.4g}" for k, v in theta_new.items())
    print(f"esm-emu da: cycle {n} (CIME cycle {cycle}), {record['first_day']}..{record['last_day']}, "
          f"{n_obs} obs: 1-NSE {objective:.4g} (predicted after update {predicted:.4g}); {changes}")
    if not record["namelist_regenerated"]:
        print("esm-emu da: CIME is not importable here; run ./preview_namelists before the next model run")
    return record


def _num(x: float):
    return None if x is None or not math.isfinite(x) else float(x)


def _routed(fwd, y_model: np.ndarray, var: str, obs_cfg):
    """The forward model with fixed gamma routing and CTSM's paired runoff (site, day) routed the same
    way (esm_emu.routing; the anchored update stays exact: routing is linear)."""
    import torch

    from esm_emu.routing import ROUTED_VARIABLES, FixedRouting, route

    if var not in ROUTED_VARIABLES:
        raise UserError(f"observations.routing: gamma routes {', '.join(ROUTED_VARIABLES)}, not {var}")
    ok = np.isfinite(y_model)
    q = torch.as_tensor(np.where(ok, y_model, 0.0), dtype=torch.float64)
    routed = route(q, torch.tensor(obs_cfg["uh_shape"]), torch.tensor(obs_cfg["uh_scale"])).numpy()
    return FixedRouting(fwd, obs_cfg["uh_shape"], obs_cfg["uh_scale"]), np.where(ok, routed, np.nan)
