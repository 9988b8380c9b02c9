"""Group parameters through `esm-emu write-ctsm` (and the PPE member writer): a group such as the CLM5
PPE's KCN is no file variable, so its value is written to each of its target variables, the way the
PPE wrote its members; bad group values are refused before any file exists."""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hostile import Case, check_refused, run_cli

from ppe_ingest.ctsmio.paramfile import read_paramfile
from ppe_ingest.ctsmio.surfdata import create_surfdata_1d, read_surfdata
from ppe_ingest.ctsmio.user_nl import read_user_nl
from ppe_ingest.param_table import PPE_GROUPS, load_param_table

BASE = ("ppe", "paramfiles", "OAAT0000.nc")  # the PPE's default member: its base paramfile (PROVENANCE.md)
LHC = ("ppe", "param_tables", "lhc_220926.csv")
KCN = list(PPE_GROUPS["KCN"])
PRECIP = ["precip_repartition_glc_all_rain_t", "precip_repartition_glc_all_snow_t",
          "precip_repartition_nonglc_all_rain_t", "precip_repartition_nonglc_all_snow_t"]


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def ppe_member_value(default, lo_spec: str, hi_spec: str, s: float):
    """What the CLM5 PPE's own scripts give a flagged variable at unit-cube position s: each target's
    percent bounds resolved against its own default (parse_val), then min + (max - min) * s."""
    lo = default - float(lo_spec.split("percent")[0]) / 100 * default
    hi = default + float(hi_spec.split("percent")[0]) / 100 * default
    return lo + (hi - lo) * s


def _site_map(path, params, rows, sites=("a", "b")):
    xr.Dataset({"theta": (("site", "param"), np.asarray(rows, dtype=float))},
               coords={"site": list(sites), "param": list(params)}).to_netcdf(path)
    return path


def test_kcn_from_a_parameter_map_is_written_to_its_six_targets_as_the_ppe_wrote_its_members(shared_data, tmp_path):
    """LHC0001's real KCN draw (lhc220926.txt) through write-ctsm gives each N-cost variable exactly
    the PPE's own value (its own default, 90percent/900percent, same s), and the same as the member
    writer; nothing else in the paramfile changes and KCN is never a variable of the output."""
    from ppe_ingest.design import write_member_files

    base, table = shared_data(*BASE), shared_data(*LHC)
    design = pd.read_csv(shared_data("ppe", "param_tables", "lhc220926.txt"), index_col="member")
    rows = pd.read_csv(table, dtype=str, keep_default_na=False).set_index("param")
    s_kcn, s_fff = float(design.loc["LHC0001", "KCN"]), float(design.loc["LHC0001", "fff"])
    t = load_param_table(table, base_paramfile=base)
    theta_kcn, theta_fff = float(t["KCN"].theta(s_kcn)), float(t["fff"].theta(s_fff))
    assert 0.1 < theta_kcn < 10 and theta_kcn != 1
    m = _site_map(tmp_path / "map.nc", ["KCN", "fff"], [[theta_kcn, theta_fff], [theta_kcn, theta_fff]])
    before = sha(base), sha(m)
    out = tmp_path / "out"
    r = run_cli(["write-ctsm", "--out", out, "--paramfile", base, "--table", table, "--values", m])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[-1] == str(out / base.name) and not lines[-2].startswith("/")
    assert any(ln.startswith("note: KCN is a group parameter") for ln in lines)
    assert (sha(base), sha(m)) == before

    got = xr.load_dataset(out / base.name)
    ref = xr.load_dataset(base)
    assert "KCN" not in got.variables
    for v in KCN:
        want = ppe_member_value(ref[v].values, rows.loc["KCN", "min"], rows.loc["KCN", "max"], s_kcn)
        np.testing.assert_allclose(got[v].values, want, rtol=1e-12, atol=0)
        assert got[v].dtype == ref[v].dtype and got[v].dims == ref[v].dims
    assert float(got["fff"]) == pytest.approx(theta_fff, rel=1e-12)
    changed = sorted(v for v in ref.data_vars if not ref[v].equals(got[v]))
    assert changed == sorted([*KCN, "fff"])
    assert "KCN (kc_nonmyc" in got.attrs["history"].splitlines()[-1]

    # the member writer (design.py: esm-emu propose, history-match waves) writes the same values
    d = xr.Dataset({"theta": (("member", "param"), [[theta_kcn, theta_fff]])},
                   coords={"member": ["LHC0001"], "param": ["KCN", "fff"]})
    write_member_files(d, tmp_path / "wave", base, t)
    member = read_paramfile(tmp_path / "wave" / "paramfiles" / "LHC0001.nc", [*KCN, "fff"])
    for v in [*KCN, "fff"]:
        np.testing.assert_array_equal(member[v], got[v].values)


def test_kcn_of_one_refuses_nothing_and_reproduces_the_ppe_default_member(shared_data, tmp_path):
    """theta = 1 is the PPE's reference (LHC0000/OAAT0000): the written targets equal the default member's."""
    base = shared_data(*BASE)
    out = tmp_path / "o"
    r = run_cli(["write-ctsm", "--out", out, "--paramfile", base, "--table", shared_data(*LHC), "--set", "KCN=1"])
    assert r.returncode == 0, r.stderr
    got, ref = read_paramfile(out / base.name, KCN), read_paramfile(base, KCN)
    for v in KCN:
        np.testing.assert_array_equal(got[v], ref[v])


def test_kcn_per_site_paramfiles_each_scale_by_their_own_theta(shared_data, tmp_path):
    base = shared_data(*BASE)
    m = _site_map(tmp_path / "map.nc", ["KCN"], [[0.5], [4.0]])
    out = tmp_path / "o"
    r = run_cli(["write-ctsm", "--out", out, "--paramfile", base, "--table", shared_data(*LHC), "--values", m,
                 "--per-gridcell-paramfiles"])
    assert r.returncode == 0, r.stderr
    files = [out / f"{base.stem}_site{s}{base.suffix}" for s in ("a", "b")]
    assert r.stdout.splitlines()[-2:] == [str(f) for f in files]
    ref = read_paramfile(base, KCN)
    for f, k in zip(files, (0.5, 4.0)):
        got = read_paramfile(f, KCN)
        for v in KCN:
            np.testing.assert_allclose(got[v], ref[v] * k, rtol=1e-12)


def test_clm5_layout_paramfile_takes_the_group_too(shared_data, tmp_path):
    """The older clm5_params.c171117 layout (allpfts) holds the same six variables per PFT."""
    base = shared_data("ctsm", "paramfiles", "clm5_params.c171117.nc")
    out = tmp_path / "o"
    r = run_cli(["write-ctsm", "--out", out, "--paramfile", base, "--table", shared_data(*LHC), "--set", "KCN=2.5"])
    assert r.returncode == 0, r.stderr
    got, ref = read_paramfile(out / base.name, KCN), read_paramfile(base, KCN)
    for v in KCN:
        np.testing.assert_allclose(got[v], ref[v] * 2.5, rtol=1e-12)


# ------------------------------------------------------------------ groups of our own table format

OWN_COLUMNS = "name,location,default,min,max,transform,group,binding\n"


def _own_table(path, rows: str):
    path.write_text(OWN_COLUMNS + rows)
    return path


def test_own_table_group_column_makes_a_group_of_its_binding(tmp_path):
    t = load_param_table(_own_table(tmp_path / "t.csv", 'NCOST,paramfile,,50percent,100percent,,true,'
                                    '"kc_nonmyc,kn_nonmyc"\nRAIN_T,namelist,2,0,4,value,true,'
                                    f'"{PRECIP[0]},{PRECIP[2]}"\nfff,paramfile,0.5,0.1,5,value,,\n'))
    assert t["NCOST"].group and t["NCOST"].targets == ["kc_nonmyc", "kn_nonmyc"]
    assert t.bounds("NCOST") == pytest.approx((0.5, 2.0)) and t["NCOST"].transform == "multiplicative"
    assert t["RAIN_T"].group and t["RAIN_T"].targets == [PRECIP[0], PRECIP[2]]
    assert not t["fff"].group and t["fff"].targets == ["fff"]


def test_namelist_group_writes_its_targets_never_its_name(tmp_path):
    """user_nl_clm stays valid: RAIN_T (value) sets both thresholds; SHIFT (additive) moves all four
    from the case's own values; neither group name is written."""
    table = _own_table(tmp_path / "t.csv", f'RAIN_T,namelist,2,0,4,value,true,"{PRECIP[0]},{PRECIP[2]}"\n'
                                           f'SHIFT,namelist,0,-2,2,additive,true,"{",".join(PRECIP)}"\n')
    nl = tmp_path / "user_nl_clm"
    nl.write_text("! case\n" + "".join(f"{v} = {x}\n" for v, x in zip(PRECIP, (0.0, -2.0, 2.0, 0.0))))
    before = sha(nl)
    r = run_cli(["write-ctsm", "--out", tmp_path / "o", "--user-nl", nl, "--table", table, "--set", "RAIN_T=3"])
    assert r.returncode == 0, r.stderr
    got = read_user_nl(tmp_path / "o" / "user_nl_clm")
    assert got[PRECIP[0]] == 3.0 and got[PRECIP[2]] == 3.0 and got[PRECIP[1]] == -2.0
    assert "rain_t" not in got and "RAIN_T" not in (tmp_path / "o" / "user_nl_clm").read_text()
    r = run_cli(["write-ctsm", "--out", tmp_path / "o2", "--user-nl", nl, "--table", table, "--set", "SHIFT=1.5"])
    assert r.returncode == 0, r.stderr
    got = read_user_nl(tmp_path / "o2" / "user_nl_clm")
    assert [got[v] for v in PRECIP] == [1.5, -0.5, 3.5, 1.5] and "shift" not in got
    assert sha(nl) == before


def test_fsurdat_group_scales_each_field_and_is_checked_as_written(tmp_path):
    fs = create_surfdata_1d(tmp_path / "surfdata_t.nc", [40.0, 42.0], [255.0, 256.0],
                            {"PCT_SAND": [30, 50], "PCT_CLAY": [20, 30], "ORGANIC": [5, 5], "FMAX": [0.3, 0.3],
                             "zbedrock": [1, 2], "SLOPE": [1, 1], "STD_ELEV": [10, 10]})
    table = _own_table(tmp_path / "t.csv", 'TEXTURE,fsurdat,1,0.5,1.5,multiplicative,true,"PCT_SAND,PCT_CLAY"\n')
    r = run_cli(["write-ctsm", "--out", tmp_path / "o", "--fsurdat", fs, "--table", table, "--set", "TEXTURE=1.2"])
    assert r.returncode == 0, r.stderr
    got = read_surfdata(tmp_path / "o" / fs.name)
    for v, want in (("PCT_SAND", [36, 60]), ("PCT_CLAY", [24, 36])):  # every soil layer of each gridcell
        np.testing.assert_allclose(got[v].values, np.broadcast_to(want, got[v].shape), rtol=1e-6)
    # 1.5 x (50 + 30) = 120 percent of the soil: within the table's bounds, physically impossible
    check_refused(Case("texture", lambda tmp: ["write-ctsm", "--out", "o2", "--fsurdat", fs, "--table", table,
                                               "--set", "TEXTURE=1.5"],
                       mentions=["PCT_SAND + PCT_CLAY"], outputs=["o2"], inputs=[str(fs), str(table)]), tmp_path)


def test_member_writer_writes_namelist_group_targets_and_refuses_unknown_bases(shared_data, tmp_path):
    from ppe_ingest.base.errors import UserError
    from ppe_ingest.design import write_member_files

    table = load_param_table(_own_table(tmp_path / "t.csv", f'RAIN_T,namelist,2,0,4,value,true,'
                                                            f'"{PRECIP[0]},{PRECIP[2]}"\n'
                                                            f'SHIFT,namelist,0,-2,2,additive,true,'
                                                            f'"{",".join(PRECIP)}"\n'))
    d = xr.Dataset({"theta": (("member", "param"), [[2.5]])}, coords={"member": ["W0001"], "param": ["RAIN_T"]})
    write_member_files(d, tmp_path / "w", shared_data(*BASE), table)
    got = read_user_nl(tmp_path / "w" / "namelist_mods" / "W0001.txt")
    assert got == {PRECIP[0]: 2.5, PRECIP[2]: 2.5}
    d2 = xr.Dataset({"theta": (("member", "param"), [[0.5]])}, coords={"member": ["W0001"], "param": ["SHIFT"]})
    with pytest.raises(UserError, match=PRECIP[0]):
        write_member_files(d2, tmp_path / "w2", shared_data(*BASE), table)
    assert not (tmp_path / "w2").exists()


# ------------------------------------------------------------------ refused: exit 2, one line, nothing written

def _cases(base, lhc):
    common = ["write-ctsm", "--out", "out", "--paramfile", base]

    def map_with(rows, params=("KCN",)):
        def make(tmp):
            return [*common, "--table", lhc, "--values", _site_map(tmp / "map.nc", params, rows)]
        return make

    def own(rows, extra):
        def make(tmp):
            return [*common, "--table", _own_table(tmp / "t.csv", rows), *extra]
        return make

    def nl_group(tmp):
        (tmp / "user_nl_clm").write_text(f"{PRECIP[0]} = 0.\n")
        return ["write-ctsm", "--out", "out", "--user-nl", tmp / "user_nl_clm", "--table",
                _own_table(tmp / "t.csv", f'SHIFT,namelist,0,-2,2,additive,true,"{",".join(PRECIP)}"\n'),
                "--set", "SHIFT=1"]

    return [
        Case("map KCN above its bounds", map_with([[2.0], [20.0]]),
             ["site b", "KCN = 20", "0.1..10", "lhc_220926.csv"]),
        Case("map KCN NaN", map_with([[2.0], [np.nan]]), ["KCN", "NaN"]),
        Case("set KCN below its bounds", lambda tmp: [*common, "--table", lhc, "--set", "KCN=0.05"],
             ["--set", "KCN = 0.05", "0.1..10"]),
        Case("set KCN inf", lambda tmp: [*common, "--table", lhc, "--set", "KCN=inf"], ["KCN", "non-finite"]),
        Case("negative KCN even outside the table", lambda tmp: [*common, "--table", lhc, "--set", "KCN=-1",
                                                                 "--allow-outside-table"],
             ["kc_nonmyc = -0.72", "PFT 1", "written by KCN", ">= 0"]),
        Case("KCN and one of its targets", map_with([[2.0, 0.5], [2.0, 0.5]], ("KCN", "kc_nonmyc")),
             ["kc_nonmyc", "KCN"]),
        Case("per-PFT KCN", lambda tmp: [*common, "--table", lhc, "--set", "KCN[c4_grass]=3"], ["KCN[...]"]),
        Case("KCN without its table", lambda tmp: [*common, "--set", "KCN=2"], ["KCN", "--table", "lhc_220926"]),
        Case("group target missing from the paramfile",
             own('NCOST,paramfile,,50percent,100percent,,true,"kc_nonmyc,no_such_cost"\n', ["--set", "NCOST=1.5"]),
             ["NCOST", "no_such_cost", "OAAT0000.nc"]),
        Case("namelist group target not in user_nl_clm", nl_group, ["SHIFT", PRECIP[1], "user_nl_clm"]),
        Case("group row without binding", own("NCOST,paramfile,,50percent,100percent,,true,\n",
                                                ["--set", "NCOST=1.5"]), ["NCOST", "binding"]),
    ]


@pytest.mark.parametrize("i", range(11))
def test_bad_group_values_are_refused_with_one_line(shared_data, tmp_path, i):
    base, lhc = shared_data(*BASE), shared_data(*LHC)
    case = _cases(base, lhc)[i]
    case.outputs = ["out"]
    case.inputs = [str(base), str(lhc), "map.nc", "t.csv", "user_nl_clm"]
    check_refused(case, tmp_path)
