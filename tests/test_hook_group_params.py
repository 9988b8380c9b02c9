"""Group parameters (the CLM5 PPE's KCN) in the CIME DA hook: read and written the way write-ctsm
writes them (`esm_emu.writers`), by the parameter table `da.table`.

KCN is no paramfile variable: theta is the common multiplier of its six N-cost variables. The
hook's first guess is the multiplier that leaves the base paramfile as it is, and every parameter
set it writes (PRERUN's first guess, each DA cycle's update) holds each target as write-ctsm
writes it for the same value. Bad values are refused by `esm-emu cime install` in one line with
the case untouched. Real files: the PPE's default member paramfile and its LHC parameter table.
"""
from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from cime_case_util import make_case, tiny_obs, tiny_paramfile
from hostile import Case, check_refused, run_cli

from cime_hooks.config import load_case_config
from cime_hooks.params import write_parameter_set
from ppe_ingest.ctsmio.user_nl import read_user_nl
from ppe_ingest.param_table import PPE_GROUPS

BASE = ("ppe", "paramfiles", "OAAT0000.nc")  # the PPE's default member paramfile
LHC = ("ppe", "param_tables", "lhc_220926.csv")  # its table: KCN 90percent..900percent, multiplicative
KCN = list(PPE_GROUPS["KCN"])
HOOKS = Path("esm-emu") / "hooks"


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def config(base, table, params=None, **more) -> dict:
    da = {"forward": {"kind": "simulator"}, "base_paramfile": str(base), "table": str(table),
          "parameters": params or {"KCN": {"location": "paramfile", "min": 0.5, "max": 4.0},
                                   "fff": {"location": "paramfile", "min": 0.1, "max": 5.0}}}
    da.update(more)
    return {"observations": {"file": "obs.nc", "variable": "QRUNOFF"}, "da": da}


@pytest.fixture
def ppe(shared_data):
    return shared_data(*BASE), shared_data(*LHC)


@pytest.fixture
def installed(tmp_path, ppe):
    base, table = ppe
    root = make_case(tmp_path, name="case")
    tiny_obs(tmp_path / "obs.nc")
    (tmp_path / "hooks.yaml").write_text(yaml.safe_dump(config(base, table)))
    r = run_cli(["cime", "install", root, "--config", tmp_path / "hooks.yaml", "--cycles", "2"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return root


def test_prerun_writes_kcns_first_guess_to_its_targets(installed, ppe):
    """PRERUN (the installed script, a fresh interpreter) places the first guess: KCN = 1 (the
    multiplier that leaves the base as it is), fff from the base; the base paramfile is untouched,
    and the copy has every variable of the base and no KCN variable."""
    base, _ = ppe
    before = sha(base)
    proc = subprocess.run([str(installed / HOOKS / "esm_emu_prerun.py"), str(installed)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    nl = read_user_nl(installed / "user_nl_clm")
    placed = Path(nl["paramfile"])
    assert placed == installed / "esm-emu" / "params" / "initial" / base.name
    got, ref = xr.load_dataset(placed), xr.load_dataset(base)
    assert "KCN" not in got.variables and set(got.data_vars) == set(ref.data_vars)
    assert all(ref[v].equals(got[v]) for v in ref.data_vars)
    assert sha(base) == before


def test_da_parameter_set_writes_kcn_as_write_ctsm_does(installed, ppe, tmp_path):
    """The DA's writer (what each cycle calls with its update) gives each of KCN's six targets the
    same values as `esm-emu write-ctsm --set KCN=...` with the same table and base: its own base
    value times the multiplier. Only the targets and fff change; the base is untouched."""
    base, table = ppe
    before = sha(base)
    cfg = load_case_config(installed)
    settings = write_parameter_set(installed, cfg, {"KCN": 2.5, "fff": 1.25}, "after_cycle_000")
    written = installed / "esm-emu" / "params" / "after_cycle_000" / base.name
    assert settings == {"paramfile": str(written)}

    r = run_cli(["write-ctsm", "--out", tmp_path / "cli", "--paramfile", base, "--table", table,
                 "--set", "KCN=2.5", "--set", "fff=1.25"])
    assert r.returncode == 0, r.stderr
    got, cli, ref = (xr.load_dataset(p) for p in (written, tmp_path / "cli" / base.name, base))
    for v in KCN:
        np.testing.assert_allclose(got[v].values, ref[v].values * 2.5, rtol=1e-12, atol=0)
        assert got[v].dtype == ref[v].dtype and got[v].dims == ref[v].dims
        assert got[v].equals(cli[v])
    assert float(got["fff"]) == 1.25
    assert sorted(v for v in ref.data_vars if not ref[v].equals(got[v])) == sorted([*KCN, "fff"])
    assert "esm-emu DA after_cycle_000: KCN=2.5, fff=1.25" in got.attrs["history"].splitlines()[-1]
    assert sha(base) == before


def test_a_refused_value_writes_nothing(installed, ppe):
    """A value outside the table's bounds (as a hand-edited DA state could hold) is refused before
    any file of the parameter set exists."""
    from ppe_ingest.base.errors import UserError

    cfg = load_case_config(installed)
    with pytest.raises(UserError, match=r"KCN = 50 .*outside"):
        write_parameter_set(installed, cfg, {"KCN": 50.0, "fff": 1.0}, "after_cycle_007")
    assert not (installed / "esm-emu" / "params" / "after_cycle_007").exists()


def _install_case(change):
    """A Case.make: a case, observations and a KCN config edited by `change(cfg, tmp)`."""
    def make(tmp):
        root = make_case(tmp, name="case")
        tiny_obs(tmp / "obs.nc")
        from conftest import shared_data_root

        data = shared_data_root()
        cfg = config(data.joinpath(*BASE), data.joinpath(*LHC))
        change(cfg, tmp)
        (tmp / "hooks.yaml").write_text(yaml.safe_dump(cfg))
        return ["cime", "install", root, "--config", tmp / "hooks.yaml", "--cycles", "2"]
    return make


def _set(path, value):
    def change(cfg, tmp):
        *keys, last = path
        d = cfg
        for k in keys:
            d = d[k]
        if value is None:
            d.pop(last)
        else:
            d[last] = value(tmp) if callable(value) else value
    return change


REFUSED = [
    ("max above the table's bounds", _set(("da", "parameters", "KCN", "max"), 20.0),
     ("da.parameters.KCN", "20", "0.1..10", "lhc_220926.csv")),
    ("min below the table's bounds", _set(("da", "parameters", "KCN", "min"), 0.01),
     ("da.parameters.KCN", "0.01", "0.1..10")),
    ("no table that knows KCN", _set(("da", "table"), None),
     ("da.parameters.KCN", "group parameter", "kc_nonmyc", "da.table")),
    ("KCN placed in the namelist", _set(("da", "parameters", "KCN", "location"), "namelist"),
     ("da.parameters.KCN.location", "paramfile")),
    ("a base paramfile without KCN's targets", _set(("da", "base_paramfile"),
                                                    lambda tmp: str(tiny_paramfile(tmp / "params.nc"))),
     ("params.nc", "KCN", "kc_nonmyc")),
    ("fff min below the table's bounds", _set(("da", "parameters", "fff"),
                                                        {"location": "paramfile", "min": 0.01, "max": 5.0}),
     ("da.parameters.fff", "0.02..5")),
]


@pytest.mark.parametrize("name,change,mentions", REFUSED, ids=[r[0] for r in REFUSED])
def test_bad_group_values_are_refused_by_install(tmp_path, ppe, name, change, mentions):
    check_refused(Case(name, _install_case(change), mentions=mentions,
                       inputs=("case", "hooks.yaml", "obs.nc"), outputs=("case/esm-emu",)), tmp_path)
