"""The training-store contract: what ingest writes is what training, evaluation and inversion read."""
from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from ppe_ingest import store as contract
from ppe_ingest.base.errors import UserError


def _tiny_store(path, drop=None):
    M, G, T = 3, 4, 5
    ds = xr.Dataset(
        {"RAIN": (("gridcell", "time"), np.ones((G, T), "f4")),
         "QRUNOFF": (("member", "gridcell", "time"), np.ones((M, G, T), "f4")),
         "theta": (("member", "param"), np.ones((M, 1))),
         "static": (("gridcell", "field"), np.ones((G, 2))),
         "split_member": ("member", np.array([0, 1, 2], "i1")),
         "split_gridcell": ("gridcell", np.array([0, 0, 1, 2], "i1")),
         "split_time": ("time", np.zeros(T, "i1")),
         "norm_mean": ("norm_var", np.array([1.0, 2.0, 3.0, 4.0, 5.0])),
         "norm_std": ("norm_var", np.ones(5)),
         "norm_group": ("norm_var", np.array(["variable", "variable", "static", "static", "param"], object))},
        coords={"param": ["FMAX"], "field": ["PCT_SAND", "FMAX"],
                "norm_var": ["RAIN", "QRUNOFF", "PCT_SAND", "FMAX", "FMAX"]},
        attrs={"log_transform_vars": "QRUNOFF", "log_eps": 1e-8})
    if drop:
        ds = ds.drop_vars(drop)
    ds.to_netcdf(path)
    return path


def test_open_store_reads_names_and_statistics_by_group(tmp_path):
    ds = contract.open_store(_tiny_store(tmp_path / "s.nc"))
    assert contract.forcing_names(ds) == ["RAIN"] and contract.response_names(ds) == ["QRUNOFF"]
    assert contract.forcing_shared(ds)
    st = contract.norm_stats(ds)
    # FMAX is both a static field and a parameter: each group keeps its own statistics
    assert st.lookup(["FMAX"], contract.GROUP_STATIC)[0] == [4.0]
    assert st.lookup(["FMAX"], contract.GROUP_PARAM)[0] == [5.0]
    assert st.lookup(["QRUNOFF"], contract.GROUP_VARIABLE)[2] == [True]
    assert contract.static_values(ds, ["FMAX"]).shape == (4, 1)
    assert "member" not in contract.entities_view(ds).dims


@pytest.mark.parametrize("missing", ["split_time", "norm_std", "theta"])
def test_open_store_names_what_is_missing(tmp_path, missing):
    with pytest.raises(UserError, match=f"variable '{missing}' is missing"):
        contract.open_store(_tiny_store(tmp_path / "s.nc", drop=[missing]))


def test_open_store_refuses_a_file_that_is_not_netcdf(tmp_path):
    bad = tmp_path / "bad.nc"
    bad.write_text("not netcdf")
    with pytest.raises(UserError, match="cannot open as a training store"):
        contract.open_store(bad)
    with pytest.raises(UserError, match="training store not found"):
        contract.open_store(tmp_path / "absent.nc")
