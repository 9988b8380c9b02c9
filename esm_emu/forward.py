"""The forward model F(forcing, static, theta) -> responses: one interface over the trained emulator
and the built-in simulator.

Every caller (the inverse models, the DA hook's anchored update, the coupler's stepping component)
calls ``forward(forcing (B,T,F), static (B,S), theta (B,P)) -> (B,T,R)`` in physical CTSM units,
differentiable in ``theta``. With ``return_state=True`` it returns ``(y, state)``; passing that
state to the next call continues the run, so a year in twelve monthly calls equals one
twelve-month call.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from ppe_ingest.base.errors import UserError
from ppe_ingest.ctsmio.vocabulary import ALL_STATIC_FIELDS, FORCING

from .checkpoint import file_sha256

# Static fields the simulator fills with defaults when a source lacks them (physics.STATIC_DEFAULTS).
SIM_STATIC_OPTIONAL = ("ORGANIC", "STD_ELEV", "LAI_MAX", "LAI_MIN")


class ForwardModel(torch.nn.Module):
    """Frozen forward model with named inputs and outputs."""

    kind = "forward"

    def __init__(self, forcing_names: Sequence[str], static_names: Sequence[str],
                 param_names: Sequence[str], response_names: Sequence[str]):
        super().__init__()
        self.forcing_names = list(forcing_names)
        self.static_names = list(static_names)
        self.param_names = list(param_names)
        self.response_names = list(response_names)
        self.checkpoint_sha256 = ""

    def forward(self, forcing, static, theta, state=None, return_state: bool = False):
        raise NotImplementedError

    def predict_with_spread(self, forcing, static, theta, state=None, return_state: bool = False):
        """``(mean, std)``, each (B,T,R) in physical units, differentiable in ``theta`` (with
        ``return_state=True``: ``(mean, std, state)``).

        ``std`` is the emulator's calibrated predictive std (`esm_emu.spread`: the ensemble's
        spread over its members, `train.ensemble: K`, scaled and floored to cover validation
        data), or the members' raw spread for a checkpoint without a calibration: where it is large
        the emulator is unsure, so an inverse can add it to the model-error variance. An
        uncalibrated single emulator and the simulator return zeros (no spread known).
        ``has_spread`` says which."""
        y, s = self(forcing, static, theta, state=state, return_state=True)
        return (y, torch.zeros_like(y), s) if return_state else (y, torch.zeros_like(y))

    @property
    def has_spread(self) -> bool:
        """True where `predict_with_spread` gives a spread (an emulator ensemble)."""
        return False

    def response_index(self, names: Sequence[str]) -> list[int]:
        missing = [n for n in names if n not in self.response_names]
        if missing:
            raise UserError(f"{self.kind}: response {missing[0]} is not produced by the forward model "
                            f"(it gives {', '.join(self.response_names)})")
        return [self.response_names.index(n) for n in names]

    def chunked(self, forcing, static, theta, batch: int = 256) -> torch.Tensor:
        """Run without gradients in batches (for PPE generation and evaluation)."""
        outs = []
        with torch.no_grad():
            for i in range(0, forcing.shape[0], batch):
                outs.append(self(forcing[i:i + batch], static[i:i + batch], theta[i:i + batch]))
        return torch.cat(outs)


class EmulatorForward(ForwardModel):
    """A trained emulator (or any module with the emulator's call and names), frozen."""

    kind = "emulator"

    def __init__(self, emu: torch.nn.Module, checkpoint: str | Path | None = None):
        super().__init__(emu.forcing_names, emu.static_names, emu.param_names, emu.response_names)
        self.emu = emu.eval()
        for p in self.emu.parameters():
            p.requires_grad_(False)
        if checkpoint is not None:
            self.checkpoint_sha256 = file_sha256(checkpoint)

    def forward(self, forcing, static, theta, state=None, return_state: bool = False):
        if state is None and not return_state:
            return self.emu(forcing, static, theta)
        return self.emu(forcing, static, theta, state=state, return_state=return_state)

    def predict_with_spread(self, forcing, static, theta, state=None, return_state: bool = False):
        """Ensemble mean and calibrated std (see `ForwardModel.predict_with_spread`, `esm_emu.spread`)."""
        if hasattr(self.emu, "predict_with_spread"):
            return self.emu.predict_with_spread(forcing, static, theta, state=state, return_state=return_state)
        return super().predict_with_spread(forcing, static, theta, state=state, return_state=return_state)

    def predict_with_disagreement(self, forcing, static, theta, state=None, return_state: bool = False):
        """Ensemble mean and the calibrated disagreement of its members alone (the trust region's term)."""
        if hasattr(self.emu, "predict_with_disagreement"):
            return self.emu.predict_with_disagreement(forcing, static, theta, state=state, return_state=return_state)
        return self.predict_with_spread(forcing, static, theta, state=state, return_state=return_state)

    @property
    def has_spread(self) -> bool:
        cal = getattr(self.emu, "calibration", None)
        return getattr(self.emu, "n_members", 1) > 1 or bool(getattr(cal, "fitted", False))


class SimulatorForward(ForwardModel):
    """The built-in differentiable land simulator (a stand-in for CTSM, not CTSM itself)."""

    kind = "simulator"

    def __init__(self, param_names: Sequence[str], response_names: Sequence[str] = ("QRUNOFF",),
                 forcing_names: Sequence[str] = FORCING, static_names: Sequence[str] = ALL_STATIC_FIELDS,
                 fixed_params: dict[str, float] | None = None):
        super().__init__(forcing_names, static_names, param_names, response_names)
        from ppe_ingest.simulator.physics import run_land

        self._run_land = run_land
        self.fixed_params = dict(fixed_params or {})
        self.physics: dict = {}  # simulator physics options turned on (physics.PHYSICS_OPTIONS), as simulate: physics:

    def forward(self, forcing, static, theta, state=None, return_state: bool = False):
        B = forcing.shape[0]
        f = {n: forcing[..., i] for i, n in enumerate(self.forcing_names)}
        s = {n: static[:, i] for i, n in enumerate(self.static_names)}
        p = {n: torch.full((B,), float(v), dtype=theta.dtype) for n, v in self.fixed_params.items()}
        p.update({n: theta[:, i] for i, n in enumerate(self.param_names)})
        out, new_state = self._run_land(f, s, p, state=state, return_state=True, physics=self.physics)
        missing = [n for n in self.response_names if n not in out]
        if missing:
            raise UserError(f"simulator: response {missing[0]} is not produced by run_land")
        y = torch.stack([out[n] for n in self.response_names], dim=-1).to(theta.dtype)
        return (y, new_state) if return_state else y

    @classmethod
    def for_static_fields(cls, available: Iterable[str], param_names, response_names=("QRUNOFF",)
                          ) -> SimulatorForward:
        """The simulator taking every static field it needs plus the optional ones in `available`."""
        have = set(available)
        static = [n for n in ALL_STATIC_FIELDS if n in have or n not in SIM_STATIC_OPTIONAL]
        return cls(param_names, response_names, static_names=static)

    @classmethod
    def for_entities(cls, entities, param_names, response_names=("QRUNOFF",)) -> SimulatorForward:
        """The simulator taking the static fields ``entities`` has (optional ones may be absent): its
        own variables or, for a training store, the ``field`` entries of ``static(gridcell, field)``."""
        have = set(entities.variables)
        if "static" in entities.variables and "field" in entities.coords:
            have |= {str(f) for f in entities["field"].values}
        return cls.for_static_fields(have, param_names, response_names)


def load_forward(kind: str, checkpoint: str | Path | None = None, param_names: Sequence[str] | None = None,
                 response_names: Sequence[str] = ("QRUNOFF",), entities=None,
                 static_fields: Iterable[str] | None = None) -> ForwardModel:
    """The forward model named in a config: ``emulator`` (from a checkpoint) or ``simulator``.

    The simulator takes the optional static fields that ``entities`` (a Dataset) or
    ``static_fields`` (names) provide."""
    if kind == "emulator":
        if checkpoint is None:
            raise UserError("inverse.forward.checkpoint: required when forward.kind is emulator")
        from esm_emu.emulator import load_emulator

        fwd = EmulatorForward(load_emulator(checkpoint), checkpoint)
        if param_names:
            unknown = [p for p in param_names if p not in fwd.param_names]
            if unknown:
                raise UserError(f"inverse.params: {unknown[0]} is not an input of the emulator in {checkpoint} "
                                f"(it takes {', '.join(fwd.param_names)})")
        return fwd
    if kind == "simulator":
        if not param_names:
            raise UserError("inverse.params: list the parameters to infer when forward.kind is simulator")
        if entities is not None:
            return SimulatorForward.for_entities(entities, param_names, response_names)
        if static_fields is not None:
            return SimulatorForward.for_static_fields(static_fields, param_names, response_names)
        return SimulatorForward(param_names, response_names)
    raise UserError(f"inverse.forward.kind: {kind!r} is not one of emulator, simulator")
