"""`esm-emu export`: TorchScript that loads with plain torch (no esm_emu) and reproduces predictions."""
import subprocess
import sys
import textwrap

import pytest
import torch
from emu_store import make_store, write_config

from esm_emu.cli import main
from esm_emu.emulator import load_emulator


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("store") / "store.nc", n_member=6, n_grid=4, n_years=2)


@pytest.mark.parametrize("model", [{"name": "lstm"}, {"name": "transformer", "heads": 2, "context": 50}])
def test_export_loads_without_the_package(tmp_path, store, model):
    cfg = write_config(tmp_path, store, model=model, data={"window": 60, "warmup": 10}, train={"max_steps": 3})
    assert main(["train", str(cfg), "--quiet"]) == 0
    out = tmp_path / "export" / "emulator.pt"
    assert main(["export", str(tmp_path / "run"), "--out", str(out)]) == 0

    emu = load_emulator(tmp_path / "run")
    g = torch.Generator().manual_seed(0)
    forcing = torch.rand(2, 120, 8, generator=g) * torch.tensor([1e-4, 1e-5, 30, 300, 350, 0.01, 1e5, 5]) \
        + torch.tensor([0, 0, 260, 0, 200, 0, 9e4, 0])
    static = torch.tensor([[40.0, 0.3], [70.0, 0.1]])
    theta = torch.tensor([[1.0, 4.0], [1.5, 6.0]])
    with torch.no_grad():
        expected = emu(forcing, static, theta)
    torch.save({"forcing": forcing, "static": static, "theta": theta, "expected": expected}, tmp_path / "io.pt")

    # -I: isolated mode, no cwd/user site on sys.path; run from elsewhere; esm_emu must not be importable
    script = textwrap.dedent(f"""
        import importlib.util, json, sys, torch
        assert importlib.util.find_spec("esm_emu") is None or "esm_emu" not in sys.modules
        sys.modules["esm_emu"] = None  # any import of the package would now fail
        extra = {{"esm_emu.json": ""}}
        m = torch.jit.load({str(out)!r}, _extra_files=extra)
        io = torch.load({str(tmp_path / 'io.pt')!r}, weights_only=True)
        y = m(io["forcing"], io["static"], io["theta"])
        torch.testing.assert_close(y, io["expected"], rtol=1e-5, atol=1e-7)
        a, h, c = m.initial_state(io["forcing"][:, :50], io["static"], io["theta"])
        b, h, c = m.step(io["forcing"][:, 50:], io["static"], io["theta"], h, c)
        torch.testing.assert_close(torch.cat([a, b], 1), io["expected"], rtol=1e-4, atol=1e-6)
        meta = json.loads(extra["esm_emu.json"])
        print(meta["response_names"], list(m.forcing_names))
    """)
    res = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "QRUNOFF" in res.stdout and "RAIN" in res.stdout


def test_export_refuses_bad_paths(tmp_path, capsys):
    assert main(["export", str(tmp_path / "norun"), "--out", str(tmp_path / "x.pt")]) == 2
    assert "not found" in capsys.readouterr().err
