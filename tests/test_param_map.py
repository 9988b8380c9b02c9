"""The inferred-parameters contract: netCDF round trip, CF/provenance attributes, clusters, write-back."""
from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from esm_emu.inverse.param_map import build_param_map, cluster_param_map, read_param_map, write_param_map
from ppe_ingest.base.errors import UserError


def _map(n=30, seed=0):
    rng = np.random.default_rng(seed)
    theta = np.column_stack([np.r_[rng.uniform(0.1, 0.2, n // 2), rng.uniform(0.6, 0.7, n - n // 2)],
                             rng.uniform(0.5, 3, n)])
    return build_param_map(np.arange(n), theta, 0.05 * theta, ["FMAX", "fff"], "gridcell",
                           lat=rng.uniform(30, 45, n), lon=rng.uniform(-110, -80, n), observed=np.arange(n) < 10,
                           lo=[0.05, 0.02], hi=[0.8, 5.0], default=[0.26, 0.5],
                           provenance={"forward_model": "emulator", "emulator_checkpoint_sha256": "ab" * 32,
                                       "observation_sources": ["obs/camels.nc"], "config": {"seed": 3}})


def test_round_trip_keeps_values_cf_attributes_and_provenance(tmp_path):
    ds = _map()
    path = write_param_map(ds, tmp_path / "map.nc")
    back = read_param_map(path)
    assert back["theta"].dims == ("gridcell", "param")
    np.testing.assert_allclose(back["theta"].values, ds["theta"].values)
    np.testing.assert_allclose(back["theta_std"].values, ds["theta_std"].values)
    assert list(back["param"].values) == ["FMAX", "fff"]
    assert back.attrs["Conventions"].startswith("CF-")
    assert back.attrs["emulator_checkpoint_sha256"] == "ab" * 32
    assert json.loads(back.attrs["observation_sources"]) == ["obs/camels.nc"]
    assert json.loads(back.attrs["config"]) == {"seed": 3}
    assert back["grid1d_lat"].attrs["units"] == "degrees_north"
    assert int(back["observed"].sum()) == 10


def test_write_refuses_to_overwrite_an_input_and_leaves_no_partial_file(tmp_path):
    ds = _map()
    src = tmp_path / "in.nc"
    src.write_bytes(b"input")
    with pytest.raises(UserError, match="refusing to overwrite"):
        write_param_map(ds, src, inputs=[src])
    assert src.read_bytes() == b"input"
    assert [p.name for p in tmp_path.iterdir()] == ["in.nc"]


def test_read_rejects_a_file_that_is_not_a_parameter_map(tmp_path):
    p = tmp_path / "other.nc"
    xr.Dataset({"x": ("gridcell", np.arange(3.0))}).to_netcdf(p)
    with pytest.raises(UserError, match="theta is missing"):
        read_param_map(p)
    with pytest.raises(UserError, match="not found"):
        read_param_map(tmp_path / "absent.nc")


def test_clusters_separate_distinct_parameter_groups():
    ds = _map()
    cl = cluster_param_map(ds, 2, params=["FMAX"], seed=1)
    lab = cl["cluster"].values
    # the two FMAX groups (0.1-0.2 and 0.6-0.7) are the two clusters
    assert len(set(lab[:15])) == 1 and len(set(lab[15:])) == 1 and lab[0] != lab[-1]
    fm = cl["theta_cluster"].sel(param="FMAX").values
    assert sorted(np.round(fm, 1)) == [0.1, 0.7] or sorted(np.round(fm, 2))[0] < 0.2 < sorted(fm)[1]


def test_map_feeds_write_ctsm(tmp_path, shared_data):
    from esm_emu.writers import write_ctsm_files

    fsurdat = shared_data("ctsm", "pecan", "surfdata_1x1_brazil_16pfts_Irrig_CMIP6_simyr2000_c171214.nc")
    ds = build_param_map([0], [[0.33]], [[0.01]], ["FMAX"], "gridcell")
    out = write_ctsm_files(tmp_path / "ctsm", fsurdat=fsurdat, values=ds, log=lambda *_: None)
    new = xr.open_dataset(out["fsurdat"][0])
    assert float(new["FMAX"].values.ravel()[0]) == pytest.approx(0.33)
