"""Export a trained emulator as TorchScript with normalisation inside.

The file loads with plain `torch.jit.load` (no esm_emu import needed): the form FTorch loads
from Fortran in CESM. `forward(forcing, static, theta) -> responses` in physical units; sequence
models also export `step(forcing, static, theta, h, c) -> (responses, h, c)` for coupling one
chunk at a time (start with `initial_state(batch)`). Names and units metadata travel as
attributes and in the `esm_emu.json` extra file.

An emulator ensemble (`train.ensemble: K`) exports all K members: `forward` gives their mean,
`forward_with_spread(forcing, static, theta) -> (mean, std)` the mean and the spread, and the
state of `initial_state`/`step` is the members' states concatenated on the first axis.

The std of `forward_with_spread` is the calibrated predictive std the emulator carries
(`esm_emu.spread`: sqrt(a spread^2 + b + c mean^2) per response, fitted on validation series;
a single network has only the b and c terms); for a checkpoint without a calibration it is the
members' spread (zeros for one network). `esm_emu.json` states which (`spread_calibration`).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import List, Tuple

import torch
from torch import nn

from ppe_ingest.base.atomic import atomic_path

from .emulator import Emulator, EmulatorEnsemble, TabularEmulator, load_emulator
from .training.job import check_export_paths


class _Calibrated(nn.Module):
    """The calibration's (a, b, c) as buffers: std = sqrt(a spread^2 + b + c mean^2), or the spread
    itself when `fitted` is false (a checkpoint without a calibration)."""

    def __init__(self, emu: nn.Module):
        super().__init__()
        cal = emu.calibration
        self.register_buffer("a", cal.a.detach().clone().float())
        self.register_buffer("b", cal.b.detach().clone().float())
        self.register_buffer("c", cal.c.detach().clone().float())
        self.fitted: bool = bool(cal.fitted)

    def forward(self, mean: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            return spread
        var = self.a.to(mean.dtype) * spread * spread + self.b.to(mean.dtype) + self.c.to(mean.dtype) * mean * mean
        return torch.sqrt(torch.clamp(var, min=1e-30))


class _ScriptableSequence(nn.Module):
    def __init__(self, emu: Emulator):
        super().__init__()
        self.core = emu.core
        self.norm = emu.norm
        self.forcing_names: List[str] = list(emu.forcing_names)
        self.static_names: List[str] = list(emu.static_names)
        self.param_names: List[str] = list(emu.param_names)
        self.response_names: List[str] = list(emu.response_names)
        # core outputs -> responses (QRUNOFF = QOVER + QDRAI with model.runoff: components)
        self.register_buffer("combine", emu.combine.detach().clone())
        self.calibration = _Calibrated(emu)

    def _cond(self, static: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.norm.static(static), self.norm.theta(theta)], dim=-1)

    def _out(self, z: torch.Tensor) -> torch.Tensor:
        return torch.matmul(self.norm.response.inverse(z), self.combine.t())

    def forward(self, forcing: torch.Tensor, static: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        z, _ = self.core(self.norm.forcing(forcing), self._cond(static, theta), None)
        return self._out(z)

    @torch.jit.export
    def forward_with_spread(self, forcing: torch.Tensor, static: torch.Tensor, theta: torch.Tensor
                            ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(responses, calibrated std): one network has no members' spread, only the calibration's floor."""
        y = self.forward(forcing, static, theta)
        return y, self.calibration(y, torch.zeros_like(y))

    @torch.jit.export
    def initial_state(self, forcing: torch.Tensor, static: torch.Tensor, theta: torch.Tensor
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the first chunk from a fresh state: (responses, h, c)."""
        z, s = self.core(self.norm.forcing(forcing), self._cond(static, theta), None)
        return self._out(z), s[0], s[1]

    @torch.jit.export
    def step(self, forcing: torch.Tensor, static: torch.Tensor, theta: torch.Tensor, h: torch.Tensor,
             c: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Continue from state (h, c): (responses, h, c)."""
        z, s = self.core(self.norm.forcing(forcing), self._cond(static, theta), (h, c))
        return self._out(z), s[0], s[1]


class _ScriptableEnsemble(nn.Module):
    """K scripted members: the mean as `forward`, mean and spread as `forward_with_spread`."""

    def __init__(self, ens: EmulatorEnsemble):
        super().__init__()
        self.members = nn.ModuleList([_ScriptableSequence(m) for m in ens.members])
        self.n_members: int = len(ens.members)
        self.forcing_names: List[str] = list(ens.forcing_names)
        self.static_names: List[str] = list(ens.static_names)
        self.param_names: List[str] = list(ens.param_names)
        self.response_names: List[str] = list(ens.response_names)
        self.calibration = _Calibrated(ens)

    def _all(self, forcing: torch.Tensor, static: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        ys: List[torch.Tensor] = []
        for m in self.members:
            ys.append(m(forcing, static, theta))
        return torch.stack(ys)

    def forward(self, forcing: torch.Tensor, static: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return self._all(forcing, static, theta).mean(0)

    @torch.jit.export
    def forward_with_spread(self, forcing: torch.Tensor, static: torch.Tensor, theta: torch.Tensor
                            ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(mean, calibrated std from the members' spread), physical units."""
        ys = self._all(forcing, static, theta)
        mean = ys.mean(0)
        return mean, self.calibration(mean, ys.std(0, unbiased=False))

    @torch.jit.export
    def initial_state(self, forcing: torch.Tensor, static: torch.Tensor, theta: torch.Tensor
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The first chunk from a fresh state: (mean responses, h, c), states of the members concatenated."""
        ys: List[torch.Tensor] = []
        hs: List[torch.Tensor] = []
        cs: List[torch.Tensor] = []
        for m in self.members:
            y, h, c = m.initial_state(forcing, static, theta)
            ys.append(y)
            hs.append(h)
            cs.append(c)
        return torch.stack(ys).mean(0), torch.cat(hs, 0), torch.cat(cs, 0)

    @torch.jit.export
    def step(self, forcing: torch.Tensor, static: torch.Tensor, theta: torch.Tensor, h: torch.Tensor,
             c: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Continue from the concatenated state: (mean responses, h, c)."""
        hk = h.chunk(self.n_members, 0)
        ck = c.chunk(self.n_members, 0)
        ys: List[torch.Tensor] = []
        hs: List[torch.Tensor] = []
        cs: List[torch.Tensor] = []
        k = 0
        for m in self.members:
            y, h1, c1 = m.step(forcing, static, theta, hk[k], ck[k])
            ys.append(y)
            hs.append(h1)
            cs.append(c1)
            k += 1
        return torch.stack(ys).mean(0), torch.cat(hs, 0), torch.cat(cs, 0)


class _ScriptableTabular(nn.Module):
    def __init__(self, emu: TabularEmulator):
        super().__init__()
        self.core = emu.core
        self.norm = emu.norm
        self.out_tf = emu.out_tf
        self.param_names: List[str] = list(emu.param_names)
        self.response_names: List[str] = list(emu.response_names)

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        return self.out_tf.inverse(self.norm.response.inverse(self.core(self.norm.theta(theta))))


def to_torchscript(emu: nn.Module) -> torch.jit.ScriptModule:
    """A scripted copy of an Emulator or TabularEmulator (eval mode, on CPU)."""
    emu = emu.cpu().eval()
    if isinstance(emu, TabularEmulator):
        wrapper = _ScriptableTabular(emu)
    elif isinstance(emu, EmulatorEnsemble):
        wrapper = _ScriptableEnsemble(emu)
    else:
        wrapper = _ScriptableSequence(emu)
    with warnings.catch_warnings():
        # torch marks TorchScript deprecated, but it is the format FTorch loads from Fortran
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(wrapper)


def export_torchscript(source: str | Path, out: str | Path) -> Path:
    """Write the emulator in `source` (run directory or checkpoint) as TorchScript to `out`."""
    source, out = Path(source), Path(out)
    src_file = check_export_paths(source, out)
    emu = load_emulator(src_file)
    scripted = to_torchscript(emu)
    meta = {"kind": emu.kind, "forcing_names": emu.forcing_names, "static_names": emu.static_names,
            "param_names": emu.param_names, "response_names": emu.response_names,
            "model": emu.model_cfg, "source": source.name,
            "ensemble_members": getattr(emu, "n_members", 1),
            "spread_calibration": (emu.calibration.to_payload() if getattr(emu, "calibration", None) is not None
                                   and emu.calibration.fitted else "none"),
            "signature": "forward(forcing[B,T,F], static[B,S], theta[B,P]) -> responses[B,T,R]"
            if emu.kind == "sequence" else "forward(theta[B,P]) -> outputs[B,R]", "units": "physical (CTSM)"}
    with atomic_path(out, inputs=[src_file]) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(scripted, str(tmp), _extra_files={"esm_emu.json": json.dumps(meta)})
    return out
