"""The PRERUN, DATA_ASSIMILATION and POSTRUN hooks, called the two ways CIME calls them.

CIME (CIME/utils.py run_sub_or_cmd) imports the script file with importlib's SourceFileLoader and
calls the function named after it (PRERUN/POSTRUN: file name up to the first dot; DA: the whole
name) with (caseroot) or (caseroot, cycle); otherwise it runs the file with those arguments.
`cime_import_call` does the former exactly so; the executable form is run with subprocess.

The "CTSM runs" between DA cycles are the built-in simulator (ppe_ingest.simulator, a stand-in
for CTSM, not CTSM) continuing its state across segments like a restart run, reading the
parameters the hooks put in the case (paramfile + user_nl_clm) and writing history files in the
CTSM layout (<case>.clm2.h1.<date>-00000.nc, 1-D gridcell output, noleap time with bounds).
"""
from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import torch
import yaml
from cime_case_util import make_case

from cime_hooks.case import open_case
from cime_hooks.da import run_da
from cime_hooks.prerun import run_prerun
from esm_emu.cli import main
from ppe_ingest.ctsmio.paramfile import create_paramfile, read_paramfile
from ppe_ingest.ctsmio.surfdata import create_surfdata_1d
from ppe_ingest.ctsmio.user_nl import read_user_nl
from ppe_ingest.obs.schema import make_obs

LAT = np.array([40.1, 41.3, 39.6])
LON = np.array([-105.2, -104.1, -106.0])
SEG_DAYS = 30
TRUE = {"fff": 2.5, "baseflow_scalar": 4e-3}
FIRST = {"fff": 0.5, "baseflow_scalar": 1e-3}
HOOKS = Path("esm-emu") / "hooks"


def cime_import_call(script: Path, *args):
    """What CIME's run_sub_or_cmd does when the file defines the function: import it and call it."""
    subname = script.name if script.name == "esm_emu_da" else script.name.split(".", 1)[0]
    loader = importlib.machinery.SourceFileLoader(subname, str(script))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return getattr(mod, subname)(*args)


def run_exe(script: Path, *args, check=True):
    proc = subprocess.run([str(script), *map(str, args)], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def forcing(days: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Daily forcing (gridcell, day) in CTSM units with rain storms and a seasonal cycle."""
    rng = np.random.default_rng(seed)
    g = LAT.size
    t = np.arange(days)[None, :]
    wet = rng.random((g, days)) < 0.35
    rain = np.where(wet, rng.gamma(0.8, 12.0, (g, days)), 0.0) / 86400.0  # mm/s
    tbot = 283.0 + 8.0 * np.sin(2 * np.pi * (t - 100) / 365) + rng.normal(0, 2, (g, days))
    return {"RAIN": rain, "SNOW": np.zeros((g, days)), "TBOT": tbot,
            "FSDS": 180 + 60 * np.sin(2 * np.pi * (t - 80) / 365) + 0 * tbot,
            "FLDS": 300 + 0 * tbot, "QBOT": 0.006 + 0 * tbot, "PBOT": 85000 + 0 * tbot, "WIND": 3 + 0 * tbot}


STATIC = {"PCT_SAND": np.array([40.0, 60.0, 25.0]), "PCT_CLAY": np.array([20.0, 10.0, 35.0]),
          "ORGANIC": np.array([15.0, 10.0, 25.0]), "FMAX": np.array([0.3, 0.4, 0.25]),
          "zbedrock": np.array([2.0, 1.5, 3.0]), "SLOPE": np.array([2.0, 5.0, 1.0])}


def simulate(f: dict, params: dict, state=None):
    """The stand-in model: run_land over gridcells with `params`, continuing from `state`."""
    from ppe_ingest.simulator.physics import run_land

    B = LAT.size
    tf = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in f.items()}
    ts = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in STATIC.items()}
    tp = {k: torch.full((B,), float(v), dtype=torch.float64) for k, v in params.items()}
    with torch.no_grad():
        out, state = run_land(tf, ts, tp, state=state, return_state=True)
    return out["QRUNOFF"].numpy(), state


def write_history(path: Path, f: dict, qrunoff: np.ndarray, first_day: int) -> None:
    """A daily CTSM history file (1-D gridcell output, noleap days since 2001-01-01, time at the
    end of each averaging day with time_bounds, as CTSM writes averages)."""
    n = qrunoff.shape[1]
    with netCDF4.Dataset(path, "w", format="NETCDF4_CLASSIC") as ds:
        ds.title = "CLM History file information"
        ds.source = "Community Terrestrial Systems Model (stand-in: esm-emu built-in simulator)"
        ds.time_period_freq = "day_1"
        ds.createDimension("time", None)
        ds.createDimension("gridcell", LAT.size)
        ds.createDimension("hist_interval", 2)
        t = ds.createVariable("time", "f8", ("time",))
        t.units, t.calendar, t.bounds = "days since 2001-01-01 00:00:00", "noleap", "time_bounds"
        b = ds.createVariable("time_bounds", "f8", ("time", "hist_interval"))
        start = first_day + np.arange(n, dtype=float)
        t[:] = start + 1.0
        b[:] = np.stack([start, start + 1.0], axis=1)
        for name, vals, units in (("grid1d_lat", LAT, "degrees_north"), ("grid1d_lon", LON, "degrees_east")):
            v = ds.createVariable(name, "f8", ("gridcell",))
            v.units = units
            v[:] = vals
        series = dict(f, QRUNOFF=qrunoff)
        units = {"QRUNOFF": "mm/s", "RAIN": "mm/s", "SNOW": "mm/s", "TBOT": "K", "FSDS": "W/m^2",
                 "FLDS": "W/m^2", "QBOT": "kg/kg", "PBOT": "Pa", "WIND": "m/s"}
        for name, vals in series.items():
            v = ds.createVariable(name, "f4", ("time", "gridcell"), fill_value=np.float32(1e36))
            v.units, v.cell_methods = units[name], "time: mean"
            v[:] = vals.T.astype("f4")


def case_parameters(root: Path) -> dict:
    """What CTSM would read: fff from the paramfile named in user_nl_clm, baseflow_scalar from the namelist."""
    nl = read_user_nl(root / "user_nl_clm")
    return {"fff": float(read_paramfile(nl["paramfile"], ["fff"])["fff"]),
            "baseflow_scalar": float(nl["baseflow_scalar"])}


@functools.lru_cache(maxsize=1)
def truth():
    """Forcing for the three segments and noisy observations from the true parameters."""
    f_all = forcing(3 * SEG_DAYS)
    q_true, _ = simulate(f_all, TRUE)
    rng = np.random.default_rng(1)
    return f_all, q_true * np.exp(rng.normal(0, 0.05, q_true.shape))


@pytest.fixture
def setup(tmp_path):
    """A case with esm-emu installed for 3 DA cycles, calibrated files and observations."""
    torch.set_num_threads(1)
    root = make_case(tmp_path / "cases", name="ctsm_da")
    data = tmp_path / "inputs"
    data.mkdir()
    create_paramfile(data / "ctsm51_params.c210217.nc", {"fff": FIRST["fff"], "d_max": 15.0, "n_baseflow": 1.0})
    create_surfdata_1d(data / "surfdata_3pt.nc", LAT, LON, STATIC)
    f_all, q_obs = truth()
    time = np.datetime64("2001-01-01") + np.arange(3 * SEG_DAYS)
    sites = ["site_a", "site_b", "site_c", "far_away"]
    obs = make_obs(np.vstack([q_obs, q_obs[:1]]), "QRUNOFF", "mm/s", sites, np.append(LAT, 10.0),
                   np.append(LON, 10.0), time=time, source="twin experiment")
    obs.to_netcdf(data / "obs.nc")
    cfg = {"paramfile": "ctsm51_params.c210217.nc", "fsurdat": "surfdata_3pt.nc",
           "namelist": {"baseflow_scalar": FIRST["baseflow_scalar"]},
           "observations": {"file": "obs.nc", "variable": "QRUNOFF"},
           "da": {"forward": {"kind": "simulator"}, "steps": 10, "lr": 0.3,
                  "parameters": {"fff": {"location": "paramfile", "min": 0.1, "max": 5.0},
                                 "baseflow_scalar": {"location": "namelist", "min": 5e-4, "max": 2e-2,
                                                     "initial": FIRST["baseflow_scalar"]}}}}
    (data / "hooks.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["cime", "install", str(root), "--config", str(data / "hooks.yaml"), "--cycles", "3"]) == 0
    return root, f_all


def model_segment(root: Path, f_all: dict, k: int, state):
    """CTSM's run k (a restart run after the first): read the case's parameters, write history."""
    f = {n: v[:, k * SEG_DAYS:(k + 1) * SEG_DAYS] for n, v in f_all.items()}
    q, state = simulate(f, case_parameters(root), state)
    rundir = Path(open_case(root).get_value("RUNDIR"))
    write_history(rundir / f"ctsm_da.clm2.h1.2001-{1 + k:02d}-01-00000.nc", f, q, k * SEG_DAYS)
    return state


def test_prerun_places_files_and_is_idempotent(setup):
    root, _ = setup
    prerun = root / HOOKS / "esm_emu_prerun.py"
    cime_import_call(prerun, str(root))  # as CIME calls it
    nl_text = (root / "user_nl_clm").read_text()
    nl = read_user_nl(root / "user_nl_clm")
    assert "hist_fincl2 = 'QRUNOFF','RAIN'   ! my own output, must survive" in nl_text
    assert Path(nl["fsurdat"]) == root / "esm-emu" / "calibrated" / "surfdata_3pt.nc"
    assert Path(nl["fsurdat"]).read_bytes() == (root.parent.parent / "inputs" / "surfdata_3pt.nc").read_bytes()
    assert nl["paramfile"].startswith(str(root / "esm-emu" / "params" / "initial"))
    assert case_parameters(root) == FIRST
    placed = sorted((root / "esm-emu").rglob("*.nc"))
    stamps = {p: p.stat().st_mtime_ns for p in placed}
    run_exe(prerun, root)  # as an executable, a second time: nothing changes
    assert (root / "user_nl_clm").read_text() == nl_text
    assert {p: p.stat().st_mtime_ns for p in sorted((root / "esm-emu").rglob("*.nc"))} == stamps


def test_hook_works_from_an_interpreter_without_esm_emu(setup):
    """CIME may run under a Python without esm-emu, numpy or torch: the hook still works."""
    root, _ = setup
    system_python = shutil.which("python3", path="/usr/bin:/bin")
    if system_python is None or subprocess.run([system_python, "-c", "import numpy"], cwd=root,
                                               capture_output=True).returncode == 0:
        pytest.skip("no system python3 without numpy (a stand-in for CIME's own interpreter) here")
    code = ("import importlib.machinery as m, sys; mod = m.SourceFileLoader('esm_emu_prerun', sys.argv[1])"
            ".load_module(); mod.esm_emu_prerun(sys.argv[2])")
    proc = subprocess.run([system_python, "-c", code, str(root / HOOKS / "esm_emu_prerun.py"), str(root)],
                          capture_output=True, text=True, cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert "user_nl_clm paramfile" in proc.stdout
    assert case_parameters(root) == FIRST


def test_nothing_is_imported_from_the_case_directory(setup):
    root, _ = setup
    marker = root / "IMPORTED"
    for pkg in ("ppe_ingest", "cime_hooks", "numpy"):
        (root / pkg).mkdir()
        (root / pkg / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('{pkg}')\n")
    run_exe(root / HOOKS / "esm_emu_prerun.py", root)
    assert not marker.exists()


def test_missing_configuration_fails_with_one_line(setup):
    root, _ = setup
    (root / "esm-emu" / "config.yaml").unlink()
    proc = run_exe(root / HOOKS / "esm_emu_prerun.py", root, check=False)
    assert proc.returncode != 0
    lines = [l for l in proc.stderr.splitlines() + proc.stdout.splitlines() if "configuration missing" in l]
    assert lines and "esm-emu cime install" in lines[0]
    with pytest.raises(RuntimeError, match="configuration missing"):
        cime_import_call(root / HOOKS / "esm_emu_da", str(root), 0)


def test_three_da_cycles_with_restart_then_report(setup):
    root, f_all = setup
    hooks = root / HOOKS
    state_file = root / "esm-emu" / "da_state.json"
    cime_import_call(hooks / "esm_emu_prerun.py", str(root))

    # First job: CIME cycles 0 and 1 (cycle 1 is a restart run).
    st = model_segment(root, f_all, 0, None)
    cime_import_call(hooks / "esm_emu_da", str(root), 0)
    assert case_parameters(root) != FIRST  # the next run reads updated parameters
    st = model_segment(root, f_all, 1, st)
    run_exe(hooks / "esm_emu_da", root, 1)
    after_two = json.loads(state_file.read_text())
    assert [c["cycle"] for c in after_two["cycles"]] == [0, 1]

    # The job stops after cycle 1. Calling cycle 1 again redoes nothing.
    assert run_da(root, 1) is None  # prints "... nothing to do"
    assert json.loads(state_file.read_text()) == after_two
    # Resubmitted (CONTINUE_RUN): PRERUN keeps the latest estimate, CIME counts cycles from 0 again.
    subprocess.run([str(root / "xmlchange"), "CONTINUE_RUN=TRUE"], cwd=root, check=True)
    run_prerun(root)
    latest = after_two["cycles"][-1]["parameters"]
    assert case_parameters(root) == pytest.approx(latest)
    st = model_segment(root, f_all, 2, st)
    run_da(root, 0)  # the Python API the hook scripts run (no interpreter start-up)

    cycles = json.loads(state_file.read_text())["cycles"]
    assert [c["cycle"] for c in cycles] == [0, 1, 2]
    assert [c["cime_cycle"] for c in cycles] == [0, 1, 0]
    assert [c["first_day"] for c in cycles] == ["2001-01-01", "2001-01-31", "2001-03-02"]
    for c in cycles:
        assert c["n_obs"] == 3 * SEG_DAYS  # the far-away site is not matched
        assert c["namelist_regenerated"] is False  # no CIME here: recorded, and printed
        assert c["objective_predicted"] < c["objective"]
    # The model's own misfit falls as the parameters approach the truth.
    assert cycles[2]["objective"] < 0.5 * cycles[0]["objective"]
    for name in TRUE:
        first_err = abs(np.log(FIRST[name] / TRUE[name]))
        assert abs(np.log(cycles[-1]["parameters"][name] / TRUE[name])) < 0.5 * first_err
    assert case_parameters(root) == pytest.approx(cycles[-1]["parameters"])
    assert "hist_fincl2 = 'QRUNOFF','RAIN'" in (root / "user_nl_clm").read_text()

    # POSTRUN: metrics JSON and plots in RUNDIR.
    out = run_exe(hooks / "esm_emu_postrun.py", root).stdout
    report_dir = root / "run" / "esm_emu_report"
    report = json.loads((report_dir / "metrics.json").read_text())
    assert "median NSE" in out and report["variable"] == "QRUNOFF"
    assert set(report["sites"]) == {"site_a", "site_b", "site_c"}
    assert report["period"] == ["2001-01-01", "2001-03-31"]
    assert len(report["da_cycles"]) == 3
    for s in report["sites"].values():
        assert s["n_days"] == 3 * SEG_DAYS and np.isfinite([s["nse"], s["kge"], s["rmse"], s["bias"]]).all()
    pngs = sorted(p.name for p in report_dir.glob("*.png"))
    assert pngs == ["QRUNOFF_site_a.png", "QRUNOFF_site_b.png", "QRUNOFF_site_c.png", "da_cycles.png"]
    assert all((report_dir / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_da_objective_is_one_minus_pooled_nse(setup):
    """The recorded objective is 1 - NSE pooled over the matched sites, each with its own mean."""
    from esm_emu.metrics import pooled_nse

    root, f_all = setup
    run_prerun(root)
    model_segment(root, f_all, 0, None)
    record = run_da(root, 0)
    rundir = Path(open_case(root).get_value("RUNDIR"))
    with netCDF4.Dataset(rundir / "ctsm_da.clm2.h1.2001-01-01-00000.nc") as ds:
        sim = np.asarray(ds["QRUNOFF"][:], float).T  # (gridcell = site, day)
    with netCDF4.Dataset(root.parent.parent / "inputs" / "obs.nc") as ds:
        obs = np.asarray(ds["QRUNOFF"][:3, :SEG_DAYS], float)  # the three sites at the gridcells
    by_hand = np.sum((sim - obs) ** 2) / np.sum((obs - obs.mean(axis=1, keepdims=True)) ** 2)
    assert record["objective"] == pytest.approx(by_hand, rel=1e-9)
    assert record["objective"] == pytest.approx(1.0 - pooled_nse(sim, obs), rel=1e-12)


def test_da_without_history_names_the_pattern(setup):
    root, _ = setup
    proc = run_exe(root / HOOKS / "esm_emu_da", root, 0, check=False)
    assert proc.returncode != 0
    assert "no CTSM history files ctsm_da.clm2.h1.*.nc" in proc.stderr


def test_prerun_writes_fsurdat_from_a_parameter_map(setup):
    """A parameter map from `esm-emu invert` goes into the case's own copy of fsurdat."""
    from esm_emu.inverse.param_map import build_param_map, write_param_map

    root, _ = setup
    fmax = np.array([0.11, 0.52, 0.33])
    pmap = build_param_map(np.arange(3), fmax[:, None], np.zeros((3, 1)), ["FMAX"], lat=LAT, lon=LON)
    inputs = root.parent.parent / "inputs"
    write_param_map(pmap, inputs / "theta_map.nc")
    cfg = yaml.safe_load((inputs / "hooks.yaml").read_text())
    cfg["parameter_map"] = "theta_map.nc"
    (inputs / "hooks.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["cime", "install", str(root), "--config", str(inputs / "hooks.yaml")]) == 0
    settings = run_prerun(root)
    placed = Path(settings["fsurdat"])
    assert placed.parent == root / "esm-emu" / "calibrated" / "from_map"
    assert read_user_nl(root / "user_nl_clm")["fsurdat"] == str(placed)
    with netCDF4.Dataset(placed) as ds:
        assert np.allclose(ds["FMAX"][:], fmax)
        assert np.allclose(ds["SLOPE"][:], STATIC["SLOPE"])  # other fields kept
    text = (root / "user_nl_clm").read_text()
    run_prerun(root)  # again: same file, same user_nl_clm
    assert (root / "user_nl_clm").read_text() == text


def test_reinstall_without_da_switches_the_assimilation_off(setup):
    """After DA cycles, a config without `da:` leaves a case that runs without it: no DA script for
    CIME to call, one model run per job, and PRERUN placing the calibrated files instead of the
    DA's latest parameter set."""
    root, f_all = setup
    run_prerun(root)
    model_segment(root, f_all, 0, None)
    run_da(root, 0)
    assert case_parameters(root) != FIRST
    inputs = root.parent.parent / "inputs"
    cfg = yaml.safe_load((inputs / "hooks.yaml").read_text())
    del cfg["da"]
    (inputs / "no_da.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["cime", "install", str(root), "--config", str(inputs / "no_da.yaml")]) == 0
    case = open_case(root)
    assert case.get_value("DATA_ASSIMILATION_SCRIPT") == "" and case.get_value("DATA_ASSIMILATION_CYCLES") == 1
    assert not (root / HOOKS / "esm_emu_da").exists()
    assert case.get_value("POSTRUN_SCRIPT").endswith("esm_emu_postrun.py")  # observations still asked for
    cime_import_call(root / HOOKS / "esm_emu_prerun.py", str(root))
    nl = read_user_nl(root / "user_nl_clm")
    assert Path(nl["paramfile"]) == root / "esm-emu" / "calibrated" / "ctsm51_params.c210217.nc"
    assert case_parameters(root) == FIRST
