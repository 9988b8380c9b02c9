"""DATA_ASSIMILATION: after each model segment, update the parameters from what CTSM just did.

For the segment just run, the hook reads the case's CTSM history (`<case>.clm2.<tape>.*.nc` in
RUNDIR, 1-D `gridcell` or lat/lon output) newer than the last recorded cycle, pairs the
configured response with the observations at the nearest gridcells (daily means), and takes a
few gradient steps on the parameters through the frozen forward model of `esm_emu.inverse`
(the emulator, or the built-in simulator). The prediction is anchored on CTSM's own output,

    y(theta) = y_CTSM + F(x, s, theta) - F(x, s, theta_now),

so the forward model supplies only the sensitivity to theta, not the level. It then writes the
next segment's paramfile and `user_nl_clm`, regenerates the land namelist (CIME only redoes the
coupler's between cycles), and appends the cycle to the state file. A cycle whose history was
already assimilated is not redone; a restarted or resubmitted case continues with the next one.
"""
from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ppe_ingest.base.errors import UserError

from .case import open_case, regenerate_lnd_namelist
from .config import load_case_config
from .prerun import check_single_instance
from .state import latest, read_state, write_state


# ---------------------------------------------------------------- history

def history_files(case, tape: str) -> list[Path]:
    """The case's CTSM history files of one tape in RUNDIR, in time order (names sort by date)."""
    rundir = Path(case.require("RUNDIR"))
    name = case.require("CASE")
    pattern = f"{name}.clm2.{tape}.*.nc"
    files = sorted(rundir.glob(pattern))
    if not files:
        raise UserError(f"{rundir}: no CTSM history files {pattern} (is {tape} written? "
                        "set hist_fincl/hist_nhtfrq in user_nl_clm)")
    return files


def _day_labels(ds) -> np.ndarray:
    """'YYYY-MM-DD' of each time step: the start of its averaging interval when CTSM gives bounds
    (CTSM stamps averages at the interval's end), else the time itself."""
    bounds = next((ds[b] for b in ("time_bounds", "time_bnds") if b in ds.variables), None)
    t = bounds.isel({bounds.dims[-1]: 0}).values if bounds is not None else ds["time"].values
    return np.array([_iso(x)[:10] for x in np.ravel(t)])


def _iso(x) -> str:
    if isinstance(x, np.datetime64):
        return str(np.datetime_as_string(x, unit="s"))
    return x.isoformat() if hasattr(x, "isoformat") else str(x)


def _gridcell_coords(ds, path: Path):
    if "grid1d_lat" in ds.variables and "grid1d_lon" in ds.variables:
        return np.asarray(ds["grid1d_lat"].values, float), np.asarray(ds["grid1d_lon"].values, float), "gridcell"
    if "lat" in ds.variables and "lon" in ds.variables:
        lat2, lon2 = np.meshgrid(ds["lat"].values, ds["lon"].values, indexing="ij")
        return lat2.ravel().astype(float), lon2.ravel().astype(float), "latlon"
    raise UserError(f"{path}: no gridcell coordinates (grid1d_lat/grid1d_lon or lat/lon)")


def _flat(ds, var: str, form: str, path: Path) -> np.ndarray:
    """(time, gridcell) values of a history variable, either output form."""
    if var not in ds.variables:
        raise UserError(f"{path}: variable {var} not in the history file (add it to hist_fincl in user_nl_clm)")
    a = ds[var]
    if form == "gridcell":
        if a.dims != ("time", "gridcell"):
            raise UserError(f"{path}: {var} has dims {a.dims}, expected (time, gridcell)")
        return np.asarray(a.values, float)
    if a.dims != ("time", "lat", "lon"):
        raise UserError(f"{path}: {var} has dims {a.dims}, expected (time, lat, lon)")
    return np.asarray(a.values, float).reshape(a.shape[0], -1)


def _time_coder():
    """Decode CTSM's noleap times as cftime dates (the keyword moved in newer xarray)."""
    import xarray as xr

    coders = getattr(xr, "coders", None)
    return coders.CFDatetimeCoder(use_cftime=True) if coders is not None else True


def read_history(files: list[Path], variables: list[str], after: str | None) -> dict:
    """Daily means of `variables` (day, gridcell) from the files, for days after `after`."""
    import xarray as xr

    days, data, lat, lon, units = [], {v: [] for v in variables}, None, None, {}
    for path in files:
        try:
            ds = xr.open_dataset(path, decode_times=_time_coder())
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: cannot read history file ({e})") from None
        with ds:
            glat, glon, form = _gridcell_coords(ds, path)
            if lat is None:
                lat, lon = glat, glon
            elif glat.shape != lat.shape or not np.allclose(glat, lat):
                raise UserError(f"{path}: gridcells differ from {files[0].name}")
            label = _day_labels(ds)
            keep = label > after if after else np.ones(label.size, bool)
            if not keep.any():
                continue
            days.append(label[keep])
            for v in variables:
                data[v].append(_flat(ds, v, form, path)[keep])
                units.setdefault(v, ds[v].attrs.get("units", ""))
    if not days:
        return {"days": np.array([], dtype=str), "lat": lat, "lon": lon, "data": {}, "units": units}
    label = np.concatenate(days)
    uniq, inv = np.unique(label, return_inverse=True)
    out = {}
    for v in variables:
        a = np.concatenate(data[v])
        sums = np.zeros((uniq.size, a.shape[1]))
        np.add.at(sums, inv, a)
        out[v] = sums / np.bincount(inv)[:, None]
    return {"days": uniq, "lat": lat, "lon": lon, "data": out, "units": units}


# ---------------------------------------------------------------- observations

def read_observations(obs_cfg: dict):
    """The configured observations (esm-emu obs schema) and their usable-value mask."""
    import xarray as xr

    from ppe_ingest.obs.schema import MASK_SUFFIX, validate_obs

    path, var = obs_cfg["file"], obs_cfg["variable"]
    try:
        ds = xr.open_dataset(path).load()
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read observations ({e})") from None
    ds = validate_obs(ds, Path(path).name)
    if var not in ds.data_vars:
        raise UserError(f"{path}: observations have no variable {var}")
    mask_name = obs_cfg["mask"] or var + MASK_SUFFIX
    mask = ds[mask_name].values.astype(bool) if mask_name in ds.variables else np.isfinite(ds[var].values)
    return ds, mask & np.isfinite(ds[var].values)


def match_sites(obs, hist_lat, hist_lon, max_deg: float):
    """For each site, the nearest history gridcell within `max_deg` degrees (-1 when none)."""
    slat, slon = obs["site_lat"].values.astype(float), obs["site_lon"].values.astype(float)
    dlon = (hist_lon[None, :] - slon[:, None] + 180.0) % 360.0 - 180.0
    d = np.hypot(hist_lat[None, :] - slat[:, None], dlon * np.cos(np.radians(slat[:, None])))
    idx = d.argmin(axis=1)
    idx[d[np.arange(slat.size), idx] > max_deg] = -1
    return idx


def paired(obs, mask, var: str, days: np.ndarray, model: np.ndarray, cell: np.ndarray):
    """(site, day) observed values with NaN where unusable, for the sites that have a gridcell."""
    obs_days = np.array([str(d)[:10] for d in obs["time"].values.astype("datetime64[D]")])
    pos = {d: i for i, d in enumerate(obs_days)}
    y = np.full((cell.size, days.size), np.nan)
    for j, d in enumerate(days):
        i = pos.get(d)
        if i is not None:
            col = np.where(mask[:, i], obs[var].values[:, i], np.nan)
            y[:, j] = col
    y[cell < 0] = np.nan
    return y, model[:, np.maximum(cell, 0)].T  # model as (site, day)


def normalised_mse(sim: np.ndarray, obs: np.ndarray) -> float:
    """Sum of squared errors over the sum of squared anomalies (per-site means): 1 - NSE, pooled."""
    ok = np.isfinite(sim) & np.isfinite(obs)
    if ok.sum() < 2:
        return float("nan")
    mean = np.where(ok, obs, 0.0).sum(axis=1, keepdims=True) / np.maximum(ok.sum(axis=1, keepdims=True), 1)
    den = np.sum(np.where(ok, (obs - mean) ** 2, 0.0))
    return float(np.sum(np.where(ok, (sim - obs) ** 2, 0.0)) / den) if den > 0 else float("nan")


# ---------------------------------------------------------------- update

def forward_inputs(fwd, hist: dict, sites_cell: np.ndarray, fsurdat: str | None):
    """forcing (site, day, F) and static (site, S) for the matched gridcells, as the forward model names them."""
    forcing = np.stack([hist["data"][n][:, sites_cell].T for n in fwd.forcing_names], axis=-1)
    if fwd.static_names:
        if not fsurdat:
            raise UserError("fsurdat: the forward model needs static fields "
                            f"({', '.join(fwd.static_names)}); give fsurdat in the config")
        from ppe_ingest.ctsmio.surfdata import read_static

        values, fields, _ = read_static(Path(fsurdat), hist["lat"][sites_cell], hist["lon"][sites_cell])
        missing = [f for f in fwd.static_names if f not in fields]
        if missing:
            raise UserError(f"{fsurdat}: static field {missing[0]} needed by the forward model is missing")
        static = values[:, [fields.index(f) for f in fwd.static_names]]
    else:
        static = np.zeros((sites_cell.size, 0))
    return forcing, static


def update_parameters(fwd, forcing, static, y_model, y_obs, theta: dict, spec: dict, steps: int, lr: float,
                      response: str, fixed: dict | None = None):
    """Gradient steps on theta (bounded by a logistic transform) against the anchored prediction.
    Returns (new theta, predicted normalised MSE)."""
    import torch

    names = list(theta)
    order = fwd.param_names
    fixed = dict(fixed or {})
    unknown = [n for n in names if n not in order]
    if unknown:
        raise UserError(f"da.parameters.{unknown[0]}: not an input of the {fwd.kind} "
                        f"(it takes {', '.join(order)})")
    lacking = [n for n in order if n not in names and n not in fixed]
    if lacking:
        raise UserError(f"da.parameters: the {fwd.kind} also needs {lacking[0]}; list it in da.parameters")
    r = fwd.response_index([response])[0]
    dt = torch.float64
    lo = torch.tensor([spec[n]["min"] for n in names], dtype=dt)
    hi = torch.tensor([spec[n]["max"] for n in names], dtype=dt)
    t0 = torch.tensor([theta[n] for n in names], dtype=dt)
    u0 = ((t0 - lo) / (hi - lo)).clamp(1e-4, 1 - 1e-4)
    z = torch.log(u0 / (1 - u0)).clone().requires_grad_(True)
    x = torch.as_tensor(forcing, dtype=dt)
    s = torch.as_tensor(static, dtype=dt)
    B = x.shape[0]
    obs = torch.as_tensor(y_obs, dtype=dt)
    ok = torch.isfinite(obs)
    obs0 = torch.where(ok, obs, torch.zeros_like(obs))
    mean = obs0.sum(1, keepdim=True) / ok.sum(1, keepdim=True).clamp(min=1)
    den = torch.where(ok, (obs0 - mean) ** 2, torch.zeros_like(obs)).sum().clamp(min=1e-30)
    anchor = torch.as_tensor(y_model, dtype=dt)

    def full(t):
        cols = [t[names.index(n)] if n in names else torch.tensor(float(fixed[n]), dtype=dt) for n in order]
        return torch.stack(cols).expand(B, -1)

    with torch.no_grad():
        f_now = fwd(x.to(torch.get_default_dtype()), s.to(torch.get_default_dtype()),
                    full(t0).to(torch.get_default_dtype()))[..., r].to(dt)

    def loss_of(zz):
        t = lo + (hi - lo) * torch.sigmoid(zz)
        f = fwd(x.to(torch.get_default_dtype()), s.to(torch.get_default_dtype()),
                full(t).to(torch.get_default_dtype()))[..., r].to(dt)
        pred = anchor + (f - f_now)
        return torch.where(ok, (pred - obs0) ** 2, torch.zeros_like(obs)).sum() / den

    opt = torch.optim.Adam([z], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_of(z)
        if not torch.isfinite(loss):
            raise UserError(f"the {fwd.kind} gave a non-finite objective; check the forcing in the history files")
        loss.backward()
        opt.step()
    with torch.no_grad():
        predicted = float(loss_of(z))
        t = lo + (hi - lo) * torch.sigmoid(z)
    return {n: float(t[i]) for i, n in enumerate(names)}, predicted


def _forward_model(cfg: dict, static_available: set[str]):
    """The configured forward model; the simulator takes whichever optional static fields fsurdat has."""
    from esm_emu.inverse.forward import SIM_STATIC_OPTIONAL, SimulatorForward, load_forward
    from ppe_ingest.ctsmio.vocabulary import ALL_STATIC_FIELDS

    da = cfg["da"]
    params, response = list(da["parameters"]), (cfg["observations"]["variable"],)
    if da["forward"]["kind"] == "simulator":
        static = [n for n in ALL_STATIC_FIELDS if n in static_available or n not in SIM_STATIC_OPTIONAL]
        return SimulatorForward(params, response, static_names=static)
    return load_forward("emulator", da["forward"]["checkpoint"], params, response_names=response)


def _static_fields(fsurdat: str | None) -> set[str]:
    """Static fields the surfdata provides, as ingest derives them (LAI_MAX/LAI_MIN from MONTHLY_LAI)."""
    if not fsurdat:
        return set()
    from ppe_ingest.ctsmio.surfdata import static_field_names

    return set(static_field_names(Path(fsurdat)))


def _fixed_parameters(fwd, cfg: dict) -> dict:
    """Values of forward-model parameters the DA does not update, read from the base paramfile."""
    from ppe_ingest.ctsmio.paramfile import read_paramfile

    from .params import base_paramfile

    rest = [n for n in fwd.param_names if n not in cfg["da"]["parameters"]]
    if not rest or not base_paramfile(cfg):
        return {}
    from ppe_ingest.base.netcdf import open_dataset

    with open_dataset(base_paramfile(cfg)) as ds:
        present = [n for n in rest if n in ds.variables]
    vals = read_paramfile(base_paramfile(cfg), present) if present else {}
    return {n: float(v.reshape(-1)[0]) for n, v in vals.items() if v.size == 1}


# ---------------------------------------------------------------- the hook

def run_da(caseroot, cycle: int) -> dict | None:
    """Assimilate the segment CIME just ran as DA cycle `cycle`; return the record (None if already done)."""
    from ppe_ingest.ctsmio.user_nl import read_user_nl, set_user_nl

    from .params import initial_parameters, write_parameter_set

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

    files = history_files(case, cfg["history_tape"])
    fsurdat = user_nl.get("fsurdat") or cfg["fsurdat"]
    probe = read_history(files, [var], after)  # cheap check before the forward model is loaded
    if probe["days"].size == 0:
        done = last["cycle"] if last else None
        print(f"esm-emu da: CIME cycle {cycle}: no history after {after} in RUNDIR; "
              f"cycle {done} already recorded, nothing to do")
        return None

    fwd = _forward_model(cfg, _static_fields(fsurdat))
    hist = read_history(files, [var] + [n for n in fwd.forcing_names if n != var], after)
    theta_now = dict(last["parameters"]) if last else initial_parameters(cfg, user_nl)
    obs, mask = read_observations(cfg["observations"])
    cell = match_sites(obs, hist["lat"], hist["lon"], cfg["observations"]["max_distance_deg"])
    if (cell < 0).all():
        raise UserError(f"{cfg['observations']['file']}: no observation site lies within "
                        f"{cfg['observations']['max_distance_deg']} deg of a gridcell in the history files")
    y_obs, y_model = paired(obs, mask, var, hist["days"], hist["data"][var], cell)
    n_obs = int(np.isfinite(y_obs).sum())
    objective = normalised_mse(y_model, y_obs)
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
        theta_new, predicted = update_parameters(
            fwd, forcing, static, y_model[use], y_obs[use], theta_now, cfg["da"]["parameters"],
            cfg["da"]["steps"], cfg["da"]["lr"], var, fixed=_fixed_parameters(fwd, cfg))
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
