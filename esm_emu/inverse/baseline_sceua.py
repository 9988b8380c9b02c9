"""The baseline: SCE-UA (spotpy) calibrating each site separately on the same forward model with
the same objective (1 - NSE over the training period, gaps masked) as dPL."""
from __future__ import annotations

import time as _time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..forward import ForwardModel
from .dpl import masked_loss, score_mask
from .problem import InverseProblem


@dataclass
class SiteCalibration:
    entity: object
    theta: np.ndarray  # best parameters, physical units
    objective: float  # best 1 - NSE (or RMSE loss)
    wall_s: float
    evaluations: int
    trace: list = field(default_factory=list)  # (seconds since start, best objective so far)

    def time_to(self, target: float) -> float:
        """Seconds until the objective first reached ``target`` (inf if never)."""
        for t, v in self.trace:
            if v <= target:
                return t
        return float("inf")


class _SpotSetup:
    """spotpy setup for one site: parameters on the unit cube (the problem's scale, inverse.scale)."""

    def __init__(self, problem: InverseProblem, forward: ForwardModel, i: int, tmask: torch.Tensor, loss: str):
        import spotpy

        self.problem, self.forward, self.i, self.tmask, self.loss = problem, forward, i, tmask, loss
        self.params = [spotpy.parameter.Uniform(f"u_{p}", 0.0, 1.0) for p in problem.param_names]
        self.obs = problem.obs[i:i + 1]
        self.scale = torch.as_tensor(np.nanstd(self.obs[:, problem.train_time].numpy(), axis=(0, 1))).clamp_min(1e-12)
        self.trace: list = []
        self.best = float("inf")
        self.t0 = _time.perf_counter()
        self.n = 0

    def parameters(self):
        import spotpy

        return spotpy.parameter.generate(self.params)

    def simulation(self, vector):
        u = torch.as_tensor(np.asarray(vector, dtype=np.float32))[None]
        th = self.problem.full_theta(self.problem.from_unit(u))
        with torch.no_grad():
            y = self.forward(self.problem.forcing[self.i:self.i + 1], self.problem.static[self.i:self.i + 1], th)
        return y[..., self.problem.response_index]

    def evaluation(self):
        return self.obs

    def objectivefunction(self, simulation, evaluation, params=None):
        v = float(masked_loss(simulation, evaluation, self.tmask, self.loss, self.scale))
        self.n += 1
        if v < self.best:
            self.best = v
            self.trace.append((_time.perf_counter() - self.t0, v))
        return v


def calibrate_site(problem: InverseProblem, forward: ForwardModel, i: int, max_evals: int = 1000,
                   warmup_days: int = 180, loss: str = "nse", seed: int = 0, ngs: int | None = None) -> SiteCalibration:
    """SCE-UA on one entity; stops after ``max_evals`` model runs or spotpy's convergence tests."""
    import spotpy

    setup = _SpotSetup(problem, forward, i, score_mask(problem, problem.train_time, warmup_days), loss)
    np.random.seed(seed)
    sampler = spotpy.algorithms.sceua(setup, dbformat="ram", save_sim=False, random_state=seed)
    setup.t0 = _time.perf_counter()
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # spotpy prints per-loop progress
        sampler.sample(max_evals, ngs=ngs or max(2, problem.n_params), kstop=5, pcento=0.01, peps=0.001)
    res = sampler.getdata()
    names = [f"paru_{p}" for p in problem.param_names]
    best = int(np.argmin(res["like1"]))
    u = torch.as_tensor(np.array([res[n][best] for n in names], dtype=np.float32))[None]
    theta = problem.from_unit(u)[0].numpy()
    return SiteCalibration(problem.entity[i], theta, float(res["like1"][best]), _time.perf_counter() - setup.t0,
                           setup.n, setup.trace)


def calibrate_sites(problem: InverseProblem, forward: ForwardModel, idx=None, progress: bool = True,
                    **kw) -> list[SiteCalibration]:
    """SCE-UA at each observed entity (or ``idx``), one after the other."""
    from ppe_ingest.base.progress import progress as _progress

    idx = np.flatnonzero(problem.observed) if idx is None else np.asarray(idx)
    return [calibrate_site(problem, forward, int(i), **kw) for i in _progress(idx, desc="SCE-UA", enabled=progress)]
