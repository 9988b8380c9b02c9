"""SCE-UA (spotpy, each site separately) against dPL (all sites at once) on the same frozen
emulator and objective (1 - NSE of QRUNOFF over the training years): wall time to reach a given
objective, final objective, parameter recovery. Perfect-model twin: observations are the
emulator at smooth, attribute-correlated true parameters, with 10 % gaps.

    python bench/calibration.py --sites 200 --sce-evals 600
    python bench/calibration.py --sites 1000 --dpl-batch 100 --sce-sites 100   # SCE-UA on 100 sites, scaled

SCE-UA calibrates each site on its own, so its wall time grows linearly with the number of sites:
with ``--sce-sites K`` it runs on K randomly chosen sites and its wall time is scaled by sites / K
(the figure says so); dPL always runs on every site.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the twin builder the tests use

from inverse_twin import PARAMS, make_twin, observations

from bench._record import record
from esm_emu.inverse.baseline_sceua import calibrate_site
from esm_emu.inverse.dpl import DPLConfig, masked_loss, predict, score_mask, simulate, train_dpl
from esm_emu.inverse.problem import build_problem


def per_site_objective(problem, forward, theta, idx, tmask):
    with torch.no_grad():
        sim = simulate(problem, forward, idx, theta[idx])
        return np.array([float(masked_loss(sim[i:i + 1], problem.obs[idx[i]:idx[i] + 1], tmask))
                         for i in range(len(idx))])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=200)
    ap.add_argument("--years", type=int, default=3)
    ap.add_argument("--sce-evals", type=int, default=600, help="SCE-UA model runs per site (cap)")
    ap.add_argument("--dpl-steps", type=int, default=300)
    ap.add_argument("--dpl-batch", type=int, default=0, help="sites per dPL step (0: all)")
    ap.add_argument("--emu-steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sce-sites", type=int, default=0,
                    help="run SCE-UA on this many random sites and scale its wall time (0: every site)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t = time.perf_counter()
    twin = make_twin(n_grid=a.sites, n_years=a.years, per_cell=3, seed=a.seed, emu_steps=a.emu_steps)
    setup_s = time.perf_counter() - t
    idx = np.arange(a.sites)
    obs = observations(twin, idx, seed=a.seed)
    fwd = twin["forward"]
    last = 1999 + a.years
    p = build_problem(twin["entities"], obs, fwd, twin["table"], PARAMS, ["QRUNOFF"],
                      train_period={"start": 2000, "end": last - 1}, test_period={"start": last, "end": last})
    tmask = score_mask(p, p.train_time, 180)
    true = twin["truth"]["theta"].values

    # ours: g_A through the frozen emulator, all sites in one loss; per-site objective every 10 steps
    trace, spent = [], [0.0]
    t_start = [time.perf_counter()]

    def on_step(step, net):
        if step % 10 == 9:
            spent[0] += time.perf_counter() - t_start[0]
            th = predict(net, p)
            trace.append((spent[0], float(np.median(per_site_objective(p, fwd, th, idx, tmask)))))
            net.train()
            t_start[0] = time.perf_counter()

    net, _ = train_dpl(p, fwd, DPLConfig(steps=a.dpl_steps, warmup_days=180, batch=a.dpl_batch), seed=a.seed,
                       on_step=on_step)
    spent[0] += time.perf_counter() - t_start[0]
    ours_wall = spent[0]
    th_ours = predict(net, p).numpy()
    obj_ours = per_site_objective(p, fwd, torch.as_tensor(th_ours), idx, tmask)

    # SCE-UA: each site separately, same forward model and objective
    t = time.perf_counter()
    sub = idx if not a.sce_sites or a.sce_sites >= a.sites else np.sort(
        np.random.default_rng(a.seed).choice(idx, a.sce_sites, replace=False))
    scale = len(idx) / len(sub)
    cal = [calibrate_site(p, fwd, int(i), max_evals=a.sce_evals, warmup_days=180, seed=a.seed) for i in sub]
    sce_wall = (time.perf_counter() - t) * scale
    obj_sce = np.array([c.objective for c in cal])
    th_sce = np.stack([c.theta for c in cal])
    target = float(np.median(obj_sce))  # the objective SCE-UA reaches at the median site
    reach_sce = [c.time_to(target) for c in cal]
    sce_to_target = float(sum(min(r, c.wall_s) for r, c in zip(reach_sce, cal))) * scale
    ours_to_target = next((s for s, v in trace if v <= target), float("inf"))

    def r(th, j, rows=None):
        t = true if rows is None else true[rows]
        return float(np.corrcoef(t[:, j], th[:, j])[0, 1])

    lines = [f"twin: {a.sites} sites, {a.years} years daily ({a.years - 1} calibration years), emulator LSTM "
             f"(hidden 32, {a.emu_steps} steps on a {a.sites * 3}-run simulator PPE), params {', '.join(PARAMS)}; "
             f"setup {setup_s:.0f} s; torch threads {a.threads}",
             f"target objective (median SCE-UA final 1-NSE): {target:.4f}",
             (f"SCE-UA run on {len(sub)} of {len(idx)} random sites, wall times scaled by {scale:.1f}"
              if scale > 1 else "SCE-UA run on every site"),
             f"SCE-UA: {a.sce_evals} evals cap/site, total wall {sce_wall:.1f} s, wall to target (each site stopped "
             f"at target) {sce_to_target:.1f} s, median final 1-NSE {np.median(obj_sce):.4f}, "
             f"mean evals/site {np.mean([c.evaluations for c in cal]):.0f}",
             f"dPL g_A: {a.dpl_steps} steps of {a.dpl_batch or a.sites} sites, total wall {ours_wall:.1f} s, "
             f"wall to median <= target {ours_to_target:.1f} s, median final 1-NSE {np.median(obj_ours):.4f}",
             f"speed-up to target: {sce_to_target / ours_to_target:.1f}x" if np.isfinite(ours_to_target)
             else "speed-up to target: dPL did not reach the target",
             "parameter recovery r(true, inferred), SCE-UA vs dPL: " + ", ".join(
                 f"{n} {r(th_sce, j, sub):.2f} vs {r(th_ours, j):.2f}" for j, n in enumerate(PARAMS))
             + (f" (SCE-UA on its {len(sub)} sites)" if scale > 1 else "")]
    record("Calibration: SCE-UA per site vs dPL through the emulator", lines)


if __name__ == "__main__":
    main()
