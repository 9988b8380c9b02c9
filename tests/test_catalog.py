"""The intake-esm catalog of a PPE round-trips through intake.open_esm_datastore."""
from __future__ import annotations

import json

import dask
import netCDF4
import numpy as np
import pandas as pd
import pytest

from _ingest_ppe import make_ppe, sim_ppe
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


@pytest.fixture(scope="session")
def sim(tmp_path_factory):
    return sim_ppe(tmp_path_factory)


@pytest.fixture(scope="module")
def sim_catalog(sim, tmp_path_factory):
    ppe = discover(sim)
    theta, _, _ = member_theta(ppe)
    return write_catalog(ppe, tmp_path_factory.mktemp("cat") / "sim.json", theta), ppe, theta


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


@pytest.mark.parametrize("which", ["tiny", "sim"])
def test_reopens_with_intake_and_loads_values_equal_to_files(which, request):
    import intake

    path, ppe, _ = request.getfixturevalue("catalog" if which == "tiny" else "sim_catalog")
    cat = intake.open_esm_datastore(str(path))
    assert set(cat.df.member_id) == set(ppe.members)
    # intake-esm opens assets on dask threads by default, and xarray's netCDF4 backend reads
    # attributes outside its lock, which crashes HDF5 (double free) intermittently
    # (intake-esm#697, xarray#9779). threaded=False (intake-esm's switch for this) opens the
    # files in this thread; the values are then read lazily on dask threads under xarray's lock.
    dsets = cat.search(variable="QRUNOFF").to_dataset_dict(progressbar=False, threaded=False)
    (ds,) = dsets.values()
    with dask.config.set(scheduler="threads", num_workers=2):
        got = ds["QRUNOFF"].load()
    assert got.sizes["time"] == 730 and ds.sizes["member_id"] == len(ppe.members)
    for m in ppe.members:
        want = np.concatenate([netCDF4.Dataset(h.path)["QRUNOFF"][:] for h in ppe.files(m)])
        np.testing.assert_array_equal(got.sel(member_id=m).transpose("time", "gridcell").values, want)
