"""The ceiling on parameter recovery at the twin's unobserved gridcells.

Two oracles are given the exact true parameters at every observed gridcell (what no calibration
can know) and predict the unobserved ones:
- "generative" also knows how the truth was drawn (ppe_ingest/simulator/truth.py: the linked
  attribute and its correlation, the Gaussian kernel and its length): the best any method can do;
- "regional" regionalises them the way the inversion does: a ridge regression on the attributes
  the dPL network reads, plus simple kriging of its residuals over lat/lon.
Their r(true, predicted) at the unobserved gridcells is printed beside the inversion's own.

    python bench/twin_ceiling.py RUN [RUN ...]     # finished quickstart runs (esm-emu quickstart --out RUN)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench._record import record


def ridge_loo(x: np.ndarray, y: np.ndarray, alphas=(0.1, 1.0, 3.0, 10.0, 30.0, 100.0)):
    """Ridge regression (intercept unpenalised) with the penalty chosen by leave-one-out error."""
    xm, ym = x.mean(0), y.mean()
    xc, yc = x - xm, y - ym
    best = None
    for a in alphas:
        h = xc @ np.linalg.solve(xc.T @ xc + a * np.eye(x.shape[1]), xc.T)
        res = (yc - h @ yc) / np.clip(1 - np.diag(h) - 1 / len(y), 1e-6, None)
        loo = float(np.mean(res ** 2))
        if best is None or loo < best[0]:
            best = (loo, a)
    a = best[1]
    w = np.linalg.solve(xc.T @ xc + a * np.eye(x.shape[1]), xc.T @ yc)
    return lambda xn: (xn - xm) @ w + ym


def generative_oracle(sites, truth, observed: np.ndarray, length_deg: float) -> dict:
    """Each parameter at the unobserved gridcells from its true values at the observed ones, by the
    conditional mean of the process the truth was drawn from (its linked attribute known everywhere)."""
    from scipy.special import ndtr, ndtri

    from ppe_ingest.simulator.sites import field_kernel
    from ppe_ingest.simulator.truth import linked_attribute

    margin = float(truth.attrs.get("margin", 0.05))  # the maps' own (maps written before it was recorded: 0.05)

    lat, lon = sites["grid1d_lat"].values, sites["grid1d_lon"].values
    k = field_kernel(lat, lon, length_deg) + 1.0  # + an unknown constant mean
    o, un = observed, ~observed
    kinv = np.linalg.solve(k[np.ix_(o, o)] + 1e-6 * np.eye(o.sum()), np.eye(o.sum()))
    out = {}
    for p in [str(v) for v in truth["param"].values]:
        lo, hi = float(truth["param_min"].sel(param=p)), float(truth["param_max"].sel(param=p))
        th = truth["theta"].sel(param=p).values
        z = ndtri(np.clip(((th - lo) / (hi - lo) - margin) / (1 - 2 * margin), 1e-9, 1 - 1e-9))
        a, r = linked_attribute(sites, p)
        field = (z - r * a) / np.sqrt(1 - r ** 2)
        pred = r * a[un] + np.sqrt(1 - r ** 2) * (k[np.ix_(un, o)] @ kinv @ field[o])
        est = lo + (hi - lo) * (margin + (1 - 2 * margin) * ndtr(pred))
        out[p] = float(np.corrcoef(th[un], est)[0, 1])
    return out


def ceiling(run: Path, length_deg: float = 6.0) -> dict:
    import torch

    from esm_emu.forward import load_forward
    from esm_emu.inverse.identifiability import krige
    from esm_emu.inverse.pipeline import load_entities
    from esm_emu.inverse.problem import build_problem
    from ppe_ingest.param_table import load_param_table
    from ppe_ingest.simulator.truth import read_observations

    metrics = json.loads((run / "report" / "metrics.json").read_text())
    truth_dir = run / "ppe" / "truth"
    import xarray as xr

    truth = xr.load_dataset(truth_dir / "parameter_map.nc")
    params = [str(p) for p in truth["param"].values]
    variables = ["QRUNOFF"]
    entities = load_entities({"store": str(run / "store.nc")})
    fwd = load_forward("emulator", str(run / "emulator" / "best.pt"), params, variables, entities)
    obs = read_observations(truth_dir, variables)
    problem = build_problem(entities, obs, fwd, load_param_table(run / "ppe" / "params.csv"), params, variables,
                            train_period=None, test_period=None)
    true = truth["theta"].sel(param=params).values
    from ppe_ingest.simulator.sites import builtin_sites

    sites = builtin_sites(truth.sizes["gridcell"], int(truth.attrs["seed"]) - 1)  # the truth's seed is the PPE's + 1
    if not np.allclose(sites["grid1d_lat"].values, truth["grid1d_lat"].values):
        raise SystemExit(f"{run}: not a built-in-grid quickstart run with the default truth seed")
    gen = generative_oracle(sites, truth, problem.observed, length_deg)
    u_true = problem.to_unit(torch.as_tensor(true, dtype=torch.float32)).double().numpy()
    o, un = problem.observed, ~problem.observed
    a = problem.attrs.double().numpy()
    def r_unobserved(j: int, u_col: np.ndarray) -> float:  # r(true, estimate) in physical units
        u = np.full_like(u_true, 0.5)
        u[:, j] = np.clip(u_col, 0, 1)
        est = problem.from_unit(torch.as_tensor(u, dtype=torch.float32)).double().numpy()[:, j]
        return float(np.corrcoef(true[un, j], est[un])[0, 1])

    out = {}
    for j, p in enumerate(params):
        reg = ridge_loo(a[o], u_true[o, j])(a)
        m, _ = krige(problem.lat[o], problem.lon[o], u_true[o, j] - reg[o], problem.lat[un], problem.lon[un])
        pred = reg.copy()
        pred[un] += m
        inferred = ((metrics.get("parameter_recovery") or {}).get("unobserved") or {}).get(p, {}).get("r")
        out[p] = {"generative_r": gen[p], "oracle_r": r_unobserved(j, pred),
                  "attributes_only_r": r_unobserved(j, reg), "inferred_r": inferred}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--length-deg", type=float, default=6.0, help="simulate.truth.length_deg of the runs")
    args = ap.parse_args(argv)
    lines = []
    for run in args.runs:
        res = ceiling(run, args.length_deg)
        lines.append(f"{run.name}: r at unobserved gridcells given the true values at the observed ones: generative "
                     "oracle / regional oracle (attribute regression + kriging) / its attributes alone / the "
                     "inversion's")
        for p, d in res.items():
            inf = "-" if d["inferred_r"] is None else f"{d['inferred_r']:.2f}"
            lines.append(f"  {p:16s} {d['generative_r']:.2f} / {d['oracle_r']:.2f} / {d['attributes_only_r']:.2f} "
                         f"/ {inf}")
    record("Twin: the ceiling on recovery at unobserved gridcells", lines,
           "bench/twin_ceiling.py " + " ".join(f"DIR/{r.name}" for r in args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
