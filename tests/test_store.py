"""The training store follows the contract the emulator reads (dims, dtypes, split, normalisation)."""
from __future__ import annotations

import datetime
import json
import shutil

import netCDF4
import numpy as np
import pytest
import xarray as xr
from _ingest_ppe import SIM, make_ppe, sim_ppe

from ppe_ingest.ctsmio.surfdata import static_field_names
from ppe_ingest.ctsmio.vocabulary import FORCING, RESPONSES
from ppe_ingest.ingest.discover import discover
from ppe_ingest.ingest.theta import read_design
from ppe_ingest.ingest.writer import write_store


@pytest.fixture(scope="module")
def built(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("ppe")
    make_ppe(root, shared_data("ppe", "paramfiles", "OAAT0000.nc"), members=("LHC0001", "LHC0002", "LHC0003",
                                                                              "LHC0004", "LHC0005"), years=3)
    out = write_store(discover(root), root.parent / "store.nc", seed=3, progress=False,
                      split=dict(val_members=1, test_members=1, test_years=1))
    return root, out


def _file_values(root, member, var):
    files = sorted((root / "hist").glob(f"*_{member}.clm2.h1.*.nc"))
    return np.concatenate([netCDF4.Dataset(f)[var][:] for f in files]).T


def test_contract_layout(built):
    root, out = built
    ds = xr.open_dataset(out, chunks={})
    assert set(ds.dims) == {"member", "gridcell", "time", "param", "field", "norm_var"}
    assert list(ds.member.values) == ["LHC0001", "LHC0002", "LHC0003", "LHC0004", "LHC0005"]
    assert ds.QRUNOFF.dims == ("member", "gridcell", "time") and ds.QRUNOFF.dtype == np.float32
    assert ds.RAIN.dims == ("gridcell", "time") and ds.attrs["forcing_shared_across_members"] == 1
    assert ds.QRUNOFF.attrs["units"] == "mm/s" and ds.EFLX_LH_TOT.attrs["units"] == "W/m^2"
    assert ds.time.dt.calendar == "noleap" and ds.sizes["time"] == 3 * 365
    assert ds.QRUNOFF.encoding["chunksizes"] == (1, 6, 365)
    assert ds.theta.dims == ("member", "param") and ds.theta.dtype == np.float64
    assert list(ds.param.values) == ["fff", "d_max", "jmaxb1"]
    assert list(ds.param_location.values) == ["paramfile", "paramfile", "namelist"]
    assert set(ds.field.values) == {"PCT_SAND", "FMAX"} and ds.static.dims == ("gridcell", "field")
    assert json.loads(ds.attrs["skipped"]) == []
    for v in ("split_member", "split_gridcell", "split_time"):
        assert ds[v].dtype == np.int8 and ds[v].attrs["flag_meanings"] == "train val test"
    assert (ds.split_member.values == 1).sum() == 1 and (ds.split_member.values == 2).sum() == 1
    # CTSM stamps each day at its end: the held-out year is that of each interval's start, a whole year
    starts = [t - datetime.timedelta(days=1) for t in ds.time.values[ds.split_time.values == 2]]
    held = np.unique([t.year for t in starts])
    assert len(held) == 1 and held[0] != 2000 and len(starts) == 365  # never the warm-up year


def test_values_equal_history_files(built):
    root, out = built
    ds = xr.open_dataset(out)
    np.testing.assert_array_equal(ds.QRUNOFF.sel(member="LHC0004").values, _file_values(root, "LHC0004", "QRUNOFF"))
    np.testing.assert_array_equal(ds.RAIN.values, _file_values(root, "LHC0001", "RAIN"))
    assert ds.theta.sel(member="LHC0002", param="fff") == pytest.approx(1.5)
    np.testing.assert_allclose(ds.static.sel(field="PCT_SAND").values, np.linspace(10, 60, 6))


def test_normalisation_on_train_split_with_log_runoff(built):
    _, out = built
    ds = xr.open_dataset(out)
    assert ds.attrs["log_transform_vars"] == "QRUNOFF"
    eps = ds.attrs["log_eps"]
    tm, tg, tt = (ds[v].values == 0 for v in ("split_member", "split_gridcell", "split_time"))
    q = ds.QRUNOFF.values[tm][:, tg][:, :, tt].astype("f8")
    lq = np.log(np.maximum(q, 0) + eps)
    assert ds.norm_mean.sel(norm_var="QRUNOFF") == pytest.approx(lq.mean(), rel=1e-6)
    assert ds.norm_std.sel(norm_var="QRUNOFF") == pytest.approx(lq.std(), rel=1e-5)
    e = ds.EFLX_LH_TOT.values[tm][:, tg][:, :, tt].astype("f8")
    assert ds.norm_mean.sel(norm_var="EFLX_LH_TOT") == pytest.approx(e.mean(), rel=1e-6)
    assert ds.norm_mean.sel(norm_var="fff") == pytest.approx(ds.theta.sel(param="fff").values[tm].mean())


def test_split_is_chosen_by_seed(built, tmp_path):
    root, out = built
    other = write_store(discover(root), tmp_path / "s.nc", seed=4, progress=False,
                        split=dict(val_members=1, test_members=1, test_years=1))
    again = write_store(discover(root), tmp_path / "t.nc", seed=3, progress=False,
                        split=dict(val_members=1, test_members=1, test_years=1))
    a, b, c = (xr.open_dataset(p) for p in (out, other, again))
    assert (a.split_member.values == c.split_member.values).all() and (a.split_time.values == c.split_time.values).all()
    assert not ((a.split_member.values == b.split_member.values).all() and
                (a.split_gridcell.values == b.split_gridcell.values).all())


def test_forcing_that_differs_between_members_gets_a_member_dim(built, tmp_path):
    root, _ = built
    d = tmp_path / "ppe"
    shutil.copytree(root, d)
    f = sorted((d / "hist").glob("*_LHC0003.clm2.h1.*.nc"))[0]
    with netCDF4.Dataset(f, "a") as ds:
        ds["TBOT"][0, 0] = ds["TBOT"][0, 0] + 1.0
    out = write_store(discover(d), tmp_path / "s.nc", progress=False)
    ds = xr.open_dataset(out)
    assert ds.attrs["forcing_shared_across_members"] == 0 and ds.TBOT.dims == ("member", "gridcell", "time")
    assert ds.TBOT.sel(member="LHC0003").values[0, 0] == ds.TBOT.sel(member="LHC0001").values[0, 0] + 1


def test_refuses_to_overwrite_an_input(built):
    root, _ = built
    from ppe_ingest.base.errors import UserError

    f = sorted((root / "hist").glob("*.nc"))[0]
    with pytest.raises(UserError, match="refusing to overwrite an input"):
        write_store(discover(root), f, progress=False)


def test_fill_values_become_missing_and_are_left_out_of_the_statistics(built, tmp_path):
    root, _ = built
    d = tmp_path / "ppe"
    shutil.copytree(root, d)
    f = sorted((d / "hist").glob("*_LHC0002.clm2.h1.*.nc"))[1]
    with netCDF4.Dataset(f, "a") as ds:  # CTSM's spval where a value is missing
        ds["EFLX_LH_TOT"].set_auto_mask(False)
        ds["EFLX_LH_TOT"][10, 3] = np.float32(1e36)
    split = dict(val_members=0, test_members=0, val_gridcells=0, test_gridcells=0, test_years=0)
    ds = xr.open_dataset(write_store(discover(d), tmp_path / "s.nc", progress=False, split=split))
    e = ds.EFLX_LH_TOT.sel(member="LHC0002").values
    assert np.isnan(e[3, 365 + 10]) and np.isfinite(np.delete(e.ravel(), 3 * e.shape[1] + 375)).all()
    every = ds.EFLX_LH_TOT.values.astype("f8")
    assert ds.norm_mean.sel(norm_var="EFLX_LH_TOT") == pytest.approx(np.nanmean(every), rel=1e-6)
    assert ds.norm_std.sel(norm_var="EFLX_LH_TOT") == pytest.approx(np.nanstd(every), rel=1e-5)


@pytest.fixture(scope="session")
def sim(tmp_path_factory):
    return sim_ppe(tmp_path_factory)


def test_simulator_ppe_store(sim, tmp_path):
    """A PPE from `esm-emu simulate` (netCDF-3 history files, one per member) ingests to the contract."""
    out = write_store(discover(sim), tmp_path / "store.nc", progress=False, seed=1,
                      split=dict(val_members=0, test_members=1, test_years=1))
    ds = xr.open_dataset(out, chunks={})
    assert ds.attrs["forcing_shared_across_members"] == 1
    for v in FORCING:
        assert ds[v].dims == ("gridcell", "time") and ds[v].dtype == np.float32
    for v in RESPONSES:
        assert ds[v].dims == ("member", "gridcell", "time") and ds[v].dtype == np.float32
        assert ds[v].encoding["chunksizes"] == (1, 5, 365)
    assert ds.sizes["time"] == 730 and ds.time.dt.calendar == "noleap" and ds.sizes["gridcell"] == 5
    design = read_design(sim / "design.csv")
    np.testing.assert_allclose(ds.theta.sel(member=list(design.index), param=list(design.columns)).values,
                               design.to_numpy(), rtol=1e-6)
    assert np.isfinite(ds.theta_min.values).all() and (ds.theta_min <= ds.theta.min("member")).all()
    assert set(ds.field.values) == {"PCT_SAND", "PCT_CLAY", "ORGANIC", "FMAX", "zbedrock", "SLOPE", "STD_ELEV",
                                    "LAI_MAX", "LAI_MIN"}
    assert set(ds.norm_var.values) == {*FORCING, *RESPONSES, *ds.field.values, *ds.param.values}
    assert np.isfinite(ds.norm_mean.values).all() and (ds.norm_std.values >= 0).all()
    (f,) = sorted((sim / "hist").glob("*_LHC0003.clm2.h1.*.nc"))
    with netCDF4.Dataset(f) as h:
        np.testing.assert_array_equal(ds.ZWT.sel(member="LHC0003").values, h["ZWT"][:].T)
        np.testing.assert_array_equal(ds.PBOT.values, h["PBOT"][:].T)


def test_classic_reader_equals_netcdf4_and_refuses_truncated_or_hdf5_files(sim, built, tmp_path):
    from ppe_ingest.ingest.classic import NotClassic, read_header, read_record_vars

    (f,) = sorted((sim / "hist").glob("*_LHC0001.clm2.h1.*.nc"))  # netCDF-3 64-bit offset, as CTSM writes
    names = ["time", "time_bounds", "mcdate", "RAIN", "QRUNOFF", "ZWT"]
    got = read_record_vars(f, names)
    with netCDF4.Dataset(f) as ds:
        ds.set_auto_maskandscale(False)
        for v in names:
            np.testing.assert_array_equal(got[v], ds[v][:])
            assert got[v].dtype == ds[v].dtype
    assert read_header(f).variables["QRUNOFF"].attrs["units"] == "mm/s"
    cut = tmp_path / f.name
    cut.write_bytes(f.read_bytes()[: f.stat().st_size * 2 // 3])
    with pytest.raises(OSError, match="truncated"):
        read_record_vars(cut, ["QRUNOFF"])
    with pytest.raises(NotClassic):  # netCDF-4/HDF5 files are read with netCDF4-python instead
        read_header(next((built[0] / "hist").glob("*.nc")))


def test_open_ensemble_is_lazy_and_equals_the_store(built):
    import dask

    from ppe_ingest.ingest.writer import open_ensemble

    root, out = built
    ens = open_ensemble(discover(root), ["QRUNOFF", "TBOT"])
    assert ens.QRUNOFF.chunks is not None and ens.QRUNOFF.dims == ("member", "gridcell", "time")
    with dask.config.set(scheduler="threads", num_workers=4):  # netCDF4 reads under NC_LOCK
        got = ens.QRUNOFF.values
    np.testing.assert_array_equal(got, xr.open_dataset(out).QRUNOFF.values)
    assert ens.time.dt.calendar == "noleap"


def test_simulator_store_carries_the_simulator_lai_and_feeds_it_back(sim, tmp_path):
    """LAI_MAX/LAI_MIN derived from the surfdata's MONTHLY_LAI are the values the simulator ran with, and
    the simulator forward built on the store takes them: it reproduces a member's history."""
    import torch

    from esm_emu.forward import SimulatorForward
    from esm_emu.inverse.pipeline import load_entities
    from esm_emu.inverse.problem import attributes
    from ppe_ingest.simulator.sites import builtin_sites

    out = write_store(discover(sim), tmp_path / "store.nc", progress=False, seed=1,
                      split=dict(val_members=0, test_members=0, test_years=0))
    ds = xr.open_dataset(out)
    sites = builtin_sites(SIM["n_gridcells"], SIM["seed"])
    np.testing.assert_allclose(ds.grid1d_lat.values, sites.grid1d_lat.values)
    for k in ("LAI_MAX", "LAI_MIN"):
        np.testing.assert_allclose(ds.static.sel(field=k).values, sites[k].values, rtol=1e-12)
        assert ds.norm_std.sel(norm_var=k) > 0
    assert "MONTHLY_LAI" in ds.static.attrs["lai_derivation"] and "LAI_MAX:unitless" in ds.static.attrs["units"]
    assert static_field_names(next(sim.glob("surfdata_*.nc"))) == [str(f) for f in ds.field.values]

    ent = load_entities({"store": str(out)})
    params = [str(p) for p in ds.param.values]
    fwd = SimulatorForward.for_entities(ent, params, ("QRUNOFF", "EFLX_LH_TOT"))
    assert {"LAI_MAX", "LAI_MIN", "ORGANIC", "STD_ELEV"} <= set(fwd.static_names)
    _, names = attributes(ent, "gridcell", fwd.static_names, fwd.forcing_names)
    assert {"LAI_MAX", "LAI_MIN"} <= set(names)
    forcing = torch.as_tensor(np.stack([ent[v].transpose("gridcell", "time").values for v in fwd.forcing_names], -1),
                              dtype=torch.float64)
    static = torch.as_tensor(ent.static.sel(field=fwd.static_names).values, dtype=torch.float64)
    theta = torch.as_tensor(np.repeat(ds.theta.sel(member=["LHC0002"]).values, forcing.shape[0], 0))
    with torch.no_grad():
        got = fwd(forcing, static, theta).numpy()
    for i, v in enumerate(("QRUNOFF", "EFLX_LH_TOT")):
        np.testing.assert_allclose(got[..., i], ds[v].sel(member="LHC0002").values, rtol=2e-3,
                                   atol=1e-9 if i == 0 else 1e-3)


def test_static_field_and_parameter_of_the_same_name_keep_their_own_statistics(sim, tmp_path):
    """FMAX is a surfdata field and, when a PPE perturbs it, a parameter: each is normalised by its own stats."""
    from esm_emu.normalize import Normalizer

    out = write_store(discover(sim), tmp_path / "store.nc", progress=False, seed=1,
                      split=dict(val_members=0, test_members=1, test_years=1))
    ds = xr.open_dataset(out)
    assert "FMAX" in ds.param.values and "FMAX" in ds.field.values
    group = dict(zip(zip(ds.norm_group.values, ds.norm_var.values), ds.norm_mean.values))
    static_mean = ds.static.sel(field="FMAX").values[ds.split_gridcell.values == 0].mean()
    param_mean = ds.theta.sel(param="FMAX").values[ds.split_member.values == 0].mean()
    assert group[("static", "FMAX")] == pytest.approx(static_mean)
    assert group[("param", "FMAX")] == pytest.approx(param_mean)
    norm = Normalizer.from_store(ds, ["RAIN"], ["FMAX"], ["FMAX"], ["QRUNOFF"])
    assert float(norm.static.mean[0]) == pytest.approx(static_mean, rel=1e-6)
    assert float(norm.theta.mean[0]) == pytest.approx(param_mean, rel=1e-6)
