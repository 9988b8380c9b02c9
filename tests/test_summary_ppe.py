"""Summary-PPE store from the real CLM5 PPE outputs and LHC design."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from ppe_ingest.ingest.summary import build_summary_store


@pytest.fixture(scope="module")
def paths(shared_data):
    return (shared_data("ppe", "outputs", "fivevars_gmean_amean_2005-2014.nc"),
            shared_data("ppe", "outputs", "lhc220926.nc"), shared_data("ppe", "param_tables", "lhc_220926.csv"))


def test_summary_store_aligns_members_and_maps_s_to_values(paths, shared_data, tmp_path):
    outputs, design, table = paths
    ds = build_summary_store(outputs, design, table, out=tmp_path / "s.nc",
                             base_paramfile=shared_data("ppe", "paramfiles", "OAAT0000.nc"))
    assert ds.theta.dims == ("member", "param") and ds.y.dims == ("member", "output")
    assert ds.sizes["member"] == 500 and ds.sizes["param"] == 32 and ds.sizes["output"] == 5
    assert ds.attrs["members_without_design"] == "LHC0000"
    raw = xr.open_dataarray(outputs)
    np.testing.assert_array_equal(ds.y.sel(member="LHC0250").values, raw.sel(ens="LHC0250").values)
    assert ds.y_default.sel(output="TLAI") == pytest.approx(2.125, abs=1e-3)
    txt = pd.read_csv(shared_data("ppe", "param_tables", "lhc220926.txt"), index_col=0)
    np.testing.assert_allclose(ds.s.values, txt.loc[ds.member.values, ds.param.values].values, atol=1e-12)
    s = ds.s.sel(member="LHC0007", param="d_max")
    assert ds.theta.sel(member="LHC0007", param="d_max") == pytest.approx(10 + 50 * float(s))
    assert ds.theta_kind.sel(param="kmax") == "s (per-PFT bounds)"
    back = xr.open_dataset(tmp_path / "s.nc")
    np.testing.assert_array_equal(back.theta.values, ds.theta.values)


def test_design_member_without_outputs_is_an_error(paths, tmp_path):
    from ppe_ingest.base.errors import UserError

    outputs, design, table = paths
    d = xr.open_dataarray(design)
    d = d.assign_coords(ens=[*d.ens.values[:-1], "LHC9999"])
    d.to_netcdf(tmp_path / "d.nc")
    with pytest.raises(UserError, match="member LHC9999 of the design has no outputs"):
        build_summary_store(outputs, tmp_path / "d.nc", table)
