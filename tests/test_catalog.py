"""The intake-esm catalog of a PPE round-trips through intake.open_esm_datastore."""
from __future__ import annotations

import json

import dask
import netCDF4
import numpy as np
import pandas as pd
import pytest

from _ingest_ppe import make_ppe
from ppe_ingest.ingest.catalog import write_catalog
from ppe_ingest.ingest.discover import discover
from ppe_ingest.ingest.theta import member_theta


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("ppe")
    make_ppe(root, shared_data("ppe", "paramfiles", "OAAT0000.nc"))
    ppe = discover(root)
    theta, _, _ = member_theta(ppe)
    return write_catalog(ppe, root.parent / "cat.json", theta), ppe, theta


def test_spec_and_csv_columns(catalog):
    path, ppe, theta = catalog
    spec = json.loads(path.read_text())
    agg = spec["aggregation_control"]
    assert agg["variable_column_name"] == "variable"
    types = {a["type"]: a["attribute_name"] for a in agg["aggregations"]}
    assert types == {"union": "variable", "join_existing": "time_range", "join_new": "member_id"}
    df = pd.read_csv(path.with_suffix(".csv"))
    for col in ("component", "stream", "case", "member_id", "frequency", "variable", "path", "time_range",
                "start", "end", "fff", "d_max", "jmaxb1"):
        assert col in df.columns
    assert sorted(df.member_id.unique()) == ppe.members
    assert set(df.stream) == {"h1"} and set(df.frequency) == {"day"}
    row = df[df.member_id == "LHC0003"].iloc[0]
    assert row.fff == pytest.approx(theta.at["LHC0003", "fff"])


def test_reopens_with_intake_and_loads_values_equal_to_files(catalog):
    import intake

    path, ppe, _ = catalog
    cat = intake.open_esm_datastore(str(path))
    assert set(cat.df.member_id) == set(ppe.members)
    # intake-esm opens assets on dask threads and xarray reads netCDF4 attributes outside its lock,
    # which crashes HDF5 intermittently: open single-threaded.
    with dask.config.set(scheduler="single-threaded"):
        dsets = cat.search(variable="QRUNOFF").to_dataset_dict(progressbar=False)
        (ds,) = dsets.values()
        got = ds["QRUNOFF"].sel(member_id="LHC0002").load()
    assert got.sizes["time"] == 730 and ds.sizes["member_id"] == 4
    files = ppe.files("LHC0002")
    want = np.concatenate([netCDF4.Dataset(h.path)["QRUNOFF"][:] for h in files])
    np.testing.assert_array_equal(got.transpose("time", "gridcell").values, want)
