"""Reading case settings from CIME env XML files (real CIME format, built by cime_case_util)."""
from __future__ import annotations

import pytest
from cime_case_util import make_case

from cime_hooks.case import check_caseroot, open_case, regenerate_lnd_namelist
from ppe_ingest.base.errors import UserError


def test_values_are_typed_and_references_resolved(tmp_path, monkeypatch):
    root = make_case(tmp_path, name="I2000.f09.test")
    case = open_case(root)
    assert case.get_value("CASE") == "I2000.f09.test"
    assert case.get_value("RUNDIR") == str(root / "run")  # "$CASEROOT/run" expanded like CIME
    assert case.get_value("STOP_N") == 30 and case.get_value("CONTINUE_RUN") is False
    assert case.get_value("DATA_ASSIMILATION_CYCLES") == 1
    assert case.get_value("NOT_A_VARIABLE") is None

    monkeypatch.setenv("ESM_EMU_TEST_SCRATCH", str(tmp_path / "scratch"))
    for value, expected in [("$ENV{ESM_EMU_TEST_SCRATCH}/${CASE}/run", f"{tmp_path}/scratch/I2000.f09.test/run"),
                            ("$SHELL{echo hi}", "$SHELL{echo hi}"),  # never executed
                            ("$UNKNOWN_VAR/x", "$UNKNOWN_VAR/x")]:
        assert case.resolve(value) == expected


def test_unresolved_required_value_is_one_line_error(tmp_path):
    root = make_case(tmp_path, rundir="$SCRATCH_NOT_DEFINED/run")
    with pytest.raises(UserError, match=r"RUNDIR=.*unresolved"):
        open_case(root).require("RUNDIR")


@pytest.mark.parametrize("remove", ["env_run.xml", "env_case.xml", "xmlchange"])
def test_directory_without_case_files_is_refused(tmp_path, remove):
    root = make_case(tmp_path)
    (root / remove).unlink()
    with pytest.raises(UserError, match=f"not a CIME case \\({remove} missing"):
        check_caseroot(root)


def test_broken_xml_names_the_file(tmp_path):
    root = make_case(tmp_path)
    (root / "env_run.xml").write_text("<file><group>")
    with pytest.raises(UserError, match="env_run.xml: not valid XML"):
        open_case(root)


def test_namelist_regeneration_reports_when_cime_is_absent(tmp_path):
    try:
        import CIME  # noqa: F401
        pytest.skip("CIME is importable here; this test covers the case without it")
    except ImportError:
        pass
    assert regenerate_lnd_namelist(open_case(make_case(tmp_path))) is False
