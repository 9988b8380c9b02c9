"""Values CTSM or the physics would reject are refused (issue 16, classes 2 and 3).

Each command runs as a real subprocess (tests/hostile.py): exit 2, one line naming the value,
inputs unchanged, no output and no temporary left. Alongside, the deliberate way out
(``write-ctsm --allow-outside-table``), which records itself, and the split that assigns each
day to the year its averaging interval starts in (CTSM stamps daily means at the day's end).
"""
from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import xarray as xr
import yaml
from _ingest_ppe import make_ppe
from hostile import Case, check_refused, run_cli

from coupler import grids
from ppe_ingest.base.errors import UserError
from ppe_ingest.ctsmio.paramfile import read_paramfile
from ppe_ingest.ctsmio.physical import check_physical_values, physical_range
from ppe_ingest.ctsmio.surfdata import create_surfdata_1d
from ppe_ingest.ctsmio.user_nl import read_user_nl

REPO = Path(__file__).resolve().parents[1]
CTSM51 = ("ctsm", "paramfiles", "ctsm51_params.c210217_kwo.c210222.nc")
CLM5 = ("ctsm", "paramfiles", "clm5_params.c171117.nc")


# ------------------------------------------------------------------ write-ctsm: table bounds and physics

@pytest.fixture
def ctsm_inputs(tmp_path, shared_data):
    """A copy of the real ctsm51 paramfile, a 1-D surface dataset and a user_nl_clm, in tmp/in."""
    d = tmp_path / "in"
    d.mkdir()
    pf = d / CTSM51[-1]
    shutil.copyfile(shared_data(*CTSM51), pf)
    create_surfdata_1d(d / "surfdata_t.nc", np.array([40.0, 42.0]), np.array([255.0, 256.0]),
                       {"PCT_SAND": [30, 40], "PCT_CLAY": [20, 20], "ORGANIC": [5, 5], "FMAX": [0.2, 0.3],
                        "zbedrock": [1, 2], "SLOPE": [1, 1], "STD_ELEV": [10, 10]})
    (d / "user_nl_clm").write_text("! my case\nhist_nhtfrq = -24\n")
    return d


def _write(*sets, extra=()):
    def make(tmp):
        args = ["write-ctsm", "--out", tmp / "out", "--paramfile", tmp / "in" / CTSM51[-1],
                "--fsurdat", tmp / "in" / "surfdata_t.nc", "--user-nl", tmp / "in" / "user_nl_clm"]
        for s in sets:
            args += ["--set", s]
        return [*args, *extra]
    return make


WRITE_CASES = [
    # the probe's examples: outside the table's bounds
    Case("fff=-3", _write("fff=-3"), mentions=("fff", "-3", "0.02..5", "--allow-outside-table")),
    Case("fff=100", _write("fff=100"), mentions=("fff", "100")),
    Case("baseflow_scalar=-1 (namelist)", _write("baseflow_scalar=-1"), mentions=("baseflow_scalar", "-1")),
    Case("FMAX=0.95 beyond its table bound", _write("FMAX=0.95"), mentions=("FMAX", "0.95", "0.05..0.8")),
    # per-PFT values: physics, and the range the table's bounds give at that PFT
    Case("medlynslope[7]=-3", _write("medlynslope[7]=-3"), mentions=("medlynslope", "-3", "PFT 7", ">= 0")),
    Case("medlynslope[c4_grass]=30", _write("medlynslope[c4_grass]=30"),
         mentions=("medlynslope", "30", "c4_grass", "--allow-outside-table")),
    # names not in the table: their physics (by name, pattern or units)
    Case("fcur=1.5 (a fraction)", _write("fcur=1.5"), mentions=("fcur", "1.5", "0..1")),
    Case("k_s1=-0.1 (a rate, 1/day)", _write("k_s1=-0.1"), mentions=("k_s1", "-0.1", ">= 0")),
    Case("leafcn=-1 (a C:N ratio)", _write("leafcn=-1"), mentions=("leafcn", "-1")),
    Case("rholvis[3]=2 (a reflectance fraction)", _write("rholvis[3]=2"), mentions=("rholvis", "PFT 3")),
    Case("SLOPE=-1 (fsurdat, not in the table)", _write("SLOPE=-1"), mentions=("SLOPE", "-1", "gridcell 0")),
    Case("PCT_SAND=120", _write("PCT_SAND=120"), mentions=("PCT_SAND", "120")),
    Case("fff=inf", _write("fff=inf"), mentions=("fff",)),
    Case("--tol-deg -1", _write("fff=1", extra=["--tol-deg", "-1"]), mentions=("--tol-deg", "-1")),
    Case("--tol-deg nan", _write("fff=1", extra=["--tol-deg", "nan"]), mentions=("--tol-deg", "nan")),
    # the flag does not let physically invalid values through
    Case("--allow-outside-table fff=-7", _write("fff=-7", extra=["--allow-outside-table"]),
         mentions=("fff", "-7", "> 0")),
    Case("--allow-outside-table interception_fraction=1.5", _write("interception_fraction=1.5",
                                                                    extra=["--allow-outside-table"]),
         mentions=("interception_fraction", "1.5", "0..1")),
    Case("--allow-outside-table FMAX=1.2", _write("FMAX=1.2", extra=["--allow-outside-table"]),
         mentions=("FMAX", "1.2")),
]


@pytest.mark.parametrize("case", WRITE_CASES, ids=str)
def test_write_ctsm_refuses_values_outside_table_or_physics(case, ctsm_inputs, tmp_path):
    case.inputs, case.outputs = ("in",), ("out",)
    check_refused(case, tmp_path)


def test_allow_outside_table_writes_and_records_itself(ctsm_inputs, tmp_path):
    r = run_cli(_write("fff=7", "baseflow_scalar=0.5", "medlynslope[7]=30", "FMAX=0.9",
                       extra=["--allow-outside-table"])(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    pf = out / CTSM51[-1]
    vals = read_paramfile(pf, ["fff", "medlynslope"])
    assert float(vals["fff"]) == 7.0 and vals["medlynslope"][7] == 30.0
    for f in (pf, out / "surfdata_t.nc"):
        with netCDF4.Dataset(f) as ds:
            last = ds.history.strip().splitlines()[-1]
        assert "--allow-outside-table" in last
        assert "fff = 7" in last and "baseflow_scalar = 0.5" in last and "FMAX = 0.9" in last
        assert "medlynslope = 30 at PFT 7" in last
    text = (out / "user_nl_clm").read_text()
    comment = [ln for ln in text.splitlines() if ln.startswith("!") and "--allow-outside-table" in ln]
    assert len(comment) == 1 and "baseflow_scalar = 0.5" in comment[0]
    assert read_user_nl(out / "user_nl_clm")["baseflow_scalar"] == 0.5
    assert "--allow-outside-table" in r.stdout  # the note says so


def test_values_inside_table_and_physics_are_written_without_a_record(ctsm_inputs, tmp_path):
    r = run_cli(_write("fff=1.5", "medlynslope[c4_grass]=1.7", "fcur=0.5", "FMAX=0.35")(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with netCDF4.Dataset(tmp_path / "out" / CTSM51[-1]) as ds:
        assert "--allow-outside-table" not in ds.history
    assert "--allow-outside-table" not in (tmp_path / "out" / "user_nl_clm").read_text()


@pytest.mark.parametrize("paramfile", [CTSM51, CLM5])
def test_every_default_of_the_real_paramfiles_is_physically_valid(paramfile, shared_data):
    """The physical rules refuse nothing CTSM ships (else a rule is wrong, not the file)."""
    checked = 0
    with netCDF4.Dataset(shared_data(*paramfile)) as ds:
        for name, var in ds.variables.items():
            if var.dtype == str or np.dtype(var.dtype).kind not in "fi":
                continue
            rule = physical_range(name, getattr(var, "units", ""))
            if rule is None:
                continue
            check_physical_values(name, np.asarray(var[...], dtype=float), getattr(var, "units", ""), "x")
            checked += 1
    assert checked > 100  # the rules cover most of the file, not a handful of names


def test_a_table_whose_own_bounds_are_unphysical_is_refused(ctsm_inputs, tmp_path):
    (tmp_path / "in" / "table.csv").write_text(
        "name,location,default,min,max,transform,pft\nfff,paramfile,0.5,-1,5,value,false\n")
    check_refused(Case("table fff min -1", _write("fff=1", extra=["--table", tmp_path / "in" / "table.csv"]),
                       mentions=("table.csv", "fff", "min", "-1"), inputs=("in",), outputs=("out",)), tmp_path)


def test_physical_rules_by_name_pattern_and_units():
    assert physical_range("FMAX").text() .startswith("within 0..1")
    assert physical_range("PCT_CLAY").ok([0, 100]).all() and not physical_range("PCT_CLAY").ok([101]).any()
    assert not physical_range("hksat_sf").ok([0.0]).any()  # scale factors > 0
    assert physical_range("whatever", "1/day").ok([0.0]).all() and not physical_range("x", "1/day").ok([-1]).any()
    assert physical_range("s_fix", "gC/gN") is None  # a negative cost: no C:N rule by units
    assert physical_range("unknown_thing", "unitless") is None
    with pytest.raises(UserError, match=r"--set: fff = nan is not physically valid"):
        check_physical_values("fff", np.nan, where="--set")


# ------------------------------------------------------------------ ingest --summary: non-finite outputs

@pytest.fixture
def summary_inputs(tmp_path, shared_data):
    """The real summary outputs with LHC0007's GPP set to +Inf, and the real design and table."""
    d = tmp_path / "in"
    d.mkdir()
    y = xr.open_dataarray(shared_data("ppe", "outputs", "fivevars_gmean_amean_2005-2014.nc")).load()
    y.loc[dict(var="GPP", ens="LHC0007")] = np.inf
    y.to_netcdf(d / "outputs.nc")
    shutil.copyfile(shared_data("ppe", "outputs", "lhc220926.nc"), d / "design.nc")
    shutil.copyfile(shared_data("ppe", "param_tables", "lhc_220926.csv"), d / "table.csv")
    return d


def _summary(*extra):
    return lambda tmp: ["ingest", "--summary", tmp / "in" / "outputs.nc", "--design", tmp / "in" / "design.nc",
                        "--params", tmp / "in" / "table.csv", "--out", tmp / "store.nc", *extra]


def test_summary_refuses_inf_outputs_naming_member_and_variable(summary_inputs, tmp_path):
    check_refused(Case("summary Inf", _summary(), mentions=("LHC0007", "GPP", "inf", "--skip-bad"),
                       inputs=("in",), outputs=("store.nc",)), tmp_path)


def test_summary_skip_bad_drops_and_records_the_member(summary_inputs, tmp_path):
    r = run_cli(_summary("--skip-bad")(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "skipped:" in r.stdout and "LHC0007" in r.stdout
    with xr.open_dataset(tmp_path / "store.nc") as ds:
        assert "LHC0007" not in ds.member.values and ds.sizes["member"] == 499
        assert np.isfinite(ds.y.values).all() and np.isfinite(ds.theta.values).all()
        skipped = json.loads(ds.attrs["skipped"])
    assert [p["member"] for p in skipped] == ["LHC0007"] and "GPP" in skipped[0]["reason"]


# ------------------------------------------------------------------ invert: site matching and periods

def _entities(lat, lon, days=30):
    time = xr.date_range("2001-01-01", periods=days, freq="D", calendar="noleap", use_cftime=True)
    return xr.Dataset({"RAIN": (("gridcell", "time"), np.ones((len(lat), days)))},
                      coords={"gridcell": np.arange(len(lat)), "time": time,
                              "grid1d_lat": ("gridcell", np.asarray(lat, float)),
                              "grid1d_lon": ("gridcell", np.asarray(lon, float))})


def _obs(lat, lon, ids, days=30, value=1.0):
    time = xr.date_range("2001-01-01", periods=days, freq="D", calendar="noleap", use_cftime=True)
    n = len(ids)
    return xr.Dataset({"QRUNOFF": (("site", "time"), np.full((n, days), value) + np.arange(n)[:, None])},
                      coords={"site": np.array(ids, dtype=object), "time": time,
                              "site_lat": ("site", np.asarray(lat, float)),
                              "site_lon": ("site", np.asarray(lon, float))})


def test_sites_far_from_every_gridcell_are_refused_by_name():
    from esm_emu.inverse.problem import align_observations

    ent = _entities([40.0, 41.0, 42.0], [250.0, 251.0, 252.0])
    far = _obs([40.0, 80.0], [250.0, 250.0], ["near", "arctic"])  # 'arctic' is ~38 degrees away
    with pytest.raises(UserError, match=r"site arctic .* beyond inverse.max_site_distance_deg = 2"):
        align_observations(far, ent, "gridcell", ["QRUNOFF"])
    out = align_observations(far, ent, "gridcell", ["QRUNOFF"], max_site_distance_deg=45)
    assert np.isfinite(out.QRUNOFF.values[0]).all()


def test_a_site_latitude_beyond_90_is_refused_by_name():
    from esm_emu.inverse.problem import align_observations

    ent = _entities([40.0, 41.0], [250.0, 251.0])
    with pytest.raises(UserError, match=r"site north has latitude 95"):
        align_observations(_obs([40.0, 95.0], [250.0, 250.0], ["ok", "north"]), ent, "gridcell", ["QRUNOFF"],
                           max_site_distance_deg=180)


def test_two_sites_on_one_gridcell_refused_unless_allowed():
    from esm_emu.inverse.problem import align_observations

    ent = _entities([40.0, 45.0], [250.0, 250.0])
    obs = _obs([40.1, 39.9], [250.1, 249.9], ["a", "b"])
    with pytest.raises(UserError, match=r"sites a, b fall on one gridcell \(0\).*inverse.shared_gridcells"):
        align_observations(obs, ent, "gridcell", ["QRUNOFF"])
    out = align_observations(obs, ent, "gridcell", ["QRUNOFF"], shared_gridcells=True)
    np.testing.assert_allclose(out.QRUNOFF.values[0], 1.5)  # the mean of 1 and 2
    assert np.isnan(out.QRUNOFF.values[1]).all()


def _invert_config(tmp, period):
    cfg = tmp / "inverse.yaml"
    cfg.write_text(yaml.safe_dump({"inverse": {"forward": {"kind": "simulator"}, "test_period": period}}))
    return ["invert", cfg, "--out", tmp / "inv"]


@pytest.mark.parametrize("period, words", [
    ({"start": 2003, "end": 2001}, ("inverse.test_period", "ends (2001) before it starts (2003)")),
    ({"start": "2002-06-01", "end": "2002-05-31"}, ("inverse.test_period", "2002-05-31")),
    ({"start": "2002-13-45"}, ("inverse.test_period.start", "2002-13-45")),
])
def test_invert_refuses_a_period_that_ends_before_it_starts(tmp_path, period, words):
    check_refused(Case(f"test_period {period}", lambda t: _invert_config(t, period), mentions=words,
                       outputs=("inv",)), tmp_path)


def test_max_site_distance_is_declared_once_in_the_schema():
    from esm_emu.inverse.config import SCHEMA, inverse_config

    assert inverse_config({})["max_site_distance_deg"] == SCHEMA["max_site_distance_deg"].default
    with pytest.raises(UserError, match="max_site_distance_deg"):
        inverse_config({"max_site_distance_deg": -1})


# ------------------------------------------------------------------ simulate: more sites than gridcells

def test_simulate_refuses_more_obs_sites_than_gridcells(tmp_path):
    def make(tmp):
        (tmp / "sim.yaml").write_text(yaml.safe_dump({"simulate": {
            "n_members": 2, "n_gridcells": 12, "n_years": 1, "spinup_years": 0,
            "table": str(REPO / "configs" / "params_hydrology.csv"), "truth": {"n_obs_sites": 500}}}))
        return ["simulate", tmp / "sim.yaml", "--out", tmp / "ppe", "--quiet"]
    check_refused(Case("500 sites on 12 gridcells", make, mentions=("simulate.truth.n_obs_sites", "500", "12"),
                       inputs=("sim.yaml",), outputs=("ppe",)), tmp_path)


# ------------------------------------------------------------------ regrid: grids and weights

def _scrip(tmp, edit=None, name="bad.nc"):
    grids.write_scrip(grids.regular(6, 12), tmp / "good.nc")
    shutil.copyfile(tmp / "good.nc", tmp / name)
    if edit is not None:
        with netCDF4.Dataset(tmp / name, "a") as ds:
            edit(ds)
    return tmp / name


def _set(var, index, value):
    def edit(ds):
        ds[var][index] = value
    return edit


GRID_CASES = [
    ("NaN centre latitude", _set("grid_center_lat", 5, np.nan), ("grid_center_lat", "cell 5", "nan")),
    ("latitude beyond 90", _set("grid_center_lat", 7, 95.0), ("grid_center_lat", "cell 7", "95")),
    # (a NaN in a later corner is SCRIP padding: the previous corner repeats; a first corner has none)
    ("NaN first corner longitude", _set("grid_corner_lon", (3, 0), np.nan), ("grid_corner_lon", "cell 3")),
    ("corner latitude beyond -90", _set("grid_corner_lat", (0, 0), -91.0), ("grid_corner_lat", "-91")),
    ("grid_dims disagree with the size", _set("grid_dims", 0, 13), ("grid_dims", "[13, 6]", "72")),
]


@pytest.mark.parametrize("label, edit, words", GRID_CASES, ids=[c[0] for c in GRID_CASES])
@pytest.mark.parametrize("side", ["--src", "--dst"])
def test_regrid_weights_refuses_a_bad_grid(tmp_path, label, edit, words, side):
    def make(tmp):
        bad = _scrip(tmp, edit)
        src, dst = (bad, tmp / "good.nc") if side == "--src" else (tmp / "good.nc", bad)
        return ["regrid", "weights", "--src", src, "--dst", dst, "--method", "bilinear", "--out", tmp / "w.nc"]
    check_refused(Case(label, make, mentions=("bad.nc", *words), inputs=("good.nc", "bad.nc"),
                       outputs=("w.nc",)), tmp_path)


def test_regrid_apply_refuses_a_field_on_another_grid_of_the_same_shape(tmp_path):
    src = grids.regular(6, 12)
    grids.write_scrip(src, tmp_path / "src.nc")
    grids.write_scrip(grids.regular(3, 6), tmp_path / "dst.nc")
    r = run_cli(["regrid", "weights", "--src", tmp_path / "src.nc", "--dst", tmp_path / "dst.nc",
                 "--method", "conserve", "--out", tmp_path / "w.nc"])
    assert r.returncode == 0, r.stderr
    lat = src.lat.reshape(6, 12)[:, 0]
    lon = src.lon.reshape(6, 12)[0]

    def field(name, lat, lon):
        xr.Dataset({"QRUNOFF": (("lat", "lon"), np.ones((6, 12)))},
                   coords={"lat": lat, "lon": lon}).to_netcdf(tmp_path / name)

    field("same.nc", lat, lon)
    field("same_lon_wrapped.nc", lat, lon - 360.0)  # the same cells, longitudes written -180..180 style
    for name in ("same.nc", "same_lon_wrapped.nc"):
        r = run_cli(["regrid", "apply", "--weights", tmp_path / "w.nc", tmp_path / name, tmp_path / f"o_{name}"])
        assert r.returncode == 0, r.stderr
    field("shifted.nc", lat, lon + 10.0)  # 6 x 12 cells too, but 10 degrees east
    field("flipped.nc", lat[::-1], lon)  # north-to-south rows
    for name in ("shifted.nc", "flipped.nc"):
        check_refused(Case(name, lambda t, n=name: ["regrid", "apply", "--weights", t / "w.nc", t / n, t / "out.nc"],
                           mentions=(name, "w.nc", "not on the grid"), inputs=(name, "w.nc"),
                           outputs=("out.nc",)), tmp_path)


def test_regrid_apply_refuses_non_finite_weights(tmp_path):
    grids.write_scrip(grids.regular(6, 12), tmp_path / "g.nc")
    r = run_cli(["regrid", "weights", "--src", tmp_path / "g.nc", "--dst", tmp_path / "g.nc", "--method",
                 "bilinear", "--out", tmp_path / "w.nc"])
    assert r.returncode == 0, r.stderr
    shutil.copyfile(tmp_path / "w.nc", tmp_path / "w_nan.nc")
    with netCDF4.Dataset(tmp_path / "w_nan.nc", "a") as ds:
        ds["S"][4] = np.nan
    xr.Dataset({"QRUNOFF": (("lat", "lon"), np.ones((6, 12)))}).to_netcdf(tmp_path / "in.nc")
    check_refused(Case("NaN weight", lambda t: ["regrid", "apply", "--weights", t / "w_nan.nc", t / "in.nc",
                                                t / "out.nc"],
                       mentions=("w_nan.nc", "non-finite", "entry 4"), inputs=("w_nan.nc", "in.nc"),
                       outputs=("out.nc",)), tmp_path)


# ------------------------------------------------------------------ class 3: the split by interval start

@pytest.fixture(scope="module")
def ppe_ending_on_new_year(tmp_path_factory, shared_data):
    """A CTSM-layout PPE of 2000-2002 whose last time step is stamped 2003-01-01 00:00."""
    root = tmp_path_factory.mktemp("ppe3")
    make_ppe(root, shared_data("ppe", "paramfiles", "OAAT0000.nc"), years=3)
    last = sorted((root / "hist").glob("*.nc"))[-1]
    with netCDF4.Dataset(last) as ds:
        stamp = netCDF4.num2date(ds["time"][-1], ds["time"].units, ds["time"].calendar)
    assert (stamp.year, stamp.month, stamp.day, stamp.hour) == (2003, 1, 1, 0)
    return root


@pytest.mark.parametrize("seed", range(6))
def test_held_out_year_is_a_whole_year_for_every_seed(ppe_ending_on_new_year, tmp_path, seed):
    from ppe_ingest.ingest.discover import discover
    from ppe_ingest.ingest.writer import write_store

    out = write_store(discover(ppe_ending_on_new_year), tmp_path / "s.nc", seed=seed, progress=False,
                      split=dict(val_members=0, test_members=1, test_years=1))
    with xr.open_dataset(out) as ds:
        held = ds.time.values[ds.split_time.values == 2]
        assert len(held) == 365  # never the lone 2003-01-01 stamp
        years = {(t - datetime.timedelta(days=1)).year for t in held}
        assert len(years) == 1 and years <= {2001, 2002}  # never the warm-up year 2000


def test_test_years_beyond_the_record_is_refused(ppe_ending_on_new_year, tmp_path):
    ppe = tmp_path / "ppe"
    shutil.copytree(ppe_ending_on_new_year, ppe)
    check_refused(Case("test_years=3 of 2", lambda t: ["ingest", t / "ppe", "--out", t / "store.nc", "--no-progress",
                                                        "--set", "split.test_years=3"],
                       mentions=("ingest.split.test_years", "3", "2 whole year(s)"), inputs=("ppe",),
                       outputs=("store.nc",)), tmp_path)


def test_a_partial_last_year_is_never_held_out_alone():
    from ppe_ingest.ingest.writer import make_split

    years = np.array([2000] * 365 + [2001] * 365 + [2002] * 365 + [2003] * 5)  # a run 5 days past New Year
    for seed in range(20):
        held = np.unique(years[make_split(4, 4, years, seed, test_years=1)[2] == 2])
        assert held.tolist() in ([2001], [2002])
    with pytest.raises(UserError, match=r"ingest.split.test_years: 3 .* 2 whole year\(s\)"):
        make_split(4, 4, years, 0, test_years=3)


def test_interval_years_without_bounds_uses_half_a_step(tmp_path, ppe_ending_on_new_year):
    """A history without time_bounds: the stamp minus half the step decides the year."""
    from ppe_ingest.ingest.discover import discover
    from ppe_ingest.ingest.writer import interval_years

    ppe = tmp_path / "ppe"
    shutil.copytree(ppe_ending_on_new_year, ppe)
    for f in (ppe / "hist").glob("*.nc"):
        with netCDF4.Dataset(f, "a") as ds:
            ds.renameVariable("time_bounds", "not_bounds")
    p = discover(ppe)
    years = interval_years(p.files(p.members[0], "h1"))
    assert years[-1] == 2002 and (years == 2002).sum() == 365 and (years == 2000).sum() == 365


def test_evaluate_refuses_a_held_out_year_of_one_day(tmp_path):
    """A store split before the fix (held-out 'year' = the lone end stamp) is refused, not scored NaN."""
    from emu_store import make_store, write_config

    store = make_store(tmp_path / "store.nc", n_member=6, n_grid=4, n_years=2)
    cfg = write_config(tmp_path, store, train={"max_steps": 4, "val_every": 2, "checkpoint_every": 2})
    r = run_cli(["train", cfg, "--quiet"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with xr.open_dataset(store) as ds:
        bad = ds.load()
    split = np.zeros(bad.sizes["time"], np.int8)
    split[-1] = 2  # the old split's single-day test year
    bad["split_time"] = ("time", split, bad["split_time"].attrs)
    bad.to_netcdf(tmp_path / "one_day.nc")
    check_refused(Case("one-day test year", lambda t: ["evaluate", cfg, "--store", t / "one_day.nc",
                                                       "--out", t / "ev", "--no-plots"],
                       mentions=("one_day.nc", "'years'", "1 scored day"), inputs=("one_day.nc",),
                       outputs=("ev",)), tmp_path)


def _invert_twin(tmp, move=None, **over):
    """The twin inversion of tests/test_invert_cli.py on files, with observation sites moved by `move`."""
    import pandas as pd
    import torch
    from inverse_twin import PARAMS, make_twin, observations

    from ppe_ingest.obs.io import write_obs

    twin = make_twin()
    torch.save({"emulator": twin["forward"].emu.payload()}, tmp / "emu.pt")
    twin["entities"].to_netcdf(tmp / "entities.nc")
    obs = observations(twin, np.arange(8)).drop_vars("gridcell")
    days = [f"{t.year:04d}-{t.month:02d}-{t.day:02d}" for t in obs["time"].values]
    obs = obs.assign_coords(time=pd.to_datetime(days))
    if move is not None:
        obs = move(obs)
    for v in ("site_lat", "site_lon"):
        obs = obs.set_coords(v)
    write_obs(obs, tmp / "obs.nc")
    inv = {"forward": {"kind": "emulator", "checkpoint": "emu.pt"}, "params": PARAMS, "entities": "entities.nc",
           "observations": ["obs.nc"], "train_period": {"start": 2000, "end": 2000},
           "test_period": {"start": 2001, "end": 2001}, "method": "g_A", "out": "out",
           "dpl": {"steps": 5, "warmup_days": 60}, "uncertainty": {"ensemble": 1, "mc_samples": 0}, **over}
    (tmp / "inv.yaml").write_text(yaml.safe_dump({"inverse": inv}))
    return ["invert", tmp / "inv.yaml", "--quiet"]


def _shift_site(i, dlat=0.0, to=None):
    def move(obs):
        lat, lon = obs["site_lat"].values.copy(), obs["site_lon"].values.copy()
        if to is not None:
            lat[i], lon[i] = lat[to] + 0.01, lon[to] + 0.01
        else:
            lat[i] = np.clip(lat[i] + dlat, -89, 89)
        return obs.assign(site_lat=("site", lat), site_lon=("site", lon))
    return move


@pytest.mark.parametrize("label, move, over, words", [
    ("a site 40 degrees from every gridcell", _shift_site(3, dlat=-40.0), {},
     ("observations: site", "inverse.max_site_distance_deg = 2")),
    ("two sites on one gridcell", _shift_site(5, to=2), {}, ("fall on one gridcell", "inverse.shared_gridcells")),
    ("a train period ending before it starts", None, {"train_period": {"start": 2001, "end": 2000}},
     ("inverse.train_period", "before it starts")),
    ("a test period outside the record", None, {"test_period": {"start": 2030, "end": 2031}},
     ("inverse.test_period", "holds no day")),
])
def test_invert_refuses_bad_sites_and_periods(tmp_path, label, move, over, words):
    check_refused(Case(label, lambda t: _invert_twin(t, move, **over), mentions=words,
                       inputs=("obs.nc", "entities.nc", "emu.pt"), outputs=("out",)), tmp_path)
