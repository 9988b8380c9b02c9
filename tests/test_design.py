"""PPE designs: Latin hypercube properties and member files that read back to the design values."""
from __future__ import annotations

import numpy as np
import pytest

from ppe_ingest.ctsmio.paramfile import read_paramfile
from ppe_ingest.ctsmio.user_nl import read_user_nl
from ppe_ingest.design import NAMELIST_HEADER, latin_hypercube, make_design, write_member_files
from ppe_ingest.param_table import default_table_path, load_param_table

CTSM51 = ("ctsm", "paramfiles", "ctsm51_params.c210217_kwo.c210222.nc")


def test_latin_hypercube_strata():
    x = latin_hypercube(20, 3, seed=1)
    assert x.shape == (20, 3) and (x >= 0).all() and (x < 1).all()
    for j in range(3):  # exactly one point in each of the 20 strata of every dimension
        assert sorted(np.floor(x[:, j] * 20).astype(int)) == list(range(20))
    assert np.array_equal(x, latin_hypercube(20, 3, seed=1))
    assert not np.array_equal(x, latin_hypercube(20, 3, seed=2))


def test_make_design_values_and_names():
    t = load_param_table(default_table_path())
    d = make_design(t, 8, seed=3, include_default=True)
    assert list(d.member.values[:3]) == ["LHC0000", "LHC0001", "LHC0002"] and d.sizes["member"] == 9
    lo, hi = d.theta_min.values, d.theta_max.values
    th = d.theta.values[1:]
    assert np.allclose(th, lo + (hi - lo) * d.s.values[1:])
    assert np.allclose(d.theta.sel(member="LHC0000"), [p.default for p in t])
    assert d.location.sel(param="FMAX").item() == "fsurdat"


def test_member_files_round_trip(shared_data, tmp_path):
    base = shared_data(*CTSM51)
    t = load_param_table(default_table_path(), base_paramfile=base)
    d = make_design(t, 3, seed=0, include_default=True)
    paths = write_member_files(d, tmp_path, base, t)
    assert len(paths) == 8 and all(p.exists() for p in paths)
    base_vals = read_paramfile(base)
    for m in d.member.values:
        vals = read_paramfile(tmp_path / "paramfiles" / f"{m}.nc")
        nl = read_user_nl(tmp_path / "namelist_mods" / f"{m}.txt")
        text = (tmp_path / "namelist_mods" / f"{m}.txt").read_text().splitlines()
        assert text[0] == NAMELIST_HEADER and any("FMAX" in line and line.startswith("!") for line in text)
        for p in t:
            theta = float(d.theta.sel(member=m, param=p.name))
            if p.location == "paramfile" and p.name == "medlynslope":
                assert np.allclose(vals[p.name], base_vals[p.name] * theta / 4.84)
            elif p.location == "paramfile":
                assert float(vals[p.name]) == theta, (m, p.name)
            elif p.location == "namelist":
                assert nl[p.name] == theta, (m, p.name)
            else:
                assert p.name not in nl and np.array_equal(vals.get(p.name, 0), 0)
        others = [k for k in base_vals if k not in t.names]
        assert all(np.array_equal(vals[k], base_vals[k]) for k in others)
    # the default member's paramfile holds the base values
    v0 = read_paramfile(tmp_path / "paramfiles" / "LHC0000.nc")
    assert all(np.array_equal(v0[k], base_vals[k]) for k in base_vals if k != "medlynslope")
    assert np.allclose(v0["medlynslope"], base_vals["medlynslope"])


def test_pft_bounds_member(shared_data, tmp_path):
    base = shared_data(*CTSM51)
    t = load_param_table(shared_data("ppe", "param_tables", "lhc_220926.csv"), base_paramfile=base)
    d = make_design(t, 2, seed=5, names=["kmax", "medlynslope", "jmaxb1", "leafcn"])
    write_member_files(d, tmp_path, base, t)
    vals = read_paramfile(tmp_path / "paramfiles" / "LHC0002.nc", ["kmax", "medlynslope", "leafcn"])
    s = float(d.s.sel(member="LHC0002", param="kmax"))
    k = t["kmax"]
    assert np.allclose(vals["kmax"], k.pft_min + (k.pft_max - k.pft_min) * s)  # every segment, every PFT
    f = float(d.theta.sel(member="LHC0002", param="leafcn"))
    assert 0.7 <= f <= 1.3
    assert np.allclose(vals["leafcn"], read_paramfile(base, ["leafcn"])["leafcn"] * f)
    assert read_user_nl(tmp_path / "namelist_mods" / "LHC0002.txt")["jmaxb1"] == pytest.approx(
        float(d.theta.sel(member="LHC0002", param="jmaxb1")))


def test_design_files_round_trip(tmp_path):
    import pandas as pd
    import xarray as xr

    from ppe_ingest.design import write_design

    t = load_param_table(default_table_path())
    d = make_design(t, 5, seed=7)
    nc, csv = write_design(d, tmp_path)
    back = xr.load_dataset(nc)
    assert list(back.member.values) == list(d.member.values) and np.array_equal(back.theta.values, d.theta.values)
    assert back.location.sel(param="baseflow_scalar").item() == "namelist"
    df = pd.read_csv(csv, index_col="member")
    assert list(df.columns) == t.names and np.array_equal(df.values, d.theta.values)  # exact (17 digits)


def test_real_lhc_table_with_its_kcn_group_round_trips(shared_data, tmp_path):
    """All 32 rows of the CLM5 PPE's LHC table resolve against the PPE's own base paramfile, the KCN
    group row scales its six nitrogen-cost variables together, and ingest's reader recovers every
    member's design values (KCN included) from the files alone."""
    import shutil

    from ppe_ingest.design import write_design
    from ppe_ingest.ingest.discover import discover
    from ppe_ingest.ingest.theta import check_design, member_theta, read_design
    from ppe_ingest.param_table import PPE_GROUPS

    base = shared_data("ppe", "paramfiles", "OAAT0000.nc")
    t = load_param_table(shared_data("ppe", "param_tables", "lhc_220926.csv"), base_paramfile=base)
    assert len(t.names) == 32
    for p in t:
        lo, hi = p.bounds()  # every row usable by a design, a wave or a calibration
        assert lo < hi, p.name
    kcn = t["KCN"]
    assert kcn.group and kcn.targets == list(PPE_GROUPS["KCN"]) and kcn.bounds() == pytest.approx((0.1, 10.0))
    d = make_design(t, 3, seed=11)
    write_member_files(d, tmp_path, base, t)
    write_design(d, tmp_path)
    shutil.copyfile(base, tmp_path / "paramfile_default.nc")
    b = read_paramfile(base, kcn.targets)
    f = float(d.theta.sel(member="LHC0002", param="KCN"))
    got = read_paramfile(tmp_path / "paramfiles" / "LHC0002.nc", kcn.targets)
    for v in kcn.targets:
        np.testing.assert_allclose(got[v], b[v] * f, rtol=1e-6)
    ppe = discover(tmp_path)
    theta, _, _ = member_theta(ppe, t)
    design = read_design(tmp_path / "design.csv")
    np.testing.assert_allclose(theta.loc[design.index, "KCN"], design["KCN"], rtol=1e-5)
    check_design(theta, design, "design.csv", ppe.report)
    assert not ppe.report.problems, ppe.report.problems
