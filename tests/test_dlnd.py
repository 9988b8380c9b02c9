"""Emulator runoff as DLND lnd2rof coupler history, with the case settings."""
import re

import numpy as np
import pytest
import xarray as xr

from coupler import grids
from coupler.dlnd import case_settings, write_lnd2rof
from ppe_ingest.base.errors import UserError


def _runoff(g, start="2003-01-01", days=730):
    time = xr.date_range(start, periods=days, freq="D", calendar="noleap", use_cftime=True)
    rng = np.random.default_rng(0)
    shape = (days, *g.shape)
    return xr.Dataset({"QOVER": (("time", "lat", "lon"), rng.random(shape) * 1e-5),
                       "QDRAI": (("time", "lat", "lon"), rng.random(shape) * 1e-6)}, coords={"time": time})


def test_lnd2rof_files_as_cmeps_writes_them(tmp_path):
    g = grids.regular(4, 8)
    ro = _runoff(g)
    files = write_lnd2rof(ro, g, tmp_path, case="emu_run")
    assert [f.name for f in files] == ["emu_run.cpl.hx.l2r.2003-01-02-00000.nc",
                                       "emu_run.cpl.hx.l2r.2004-01-02-00000.nc"]
    with xr.open_dataset(files[1], decode_times=False) as ds:
        for fld in ("rofsur", "rofsub", "rofgwl", "rofi"):
            v = ds[f"lndImp_Flrl_{fld}"]
            assert v.dims == ("time", "lndImp_ny", "lndImp_nx") and v.dtype == np.float32
            assert v.attrs["units"] == "kg m-2 s-1"
        assert ds.sizes["time"] == 365 and ds.sizes["lndImp_nx"] == 8 and ds.sizes["lndImp_ny"] == 4
        assert ds.time.attrs["units"] == "days since 2003-01-01 00:00:00" and ds.time.attrs["calendar"] == "noleap"
        np.testing.assert_allclose(ds.time_bnds.values[0], [365.0, 366.0])
        np.testing.assert_allclose(ds.lndImp_Flrl_rofsur.values, ro.QOVER.values[365:].astype(np.float32))
        assert (ds.lndImp_Flrl_rofgwl.values == 0).all() and "rofgwl" in ds.attrs["note"]


def test_case_settings_point_dlnd_at_the_files(tmp_path):
    g = grids.regular(4, 8)
    files = write_lnd2rof(_runoff(g), g, tmp_path / "cplhist", case="emu_run")
    mesh = grids.write_esmf_mesh(g, tmp_path / "lnd_mesh.nc")
    text = case_settings(files, "emu_run", mesh)
    assert "./xmlchange DLND_CPLHIST_CASE=emu_run" in text
    assert f"./xmlchange DLND_CPLHIST_DIR={(tmp_path / 'cplhist').resolve()}" in text
    assert "./xmlchange DLND_CPLHIST_YR_START=2003" in text and "./xmlchange DLND_CPLHIST_YR_END=2004" in text
    m = re.search(r"^rof_forcing:datafiles = (.*)$", text, re.M)
    assert m and [p.split("/")[-1] for p in m.group(1).split(",")] == [f.name for f in files]
    assert "lndImp_Flrl_rofsur Flrl_rofsur" in text
    assert grids.read_grid(mesh).n == g.n  # the mesh file DLND reads is a valid ESMF mesh


def test_bad_runoff_input(tmp_path):
    g = grids.regular(4, 8)
    with pytest.raises(UserError, match="QOVER"):
        write_lnd2rof(_runoff(g).rename(QOVER="X", QDRAI="Y"), g, tmp_path, case="c")
    with pytest.raises(UserError, match="lnd2rof field"):
        write_lnd2rof(_runoff(g), g, tmp_path, case="c", mapping={"Flrl_bogus": "QOVER"})
