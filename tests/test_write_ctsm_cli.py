"""`esm-emu write-ctsm` and write_ctsm_files: --set routing, parameter maps, errors; the plan (routing and
checks before any file exists) and its apply step (each input opened once)."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import xarray as xr

from esm_emu.cli import main
from esm_emu.writers import plan_ctsm_files, write_ctsm_files
from esm_emu.writers.cli import parse_set
from ppe_ingest.base.errors import UserError
from ppe_ingest.ctsmio.paramfile import read_paramfile
from ppe_ingest.ctsmio.surfdata import create_surfdata_1d, read_surfdata
from ppe_ingest.ctsmio.user_nl import read_user_nl

CTSM51 = ("ctsm", "paramfiles", "ctsm51_params.c210217_kwo.c210222.nc")
BRAZIL = ("ctsm", "pecan", "surfdata_1x1_brazil_16pfts_Irrig_CMIP6_simyr2000_c171214.nc")
LAT, LON = np.array([40.0, 42.0, 44.0]), np.array([255.0, 256.0, 257.0])


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def inputs(tmp_path, shared_data):
    d = tmp_path / "in"
    d.mkdir()
    fs = create_surfdata_1d(d / "surfdata_test.nc", LAT, LON,
                            {"PCT_SAND": [30, 40, 50], "PCT_CLAY": [20, 20, 20], "ORGANIC": [5, 5, 5],
                             "FMAX": [0.2, 0.3, 0.4], "zbedrock": [1, 2, 3], "SLOPE": [1, 1, 1],
                             "STD_ELEV": [10, 10, 10]})
    nl = d / "user_nl_clm"
    nl.write_text("! my case\nhist_nhtfrq = -24\n")
    return {"fsurdat": fs, "paramfile": shared_data(*CTSM51), "user_nl": nl}


def test_cli_set_routes_each_name(inputs, tmp_path, capsys):
    before = {k: sha(v) for k, v in inputs.items()}
    out = tmp_path / "out"
    rc = main(["write-ctsm", "--out", str(out), "--fsurdat", str(inputs["fsurdat"]), "--paramfile",
               str(inputs["paramfile"]), "--user-nl", str(inputs["user_nl"]), "--set", "FMAX=0.35",
               "--set", "fff=1.5", "--set", "medlynslope[c4_grass]=1.7", "--set", "baseflow_scalar=0.02",
               "--set", "medlynslope[7]=3.0"])
    assert rc == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / "surfdata_test.nc"), str(out / inputs["paramfile"].name), str(out / "user_nl_clm")]
    assert {k: sha(v) for k, v in inputs.items()} == before
    assert np.allclose(read_surfdata(out / "surfdata_test.nc").FMAX.values, 0.35)
    pf = read_paramfile(out / inputs["paramfile"].name, ["fff", "medlynslope"])
    assert float(pf["fff"]) == 1.5 and pf["medlynslope"][14] == 1.7 and pf["medlynslope"][7] == 3.0
    nl = read_user_nl(out / "user_nl_clm")
    assert nl["baseflow_scalar"] == 0.02 and nl["hist_nhtfrq"] == -24
    assert nl["fsurdat"] == str((out / "surfdata_test.nc").resolve())
    assert nl["paramfile"] == str((out / inputs["paramfile"].name).resolve())
    assert (out / "user_nl_clm").read_text().startswith("! my case\n")


def test_real_2d_fsurdat_via_subprocess(shared_data, tmp_path):
    out = tmp_path / "o"
    r = subprocess.run([sys.executable, "-m", "esm_emu.cli", "write-ctsm", "--out", str(out), "--fsurdat",
                        str(shared_data(*BRAZIL)), "--set", "zbedrock=2.5"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out / shared_data(*BRAZIL).name)
    assert float(read_surfdata(out / shared_data(*BRAZIL).name).zbedrock[0]) == 2.5


@pytest.mark.parametrize("args, words", [
    (["--set", "FMAX"], ["--set", "NAME=VALUE"]),
    (["--set", "FMAX=1.5"], ["FMAX", "gridcell 0", "0..1"]),
    (["--set", "FMAX=abc"], ["FMAX", "not a number"]),
    (["--set", "no_such_thing=1"], ["no_such_thing", "not a parameter"]),
    (["--set", "fff=1"], ["fff", "--paramfile"]),
    ([], ["nothing to write"]),
])
def test_cli_bad_input_exit_2_one_line(inputs, tmp_path, args, words, capsys):
    out = tmp_path / "o"
    rc = main(["write-ctsm", "--out", str(out), "--fsurdat", str(inputs["fsurdat"]), *args])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("esm-emu write-ctsm: error: ")
    assert all(w in err for w in words), err
    assert not out.exists() or list(out.iterdir()) == []


def test_bad_set_in_a_real_process(inputs, tmp_path):
    r = subprocess.run([sys.executable, "-m", "esm_emu.cli", "write-ctsm", "--out", str(tmp_path / "o"),
                        "--fsurdat", str(inputs["fsurdat"]), "--set", "FMAX=2"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "FMAX = 2 at gridcell 0" in r.stderr


def test_refuses_to_overwrite_input(inputs):
    before = sha(inputs["fsurdat"])
    with pytest.raises(UserError, match="overwrite"):
        write_ctsm_files(inputs["fsurdat"].parent, fsurdat=inputs["fsurdat"], settings={"FMAX": 0.5})
    assert sha(inputs["fsurdat"]) == before


def _map(n=3, lat=LAT, lon=LON):
    params = ["FMAX", "zbedrock", "fff", "baseflow_scalar"]
    theta = np.column_stack([[0.1, 0.5, 0.7][:n], [4.0, 5.0, 6.0][:n], [0.3, 0.9, 2.0][:n], [0.01, 0.02, 0.04][:n]])
    return xr.Dataset({"theta": (("gridcell", "param"), theta), "theta_std": (("gridcell", "param"), theta * 0.1)},
                      coords={"gridcell": np.arange(n), "param": params,
                              "grid1d_lat": ("gridcell", lat[:n]), "grid1d_lon": ("gridcell", lon[:n])})


def test_values_map_median_default(inputs, tmp_path):
    notes = []
    w = write_ctsm_files(tmp_path / "o", fsurdat=inputs["fsurdat"], paramfile=inputs["paramfile"],
                         user_nl=inputs["user_nl"], values=_map(), log=notes.append)
    fs = read_surfdata(w["fsurdat"][0])
    assert np.allclose(fs.FMAX.values, [0.1, 0.5, 0.7]) and np.allclose(fs.zbedrock.values, [4, 5, 6])
    assert float(read_paramfile(w["paramfile"][0], ["fff"])["fff"]) == 0.9  # median
    assert read_user_nl(w["user_nl"][0])["baseflow_scalar"] == 0.02
    assert any("fff" in n and "median" in n for n in notes)


def test_values_map_file_per_gridcell_paramfiles(inputs, tmp_path):
    m = tmp_path / "map.nc"
    _map().to_netcdf(m)
    w = write_ctsm_files(tmp_path / "o", fsurdat=inputs["fsurdat"], paramfile=inputs["paramfile"], values=m,
                         per_gridcell_paramfiles=True, log=lambda s: None)
    assert len(w["paramfile"]) == 3
    assert [float(read_paramfile(p, ["fff"])["fff"]) for p in w["paramfile"]] == [0.3, 0.9, 2.0]


def test_values_map_per_cluster_paramfiles(inputs, tmp_path):
    import pandas as pd

    m = _map().assign(cluster=("gridcell", np.array([1, 0, 1], np.int32)),
                      theta_cluster=(("cluster_id", "param"),
                                     np.array([[0.5, 5.0, 0.9, 0.02], [0.4, 5.0, 1.15, 0.025]])))
    m = m.assign_coords(cluster_id=[0, 1])
    w = write_ctsm_files(tmp_path / "o", fsurdat=inputs["fsurdat"], paramfile=inputs["paramfile"], values=m,
                         user_nl=inputs["user_nl"], per_cluster_paramfiles=True, log=lambda s: None)
    assert [p.name for p in w["paramfile"]] == ["ctsm51_params.c210217_kwo.c210222_cluster0.nc",
                                                "ctsm51_params.c210217_kwo.c210222_cluster1.nc"]
    # each cluster is a case of its own: its namelist values and its paramfile, the user's lines kept
    nl = {p.name: read_user_nl(p) for p in w["user_nl"]}
    assert set(nl) == {"user_nl_clm", "user_nl_clm_cluster0", "user_nl_clm_cluster1"}
    assert nl["user_nl_clm_cluster0"]["baseflow_scalar"] == 0.02
    assert nl["user_nl_clm_cluster1"]["baseflow_scalar"] == 0.025
    assert nl["user_nl_clm_cluster1"]["paramfile"] == str(w["paramfile"][1].resolve())
    assert nl["user_nl_clm_cluster0"]["hist_nhtfrq"] == -24
    assert [float(read_paramfile(p, ["fff"])["fff"]) for p in w["paramfile"]] == [0.9, 1.15]
    key = pd.read_csv(tmp_path / "o" / "paramfile_clusters.csv")
    assert list(key.cluster) == [1, 0, 1] and key.paramfile[1].endswith("_cluster0.nc")
    with pytest.raises(UserError, match="needs cluster and theta_cluster"):
        write_ctsm_files(tmp_path / "o2", paramfile=inputs["paramfile"], values=_map(), per_cluster_paramfiles=True)


def test_values_map_sites_matched_by_latlon(inputs, tmp_path):
    sites = _map(2, lat=np.array([44.2, 40.1]), lon=np.array([-103.1, 254.8])).rename(
        {"gridcell": "site", "grid1d_lat": "site_lat", "grid1d_lon": "site_lon"})
    sites = sites.drop_vars("site").assign_coords(site=["06191500", "01022500"])
    w = write_ctsm_files(tmp_path / "o", fsurdat=inputs["fsurdat"], values=sites.sel(param=["FMAX"]))
    assert np.allclose(read_surfdata(w["fsurdat"][0]).FMAX.values, [0.5, 0.3, 0.1])  # cell 1 untouched
    far = sites.assign_coords(site_lat=("site", [0.0, 0.0]))
    with pytest.raises(UserError, match="no gridcell within"):
        write_ctsm_files(tmp_path / "o2", fsurdat=inputs["fsurdat"], values=far.sel(param=["FMAX"]))


def test_map_writes_what_its_files_allow(inputs, tmp_path):
    notes = []
    w = write_ctsm_files(tmp_path / "o", fsurdat=inputs["fsurdat"], values=_map(), log=notes.append)
    assert [p.name for p in w["fsurdat"]] == ["surfdata_test.nc"] and not w["paramfile"] and not w["user_nl"]
    assert any("fff (paramfile)" in n and "--paramfile" in n for n in notes)
    assert any("baseflow_scalar (namelist)" in n and "--user-nl" in n for n in notes)
    with pytest.raises(UserError, match="no file was written"):
        write_ctsm_files(tmp_path / "o2", paramfile=inputs["paramfile"], values=_map().sel(param=["FMAX"]),
                         log=notes.append)
    with pytest.raises(UserError, match="fff: is a paramfile parameter; give --paramfile"):
        write_ctsm_files(tmp_path / "o3", fsurdat=inputs["fsurdat"], settings={"fff": 1.0})
    bad = _map()
    bad["theta"][0, 0] = np.nan
    with pytest.raises(UserError, match="FMAX has missing"):
        write_ctsm_files(tmp_path / "o", fsurdat=inputs["fsurdat"], paramfile=inputs["paramfile"], values=bad)


def test_parse_set():
    assert parse_set(["FMAX=0.3", "use_x=.true.", "medlynslope[c4_grass]=1.6", "medlynslope[3]=2"]) == {
        "FMAX": 0.3, "use_x": True, "medlynslope": {"c4_grass": 1.6, 3: 2}}


def test_plan_routes_each_parameter_and_writes_nothing(inputs, tmp_path):
    out = tmp_path / "o"
    plan = plan_ctsm_files(out, fsurdat=inputs["fsurdat"], paramfile=inputs["paramfile"], user_nl=inputs["user_nl"],
                           values=_map().sel(param=["zbedrock", "fff", "baseflow_scalar"]),
                           settings={"FMAX": 0.35, "medlynslope": {"c4_grass": 1.7}, "interception_fraction": 0.5},
                           per_gridcell_paramfiles=True)
    assert not out.exists()
    assert plan.routes() == {"FMAX": "fsurdat", "medlynslope": "paramfile", "interception_fraction": "namelist",
                             "zbedrock": "fsurdat", "fff": "paramfile", "baseflow_scalar": "namelist"}
    modes = {a.name: a.mode for a in plan.assignments}
    assert modes == {"FMAX": "value", "medlynslope": "value", "interception_fraction": "value", "zbedrock": "field",
                     "fff": "paramfile per gridcell", "baseflow_scalar": "median"}
    stem = inputs["paramfile"].stem
    assert plan.files("fsurdat") == [out / "surfdata_test.nc"]
    assert plan.files("paramfile") == [out / f"{stem}_gridcell{i}.nc" for i in range(3)]
    assert plan.files("user_nl") == [out / "user_nl_clm"]
    fs, pf0, nl = plan.outputs[0], plan.outputs[1], plan.outputs[-1]
    assert list(fs.changes) == ["FMAX", "zbedrock"] and fs.changes["zbedrock"][1].tolist() == [4.0, 5.0, 6.0]
    assert set(pf0.changes) == {"medlynslope", "fff"} and float(pf0.changes["fff"][1]) == 0.3
    # three paramfiles: the case is not pointed at one of them
    assert nl.changes == {"interception_fraction": 0.5, "baseflow_scalar": 0.02,
                          "fsurdat": str((out / "surfdata_test.nc").resolve())}
    text = plan.describe()
    assert "zbedrock" in text and "paramfile per gridcell" in text and str(out / "user_nl_clm") in text


def _map_with(name, i, value):
    m = _map()
    m["theta"].loc[{"gridcell": i, "param": name}] = value
    return m


@pytest.mark.parametrize("kw, words", [
    ({"settings": {"fff": 6.0}}, ["--set", "fff = 6", "0.02..5", "params_hydrology.csv"]),
    ({"settings": {"baseflow_scalar": 0.5}}, ["baseflow_scalar = 0.5", "0.0005..0.1"]),
    ({"values": _map_with("zbedrock", 1, 9.0)}, ["parameter map: gridcell 1: zbedrock = 9", "0.3..8"]),
    ({"settings": {"PCT_SAND": 90.0}}, ["PCT_SAND + PCT_CLAY = 110", "gridcell 0", "<= 100"]),
    ({"settings": {"FMAX": 0.3, "fff": float("nan")}}, ["fff", "non-finite"]),
])
def test_out_of_bounds_or_unphysical_values_are_refused_before_any_file_exists(inputs, tmp_path, kw, words):
    out = tmp_path / "o"
    with pytest.raises(UserError) as e:
        write_ctsm_files(out, fsurdat=inputs["fsurdat"], paramfile=inputs["paramfile"], user_nl=inputs["user_nl"],
                         log=lambda s: None, **kw)
    assert all(w in str(e.value) for w in words), str(e.value)
    assert not out.exists()


def test_theta_at_its_bound_to_rounding_is_accepted(inputs, tmp_path):
    at_max = np.float32(8.0) * np.float32(1 + 1e-7)  # float32 rounding of an inverse's upper bound
    m = _map_with("zbedrock", 0, float(at_max)).sel(param=["zbedrock"])
    w = write_ctsm_files(tmp_path / "o", fsurdat=inputs["fsurdat"], values=m, log=lambda s: None)
    assert read_surfdata(w["fsurdat"][0]).zbedrock.values[0] == pytest.approx(8.0)


def test_apply_opens_each_input_once(inputs, tmp_path, monkeypatch):
    opened, dataset = [], netCDF4.Dataset

    def counting_dataset(filename, *args, **kwargs):
        opened.append(Path(filename).resolve())
        return dataset(filename, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(netCDF4, "Dataset", counting_dataset)
        w = write_ctsm_files(tmp_path / "o", fsurdat=inputs["fsurdat"], paramfile=inputs["paramfile"],
                             values=_map(), settings={"PCT_SAND": 45.0, "ORGANIC": 7.0},
                             per_gridcell_paramfiles=True, log=lambda s: None)
    assert len(w["paramfile"]) == 3
    # four surface dataset fields from one read of it; three paramfiles from one read of the base
    assert opened.count(inputs["fsurdat"].resolve()) == 1
    assert opened.count(inputs["paramfile"].resolve()) == 1
    fs = read_surfdata(w["fsurdat"][0])
    assert np.allclose(fs.PCT_SAND.values, 45.0) and np.allclose(fs.ORGANIC.values, 7.0)
    assert np.allclose(fs.FMAX.values, [0.1, 0.5, 0.7]) and np.allclose(fs.zbedrock.values, [4, 5, 6])


def test_cli_dry_run_prints_the_plan_and_writes_nothing(inputs, tmp_path, capsys):
    out = tmp_path / "o"
    rc = main(["write-ctsm", "--out", str(out), "--fsurdat", str(inputs["fsurdat"]), "--paramfile",
               str(inputs["paramfile"]), "--set", "FMAX=0.35", "--set", "fff=1.5", "--dry-run"])
    assert rc == 0 and not out.exists()
    text = capsys.readouterr().out
    assert "2 parameter(s), 2 file(s)" in text
    assert any(line.split()[:2] == ["FMAX", "fsurdat"] for line in text.splitlines())
    assert str(out / inputs["paramfile"].name) in text
