"""A small training store written in the ingest contract's layout, for the emulator tests.

Stand-in until the simulate -> ingest chain is used: a daily bucket model (not CTSM) driven by
seasonal synthetic weather; two parameters (a drainage rate and an ET scale) and two static
fields shape the responses. Deterministic given the seed.
"""
from __future__ import annotations

import json

import numpy as np
import xarray as xr

FORCING = ["RAIN", "SNOW", "TBOT", "FSDS", "FLDS", "QBOT", "PBOT", "WIND"]
RESPONSES = ["QRUNOFF", "EFLX_LH_TOT", "SOILWATER_10CM"]
PARAMS = ["baseflow_scalar", "medlynslope"]
STATIC = ["PCT_SAND", "FMAX"]


def make_store(path, n_member=10, n_grid=6, n_years=3, seed=0, shared_forcing=True):
    rng = np.random.default_rng(seed)
    T = 365 * n_years
    doy = np.arange(T) % 365
    season = np.sin(2 * np.pi * (doy - 80) / 365)
    G, M = n_grid, n_member
    rain = np.where(rng.random((G, T)) < 0.3, rng.gamma(0.8, 4e-5, (G, T)), 0.0)  # mm/s
    tbot = 283 + 12 * season + rng.normal(0, 2, (G, T))
    fsds = np.clip(180 + 120 * season + rng.normal(0, 30, (G, T)), 5, None)
    snow = np.where(tbot < 273.15, rain, 0.0)
    rain = np.where(tbot < 273.15, 0.0, rain)
    forcing = dict(RAIN=rain, SNOW=snow, TBOT=tbot, FSDS=fsds, FLDS=300 + 0.8 * (tbot - 283),
                   QBOT=np.broadcast_to(0.006 + 0.003 * season, (G, T)),
                   PBOT=np.full((G, T), 95000.0) + rng.normal(0, 200, (G, T)),
                   WIND=np.abs(rng.normal(3, 1, (G, T))))
    theta = np.stack([rng.uniform(0.2, 2.0, M), rng.uniform(2.0, 8.0, M)], axis=1)
    static = np.stack([rng.uniform(10, 80, G), rng.uniform(0.1, 0.5, G)], axis=1)
    # bucket: w (kg/m2) gets precipitation, loses ET (FSDS-driven) and drainage (rate from params)
    w = np.full((M, G), 30.0)
    q = np.zeros((M, G, T))
    le = np.zeros((M, G, T))
    sw = np.zeros((M, G, T))
    kd = 0.02 * theta[:, 0:1] * (0.5 + static[None, :, 0] / 80)
    fmax = static[None, :, 1]
    et_scale = theta[:, 1:2] / 5.0
    for t in range(T):
        p = (forcing["RAIN"][:, t] + forcing["SNOW"][:, t]) * 86400  # mm/day
        sat = fmax * w / 60.0
        over = np.clip(sat, 0, 1) * p
        w = w + p - over
        et = np.minimum(w * 0.5, et_scale * 2.5 * forcing["FSDS"][:, t] / 250 * np.clip(w / 40, 0, 1))
        drain = kd * np.maximum(w - 10, 0)
        w = w - et - drain
        q[:, :, t] = (over + drain) / 86400
        le[:, :, t] = et / 86400 * 2.501e6
        sw[:, :, t] = w * 0.3
    resp = dict(QRUNOFF=q, EFLX_LH_TOT=le, SOILWATER_10CM=sw)
    resp["QRUNOFF"][0, 0, 10:20] = np.nan  # a gap: NaN = missing
    members = [f"LHC{i + 1:04d}" for i in range(M)]
    split_m = np.zeros(M, np.int8)
    split_m[-3] = 1
    split_m[-2:] = 2
    split_g = np.zeros(G, np.int8)
    split_g[-2] = 1
    split_g[-1] = 2
    split_t = np.zeros(T, np.int8)
    split_t[-365:] = 2
    ds = xr.Dataset(coords=dict(member=members, gridcell=np.arange(G), param=PARAMS, field=STATIC,
                                time=xr.date_range("2000-01-01", periods=T, freq="D", calendar="noleap",
                                                   use_cftime=True),
                                grid1d_lat=("gridcell", rng.uniform(30, 48, G)),
                                grid1d_lon=("gridcell", rng.uniform(240, 290, G))))
    units = dict(RAIN="mm/s", SNOW="mm/s", TBOT="K", FSDS="W/m^2", FLDS="W/m^2", QBOT="kg/kg", PBOT="Pa",
                 WIND="m/s", QRUNOFF="mm/s", EFLX_LH_TOT="W/m^2", SOILWATER_10CM="kg/m2")
    for k, v in forcing.items():
        ds[k] = (("gridcell", "time") if shared_forcing else ("member", "gridcell", "time"),
                 (v if shared_forcing else np.broadcast_to(v, (M, G, T))).astype(np.float32), {"units": units[k]})
    for k, v in resp.items():
        ds[k] = (("member", "gridcell", "time"), v.astype(np.float32), {"units": units[k]})
    ds["theta"] = (("member", "param"), theta)
    ds["theta_min"] = ("param", [0.2, 2.0])
    ds["theta_max"] = ("param", [2.0, 8.0])
    ds["param_location"] = ("param", ["P", "P"])
    ds["static"] = (("gridcell", "field"), static)
    logs = ["QRUNOFF"]
    eps = 1e-7
    tr_m, tr_g, tr_t = split_m == 0, split_g == 0, split_t == 0
    names, mean, std = [], [], []
    for k in FORCING:
        x = ds[k].values[..., tr_g, :][..., tr_t] if shared_forcing else ds[k].values[tr_m][:, tr_g][..., tr_t]
        names.append(k)
        mean.append(float(np.mean(x)))
        std.append(float(np.std(x)))
    for k in RESPONSES:
        x = ds[k].values[tr_m][:, tr_g][..., tr_t]
        if k in logs:
            x = np.log(x + eps)
        names.append(k)
        mean.append(float(np.nanmean(x)))
        std.append(float(np.nanstd(x)))
    for i, k in enumerate(STATIC):
        names.append(k)
        mean.append(float(static[tr_g, i].mean()))
        std.append(float(static[tr_g, i].std()))
    for i, k in enumerate(PARAMS):
        names.append(k)
        mean.append(float(theta[tr_m, i].mean()))
        std.append(float(theta[tr_m, i].std()))
    ds = ds.assign_coords(norm_var=names)
    ds["norm_mean"] = ("norm_var", mean)
    ds["norm_std"] = ("norm_var", std)
    flags = {"flag_values": [0, 1, 2], "flag_meanings": "train val test"}
    ds["split_member"] = ("member", split_m, flags)
    ds["split_gridcell"] = ("gridcell", split_g, flags)
    ds["split_time"] = ("time", split_t, flags)
    ds.attrs.update(log_transform_vars=" ".join(logs), log_eps=eps, split_seed=seed, warmup_days=60,
                    forcing_shared_across_members=int(shared_forcing), source_ppe="synthetic", catalog="",
                    history="tests/emu_store.py", esm_emu_version="test", skipped=json.dumps([]))
    ds.to_netcdf(path)
    return path


def write_config(folder, store, run_dir="run", model=None, data=None, train=None, evaluate=None):
    """An `emulator:` YAML config for tiny, fast runs; returns its path."""
    from pathlib import Path

    import yaml

    cfg = {"store": str(store), "run_dir": str(run_dir),
           "model": {"name": "lstm", "hidden": 16, "embed": 8, **(model or {})},
           "data": {"window": 120, "warmup": 30, "batch_size": 8, "val_windows": 8, **(data or {})},
           "train": {"max_steps": 20, "val_every": 5, "checkpoint_every": 5, "threads": 1, "lr": 0.01,
                     "warmup_steps": 2, **(train or {})},
           "evaluate": {"at_end": False, **(evaluate or {})}}
    path = Path(folder) / "emulator.yaml"
    path.write_text(yaml.safe_dump({"emulator": cfg}))
    return path


def read_losses(run_dir):
    """(training losses per step, validation losses) from a run's train_log.csv."""
    import csv

    with open(run_dir / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    return [float(r["loss"]) for r in rows], [float(r["val_loss"]) for r in rows if r["val_loss"]]
