"""The FTorch coupling: `esm-emu export --ftorch`, and the Fortran land component and driver
(coupler/fortran/) built against FTorch and checked against the Python emulator."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import torch
from emu_store import make_store, write_config
from hostile import Case, check_refused, digest_tree, temporaries

from esm_emu.cli import main
from esm_emu.emulator import load_emulator
from esm_emu.export_ftorch import monthly_intervals, read_manifest, write_driver_input
from ppe_ingest.ctsmio.history import read_history
from ppe_ingest.ctsmio.vocabulary import HIST_FIELDS

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"lstm": {"name": "lstm"},
          # context 20 < a month: chunks cross the attention window, and the carried tokens matter
          "transformer": {"name": "transformer", "heads": 2, "context": 20, "hidden": 16}}
N_DAYS = 400  # a year and a bit: 14 intervals, the last one partial


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A trained emulator of each sequence kind and its --ftorch export."""
    top = tmp_path_factory.mktemp("ftorch")
    store = make_store(top / "store.nc", n_member=6, n_grid=4, n_years=2)
    out = {}
    for kind, model in MODELS.items():
        folder = top / kind
        folder.mkdir()
        cfg = write_config(folder, store, run_dir=folder / "run", model=model, data={"window": 60, "warmup": 10},
                           train={"max_steps": 3})
        assert main(["train", str(cfg), "--quiet", "--no-eval"]) == 0
        assert main(["export", str(folder / "run"), "--ftorch", "--out", str(folder / "export")]) == 0
        out[kind] = folder
    return out


def inputs(n_grid=4, n_days=N_DAYS, seed=0):
    """Forcing (G, D, 8) in CTSM units, static (G, 2), theta (G, 2): float32."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([1e-4, 1e-5, 30, 300, 350, 0.01, 1e4, 5])
    offset = torch.tensor([0, 0, 265, 20, 220, 0.002, 9e4, 0.5])
    forcing = torch.rand(n_grid, n_days, 8, generator=g) * scale + offset
    static = torch.rand(n_grid, 2, generator=g) * torch.tensor([70.0, 0.4]) + torch.tensor([10.0, 0.1])
    theta = torch.rand(n_grid, 2, generator=g) * torch.tensor([1.8, 6.0]) + torch.tensor([0.2, 2.0])
    return forcing, static, theta


def python_monthly(emu, forcing, static, theta, carry=True):
    """The Python emulator over the noleap months, the state carried (or reset each month)."""
    ys, state, d0 = [], None, 0
    with torch.no_grad():
        for n in monthly_intervals(forcing.shape[1]):
            y, new = emu(forcing[:, d0:d0 + n], static, theta, state=state, return_state=True)
            ys.append(y)
            state = new if carry else None
            d0 += n
    return torch.cat(ys, 1).numpy()


@pytest.mark.parametrize("kind", list(MODELS))
def test_ftorch_export_steps_in_chunks_like_one_long_call(runs, kind):
    folder = runs[kind]
    export = folder / "export"
    man = read_manifest(export)
    emu = load_emulator(folder / "run")
    data = (export / "emulator.pt").read_bytes()
    assert man["model_bytes"] == len(data) and man["model_sha256"] == hashlib.sha256(data).hexdigest()
    assert [f["name"] for f in man["forcing"]] == emu.forcing_names
    assert [f["name"] for f in man["response"]] == emu.response_names
    assert [f["name"] for f in man["static"]] == emu.static_names == ["PCT_SAND", "FMAX"]
    assert [f["name"] for f in man["param"]] == emu.param_names
    for f in man["forcing"] + man["response"]:
        assert (f["long_name"], f["units"]) == HIST_FIELDS[f["name"]]
    assert man["inputs"][0]["shape"] == ["gridcell", "days", 8]
    assert man["outputs"][0]["shape"] == ["gridcell", "days", 3]
    txt = (export / "manifest.txt").read_text().splitlines()
    assert f"state\t{man['state_size']}" in txt and f"model_bytes\t{len(data)}" in txt
    assert "QRUNOFF\tmm/s\t" + HIST_FIELDS["QRUNOFF"][0] in txt

    m = torch.jit.load(str(export / "emulator.pt"))
    forcing, static, theta = inputs()
    zero = torch.zeros(forcing.shape[0], man["state_size"])
    with torch.no_grad():
        whole, end_state = m(forcing, static, theta, zero)
        expected = emu(forcing, static, theta)
    assert whole.dtype == torch.float32 and whole.shape == (4, N_DAYS, 3)
    np.testing.assert_allclose(whole.numpy(), expected.numpy(), rtol=1e-5, atol=0)
    # irregular chunks: a day, a week, months, longer than the transformer's window
    for sizes in (monthly_intervals(N_DAYS), [1, 6, 30, 90, 1, 272]):
        ys, state, d0 = [], zero, 0
        with torch.no_grad():
            for n in sizes:
                y, state = m(forcing[:, d0:d0 + n], static, theta, state)
                ys.append(y)
                d0 += n
        np.testing.assert_allclose(torch.cat(ys, 1).numpy(), whole.numpy(), rtol=1e-5, atol=0)
        np.testing.assert_allclose(state.numpy(), end_state.numpy(), rtol=1e-5, atol=1e-6)
    # the state is what makes that so: restarting each month from zeros gives another answer
    assert not np.allclose(python_monthly(emu, forcing, static, theta, carry=False), whole.numpy(), rtol=1e-3)
    with pytest.raises(torch.jit.Error, match="state must be"):
        m(forcing, static, theta, torch.zeros(4, man["state_size"] + 1))


def test_ftorch_export_refuses(runs, tmp_path, capsys):
    run = runs["lstm"] / "run"
    check_refused(Case("--out names a .pt file", lambda t: ["export", str(run), "--ftorch", "--out", str(t / "m.pt")],
                       mentions=["m.pt", "folder"], outputs=["m.pt"]), tmp_path)
    (tmp_path / "afile").write_text("x")
    assert main(["export", str(run), "--ftorch", "--out", str(tmp_path / "afile")]) == 2
    assert "afile: is a file; --ftorch writes a folder" in capsys.readouterr().err
    assert (tmp_path / "afile").read_text() == "x"


# ---------------------------------------------------------------- the Fortran side


@pytest.fixture(scope="module")
def driver():
    """Build FTorch and the driver (cached in build/; .ci/run builds them first), installing the
    compiler when missing and allowed; skip only when the toolchain cannot be had here."""
    r = subprocess.run([str(ROOT / "coupler/fortran/build.sh"), "--install"], capture_output=True, text=True,
                       timeout=1200, env=dict(os.environ, PYTHON=sys.executable))
    if r.returncode == 3:
        pytest.skip(r.stderr.strip().splitlines()[-1])
    assert r.returncode == 0, r.stderr[-3000:]
    return Path(r.stdout.strip().splitlines()[-1])


def run_driver(driver, *args, cwd=None):
    return subprocess.run([str(driver), *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.mark.parametrize("kind", list(MODELS))
def test_fortran_driver_reproduces_python(runs, driver, tmp_path, kind):
    folder = runs[kind]
    man = read_manifest(folder / "export")
    emu = load_emulator(folder / "run")
    forcing, static, theta = inputs()
    lat, lon = [35.0, 40.0, 45.0, 50.0], [250.0, 260.0, 270.0, 280.0]
    src = write_driver_input(tmp_path / "in.nc", man, forcing.numpy(), static.numpy(), theta.numpy(),
                             lat=lat, lon=lon, start_year=2001)
    out = tmp_path / "h1.nc"
    r = run_driver(driver, folder / "export" / "manifest.txt", src, out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "14 intervals, 400 days x 4 gridcells" in r.stdout

    names = [f["name"] for f in man["response"]]
    hist = read_history(out, names)  # the project's CTSM history reader takes it as it is
    assert hist["days"][0] == "2001-01-01" and hist["days"][-1] == "2002-02-04" and hist["days"].size == N_DAYS
    np.testing.assert_allclose(hist["lat"], lat)
    expected = python_monthly(emu, forcing, static, theta)
    for k, name in enumerate(names):
        assert hist["units"][name] == HIST_FIELDS[name][1]
        np.testing.assert_allclose(hist["data"][name].T, expected[:, :, k], rtol=1e-5, atol=0, err_msg=name)
    with netCDF4.Dataset(out) as ds:
        assert ds["time"].units == "days since 2001-01-01 00:00:00" and ds["time"].calendar == "noleap"
        assert ds["QRUNOFF"].long_name == HIST_FIELDS["QRUNOFF"][0] and ds["QRUNOFF"].dimensions == ("time", "gridcell")
        assert list(ds["mcdate"][:3]) == [20010102, 20010103, 20010104] and ds["mcdate"][364] == 20020101

    # one 400-day interval gives the same: the state carried across the months is the whole state
    r = run_driver(driver, folder / "export" / "manifest.txt", src, tmp_path / "one.nc", N_DAYS)
    assert r.returncode == 0 and "1 intervals" in r.stdout, r.stderr
    one = read_history(tmp_path / "one.nc", names)
    for name in names:
        np.testing.assert_allclose(one["data"][name], hist["data"][name], rtol=1e-5, atol=0, err_msg=name)


def refused(driver, args, tmp, mentions, inputs=(), outputs=()):
    """The driver's bad-input promise: exit 2, one line naming the culprit, inputs unchanged, no
    output, no temporary."""
    before = digest_tree([tmp / p for p in inputs])
    r = run_driver(driver, *args, cwd=tmp)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, (r.returncode, r.stderr[-2000:])
    for m in mentions:
        assert m in lines[0], (m, lines[0])
    assert digest_tree([tmp / p for p in inputs]) == before
    for p in outputs:
        assert not (tmp / p).exists()
    assert not temporaries(tmp)


def test_fortran_driver_refuses_bad_input(runs, driver, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(runs["lstm"] / "export", export)
    man = read_manifest(export)
    forcing, static, theta = inputs(n_grid=3, n_days=40)
    good = write_driver_input(tmp_path / "in.nc", man, forcing.numpy(), static.numpy(), theta.numpy())
    mt = "export/manifest.txt"

    def variant(name, edit):
        p = tmp_path / name
        shutil.copy(good, p)
        with netCDF4.Dataset(p, "a") as ds:
            edit(ds)
        return name

    def fill_first_fmax(ds):
        ds["FMAX"].setncattr("missing_value", np.float32(1e36))
        ds["FMAX"][0] = 1e36

    no_wind = tmp_path / "nowind.nc"
    f2 = np.delete(forcing.numpy(), 7, axis=2)
    m2 = dict(man, forcing=man["forcing"][:7])
    write_driver_input(no_wind, m2, f2, static.numpy(), theta.numpy())
    cases = [
        ([mt, "nowind.nc", "o.nc"], ["nowind.nc", "WIND", "missing"], ["nowind.nc"]),
        ([mt, variant("units.nc", lambda ds: ds["TBOT"].setncattr("units", "degC")), "o.nc"],
         ["units.nc", "TBOT", "degC", '"K"'], ["units.nc"]),
        ([mt, variant("nan.nc", lambda ds: ds["RAIN"].__setitem__((5, 1), np.nan)), "o.nc"],
         ["nan.nc", "RAIN", "gridcell 2", "day 6"], ["nan.nc"]),
        ([mt, variant("fill.nc", fill_first_fmax), "o.nc"], ["fill.nc", "FMAX", "gridcell 1"], ["fill.nc"]),
        ([mt, "in.nc", "o.nc", "0"], ["INTERVAL_DAYS", "0"], ["in.nc"]),
        ([mt, "in.nc", "in.nc"], ["in.nc", "overwrite"], ["in.nc"]),
        (["in.nc", "in.nc", "o.nc"], ["in.nc", "manifest"], ["in.nc"]),
        ([mt, "missing.nc", "o.nc"], ["missing.nc"], []),
    ]
    for args, mentions, ins in cases:
        refused(driver, args, tmp_path, mentions, inputs=[*ins, "export"], outputs=["o.nc"])
    # a model file that is not the one the manifest was written for (re-exported, copied over)
    with open(export / "emulator.pt", "ab") as f:
        f.write(b"\0")
    refused(driver, [mt, "in.nc", "o.nc"], tmp_path, ["emulator.pt", "bytes"], inputs=["in.nc"], outputs=["o.nc"])
    txt = (tmp_path / "manifest_bad.txt")
    txt.write_text((export / "manifest.txt").read_text().replace("state\t", "stat\t"))
    refused(driver, ["manifest_bad.txt", "in.nc", "o.nc"], tmp_path, ["manifest_bad.txt", "state"], outputs=["o.nc"])
    json.loads((export / "manifest.json").read_text())  # untouched
