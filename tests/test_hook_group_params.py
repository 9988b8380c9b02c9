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
import json
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


def test_a_da_cycle_updates_kcn_through_an_emulator_that_takes_it(tmp_path, ppe):
    """A whole DA cycle (the installed hook, a fresh interpreter) with an emulator whose inputs
    include KCN (and fff, held at the base paramfile's value): the update is recorded under KCN and
    the next run's paramfile holds each target at its base value times the updated multiplier, KCN
    itself nowhere."""
    from emu_store import make_store
    from emu_store import write_config as emu_config

    from esm_emu.cli import main
    from ppe_ingest.ctsmio.history import write_history
    from ppe_ingest.ctsmio.surfdata import create_surfdata_1d

    base, table = ppe
    store = make_store(tmp_path / "store0.nc", n_member=4, n_grid=3, n_years=1)
    names = {"baseflow_scalar": "fff", "medlynslope": "KCN"}  # the store's parameters as the PPE's fff and KCN
    with xr.load_dataset(store) as ds:
        ds = ds.assign_coords(param=[names[str(v)] for v in ds["param"].values],
                              norm_var=[names.get(str(v), str(v)) for v in ds["norm_var"].values])
        ds.to_netcdf(tmp_path / "store.nc")
    assert main(["train", str(emu_config(tmp_path, tmp_path / "store.nc", train={"max_steps": 2, "val_every": 2})),
                 "--quiet"]) == 0

    root = make_case(tmp_path, name="case")
    obs = tiny_obs(tmp_path / "obs.nc")  # two sites, ten days of QRUNOFF from 2001-01-01
    lat, lon = [40.1, 41.3], [-105.2, -104.1]
    create_surfdata_1d(tmp_path / "surfdata.nc", lat, lon,
                       {"PCT_SAND": np.array([40.0, 60.0]), "FMAX": np.array([0.3, 0.4])})
    cfg = config(base, table, {"KCN": {"location": "paramfile", "min": 0.5, "max": 8.0}},
                 forward={"kind": "emulator", "checkpoint": str(tmp_path / "run" / "best.pt")}, steps=5, lr=0.3)
    cfg.update(fsurdat=str(tmp_path / "surfdata.nc"), observations={"file": str(obs), "variable": "QRUNOFF"})
    (tmp_path / "hooks.yaml").write_text(yaml.safe_dump(cfg))
    r = run_cli(["cime", "install", root, "--config", tmp_path / "hooks.yaml", "--cycles", "2"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr

    days = 10
    series = {"RAIN": 3e-5, "SNOW": 0.0, "TBOT": 285.0, "FSDS": 200.0, "FLDS": 300.0, "QBOT": 0.006,
              "PBOT": 95000.0, "WIND": 3.0, "QRUNOFF": 3e-5}
    write_history(root / "run" / "case.clm2.h1.2001-01-01-00000.nc",
                  {k: np.full((2, days), v) for k, v in series.items()}, lat, lon, 2001, "case", "test")
    before = sha(base)
    proc = subprocess.run([str(root / HOOKS / "esm_emu_da"), str(root), "0"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads((root / "esm-emu" / "da_state.json").read_text())["cycles"][0]
    assert record["parameters_before"] == {"KCN": 1.0}
    kcn = record["parameters"]["KCN"]
    assert 0.5 <= kcn <= 8.0 and kcn != 1.0
    written = Path(read_user_nl(root / "user_nl_clm")["paramfile"])
    assert written == root / "esm-emu" / "params" / "after_cycle_000" / base.name
    got, ref = xr.load_dataset(written), xr.load_dataset(base)
    assert "KCN" not in got.variables
    for v in KCN:
        np.testing.assert_allclose(got[v].values, ref[v].values * kcn, rtol=1e-12, atol=0)
    assert sorted(v for v in ref.data_vars if not ref[v].equals(got[v])) == sorted(KCN)
    assert sha(base) == before
