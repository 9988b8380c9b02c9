"""user_nl_clm editing: Fortran formatting, replacement, comment preservation, idempotence."""
from __future__ import annotations

import pytest

from ppe_ingest.base.errors import UserError
from ppe_ingest.ctsmio.user_nl import format_namelist_value, parse_namelist_value, read_user_nl, set_user_nl

CASE_NL = """!----------------------------------------------------------------------------------
! Users should add all user specific namelist changes below in the form of
! namelist_var = new_namelist_value
!----------------------------------------------------------------------------------
 fsurdat = '/glade/p/cesmdata/lnd/clm2/surfdata_map/surfdata_1x1_brazil.nc'  ! site surfdata
 BASEFLOW_SCALAR=0.001
hist_fincl1 = 'QRUNOFF', 'EFLX_LH_TOT',
              'H2OSNO'
use_init_interp = .true.
"""


@pytest.mark.parametrize("value, text", [
    (True, ".true."), (False, ".false."), (3, "3"), (0.001, "0.001"), (1e-05, "1.0e-05"),
    (2.5e-12, "2.5e-12"), (1.0, "1.0"), (0.1 + 0.2, "0.30000000000000004"),
    ("a'b", "'a''b'"), (["QRUNOFF", "TWS"], "'QRUNOFF', 'TWS'"), ([1.5, 2], "1.5, 2"),
])
def test_format_and_round_trip(value, text):
    assert format_namelist_value(value) == text
    assert parse_namelist_value(text) == value


def test_format_refuses_nan():
    with pytest.raises(UserError, match="not finite"):
        format_namelist_value(float("nan"))


def test_set_replaces_keeps_comments_and_is_idempotent(tmp_path):
    src = tmp_path / "user_nl_clm"
    src.write_text(CASE_NL)
    out1 = tmp_path / "a" / "user_nl_clm"
    settings = {"baseflow_scalar": 0.0123, "fsurdat": "/new/surfdata_x.nc", "interception_fraction": 0.7,
                "hist_fincl1": ["QRUNOFF"]}
    set_user_nl(src, out1, settings, history_comment="set by esm-emu write-ctsm")
    text = out1.read_text()
    assert src.read_text() == CASE_NL  # input untouched
    lines = text.splitlines()
    assert lines[:4] == CASE_NL.splitlines()[:4]  # header comments kept
    assert "BASEFLOW_SCALAR = 0.0123" in lines and "0.001" not in text
    assert "fsurdat = '/new/surfdata_x.nc' ! site surfdata" in lines  # trailing comment kept
    assert "'H2OSNO'" not in text  # the old continuation line went with its setting
    assert "use_init_interp = .true." in lines
    assert lines[-2:] == ["! set by esm-emu write-ctsm", "interception_fraction = 0.7"]
    got = read_user_nl(out1)
    assert got["baseflow_scalar"] == 0.0123 and got["interception_fraction"] == 0.7
    assert got["hist_fincl1"] == "QRUNOFF" and got["use_init_interp"] is True
    out2 = tmp_path / "b" / "user_nl_clm"
    set_user_nl(out1, out2, settings, history_comment="set by esm-emu write-ctsm")
    assert out2.read_text() == text  # applying twice == once


def test_in_place_only_for_user_nl(tmp_path):
    nl = tmp_path / "user_nl_clm"
    nl.write_text(CASE_NL)
    set_user_nl(nl, nl, {"d_max": 20.0})
    assert read_user_nl(nl)["d_max"] == 20.0
    other = tmp_path / "OAAT0001.txt"
    other.write_text("! header\n")
    with pytest.raises(UserError, match="overwrite"):
        set_user_nl(other, other, {"d_max": 20.0})
    assert other.read_text() == "! header\n"


def test_new_file_and_bad_name(tmp_path):
    out = set_user_nl(tmp_path / "missing", tmp_path / "user_nl_clm", {"paramfile": "p.nc"})
    assert out.read_text() == "paramfile = 'p.nc'\n"
    with pytest.raises(UserError, match="not a namelist variable name"):
        set_user_nl(None, tmp_path / "user_nl_x", {"bad name": 1})


def test_reads_real_ppe_namelist_mods(shared_data):
    assert read_user_nl(shared_data("ppe", "namelist_mods", "OAAT0013.txt")) == {"jmaxb1": 0.05}
    assert read_user_nl(shared_data("ppe", "namelist_mods", "OAAT0031.txt")) == {"cli_scale": 0.020000000000000004}
    assert read_user_nl(shared_data("ppe", "namelist_mods", "OAAT0000.txt")) == {}


@pytest.mark.parametrize("value", ["x\nfsurdat = '/evil.nc'", "x\r", "x\x00", "x\u2028y", ["ok", "bad\n"]])
def test_write_refuses_strings_that_would_break_the_line(tmp_path, value):
    nl = tmp_path / "user_nl_clm"
    nl.write_text(CASE_NL)
    with pytest.raises(UserError, match=r"user_nl_clm: finidat: a namelist string may not hold a line break"):
        set_user_nl(nl, nl, {"finidat": value})
    assert nl.read_text() == CASE_NL
    with pytest.raises(UserError, match="line break"):
        format_namelist_value(value)


@pytest.mark.parametrize("name", ["bad name", "1abc", "a-b", "x\ny", "a" * 64, "h(1", "h(a)", ""])
def test_write_refuses_names_that_are_not_fortran(tmp_path, name):
    with pytest.raises(UserError, match="not a namelist variable name"):
        set_user_nl(None, tmp_path / "user_nl_clm", {name: 1})
    assert not (tmp_path / "user_nl_clm").exists()


def test_indexed_names_and_spellings_meet(tmp_path):
    nl = tmp_path / "user_nl_clm"
    nl.write_text("hist_fincl2( 1 ) = 'A'\nBaseflow_Scalar = 1\n")
    set_user_nl(nl, nl, {"hist_fincl2(1)": "B", "baseflow_scalar": 2})
    assert nl.read_text() == "hist_fincl2( 1 ) = 'B'\nBaseflow_Scalar = 2\n"
    assert read_user_nl(nl) == {"hist_fincl2(1)": "B", "baseflow_scalar": 2}
    with pytest.raises(UserError, match="the same variable as"):
        set_user_nl(nl, nl, {"d_max": 1.0, "D_MAX": 2.0})
