"""Discovery of PPE members, tapes, time ranges and member parameter values (real PPE files and a tiny PPE)."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from _ingest_ppe import CASE, make_ppe, sim_ppe

from ppe_ingest.base.errors import UserError
from ppe_ingest.ctsmio.vocabulary import FORCING, RESPONSES
from ppe_ingest.ingest.discover import discover
from ppe_ingest.ingest.theta import check_design, member_theta, ppe_table, read_design


@pytest.fixture(scope="session")
def sim(tmp_path_factory):
    return sim_ppe(tmp_path_factory)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("ppe")
    theta = make_ppe(root, shared_data("ppe", "paramfiles", "OAAT0000.nc"))
    return root, theta


def test_discovers_members_tapes_time_ranges_and_layout(tiny):
    root, _ = tiny
    ppe = discover(root)
    assert ppe.members == ["LHC0001", "LHC0002", "LHC0003", "LHC0004"]
    assert ppe.tapes == ["h1"] and ppe.layout == "1d"
    files = ppe.files("LHC0002")
    assert [h.time_range for h in files] == ["20000102-20010101", "20010102-20020101"]
    assert {h.case for h in files} == {CASE} and files[0].frequency == "day"
    assert {"QRUNOFF", "RAIN", "TBOT"} <= set(files[0].variables)
    assert ppe.design is not None and ppe.surfdata is not None


def test_theta_comes_from_paramfiles_and_namelist_mods(tiny):
    root, want = tiny
    ppe = discover(root)
    theta, location, _ = member_theta(ppe)
    for m, vals in want.items():
        for p, v in vals.items():
            assert theta.at[m, p] == pytest.approx(v)
    assert location == {"fff": "paramfile", "d_max": "paramfile", "jmaxb1": "namelist"}
    check_design(theta, read_design(ppe.design), str(ppe.design), ppe.report)  # agrees: no error


def test_design_mismatch_names_member_parameter_and_both_values(tiny, tmp_path):
    root, _ = tiny
    d = tmp_path / "ppe"
    shutil.copytree(root, d)
    design = pd.read_csv(d / "design.csv", index_col=0)
    design.loc["LHC0003", "d_max"] = 99.0
    design.to_csv(d / "design.csv")
    ppe = discover(d)
    theta, _, _ = member_theta(ppe)
    with pytest.raises(UserError, match=r"LHC0003.*parameter d_max: design table has 99, the member's files have 20"):
        check_design(theta, read_design(ppe.design), str(ppe.design), ppe.report)


def test_real_ppe_member_paramfiles_and_namelist_mods(shared_data):
    root = shared_data("ppe", "paramfiles").parent
    ppe = discover(root)
    assert "OAAT0000" in ppe.members and "OAAT0034" in ppe.members and len(ppe.paramfiles) == 3
    theta, location, reduction = member_theta(ppe)
    # Only taulnir differs between the three real paramfiles; jmaxb1 and cli_scale come from namelist_mods.
    assert {"taulnir", "jmaxb1", "cli_scale"} <= set(theta.columns)
    assert location["taulnir"] == "paramfile" and location["jmaxb1"] == "namelist"
    assert theta.at["OAAT0013", "jmaxb1"] == pytest.approx(0.05)
    assert theta.at["OAAT0031", "cli_scale"] == pytest.approx(0.02)
    assert theta.at["OAAT0032", "cli_scale"] == pytest.approx(0.03)
    t = theta["taulnir"]
    assert t["OAAT0001"] < t["OAAT0000"] < t["OAAT0002"]  # min and max perturbations
    assert reduction["taulnir"] == "mean over the array"


def test_member_names_with_other_prefixes_and_underscored_cases(tmp_path, shared_data):
    real = shared_data("ppe", "paramfiles", "OAAT0000.nc")
    make_ppe(tmp_path, real, members=("PHSens001", "PHSens002"), years=1)
    ppe = discover(tmp_path)
    assert ppe.members == ["PHSens001", "PHSens002"]
    assert {h.case for h in ppe.hist} == {CASE}  # "PPEn11_test" keeps its underscore


def test_multi_year_file_time_range(tmp_path, shared_data):
    from _ingest_ppe import hist_values, write_hist

    make_ppe(tmp_path, shared_data("ppe", "paramfiles", "OAAT0000.nc"), members=("LHC0001",), years=1)
    f = next((tmp_path / "hist").glob("*.nc"))
    f.unlink()
    lat, lon = np.linspace(30, 45, 6), np.linspace(250, 280, 6)
    vals = {v: np.concatenate([hist_values(v, 0, 0.5, y, 6) for y in range(3)]) for v in ("RAIN", "QRUNOFF")}
    import netCDF4

    write_hist(f, vals, 2000, 2000, lat, lon)
    with netCDF4.Dataset(f, "a") as ds:
        ds["time"][:] = np.arange(365 * 3) + 1.0
    (h,) = discover(tmp_path).hist
    assert h.time_range == "20000102-20030101" and len(h.times) == 3 * 365


def test_simulator_ppe_members_files_and_theta_agree_with_its_design(sim):
    ppe = discover(sim)
    assert ppe.members == ["LHC0001", "LHC0002", "LHC0003"]
    assert ppe.tapes == ["h1"] and ppe.layout == "1d" and len(ppe.hist) == 3
    (h,) = ppe.files("LHC0002")  # one multi-year file per member
    assert h.time_range == "20000102-20020101" and h.frequency == "day" and len(h.times) == 730
    assert h.calendar == "noleap" and h.lat.size == 5
    assert set(FORCING) | set(RESPONSES) <= set(h.variables)
    theta, location, _ = member_theta(ppe, table=ppe_table(ppe))
    design = read_design(ppe.design)
    np.testing.assert_allclose(theta.loc[design.index, design.columns].to_numpy(), design.to_numpy(), rtol=1e-6)
    assert location["fff"] == "paramfile" and location["baseflow_scalar"] == "namelist"
    check_design(theta, design, str(ppe.design), ppe.report)
