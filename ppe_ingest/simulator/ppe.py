"""Write a perturbed-parameter ensemble from the built-in simulator (NOT CTSM) in the CLM5 PPE layout:

    DIR/paramfiles/<member>.nc, DIR/namelist_mods/<member>.txt      (per member, like the PPE)
    DIR/hist/<case>_<member>.clm2.h1.<YYYY-MM-DD-SSSSS>.nc           (daily, 1-D gridcell)
    DIR/surfdata_<case>.nc                                           (1-D static fields)
    DIR/design.csv, DIR/design.nc, DIR/params.csv, DIR/paramfile_default.nc
    DIR/truth/parameter_map.nc, DIR/truth/truth_sim.nc, DIR/truth/<observations>  (with `truth:`)
"""
from __future__ import annotations

import shutil
import time as _time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from ppe_ingest.base.atomic import atomic_path
from ppe_ingest.base.errors import UserError
from ppe_ingest.ctsmio.vocabulary import FORCING, RESPONSES, STATIC_FIELDS

from . import physics
from . import sites as sites_mod
from . import truth as truth_mod
from . import weather as weather_mod

# ctsm51_params.c210217_kwo.c210222.nc medlynslope per PFT (FORMAT.md): the base the
# multiplicative medlynslope perturbation scales; crops beyond index 16 take the crop value.
MEDLYN_PFT = np.array([0.0, 2.35, 2.35, 2.35, 4.12, 4.12, 4.45, 4.45, 4.45, 4.70, 4.70, 4.70, 2.22, 5.25, 1.62]
                      + [5.79] * 64)
SOURCE = ("esm-emu built-in land simulator (a CTSM-like stand-in, NOT the Community Terrestrial "
          "Systems Model); see ppe_ingest/simulator/README.md")


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, flush=True)


def load_table(cfg: dict):
    from ..param_table import default_table_path, load_param_table

    path = Path(cfg["table"]) if cfg.get("table") else default_table_path()
    table = load_param_table(path)
    for n in cfg["params"]:
        if n not in table:
            raise UserError(f"simulate.params: {n} is not in the parameter table {path.name} "
                            f"(known: {', '.join(table.names)})")
        if n not in physics.DEFAULTS:
            raise UserError(f"simulate.params: {n} is not a parameter of the built-in simulator "
                            f"(it uses: {', '.join(physics.DEFAULTS)})")
    return table, path


def make_sites(cfg: dict, seed: int) -> xr.Dataset:
    if cfg["grid"] == "builtin":
        return sites_mod.builtin_sites(cfg["n_gridcells"], seed)
    if cfg["grid"] == "camels":
        if not cfg.get("camels_attributes"):
            raise UserError("simulate.camels_attributes: required when grid is camels")
        if cfg.get("basins"):
            return sites_mod.camels_sites(cfg["camels_attributes"], basins=cfg["basins"], seed=seed)
        return sites_mod.camels_sites(cfg["camels_attributes"], cfg["n_gridcells"], seed=seed)
    if not cfg.get("sparsegrid"):
        raise UserError("simulate.sparsegrid: required when grid is sparsegrid (path to whitkey.nc)")
    return sites_mod.sparsegrid_sites(cfg["sparsegrid"], cfg["n_gridcells"], seed)


def make_forcing(cfg: dict, sites: xr.Dataset, seed: int) -> xr.Dataset:
    if cfg["forcing"] == "camels":
        if not cfg.get("forcing_dir"):
            raise UserError("simulate.forcing_dir: required when forcing is camels")
        return weather_mod.camels_forcing(sites, cfg["forcing_dir"], cfg["start_year"], cfg["n_years"])
    return weather_mod.generate_weather(sites, cfg["start_year"], cfg["n_years"], seed)


def _default_values(table) -> tuple[dict, dict]:
    """Paramfile defaults of every paramfile-located row of the table, and their attributes."""
    values, attrs = {}, {}
    for p in table:
        if p.location != "paramfile" or p.default is None:
            continue
        values[p.name] = MEDLYN_PFT * (p.default / 4.84) if p.name == "medlynslope" else float(p.default)
        attrs[p.name] = {"long_name": p.long_name or p.name, "units": p.units or "unitless"}
    return values, attrs


def write_surfdata(path: Path, sites: xr.Dataset, weather: xr.Dataset) -> Path:
    """The static fields as a 1-D surface dataset, with the vegetation in CTSM's form: each gridcell
    one dominant natural PFT (PCT_NAT_PFT = 100, `sites.dominant_pft`) whose MONTHLY_LAI is the
    site's seasonal cycle (`sites.monthly_lai`), spanning exactly the LAI_MIN..LAI_MAX the simulator runs with."""
    from ..ctsmio.surfdata import create_surfdata_1d, single_pft_vegetation

    fields = {k: sites[k].values for k in STATIC_FIELDS}
    lai, pct = single_pft_vegetation(sites_mod.dominant_pft(sites), sites_mod.monthly_lai(sites, weather))
    with atomic_path(path) as tmp:
        tmp.unlink()
        create_surfdata_1d(tmp, sites.grid1d_lat.values, sites.grid1d_lon.values, fields, area=sites["area"].values,
                           history="esm-emu simulate: static fields of the built-in simulator's gridcells",
                           monthly_lai=lai, pct_nat_pft=pct)
    return path


# Resident bytes a batch takes per member, measured with /usr/bin/time -v on `esm-emu simulate`
# (peak RSS against batch size and years, 200 gridcells): one simulated year works on ~400 B per
# gridcell-day (the float64 forcing and its time-major copy, the daily outputs and their stack,
# the daily step's temporaries; 480 with the allocator's slack seen at 16-member batches), and
# the batch's float32 responses over the whole run take twice their size. The process itself
# (torch, the compiled step) takes ~0.5 GB more: quickstart peak = 0.5 GB + ~batch_memory_mb.
YEAR_BYTES_PER_GRIDCELL_DAY = 480
RUN_BYTES_PER_GRIDCELL_DAY = 2 * 4 * len(RESPONSES)


def member_bytes(n_gridcells: int, n_days: int) -> int:
    """Estimated resident bytes one member adds to a batch of `run_ensemble` over `n_days` days."""
    return n_gridcells * (365 * YEAR_BYTES_PER_GRIDCELL_DAY + n_days * RUN_BYTES_PER_GRIDCELL_DAY)


def batch_members(n_members: int, n_gridcells: int, n_days: int, memory_mb: float,
                  cap: int | None = None) -> int:
    """Members run together: as many as fit in `memory_mb` (at least one), at most `cap` and n_members.

    Batching never changes the output: every member-gridcell is simulated on its own (the batch
    is only a flat axis), so the history files are the same bit for bit whatever the batch size.
    """
    fit = int(memory_mb * 2**20 // max(1, member_bytes(n_gridcells, n_days)))
    return max(1, min(fit, cap or n_members, n_members))


def run_ensemble(weather: xr.Dataset, sites: xr.Dataset, member_params: dict[str, np.ndarray], spinup_years: int,
                 progress=None, memory_mb: float | None = None, physics_options=None) -> dict[str, np.ndarray]:
    """Run members x gridcells (params (M,) or (M, G)); float32 responses (M, G, T), year by year.

    With `memory_mb`, the gridcells are run in slices whose yearly working set fits in it (each
    gridcell is simulated on its own, so the responses are the same as in one piece).
    """
    G, T = sites.sizes["gridcell"], weather.sizes["time"]
    M = len(next(iter(member_params.values()))) if member_params else 1
    params = {k: np.asarray(v, float) for k, v in member_params.items()}
    out = {k: np.empty((M, G, T), np.float32) for k in RESPONSES}
    step = G
    if memory_mb is not None:
        step = max(1, min(G, int(memory_mb * 2**20 // (M * 365 * YEAR_BYTES_PER_GRIDCELL_DAY))))
    years = list(range(0, T, 365))
    threads = torch.get_num_threads()
    torch.set_num_threads(physics.simulation_threads())
    try:
        for g0 in range(0, G, step):
            gs = slice(g0, min(G, g0 + step))
            sub_sites = sites if step == G else sites.isel(gridcell=gs)
            sub_weather = weather if step == G else weather.isel(gridcell=gs)
            n = gs.stop - gs.start
            static = {k: v.repeat(M) for k, v in sites_mod.static_tensors(sub_sites).items()}
            flat = {k: torch.as_tensor(np.repeat(v, n) if v.ndim == 1 else v[:, gs].reshape(-1), dtype=torch.float64)
                    for k, v in params.items()}
            _run_years(sub_weather, static, flat, spinup_years, {k: v[:, gs] for k, v in out.items()}, M, n, years,
                       progress if gs.stop == G else None, physics_options)
    finally:
        torch.set_num_threads(threads)
    return out


def run_batches(weather: xr.Dataset, sites: xr.Dataset, member_params: dict[str, np.ndarray], spinup_years: int,
                memory_mb: float, cap: int | None = None, progress=None, physics_options=None):
    """`run_ensemble` over members in batches sized by `memory_mb` (batch_members): yields
    (slice of the members, their responses (m, G, T)); hold one batch at a time to keep memory bounded."""
    params = {k: np.asarray(v, float) for k, v in member_params.items()}
    M = len(next(iter(params.values()))) if params else 1
    bs = batch_members(M, sites.sizes["gridcell"], weather.sizes["time"], memory_mb, cap)
    for b0 in range(0, M, bs):
        sl = slice(b0, min(M, b0 + bs))
        yield sl, run_ensemble(weather, sites, {k: v[sl] for k, v in params.items()}, spinup_years,
                               progress=progress, memory_mb=memory_mb, physics_options=physics_options)


def _run_years(weather, static, params, spinup_years, out, M, G, years, progress, physics_options=None) -> None:
    with torch.no_grad():
        first = weather_mod.forcing_tensors(weather.isel(time=slice(0, 365)), repeat=M)
        state = physics.spin_up(first, static, params, n_years=spinup_years, physics=physics_options)
        for t0 in years:
            f = weather_mod.forcing_tensors(weather.isel(time=slice(t0, t0 + 365)), repeat=M)
            res, state = physics.run_land(f, static, params, state=state, return_state=True, physics=physics_options)
            for k, v in res.items():
                out[k][:, :, t0:t0 + v.shape[1]] = v.numpy().reshape(M, G, -1)
            del f, res
            if progress is not None:
                progress.update(M)


def simulate(cfg: dict, out_dir: str | Path, seed: int | None = None, quiet: bool = False) -> dict:
    """Write the whole PPE (and the truth set when configured); return a summary."""
    from ppe_ingest.base.progress import progress

    from ..ctsmio.history import hist_filename, write_history
    from ..ctsmio.paramfile import create_paramfile
    from ..design import make_design, write_design, write_member_files

    t_start = _time.time()
    out = Path(out_dir)
    seed = cfg["seed"] if seed is None else int(seed)
    table, table_path = load_table(cfg)
    names = list(cfg["params"])
    case, ny = cfg["case"], cfg["n_years"]
    sites = make_sites(cfg, seed)
    weather = make_forcing(cfg, sites, seed)
    G = sites.sizes["gridcell"]
    if cfg.get("truth") is not None:
        truth_mod.check_obs_sites(cfg["truth"], G)  # before anything is written
    out.mkdir(parents=True, exist_ok=True)

    design = make_design(table, cfg["n_members"], seed=seed, prefix=cfg["prefix"], names=names)
    base = out / "paramfile_default.nc"
    values, attrs = _default_values(table)
    create_paramfile(base, values, attrs, history="esm-emu simulate: default paramfile of the built-in simulator")
    write_member_files(design, out, base, table.subset(names), progress=not quiet)
    write_design(design, out)
    with atomic_path(out / "params.csv", inputs=[table_path]) as tmp:
        shutil.copyfile(table_path, tmp)
    surf = write_surfdata(out / f"surfdata_{case}.nc", sites, weather)

    members = [str(m) for m in design.member.values]
    theta = design["theta"].transpose("member", "param").values
    ypf = cfg["years_per_file"] or ny
    (out / "hist").mkdir(exist_ok=True)
    forcing_np = {k: weather[k].values for k in FORCING}
    lat, lon = sites.grid1d_lat.values, sites.grid1d_lon.values
    bs = batch_members(len(members), G, weather.sizes["time"], cfg["batch_memory_mb"], cfg["members_per_batch"])
    n_hist = 0
    bar = progress(total=len(members) * len(range(0, ny * 365, 365)), desc="simulate (member-years)",
                   unit="member-yr", enabled=not quiet)
    mp = {n: theta[:, j] for j, n in enumerate(names)}
    for sl, res in run_batches(weather, sites, mp, cfg["spinup_years"], cfg["batch_memory_mb"],
                               cfg["members_per_batch"], progress=bar, physics_options=cfg.get("physics")):
        for i, m in enumerate(members[sl]):
            for y0 in range(0, ny, ypf):
                sl = slice(365 * y0, 365 * min(ny, y0 + ypf))
                data = {k: v[:, sl] for k, v in forcing_np.items()}
                data.update({k: res[k][i, :, sl] for k in RESPONSES})
                fn = out / "hist" / hist_filename(case, m, 1, cfg["start_year"] + y0)
                write_history(fn, data, lat, lon, cfg["start_year"], case, SOURCE, surfdata=surf.name,
                              paramfile=f"paramfiles/{m}.nc", day0=365 * y0, compress=cfg["compress"],
                              extra_attrs={"esm_emu_member": m})
                n_hist += 1
    bar.close()
    t_ppe = _time.time() - t_start
    summary = {"out": str(out), "members": len(members), "gridcells": G, "years": ny,
               "history_files": n_hist, "members_per_batch": bs, "ppe_seconds": round(t_ppe, 1)}

    if cfg.get("truth") is not None:
        summary["truth"] = write_truth(cfg, cfg["truth"], out, sites, weather, table, names, seed, quiet)
    _log(f"esm-emu simulate: {len(members)} members x {G} gridcells x {ny} years written to {out} "
         f"({n_hist} history files, {_time.time() - t_start:.1f} s)", quiet)
    return summary


def write_truth(cfg: dict, tcfg: dict, out: Path, sites: xr.Dataset, weather: xr.Dataset, table, names,
                seed: int, quiet: bool) -> dict:
    """truth/parameter_map.nc, truth/truth_sim.nc (noise-free) and observations at chosen sites."""
    tdir = out / "truth"
    tdir.mkdir(parents=True, exist_ok=True)
    tnames = list(tcfg["params"] or names)
    truth_mod.check_names(tnames, table)
    bad = [n for n in tnames if n not in physics.DEFAULTS]
    if bad:
        raise UserError(f"simulate.truth.params: {bad[0]} is not a parameter of the built-in simulator")
    tseed = seed + 1 if tcfg["seed"] is None else tcfg["seed"]
    maps = truth_mod.true_parameter_maps(sites, table, tnames, tseed, length_deg=tcfg["length_deg"],
                                         margin=tcfg["margin"])
    maps.attrs["source"] = SOURCE
    pm = tdir / "parameter_map.nc"
    enc = maps.copy()
    enc["param"] = enc["param"].astype(str)
    with atomic_path(pm) as tmp:
        enc.to_netcdf(tmp)
    theta = maps["theta"].values                      # (G, P)
    mp = {n: theta[None, :, j] for j, n in enumerate(tnames)}
    res = run_ensemble(weather, sites, mp, cfg["spinup_years"], memory_mb=cfg["batch_memory_mb"],
                       physics_options=cfg.get("physics"))
    sim = xr.Dataset(
        {k: (("gridcell", "time"), res[k][0], {"long_name": f"{k} of the truth run", "units": u})
         for k, u in (("QRUNOFF", "mm/s"), ("QOVER", "mm/s"), ("QDRAI", "mm/s"), ("EFLX_LH_TOT", "W/m^2"),
                      ("QSOIL", "mm/s"), ("QVEGT", "mm/s"), ("QVEGE", "mm/s"), ("SOILWATER_10CM", "kg/m2"),
                      ("H2OSNO", "mm"), ("TWS", "mm"), ("ZWT", "m"))},
        coords={"gridcell": sites.gridcell.values, "time": weather.time.values,
                "grid1d_lat": ("gridcell", sites.grid1d_lat.values),
                "grid1d_lon": ("gridcell", sites.grid1d_lon.values)})
    for k in FORCING:
        sim[k] = weather[k].astype(np.float32)
    sim.attrs.update(title="Noise-free truth run of the twin experiment", source=SOURCE,
                     time_convention="time is the start of each daily mean (00:00 of the day)")
    ts = tdir / "truth_sim.nc"
    with atomic_path(ts) as tmp:
        sim.to_netcdf(tmp, encoding={"time": {"units": f"days since {cfg['start_year']:04d}-01-01 00:00:00",
                                              "calendar": "noleap"}})
    table_df = truth_mod.write_observations(tdir, sites, weather, sim, tcfg, tseed)
    _log(f"truth: {len(tnames)} parameter maps, observations at {len(table_df)} sites in {tdir}", quiet)
    return {"params": tnames, "obs_sites": int(len(table_df))}
