"""`esm-emu regrid weights|apply|dlnd` as a user runs them."""
import subprocess
import sys

import numpy as np
import xarray as xr

from coupler import grids


class _Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _run(*args, capsys=None):
    """The real entry point; in-process (other plugins import torch, a subprocess costs seconds)."""
    if capsys is None:
        return subprocess.run([sys.executable, "-m", "esm_emu.cli", *map(str, args)], capture_output=True, text=True)
    from esm_emu.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return _Result(code, out.out, out.err)


def test_weights_then_apply(tmp_path, shared_data, capsys):
    src = shared_data("regrid", "esmf_testdata", "ne4np4-pentagons.nc")
    dst = tmp_path / "dst_scrip.nc"
    grids.write_scrip(grids.regular(18, 36), dst)
    w = tmp_path / "map.nc"
    r = _run("regrid", "weights", "--src", src, "--dst", dst, "--method", "conserve", "--out", w, capsys=capsys)
    assert r.returncode == 0, r.stderr
    g = grids.read_grid(src)
    data = xr.Dataset({"QRUNOFF": (("time", "grid_size"), np.vstack([np.cos(np.deg2rad(g.lat)), np.ones(g.n)])),
                       "label": (("time",), np.array([1, 2]))})
    data.to_netcdf(tmp_path / "in.nc")
    r = _run("regrid", "apply", "--weights", w, tmp_path / "in.nc", tmp_path / "out.nc", capsys=capsys)
    assert r.returncode == 0, r.stderr
    with xr.open_dataset(tmp_path / "out.nc") as out:
        assert out.QRUNOFF.dims == ("time", "lat", "lon") and out.QRUNOFF.shape == (2, 18, 36)
        np.testing.assert_allclose(out.QRUNOFF.values[1], 1.0, rtol=1e-12)
        a = grids.regular(18, 36).cell_area().reshape(18, 36)
        ia = (data.QRUNOFF.values[0] * g.cell_area()).sum()
        assert abs((out.QRUNOFF.values[0] * a).sum() - ia) / ia < 1e-10


def test_bad_inputs_exit_nonzero_with_one_line(tmp_path, shared_data, capsys):
    src = shared_data("regrid", "esmf_testdata", "test_sph_3x3_scrip.nc")
    r = _run("regrid", "weights", "--src", tmp_path / "nope.nc", "--dst", src, "--out", tmp_path / "w.nc")
    assert r.returncode == 2 and "nope.nc: grid file not found" in r.stderr and "Traceback" not in r.stderr
    r = _run("regrid", "weights", "--src", src, "--dst", src, "--out", src, capsys=capsys)
    assert r.returncode == 2 and "refusing to overwrite" in r.stderr
    w = tmp_path / "w.nc"
    r = _run("regrid", "weights", "--src", src, "--dst", src, "--method", "nearest", "--out", w, capsys=capsys)
    assert r.returncode == 0
    xr.Dataset({"x": (("n",), np.ones(3))}).to_netcdf(tmp_path / "in.nc")
    r = _run("regrid", "apply", "--weights", w, tmp_path / "in.nc", tmp_path / "out.nc", capsys=capsys)
    assert r.returncode == 2 and "no variable has horizontal dims" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_dlnd_command_prints_case_settings(tmp_path, capsys):
    g = grids.regular(4, 8)
    grids.write_scrip(g, tmp_path / "lnd.nc")
    time = xr.date_range("2001-01-01", periods=31, freq="D", calendar="noleap", use_cftime=True)
    xr.Dataset({"QOVER": (("time", "lat", "lon"), np.full((31, 4, 8), 1e-5))},
               coords={"time": time}).to_netcdf(tmp_path / "ro.nc")
    r = _run("regrid", "dlnd", tmp_path / "ro.nc", "--grid", tmp_path / "lnd.nc", "--case", "emu",
             "--out", tmp_path / "out", capsys=capsys)
    assert r.returncode == 0, r.stderr
    assert "./xmlchange DLND_CPLHIST_CASE=emu" in r.stdout and "rof_forcing:meshfile" in r.stdout
    assert (tmp_path / "out" / "emu.cpl.hx.l2r.2001-01-02-00000.nc").exists()
