"""The Fortran-callable export: `esm-emu export RUN_DIR --ftorch --out DIR`.

DIR receives three files:

- ``emulator.pt``: TorchScript whose ``forward`` takes plain float32 tensors in physical (CTSM)
  units and carries the recurrent state as one fixed-width tensor, the form FTorch's
  ``torch_model_forward`` calls from Fortran::

      forward(forcing (gridcell, days, forcing), static (gridcell, static),
              theta (gridcell, param), state (gridcell, state))
          -> (responses (gridcell, days, response), new state (gridcell, state))

  The first interval starts from a state of zeros. Stepping the days in chunks with the state
  carried equals one long call (an LSTM's (h, c) packed side by side; a transformer's last
  tokens right-aligned, with their count in the last column).
- ``manifest.json``: names, CTSM units and long_names, tensor shapes and order, the state width,
  the model file's size and sha256 (for people and Python tools);
- ``manifest.txt``: the same in tab-separated lines that the Fortran side
  (``coupler/fortran/esm_emu_land.f90``) reads and checks at load.

`write_driver_input` writes the netCDF file the Fortran driver program reads.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ppe_ingest.base.atomic import atomic_path, refuse_overwrite
from ppe_ingest.base.errors import UserError, shown
from ppe_ingest.ctsmio.vocabulary import HIST_FIELDS, STATIC_ATTRS

FORMAT = "esm_emu.ftorch"
VERSION = 1
MODEL_FILE = "emulator.pt"
MANIFEST_JSON = "manifest.json"
MANIFEST_TXT = "manifest.txt"
# Fixed lengths of the Fortran side's character fields (esm_emu_land.f90): a longer value is refused here.
NAME_LEN, UNITS_LEN, LONG_NAME_LEN = 64, 64, 256


class _LstmState(nn.Module):
    """(h, c), each (layers, B, hidden), as one (B, 2 * layers * hidden) tensor."""

    def __init__(self, layers: int, hidden: int):
        super().__init__()
        self.layers = layers
        self.hidden = hidden
        self.width = 2 * layers * hidden

    def unpack(self, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        B = state.shape[0]
        n = self.layers * self.hidden
        h = state[:, :n].reshape(B, self.layers, self.hidden).transpose(0, 1).contiguous()
        c = state[:, n:].reshape(B, self.layers, self.hidden).transpose(0, 1).contiguous()
        return h, c

    def pack(self, s: Tuple[torch.Tensor, torch.Tensor], B: int) -> torch.Tensor:
        h = s[0].transpose(0, 1).reshape(B, self.layers * self.hidden)
        c = s[1].transpose(0, 1).reshape(B, self.layers * self.hidden)
        return torch.cat([h, c], dim=1)


class _PastTokens(nn.Module):
    """A transformer's last (at most `memory`) tokens, right-aligned in (B, memory * d), then their count."""

    def __init__(self, memory: int, d: int):
        super().__init__()
        self.memory = memory
        self.d = d
        self.width = memory * d + 1

    def unpack(self, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        B = state.shape[0]
        n = 0
        if B > 0:
            n = int(state[0, -1].item())
        if n < 0 or n > self.memory:
            raise RuntimeError("esm_emu: the state's token count (its last column) is out of range")
        past = state[:, :self.memory * self.d].reshape(B, self.memory, self.d)[:, self.memory - n:]
        return past, torch.zeros(1, dtype=state.dtype, device=state.device)

    def pack(self, s: Tuple[torch.Tensor, torch.Tensor], B: int) -> torch.Tensor:
        past = s[0]
        n = past.shape[1]
        buf = torch.zeros(B, self.memory, self.d, dtype=past.dtype, device=past.device)
        if n > 0:
            buf[:, self.memory - n:] = past
        count = torch.full((B, 1), float(n), dtype=past.dtype, device=past.device)
        return torch.cat([buf.reshape(B, self.memory * self.d), count], dim=1)


def _state_codec(core: nn.Module) -> nn.Module:
    from .models.lstm import EntityLSTM
    from .models.transformer import ConditionedTransformer

    if isinstance(core, EntityLSTM):
        return _LstmState(core.layers, core.hidden)
    if isinstance(core, ConditionedTransformer):
        return _PastTokens(core.memory, core.d_model)
    raise UserError(f"--ftorch: the emulator's model '{getattr(core, 'model_name', type(core).__name__)}' has no "
                    "fixed-width state form for Fortran (the FTorch export knows lstm and transformer)")


class FtorchEmulator(nn.Module):
    """forward(forcing, static, theta, state) -> (responses, state), float32, physical units."""

    def __init__(self, emu: nn.Module):
        super().__init__()
        self.core = emu.core
        self.norm = emu.norm
        self.codec = _state_codec(emu.core)
        self.forcing_names: List[str] = list(emu.forcing_names)
        self.static_names: List[str] = list(emu.static_names)
        self.param_names: List[str] = list(emu.param_names)
        self.response_names: List[str] = list(emu.response_names)
        self.state_size: int = int(self.codec.width)

    def initial_state(self, n_gridcell: int) -> torch.Tensor:
        return torch.zeros(n_gridcell, self.state_size)

    def forward(self, forcing: torch.Tensor, static: torch.Tensor, theta: torch.Tensor,
                state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        B = forcing.shape[0]
        if forcing.dim() != 3 or forcing.shape[2] != len(self.forcing_names):
            raise RuntimeError("esm_emu: forcing must be (gridcell, days, n_forcing)")
        if static.dim() != 2 or static.shape[0] != B or static.shape[1] != len(self.static_names):
            raise RuntimeError("esm_emu: static must be (gridcell, n_static)")
        if theta.dim() != 2 or theta.shape[0] != B or theta.shape[1] != len(self.param_names):
            raise RuntimeError("esm_emu: theta must be (gridcell, n_param)")
        if state.dim() != 2 or state.shape[0] != B or state.shape[1] != self.state_size:
            raise RuntimeError("esm_emu: state must be (gridcell, state_size)")
        cond = torch.cat([self.norm.static(static), self.norm.theta(theta)], dim=-1)
        z, s = self.core(self.norm.forcing(forcing), cond, self.codec.unpack(state))
        return self.norm.response.inverse(z), self.codec.pack(s, B)


def ftorch_module(emu: nn.Module) -> torch.jit.ScriptModule:
    """The scripted Fortran-callable form of a sequence emulator (eval mode, CPU, float32)."""
    if getattr(emu, "kind", "sequence") != "sequence":
        raise UserError("--ftorch: this is a tabular (summary) emulator; the FTorch export steps a sequence "
                        "emulator through time (train an lstm or transformer)")
    if not isinstance(getattr(emu, "core", None), nn.Module):
        raise UserError(f"--ftorch: a {type(emu).__name__} has no single sequence core to export for Fortran "
                        "(the FTorch export takes one lstm or transformer emulator)")
    wrapper = FtorchEmulator(emu.cpu().eval()).float().eval()
    with warnings.catch_warnings():
        # torch marks TorchScript deprecated, but it is the format FTorch loads from Fortran
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(wrapper)


def _field(name: str, units: str, long_name: str, what: str) -> dict:
    for key, value, limit in (("name", name, NAME_LEN), ("units", units, UNITS_LEN),
                              ("long_name", long_name, LONG_NAME_LEN)):
        if len(value) > limit or any(ch in value for ch in "\t\r\n") or (key == "name" and not value.strip()):
            raise UserError(f"--ftorch: {what} {key} {shown(value)} does not fit the Fortran manifest "
                            f"(at most {limit} characters, no tabs or line breaks)")
    return {"name": name, "units": units, "long_name": long_name}


def manifest_of(emu: nn.Module, state_size: int, source: str) -> dict:
    """The manifest's content (without the model file's size and hash)."""
    def hist(n, what):
        ln, u = HIST_FIELDS.get(n, ("", ""))
        return _field(n, u, ln, what)

    def stat(n):
        ln, u = STATIC_ATTRS.get(n, ("", ""))
        return _field(n, u, ln, "static field")

    return {
        "format": FORMAT, "version": VERSION, "model": MODEL_FILE, "source": source, "dtype": "float32",
        "model_kind": dict(emu.model_cfg).get("name", ""),
        "forcing": [hist(n, "forcing") for n in emu.forcing_names],
        "static": [stat(n) for n in emu.static_names],
        "param": [_field(n, "", "", "parameter") for n in emu.param_names],
        "response": [hist(n, "response") for n in emu.response_names],
        "state_size": int(state_size),
        "initial_state": "zeros",
        "inputs": [
            {"name": "forcing", "shape": ["gridcell", "days", len(emu.forcing_names)]},
            {"name": "static", "shape": ["gridcell", len(emu.static_names)]},
            {"name": "theta", "shape": ["gridcell", len(emu.param_names)]},
            {"name": "state", "shape": ["gridcell", int(state_size)]},
        ],
        "outputs": [
            {"name": "responses", "shape": ["gridcell", "days", len(emu.response_names)]},
            {"name": "state", "shape": ["gridcell", int(state_size)]},
        ],
        "signature": "forward(forcing[G,D,F], static[G,S], theta[G,P], state[G,N]) -> (responses[G,D,R], state[G,N])",
        "units": "physical (CTSM); the daily forcing and responses are daily means",
    }


def manifest_text(m: dict) -> str:
    """The Fortran form of the manifest: tab-separated lines, one section per tensor."""
    lines = ["# esm-emu FTorch manifest: the Fortran form of manifest.json (tab-separated)",
             f"format\t{m['format']}\t{m['version']}", f"model\t{m['model']}", f"model_bytes\t{m['model_bytes']}",
             f"state\t{m['state_size']}"]
    for section in ("forcing", "static", "param", "response"):
        lines.append(f"{section}\t{len(m[section])}")
        lines += [f"{f['name']}\t{f['units']}\t{f['long_name']}" for f in m[section]]
    lines.append("end")
    return "\n".join(lines) + "\n"


def check_ftorch_paths(source: str | Path, out: str | Path) -> Path:
    """Check `--ftorch --out DIR` before anything heavy runs; return the checkpoint."""
    from .training.job import checkpoint_of

    ckpt = checkpoint_of(source)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out}: is a file; --ftorch writes a folder ({MODEL_FILE}, {MANIFEST_JSON}, "
                        f"{MANIFEST_TXT})")
    if out.suffix == ".pt":
        raise UserError(f"--out: {out}: --ftorch writes a folder ({MODEL_FILE}, {MANIFEST_JSON}, {MANIFEST_TXT}); "
                        "give a folder name")
    for p in out.parents:
        if p.exists():
            if not p.is_dir():
                raise UserError(f"--out: {p}: is a file, not a folder")
            break
    for name in (MODEL_FILE, MANIFEST_JSON, MANIFEST_TXT):
        refuse_overwrite(out / name, [ckpt])
    return ckpt


def export_ftorch(source: str | Path, out: str | Path) -> Path:
    """Write the Fortran-callable export of the emulator in `source` into the folder `out`."""
    from .emulator import load_emulator

    source, out = Path(source), Path(out)
    ckpt = check_ftorch_paths(source, out)
    emu = load_emulator(ckpt)
    scripted = ftorch_module(emu)
    meta = manifest_of(emu, int(scripted.state_size), source.name)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / MODEL_FILE, inputs=[ckpt]) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(scripted, str(tmp), _extra_files={"esm_emu.json": json.dumps(meta)})
        data = Path(tmp).read_bytes()
    meta["model_bytes"] = len(data)
    meta["model_sha256"] = hashlib.sha256(data).hexdigest()
    # the manifests last: a folder whose manifests are written describes the model beside them
    with atomic_path(out / MANIFEST_JSON, inputs=[ckpt]) as tmp:
        Path(tmp).write_text(json.dumps(meta, indent=1) + "\n")
    with atomic_path(out / MANIFEST_TXT, inputs=[ckpt]) as tmp:
        Path(tmp).write_text(manifest_text(meta))
    return out


def read_manifest(folder: str | Path) -> dict:
    """The manifest.json of an FTorch export folder."""
    path = Path(folder) / MANIFEST_JSON
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable FTorch manifest ({type(e).__name__})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise UserError(f"{path}: not an esm-emu FTorch manifest (format is not '{FORMAT}')")
    return m


def write_driver_input(path: str | Path, manifest: dict, forcing: np.ndarray, static: np.ndarray,
                       theta: np.ndarray, lat: Optional[Sequence[float]] = None,
                       lon: Optional[Sequence[float]] = None, start_year: int = 1) -> Path:
    """The netCDF file the Fortran driver reads: forcing (time, gridcell) daily from 1 January
    (noleap), static fields and parameters (gridcell), named and in the units of `manifest`.

    forcing is (gridcell, days, forcing), static (gridcell, static), theta (gridcell, param), each
    in the manifest's order.
    """
    import netCDF4

    forcing, static, theta = (np.asarray(a, dtype=np.float32) for a in (forcing, static, theta))
    G, T = forcing.shape[:2]
    for what, a, n in (("forcing", forcing, 3), ("static", static, 2), ("param", theta, 2)):
        if a.ndim != n or a.shape[0] != G or a.shape[-1] != len(manifest[what]):
            raise UserError(f"write_driver_input: {what} has shape {a.shape}, expected gridcell={G} first "
                            f"and {len(manifest[what])} {what} fields last")
    path = Path(path)
    with atomic_path(path) as tmp:
        with netCDF4.Dataset(tmp, "w", format="NETCDF4_CLASSIC") as ds:
            ds.createDimension("time", T)
            ds.createDimension("gridcell", G)
            ds.setncattr("title", "esm-emu FTorch driver input: daily forcing, static fields, parameters")
            t = ds.createVariable("time", "f8", ("time",))
            t.setncatts({"long_name": "time", "units": f"days since {int(start_year):04d}-01-01 00:00:00",
                         "calendar": "noleap"})
            t[:] = np.arange(T, dtype=np.float64)
            if lat is not None and lon is not None:
                for name, vals, ln, un in (("grid1d_lon", lon, "gridcell longitude", "degrees_east"),
                                           ("grid1d_lat", lat, "gridcell latitude", "degrees_north")):
                    v = ds.createVariable(name, "f8", ("gridcell",))
                    v.setncatts({"long_name": ln, "units": un})
                    v[:] = np.asarray(vals, dtype=np.float64)
            for k, f in enumerate(manifest["forcing"]):
                v = ds.createVariable(f["name"], "f4", ("time", "gridcell"))
                v.setncatts({"long_name": f["long_name"], "units": f["units"]})
                v[:] = forcing[:, :, k].T
            for what, a in (("static", static), ("param", theta)):
                for k, f in enumerate(manifest[what]):
                    v = ds.createVariable(f["name"], "f4", ("gridcell",))
                    v.setncatts({"long_name": f["long_name"], "units": f["units"]})
                    v[:] = a[:, k]
    return path


def monthly_intervals(n_days: int) -> List[int]:
    """Lengths of the noleap calendar's months covering `n_days` days from 1 January (the last may be shorter)."""
    months = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
    out, k = [], 0
    while sum(out) < n_days:
        out.append(min(months[k % 12], n_days - sum(out)))
        k += 1
    return out
