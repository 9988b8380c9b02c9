"""The emulator F(forcing_t, static, theta) -> responses_t in physical units, and its loader.

`Emulator` wraps the normaliser and a sequence core from the model zoo; inputs and outputs are
in CTSM units (normalisation lives inside), and it is differentiable w.r.t. theta and static so
inverse models can run through it. `TabularEmulator` is the summary-PPE form theta -> outputs.
`load_emulator(path)` rebuilds either from a training checkpoint or a saved emulator file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ppe_ingest.base.errors import UserError, shown

from .checkpoint import emulator_entry, read_torch_file
from .models import build_model
from .normalize import Normalizer
from .spread import SpreadCalibration

State = Tuple[torch.Tensor, torch.Tensor]

# `model.runoff: components`: the core predicts these and the emulator gives their sum
RUNOFF_COMPONENTS = {"QRUNOFF": ("QOVER", "QDRAI")}


def core_names(model_cfg: Mapping, response_names: Sequence[str]) -> list[str]:
    """What the core network predicts for `response_names`: the responses themselves, or with
    `runoff: components` each summed response (QRUNOFF) replaced by its components (QOVER, QDRAI)."""
    if model_cfg.get("runoff", "direct") != "components":
        return list(response_names)
    out: list[str] = []
    for r in response_names:
        for c in RUNOFF_COMPONENTS.get(r, (r,)):
            if c not in out:
                out.append(c)
    return out


def combine_matrix(core: Sequence[str], response_names: Sequence[str]) -> torch.Tensor:
    """(R, C): responses = core outputs @ combine.T in physical units (one-hot rows, or the sum of
    the components for a summed response)."""
    m = torch.zeros(len(response_names), len(core))
    for r, name in enumerate(response_names):
        for c in (RUNOFF_COMPONENTS.get(name, (name,)) if name not in core else (name,)):
            m[r, core.index(c)] = 1.0
    return m


class Emulator(nn.Module):
    """emu(forcing (B,T,F), static (B,S), theta (B,P)) -> responses (B,T,R), physical units.

    With ``return_state=True`` it returns ``(y, state)``; passing that state to the next call
    continues the run (a year in twelve monthly calls equals one twelve-month call).

    With ``model_cfg['runoff'] == 'components'`` the core predicts QOVER and QDRAI (`core_names`,
    each in its own log space) and QRUNOFF is their sum, so the runoff partition closes exactly.
    """

    kind = "sequence"

    def __init__(self, core: nn.Module, normalizer: Normalizer, forcing_names: Sequence[str],
                 static_names: Sequence[str], param_names: Sequence[str], response_names: Sequence[str],
                 model_cfg: Mapping):
        super().__init__()
        self.core = core
        self.norm = normalizer
        self.forcing_names = list(forcing_names)
        self.static_names = list(static_names)
        self.param_names = list(param_names)
        self.response_names = list(response_names)
        self.model_cfg = dict(model_cfg)
        self.core_names = core_names(self.model_cfg, self.response_names)
        # derived from the config, so not in the state_dict (checkpoints from before the option load)
        self.register_buffer("combine", combine_matrix(self.core_names, self.response_names), persistent=False)
        self._identity = self.core_names == self.response_names
        # the calibrated predictive spread (esm_emu/spread.py); travels as payload["spread_calibration"]
        self.calibration = SpreadCalibration(len(self.response_names))

    @classmethod
    def build(cls, model_cfg: Mapping, normalizer: Normalizer, forcing_names, static_names, param_names,
              response_names) -> Emulator:
        """`normalizer.response` is over `core_names(model_cfg, response_names)`."""
        dims = dict(n_forcing=len(forcing_names), n_cond=len(static_names) + len(param_names),
                    n_param=len(param_names), n_response=len(core_names(model_cfg, response_names)))
        return cls(build_model(model_cfg, dims), normalizer, forcing_names, static_names, param_names,
                   response_names, model_cfg)

    def outputs(self, core_phys: torch.Tensor) -> torch.Tensor:
        """Core outputs in physical units -> the responses (sums of components where configured)."""
        return core_phys if self._identity else core_phys @ self.combine.t()

    def conditioning(self, static: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """Normalised (static, theta) concatenated: the vector that conditions every step."""
        return torch.cat([self.norm.static(static), self.norm.theta(theta)], dim=-1)

    def forward_normalized(self, xn: torch.Tensor, c: torch.Tensor, state: Optional[State] = None):
        """The core on normalised inputs; returns normalised responses and the state (training uses it)."""
        return self.core(xn, c, state)

    def forward(self, forcing: torch.Tensor, static: torch.Tensor, theta: torch.Tensor,
                state: Optional[State] = None, return_state: bool = False):
        self._check(forcing, static, theta)
        zn, new_state = self.core(self.norm.forcing(forcing), self.conditioning(static, theta), state)
        y = self.outputs(self.norm.response.inverse(zn))
        return (y, new_state) if return_state else y

    def predict_with_spread(self, forcing, static, theta, state=None, return_state: bool = False):
        """(mean, std) in physical units: one network has no members' spread, so the std is the
        calibrated error model's floor (sqrt(b + c mean^2), `esm_emu.spread`) or zeros when not
        calibrated. See `EmulatorEnsemble`."""
        y, s = self(forcing, static, theta, state=state, return_state=True)
        sd = self.calibration.std(y, torch.zeros_like(y))
        return (y, sd, s) if return_state else (y, sd)

    def predict_with_disagreement(self, forcing, static, theta, state=None, return_state: bool = False):
        """(mean, zeros): one network has no members to disagree (see `EmulatorEnsemble`)."""
        y, s = self(forcing, static, theta, state=state, return_state=True)
        return (y, torch.zeros_like(y), s) if return_state else (y, torch.zeros_like(y))

    def _check(self, forcing, static, theta):
        if forcing.dim() != 3 or forcing.shape[-1] != len(self.forcing_names):
            raise ValueError(f"forcing must be (B, T, {len(self.forcing_names)}) for {self.forcing_names}, "
                             f"got {tuple(forcing.shape)}")
        if static.dim() != 2 or static.shape[-1] != len(self.static_names):
            raise ValueError(f"static must be (B, {len(self.static_names)}) for {self.static_names}, "
                             f"got {tuple(static.shape)}")
        if theta.dim() != 2 or theta.shape[-1] != len(self.param_names):
            raise ValueError(f"theta must be (B, {len(self.param_names)}) for {self.param_names}, "
                             f"got {tuple(theta.shape)}")

    def payload(self) -> dict:
        """Everything needed to rebuild this emulator, in types `torch.load(weights_only=True)` accepts."""
        p = {"kind": self.kind, "model_cfg": dict(self.model_cfg), "forcing_names": self.forcing_names,
             "static_names": self.static_names, "param_names": self.param_names,
             "response_names": self.response_names, "state_dict": self.state_dict()}
        cal = self.calibration.to_payload()
        return p if cal is None else {**p, "spread_calibration": cal}


class EmulatorEnsemble(nn.Module):
    """K emulators trained with different seeds (optionally on bootstrapped gridcells).

    Called like an `Emulator`, it returns the ensemble mean; `predict_with_spread` returns the
    mean and the predictive std in physical units: the standard deviation over members
    (population std) passed through the calibration fitted on validation series after training
    (`esm_emu.spread`: sigma^2 = a spread^2 + b + c mean^2), or the members' std itself for a
    checkpoint without one. `predict_with_disagreement` gives the calibrated disagreement alone
    (sqrt(a) spread), the inverse's trust region. The state is a tuple of the members' states.
    """

    kind = "sequence"

    def __init__(self, members: Sequence[Emulator]):
        super().__init__()
        if not members:
            raise ValueError("an emulator ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        m0 = members[0]
        self.forcing_names, self.static_names = list(m0.forcing_names), list(m0.static_names)
        self.param_names, self.response_names = list(m0.param_names), list(m0.response_names)
        self.model_cfg = dict(m0.model_cfg)
        self.core_names = list(m0.core_names)
        self.calibration = SpreadCalibration(len(self.response_names))

    @property
    def n_members(self) -> int:
        return len(self.members)

    def _run(self, forcing, static, theta, state):
        ys, states = [], []
        for k, m in enumerate(self.members):
            y, s = m(forcing, static, theta, state=None if state is None else state[k], return_state=True)
            ys.append(y)
            states.append(s)
        return torch.stack(ys), tuple(states)

    def forward(self, forcing, static, theta, state=None, return_state: bool = False):
        ys, s = self._run(forcing, static, theta, state)
        y = ys.mean(0)
        return (y, s) if return_state else y

    def predict_with_spread(self, forcing, static, theta, state=None, return_state: bool = False):
        """(mean, calibrated std), (B,T,R) each in physical units; differentiable in theta."""
        ys, s = self._run(forcing, static, theta, state)
        mean = ys.mean(0)
        std = self.calibration.std(mean, ys.std(0, unbiased=False))
        return (mean, std, s) if return_state else (mean, std)

    def predict_with_disagreement(self, forcing, static, theta, state=None, return_state: bool = False):
        """(mean, sqrt(a) * std over members): the calibrated disagreement alone, without the floor
        and magnitude terms (which do not say where theta leaves the members' agreement)."""
        ys, s = self._run(forcing, static, theta, state)
        mean, std = ys.mean(0), self.calibration.disagreement(ys.std(0, unbiased=False))
        return (mean, std, s) if return_state else (mean, std)

    def payload(self) -> dict:
        p = {"kind": "ensemble", "n_members": self.n_members, "model_cfg": dict(self.model_cfg),
             "forcing_names": self.forcing_names, "static_names": self.static_names,
             "param_names": self.param_names, "response_names": self.response_names,
             "state_dict": self.state_dict()}
        cal = self.calibration.to_payload()
        return p if cal is None else {**p, "spread_calibration": cal}


class TabularEmulator(nn.Module):
    """emu(theta (B,P)) -> summary outputs (B,R), physical units (summary PPEs: no time axis)."""

    kind = "tabular"

    def __init__(self, core: nn.Module, normalizer: Normalizer, param_names, response_names, model_cfg):
        super().__init__()
        self.core = core
        self.norm = normalizer
        self.forcing_names: list[str] = []
        self.static_names: list[str] = []
        self.param_names = list(param_names)
        self.response_names = list(response_names)
        self.model_cfg = dict(model_cfg)
        from .models.tabular import OutputTransform

        self.out_tf = OutputTransform(len(self.response_names))  # identity unless fitted (model.output_transform)

    @classmethod
    def build(cls, model_cfg, normalizer, param_names, response_names, **_):
        dims = dict(n_forcing=0, n_cond=len(param_names), n_param=len(param_names), n_response=len(response_names))
        k = int(model_cfg.get("pca_components") or 0)  # set by training when model.output_pca is on
        if k:
            from .models.tabular import PCACore

            core = PCACore(build_model(model_cfg, {**dims, "n_response": k}), len(response_names), k)
        else:
            core = build_model(model_cfg, dims)
        return cls(core, normalizer, param_names, response_names, model_cfg)

    def forward_normalized(self, thetan: torch.Tensor) -> torch.Tensor:
        return self.core(thetan)

    def normalize_response(self, y: torch.Tensor) -> torch.Tensor:
        """Physical outputs -> the space the core predicts in (output transform, then standardised)."""
        return self.norm.response(self.out_tf(y))

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        if theta.dim() != 2 or theta.shape[-1] != len(self.param_names):
            raise ValueError(f"theta must be (B, {len(self.param_names)}) for {self.param_names}, "
                             f"got {tuple(theta.shape)}")
        return self.out_tf.inverse(self.norm.response.inverse(self.core(self.norm.theta(theta))))

    def predict(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictive mean and variance of the outputs (B,R) in physical units; differentiable in theta.

        Kinds with a `predict` (gp, mlp_ensemble) give their variance; a plain MLP gives zeros.
        """
        z = self.norm.theta(theta)
        if hasattr(self.core, "predict"):
            m, v = self.core.predict(z)
        else:
            m = self.core(z)
            v = torch.zeros_like(m)
        y, slope = self.out_tf.inverse_and_slope(self.norm.response.inverse(m))
        return y, v * (self.norm.response.std * slope) ** 2

    def payload(self) -> dict:
        return {"kind": self.kind, "model_cfg": dict(self.model_cfg), "forcing_names": [], "static_names": [],
                "param_names": self.param_names, "response_names": self.response_names,
                "state_dict": self.state_dict()}


def emulator_from_payload(p: Mapping) -> nn.Module:
    """Rebuild an Emulator, EmulatorEnsemble or TabularEmulator from `payload()` output."""
    nf, ns, npar, nr = (len(p[k]) for k in ("forcing_names", "static_names", "param_names", "response_names"))
    nc = len(core_names(p["model_cfg"], p["response_names"]))
    if p["kind"] == "tabular":
        emu = TabularEmulator.build(p["model_cfg"], Normalizer.empty(nf, ns, npar, nr), p["param_names"],
                                    p["response_names"])
    elif p["kind"] == "ensemble":
        emu = EmulatorEnsemble([Emulator.build(p["model_cfg"], Normalizer.empty(nf, ns, npar, nc),
                                               p["forcing_names"], p["static_names"], p["param_names"],
                                               p["response_names"]) for _ in range(int(p["n_members"]))])
    else:
        emu = Emulator.build(p["model_cfg"], Normalizer.empty(nf, ns, npar, nc), p["forcing_names"],
                             p["static_names"], p["param_names"], p["response_names"])
    emu.load_state_dict(p["state_dict"])
    if p["kind"] != "tabular":  # no entry (a checkpoint from before): uncalibrated, std = the members' spread
        emu.calibration.load(p.get("spread_calibration"), p["response_names"])
    return emu.eval()


def load_emulator(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load an emulator from a checkpoint file (or a training run directory: its `best.pt`), in eval mode."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    payload = emulator_entry(read_torch_file(path, map_location, what="emulator checkpoint"), path)
    try:
        emu = emulator_from_payload(payload)
    except UserError:
        raise
    except Exception as e:  # names, config and weights that do not fit together
        raise UserError(f"{path}: its 'emulator' entry does not rebuild an emulator ({type(e).__name__}: "
                        f"{shown(str(e).strip().splitlines()[0] if str(e).strip() else '', quote=False)})") from None
    return emu.to(map_location)
