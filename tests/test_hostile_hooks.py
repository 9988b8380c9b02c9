"""`esm-emu cime install` on bad hook configs and failing cases, run as a user runs it.

Every case must be refused by the install itself (not first inside the batch job) with exit
status 2 and one line naming the key or value, and leave the case and the config byte for byte
as they were, with no esm-emu folder and no temporary. The case's xmlchange is the stand-in from
cime_case_util, which edits CIME-format env XML files as the real one does.
"""
from __future__ import annotations

import datetime
import json

import pytest
import yaml
from cime_case_util import make_case, tiny_obs, tiny_paramfile
from hostile import Case, check_refused, run_cli

from ppe_ingest.ctsmio.user_nl import read_user_nl


def base_config() -> dict:
    return {"paramfile": "params.nc", "namelist": {"baseflow_scalar": 0.005},
            "observations": {"file": "obs.nc", "variable": "QRUNOFF"},
            "da": {"forward": {"kind": "simulator"},
                   "parameters": {"fff": {"location": "paramfile", "min": 0.1, "max": 5.0}}}}


def install(change=None, namelist=None, case_kw=None, edit_case=None, paramfile=None, obs_var="QRUNOFF",
            extra=()):
    """A Case.make: a case, inputs and a config with `change` (top-level keys) or `namelist`."""
    def make(tmp):
        root = make_case(tmp, name="case", **(case_kw or {}))
        if edit_case:
            edit_case(root)
        tiny_paramfile(tmp / "params.nc", paramfile)
        for name in (change or {}).values():
            if isinstance(name, str) and name.endswith(".nc") and name != "params.nc":
                tiny_paramfile(tmp / name, paramfile)  # an input named in the change exists
        tiny_obs(tmp / "obs.nc", obs_var)
        cfg = base_config()
        if namelist is not None:
            cfg["namelist"] = namelist
        cfg.update(change or {})
        (tmp / "hooks.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=False))
        return ["cime", "install", root, "--config", tmp / "hooks.yaml", *extra]
    return make


def da_params(params, **more):
    return {"da": {"forward": {"kind": "simulator"}, "parameters": params, **more}}


def refused(name, make, *mentions):
    return Case(name, make, mentions=mentions, inputs=("case", "hooks.yaml", "params.nc", "obs.nc"),
                outputs=("case/esm-emu",))


def _state_from_another_config(root):
    (root / "esm-emu").mkdir()
    (root / "esm-emu" / "da_state.json").write_text(json.dumps(
        {"version": 1, "cycles": [{"cycle": 0, "parameters": {"baseflow_scalar": 0.004}, "user_nl": {}}]}))


def _state_outside_bounds(root):
    (root / "esm-emu").mkdir()
    (root / "esm-emu" / "da_state.json").write_text(json.dumps(
        {"version": 1, "cycles": [{"cycle": 0, "parameters": {"fff": 9.0}, "user_nl": {}}]}))


def _corrupt_state(root):
    (root / "esm-emu").mkdir()
    (root / "esm-emu" / "da_state.json").write_text("{not json")


def _drop_postrun(root):
    p = root / "env_run.xml"
    p.write_text(p.read_text().replace('id="POSTRUN_SCRIPT"', 'id="NOT_POSTRUN_SCRIPT"'))


CASES = [
    # Namelist strings that would become a second user_nl_clm line, or hold control characters.
    refused("newline injects fsurdat", install(namelist={"hist_empty_htapes": ".true.\nfsurdat = '/evil.nc'"}),
            "namelist.hist_empty_htapes", "line break"),
    refused("carriage return", install(namelist={"finidat": "/data/x.nc\rpopulation = 1"}), "namelist.finidat"),
    refused("NUL byte", install(namelist={"finidat": "/data/x\0.nc"}), "namelist.finidat"),
    refused("tab", install(namelist={"finidat": "/data/\tx.nc"}), "namelist.finidat"),
    refused("unicode line separator", install(namelist={"finidat": "/data/x.nc\u2028fsurdat='/e.nc'"}),
            "namelist.finidat"),
    refused("newline in a list item", install(namelist={"hist_fincl2": ["QRUNOFF", "RAIN\nfsurdat='/e.nc'"]}),
            "namelist.hist_fincl2"),
    # Bad namelist names.
    refused("name with a space", install(namelist={"bad name": 1}), "bad name", "not a namelist variable name"),
    refused("name starting with a digit", install(namelist={"1abc": 1}), "1abc"),
    refused("name with a hyphen", install(namelist={"base-flow": 1}), "base-flow"),
    refused("name with a newline", install(namelist={"a\nfsurdat": 1}), "not a namelist variable name"),
    refused("name with an equals sign", install(namelist={"a=1,b": 1}), "a=1,b"),
    refused("unbalanced index", install(namelist={"hist_fincl1(1": "X"}), "hist_fincl1(1"),
    refused("name too long", install(namelist={"a" * 64: 1}), "63 characters"),
    refused("two spellings of one variable",
            install(namelist={"baseflow_scalar": 0.001, "BASEFLOW_SCALAR": 0.002}), "BASEFLOW_SCALAR"),
    # Values that are not namelist values.
    refused("null value", install(namelist={"baseflow_scalar": None}), "namelist.baseflow_scalar"),
    refused("mapping value", install(namelist={"baseflow_scalar": {"a": 1}}), "namelist.baseflow_scalar"),
    refused("nested list", install(namelist={"hist_fincl2": [["A"]]}), "namelist.hist_fincl2"),
    refused("empty list", install(namelist={"hist_fincl2": []}), "namelist.hist_fincl2"),
    refused("mixed list", install(namelist={"hist_fincl2": ["QRUNOFF", 1, True]}), "namelist.hist_fincl2", "mixes"),
    refused("integer beyond Fortran", install(namelist={"baseflow_scalar": 10**30}), "namelist.baseflow_scalar"),
    refused("date value", install(namelist={"start_ymd": datetime.date(2001, 1, 1)}), "namelist.start_ymd"),
    refused("NaN", install(namelist={"baseflow_scalar": float("nan")}), "namelist.baseflow_scalar", "finite"),
    refused("infinity", install(namelist={"baseflow_scalar": float("inf")}), "namelist.baseflow_scalar"),
    # Names CTSM reads elsewhere, or that the config already sets.
    refused("paramfile parameter as namelist", install(namelist={"fff": 2.0}), "namelist.fff", "paramfile"),
    refused("surface field as namelist", install(namelist={"FMAX": 0.3}), "namelist.FMAX", "fsurdat"),
    refused("fsurdat twice", install(change={"fsurdat": "params.nc"}, namelist={"fsurdat": "/other.nc"}),
            "namelist.fsurdat", "top-level fsurdat"),
    # DA parameters that become user_nl_clm lines (or paramfile edits) only inside the job.
    refused("DA namelist parameter with a bad name",
            install(change=da_params({"bad name": {"location": "namelist", "min": 0, "max": 1, "initial": 0.5}})),
            "da.parameters", "bad name"),
    refused("DA parameter read from the paramfile given as namelist",
            install(change=da_params({"fff": {"location": "namelist", "min": 0.1, "max": 5, "initial": 1}})),
            "da.parameters.fff", "paramfile"),
    refused("DA parameter twice",
            install(change=da_params({"fff": {"location": "paramfile", "min": 0.1, "max": 5},
                                      "FFF": {"location": "paramfile", "min": 0.1, "max": 5}})),
            "the same parameter as"),
    refused("DA parameter with an index",
            install(change=da_params({"fff(1)": {"location": "paramfile", "min": 0.1, "max": 5}})),
            "da.parameters.fff(1)"),
    refused("DA namelist parameter without a first guess",
            install(change=da_params({"interception_fraction": {"location": "namelist", "min": 0.3, "max": 1}})),
            "da.parameters.interception_fraction.initial"),
    refused("DA paramfile parameter missing from the paramfile",
            install(change=da_params({"d_max_typo": {"location": "paramfile", "min": 1, "max": 50}})),
            "d_max_typo", "params.nc"),
    refused("DA first guess outside its bounds",
            install(change=da_params({"d_max": {"location": "paramfile", "min": 20, "max": 50}})),
            "da.parameters.d_max", "outside"),
    refused("DA namelist first guess from namelist outside bounds",
            install(namelist={"baseflow_scalar": 0.5},
                    change=da_params({"baseflow_scalar": {"location": "namelist", "min": 1e-4, "max": 0.1}})),
            "da.parameters.baseflow_scalar"),
    # Observations and tape names the DA and POSTRUN would trip over.
    refused("observations without the variable", install(obs_var="QOVER"), "obs.nc", "QRUNOFF"),
    refused("observations mask missing",
            install(change={"observations": {"file": "obs.nc", "variable": "QRUNOFF", "mask": "QC"}}), "QC"),
    refused("observation variable with a newline",
            install(change={"observations": {"file": "obs.nc", "variable": "QRUNOFF\nX"}}), "observations.variable"),
    refused("history tape with a newline", install(change={"history_tape": "h1\n"}), "history_tape"),
    refused("history tape with a non-ASCII digit", install(change={"history_tape": "h\u0661"}), "history_tape"),
    # A DA state the new config cannot continue, and an emulator that is not one.
    Case("DA state of other parameters", install(edit_case=_state_from_another_config),
         mentions=("da_state.json", "baseflow_scalar", "fff"), inputs=("case", "hooks.yaml")),
    Case("DA state outside the new bounds", install(edit_case=_state_outside_bounds),
         mentions=("da.parameters.fff", "outside"), inputs=("case", "hooks.yaml")),
    Case("corrupt DA state", install(edit_case=_corrupt_state), mentions=("da_state.json",),
         inputs=("case", "hooks.yaml")),
    refused("checkpoint that is not a torch file",
            install(change=da_params({"fff": {"location": "paramfile", "min": 0.1, "max": 5}},
                                     forward={"kind": "emulator", "checkpoint": "obs.nc"})), "obs.nc"),
    # File names the hooks would write into user_nl_clm that CTSM cannot read whole.
    refused("paramfile name with a newline", install(change={"paramfile": "params\n.nc"}, paramfile=None,
                                                     extra=()), "paramfile", "line break"),
    refused("paramfile copy longer than CTSM reads", install(change={"paramfile": "p" * 250 + ".nc"}),
            "paramfile", "256"),
    # The case cannot take the change: nothing is left behind.
    refused("xmlchange fails half way", install(case_kw={"refuse": ("POSTRUN_SCRIPT",)}, extra=("--cycles", "2")),
            "./xmlchange POSTRUN_SCRIPT=", "left as it was"),
    refused("xmlchange fails on the last change",
            install(case_kw={"refuse": ("DATA_ASSIMILATION_CYCLES",)}, extra=("--cycles", "2")),
            "DATA_ASSIMILATION_CYCLES"),
    refused("case without POSTRUN_SCRIPT", install(edit_case=_drop_postrun), "POSTRUN_SCRIPT"),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_install_refuses(tmp_path, case):
    check_refused(case, tmp_path)


def test_reinstall_that_fails_leaves_the_previous_install(tmp_path):
    """A re-install that would switch DA off but whose xmlchange fails keeps the earlier install whole."""
    def make(tmp):
        args = install()(tmp)
        r = run_cli(args, cwd=tmp)
        assert r.returncode == 0, r.stderr
        x = tmp / "case" / "xmlchange"
        x.write_text(x.read_text().replace("REFUSE = ()", "REFUSE = ('POSTRUN_SCRIPT',)"))
        cfg = base_config()
        del cfg["da"], cfg["observations"]
        (tmp / "hooks.yaml").write_text(yaml.safe_dump(cfg))
        return args

    check_refused(Case("re-install fails", make, mentions=("POSTRUN_SCRIPT",), inputs=("case", "hooks.yaml")),
                  tmp_path)
    assert (tmp_path / "case" / "esm-emu" / "hooks" / "esm_emu_da").is_file()


def test_strings_are_quoted_the_fortran_way_in_the_case(tmp_path):
    """A string with quotes reaches user_nl_clm quoted (single quotes, embedded ones doubled) and
    reads back as written; an indexed name is accepted."""
    from cime_hooks.prerun import run_prerun

    args = install(change={"da": None}, namelist={"hist_fincl2(1)": "it's", "use_init_interp": True,
                                                  "hist_fincl3": ["QRUNOFF", "RAIN"]})(tmp_path)
    r = run_cli(args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run_prerun(tmp_path / "case")
    text = (tmp_path / "case" / "user_nl_clm").read_text()
    assert "hist_fincl2(1) = 'it''s'" in text.splitlines()
    assert "hist_fincl3 = 'QRUNOFF', 'RAIN'" in text.splitlines()
    nl = read_user_nl(tmp_path / "case" / "user_nl_clm")
    assert nl["hist_fincl2(1)"] == "it's" and nl["use_init_interp"] is True
