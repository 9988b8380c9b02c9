"""Export a trained emulator as TorchScript with normalisation inside.

The file loads with plain `torch.jit.load` (no esm_emu import needed): the form FTorch loads
from Fortran in CESM. `forward(forcing, static, theta) -> responses` in physical units; sequence
models also export `step(forcing, static, theta, h, c) -> (responses, h, c)` for coupling one
chunk at a time (start with `initial_state(batch)`). Names and units metadata travel as
attributes and in the `esm_emu.json` extra file.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import List, Tuple

import torch
from torch import nn

from ppe_ingest.base.atomic import atomic_path

from .emulator import Emulator, TabularEmulator, load_emulator
from .training.job import check_export_paths


class _ScriptableSequence(nn.Module):
    def __init__(self, emu: Emulator):
        super().__init__()
        self.core = emu.core
        self.norm = emu.norm
        self.forcing_names: List[str] = list(emu.forcing_names)
        self.static_names: List[str] = list(emu.static_names)
        self.param_names: List[str] = list(emu.param_names)
        self.response_names: List[str] = list(emu.response_names)

    def _cond(self, static: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.norm.static(static), self.norm.theta(theta)], dim=-1)

    def forward(self, forcing: torch.Tensor, static: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        z, _ = self.core(self.norm.forcing(forcing), self._cond(static, theta), None)
        return self.norm.response.inverse(z)

    @torch.jit.export
    def initial_state(self, forcing: torch.Tensor, static: torch.Tensor, theta: torch.Tensor
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the first chunk from a fresh state: (responses, h, c)."""
        z, s = self.core(self.norm.forcing(forcing), self._cond(static, theta), None)
        return self.norm.response.inverse(z), s[0], s[1]

    @torch.jit.export
    def step(self, forcing: torch.Tensor, static: torch.Tensor, theta: torch.Tensor, h: torch.Tensor,
             c: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Continue from state (h, c): (responses, h, c)."""
        z, s = self.core(self.norm.forcing(forcing), self._cond(static, theta), (h, c))
        return self.norm.response.inverse(z), s[0], s[1]


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
    wrapper = _ScriptableTabular(emu) if isinstance(emu, TabularEmulator) else _ScriptableSequence(emu)
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
            "signature": "forward(forcing[B,T,F], static[B,S], theta[B,P]) -> responses[B,T,R]"
            if emu.kind == "sequence" else "forward(theta[B,P]) -> outputs[B,R]", "units": "physical (CTSM)"}
    with atomic_path(out, inputs=[src_file]) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(scripted, str(tmp), _extra_files={"esm_emu.json": json.dumps(meta)})
    return out
