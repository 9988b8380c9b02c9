"""Parameter tables: the real CLM5 PPE and CTSM-over-CAMELS tables load, and ours is consistent."""
from __future__ import annotations

import numpy as np
import pytest

from ppe_ingest.base.errors import UserError
from ppe_ingest.ctsmio.paramfile import read_paramfile
from ppe_ingest.param_table import ParamSpec, default_table_path, load_oaat_key, load_param_table

CTSM51 = ("ctsm", "paramfiles", "ctsm51_params.c210217_kwo.c210222.nc")


def test_lhc_220926_loads_with_percent_and_pft_bounds(shared_data):
    base = shared_data(*CTSM51)
    t = load_param_table(shared_data("ppe", "param_tables", "lhc_220926.csv"), base_paramfile=base)
    assert len(t) == 32 and t.names[0] == "FUN_fracfixers"
    assert t["jmaxb1"].location == "namelist" and t["fff"].location == "paramfile"
    assert t.bounds("fff") == (0.02, 5.0)
    assert t.value("fff", 0.5) == pytest.approx(0.02 + 4.98 * 0.5)
    # sucsat_sf 0.5..5 absolute; froot_leaf 20percent of a per-PFT array -> common multiplier 0.8..1.2
    assert t.bounds("froot_leaf") == pytest.approx((0.8, 1.2)) and t["froot_leaf"].transform == "multiplicative"
    # per-PFT bounds: every PFT at min + (max - min) * s
    k = t["kmax"]
    assert k.pft_bounds and k.pft_min.shape == (79,)
    v = t.value("kmax", 0.25)
    assert v[1] == pytest.approx(3e-09 + 0.25 * (3.8e-08 - 3e-09))
    # percent bounds on a scalar use the base file's default: lmrha 50percent of 46390
    assert t.bounds("lmrha") == pytest.approx((46390 * 0.5, 46390 * 1.5))


def test_lhc_percent_needs_default(shared_data):
    t = load_param_table(shared_data("ppe", "param_tables", "lhc_220926.csv"))
    with pytest.raises(UserError, match="froot_leaf.*base paramfile"):
        t.bounds("froot_leaf")
    # the KCN group row is a common multiplier of its six variables: 90percent/900percent is 0.1..10
    # whatever their defaults
    assert t.bounds("KCN") == pytest.approx((0.1, 10.0))
    # soilpsi_off is written falling (-0.64, -0.96): s runs from min to max as written, bounds are sorted
    assert t["soilpsi_off"].theta(0.25) == pytest.approx(-0.72) and t.bounds("soilpsi_off") == (-0.96, -0.64)


def test_ppe_params_spreadsheet_loads_final_rows(shared_data):
    t = load_param_table(shared_data("ppe", "param_tables", "params.csv"), base_paramfile=shared_data(*CTSM51))
    locs = [p.location for p in t]
    assert len(t) == 205 and locs.count("paramfile") == 185 and locs.count("namelist") == 20
    # hksat_sf 90percent/900percent -> 0.1..10 (LAYOUT.md)
    assert t.bounds("hksat_sf") == pytest.approx((0.1, 10.0))
    assert t["baseflow_scalar"].location == "namelist" and t.bounds("baseflow_scalar") == (0.0005, 0.1)


def test_camels_table_loads(shared_data):
    t = load_param_table(shared_data("camels_us", "ctsm_calibration", "CTSM_CAMELS_calibparam_2410.csv"))
    assert len(t) == 16 and t.names[0] == "watsat_sf"  # the UTF-8 BOM is not part of the first column
    assert t["FMAX"].location == "fsurdat" and t["zbedrock"].location == "fsurdat"
    assert t["baseflow_scalar"].location == "namelist"
    assert t["fff"].transform == "multiplicative" and t.bounds("fff") == (0.001, 20.0)
    pr = t["precip_repartition_nonglc_all_rain_t"]
    assert pr.transform == "additive" and len(pr.binding) == 3
    assert "precip_repartition_glc_all_snow_t" in pr.binding
    # multiplicative: the base field scaled by theta/default; additive: shifted by theta - default
    assert t["medlynslope"].to_field(4.840379695 * 2, np.array([1.0, 2.0])) == pytest.approx([2.0, 4.0])
    assert pr.to_field(3.0, np.array(2.0)) == pytest.approx(3.0)


def test_our_default_table(shared_data):
    base = shared_data(*CTSM51)
    t = load_param_table(default_table_path(), base_paramfile=base)
    expected = {"fff", "FMAX", "zbedrock", "hksat_sf", "watsat_sf", "bsw_sf", "sucsat_sf", "baseflow_scalar",
                "n_baseflow", "d_max", "medlynslope", "liq_canopy_storage_scalar", "accum_factor",
                "n_melt_coef", "interception_fraction"}
    assert set(t.names) == expected
    vals = read_paramfile(base)
    for p in t:
        lo, hi = t.bounds(p.name)
        assert lo < hi, p.name
        assert lo <= p.default <= hi, p.name
        if p.location == "paramfile" and not p.pft:
            assert float(vals[p.name]) == pytest.approx(p.default), p.name  # CTSM default from the paramfile
    assert t["medlynslope"].transform == "multiplicative" and t["medlynslope"].pft
    assert t["FMAX"].location == "fsurdat" and t["interception_fraction"].location == "namelist"
    assert "paramfile" in t["baseflow_scalar"].note
    frame = t.to_frame()
    assert list(frame.index) == t.names and {"location", "min", "max", "transform"} <= set(frame.columns)


def test_oaat_key_is_not_a_table(shared_data):
    p = shared_data("ppe", "param_tables", "OAAT_20210408.csv")
    with pytest.raises(UserError, match="member key"):
        load_param_table(p)
    key = load_oaat_key(p)
    assert len(key) == 401 and tuple(key.iloc[2]) == ("OAAT0002", "taulnir", "max")


def test_bad_tables(tmp_path):
    bad = tmp_path / "t.csv"
    bad.write_text("name,location,default,min,max,transform\nfff,paramfile,0.5,5,0.02,value\n")
    with pytest.raises(UserError, match="t.csv: row 2 \\(fff\\): min 5.0 is greater than max"):
        load_param_table(bad)
    bad.write_text("name,location,default,min,max,transform\nfff,somewhere,0.5,0.1,1,value\n")
    with pytest.raises(UserError, match="fff: location 'somewhere'"):
        load_param_table(bad)
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="unknown parameter table format"):
        load_param_table(bad)
    with pytest.raises(UserError, match="not found"):
        load_param_table(tmp_path / "missing.csv")


def test_value_transform():
    p = ParamSpec("x", "paramfile", default=2.0, min=1.0, max=3.0)
    assert p.value(0.0) == 1.0 and p.value(1.0) == 3.0
    assert np.array_equal(p.to_field(2.5, np.zeros(3)), [2.5, 2.5, 2.5])
