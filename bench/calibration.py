"""SCE-UA (spotpy, each site separately) against dPL (all sites at once) on the same frozen
emulator and objective (1 - NSE of QRUNOFF over the training years): wall time to reach a given
objective, final objective, parameter recovery. Perfect-model twin: observations are the
emulator at smooth, attribute-correlated true parameters, with 10 % gaps.

    python bench/calibration.py --sites 200 --sce-evals 600
    python bench/calibration.py --sites 1000 --dpl-batch 100 --sce-sites 100   # SCE-UA on 100 sites, scaled

SCE-UA calibrates each site on its own, so its wall time grows linearly with the number of sites:
with ``--sce-sites K`` it runs on K randomly chosen sites and its wall time is scaled by sites / K
(the figure says so); dPL always runs on every site. The target (SCE-UA's median final objective)
and dPL's time to it are both medians over SCE-UA's sites.

g_A (one network from attributes to parameters) finds the region; ``--refine-steps`` then fits
each site's own parameters by Adam from there (``--refine-batch`` sites per step), optionally after
``--screen`` candidates per site run in batches without gradients. The figures also give the cost
of one site's run by batch size: what batching buys on this machine. g_A's steps cost the same
however many sites there are, so the speed-up over a per-site search grows with the sites.

    python bench/calibration.py --sites 10000 --years 2 --sce-evals 300 --dpl-steps 100 --dpl-batch 100 \
        --emu-steps 60 --sce-sites 100 --refine-steps 20 --refine-batch 2000
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
from esm_emu.inverse.per_site import screen_candidates, weighted_nse_loss
from esm_emu.inverse.problem import build_problem


def per_site_objective(problem, forward, theta, idx, tmask):
    with torch.no_grad():
        sim = simulate(problem, forward, idx, theta[idx])
        return np.array([float(masked_loss(sim[i:i + 1], problem.obs[idx[i]:idx[i] + 1], tmask))
                         for i in range(len(idx))])


def scored_days(tmask):
    """(days up to the last scored one, their weights (1, 1, T, 1) for weighted_nse_loss)."""
    last = int(np.flatnonzero(tmask.numpy()).max()) + 1
    return last, tmask[:last].float()[None, None, :, None]


def refine_per_site(problem, forward, theta0, idx, tmask, steps, batch, lr, seed, on_step):
    """Each site's own parameters, started at g_A's and fitted by Adam on its 1 - NSE, minibatches
    of sites through the frozen forward model (g_A finds the region, this finds each site's optimum)."""
    gen = np.random.default_rng(seed)
    z = torch.logit(problem.to_unit(theta0).clamp(1e-3, 1 - 1e-3)).clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    last, w = scored_days(tmask)
    for step in range(steps):
        b = idx if not batch or batch >= len(idx) else gen.choice(idx, batch, replace=False)
        t = torch.as_tensor(b)
        th = problem.from_unit(torch.sigmoid(z[t]))
        sim = forward(problem.forcing[t, :last], problem.static[t], problem.full_theta(th))[..., problem.response_index]
        loss = weighted_nse_loss(sim[None], problem.obs[t, :last][None], w).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        on_step(step, lambda: problem.from_unit(torch.sigmoid(z.detach())))
    return problem.from_unit(torch.sigmoid(z.detach()))


def eval_cost(problem, forward, idx, tmask, sizes, repeats=3):
    """Seconds per site for one forward run (no gradient) and one forward + backward, by batch size:
    what batching buys on this machine."""
    last, _ = scored_days(tmask)
    out = []
    for n in sizes:
        t = torch.as_tensor(idx[:n])
        th = problem.default.expand(n, -1).clone()
        fwd, both = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            with torch.no_grad():
                forward(problem.forcing[t, :last], problem.static[t], problem.full_theta(th))
            fwd.append(time.perf_counter() - t0)
            x = th.clone().requires_grad_(True)
            t0 = time.perf_counter()
            forward(problem.forcing[t, :last], problem.static[t], problem.full_theta(x)).sum().backward()
            both.append(time.perf_counter() - t0)
        out.append((n, min(fwd) / n, min(both) / n))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=200)
    ap.add_argument("--years", type=int, default=3)
    ap.add_argument("--sce-evals", type=int, default=600, help="SCE-UA model runs per site (cap)")
    ap.add_argument("--dpl-steps", type=int, default=300)
    ap.add_argument("--dpl-batch", type=int, default=0, help="sites per dPL step (0: all)")
    ap.add_argument("--refine-steps", type=int, default=0,
                    help="per-site refinement after g_A: Adam steps on each site's own parameters (0: none)")
    ap.add_argument("--refine-batch", type=int, default=0, help="sites per refinement step (0: all)")
    ap.add_argument("--refine-lr", type=float, default=0.05)
    ap.add_argument("--screen", type=int, default=0,
                    help="before the refinement, this many Latin-hypercube candidates per site (and half as many "
                         "around each site's best) run in batches without gradients; a site starts from the best "
                         "of them and g_A's estimate")
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

    # the sites SCE-UA calibrates (all, or a random sample whose wall time is scaled); the target and
    # dPL's time to it are medians over these same sites, so a sample of easy sites cannot bias it
    sub = idx if not a.sce_sites or a.sce_sites >= a.sites else np.sort(
        np.random.default_rng(a.seed).choice(idx, a.sce_sites, replace=False))

    # ours: g_A through the frozen emulator, all sites in one loss; per-site objective every 10 steps
    trace, spent = [], [0.0]
    t_start = [time.perf_counter()]

    def on_step(step, net):
        if step % 10 == 9:
            spent[0] += time.perf_counter() - t_start[0]
            th = predict(net, p)
            trace.append((spent[0], per_site_objective(p, fwd, th, idx, tmask)))
            net.train()
            t_start[0] = time.perf_counter()

    net, _ = train_dpl(p, fwd, DPLConfig(steps=a.dpl_steps, warmup_days=180, batch=a.dpl_batch), seed=a.seed,
                       on_step=on_step)
    spent[0] += time.perf_counter() - t_start[0]
    ours_wall = spent[0]
    th_ours = predict(net, p).numpy()
    obj_ours = per_site_objective(p, fwd, torch.as_tensor(th_ours), idx, tmask)
    th_ga, obj_ga = th_ours, obj_ours
    refine_wall = 0.0
    if a.refine_steps:
        # every 10 steps (untimed) the median per-site objective, as for g_A
        per_epoch = max(1, len(idx) // (a.refine_batch or len(idx)))
        every = max(1, min(10, per_epoch))
        t_start[0] = time.perf_counter()

        def on_refine(step, theta):
            if step % every == every - 1:
                spent[0] += time.perf_counter() - t_start[0]
                trace.append((spent[0], per_site_objective(p, fwd, theta(), idx, tmask)))
                t_start[0] = time.perf_counter()

        start = torch.as_tensor(th_ga)
        if a.screen:
            last, w = scored_days(tmask)
            best = p.from_unit(screen_candidates(p, fwd, idx, last, w, a.screen, 1,
                                                 torch.Generator().manual_seed(a.seed))[0])
            spent[0] += time.perf_counter() - t_start[0]
            obj_best = per_site_objective(p, fwd, best, idx, tmask)
            start = torch.where(torch.as_tensor(obj_best < obj_ga)[:, None], best, start)
            trace.append((spent[0], np.minimum(obj_best, obj_ga)))
            t_start[0] = time.perf_counter()
        th = refine_per_site(p, fwd, start, idx, tmask, a.refine_steps, a.refine_batch,
                             a.refine_lr, a.seed, on_refine)
        spent[0] += time.perf_counter() - t_start[0]
        refine_wall = spent[0] - ours_wall
        th_ours = th.numpy()
        obj_ours = per_site_objective(p, fwd, th, idx, tmask)
    cost = eval_cost(p, fwd, idx, tmask, [n for n in (1, 10, 100, 1000) if n <= len(idx)])

    # SCE-UA: each site separately, same forward model and objective
    t = time.perf_counter()
    scale = len(idx) / len(sub)
    cal = [calibrate_site(p, fwd, int(i), max_evals=a.sce_evals, warmup_days=180, seed=a.seed) for i in sub]
    sce_wall = (time.perf_counter() - t) * scale
    obj_sce = np.array([c.objective for c in cal])
    th_sce = np.stack([c.theta for c in cal])
    target = float(np.nanmedian(obj_sce))  # the objective SCE-UA reaches at the median site
    reach_sce = [c.time_to(target) for c in cal]
    sce_to_target = float(sum(min(r, c.wall_s) for r, c in zip(reach_sce, cal))) * scale
    ours_to_target = next((s for s, v in trace if np.nanmedian(v[sub]) <= target), float("inf"))

    def r(th, j, rows=None):
        t = true if rows is None else true[rows]
        return float(np.corrcoef(t[:, j], th[:, j])[0, 1])

    n_nan = int(np.isnan(obj_ours).sum())   # sites whose scored days have no variance or no data
    nan_note = f", {n_nan} sites without a defined NSE left out" if n_nan else ""
    screened = f"screening of {a.screen} + {a.screen // 2} candidates per site, " if a.screen else ""
    lines = [f"twin: {a.sites} sites, {a.years} years daily ({a.years - 1} calibration years), emulator LSTM "
             f"(hidden 32, {a.emu_steps} steps on a {a.sites * 3}-run simulator PPE), params {', '.join(PARAMS)}; "
             f"setup {setup_s:.0f} s; torch threads {a.threads}",
             f"target objective (median SCE-UA final 1-NSE over its sites): {target:.4f}",
             (f"SCE-UA run on {len(sub)} of {len(idx)} random sites, wall times scaled by {scale:.1f}"
              if scale > 1 else "SCE-UA run on every site"),
             f"SCE-UA: {a.sce_evals} evals cap/site, total wall {sce_wall:.1f} s, wall to target (each site stopped "
             f"at target) {sce_to_target:.1f} s, median final 1-NSE {np.nanmedian(obj_sce):.4f}, "
             f"mean evals/site {np.mean([c.evaluations for c in cal]):.0f}",
             f"dPL g_A: {a.dpl_steps} steps of {a.dpl_batch or a.sites} sites, wall {ours_wall:.1f} s, "
             f"median 1-NSE after g_A on SCE-UA's sites {np.nanmedian(obj_ga[sub]):.4f}"
             + (f"; then per-site refinement: {screened}{a.refine_steps} Adam steps of "
                f"{a.refine_batch or a.sites} sites, wall {refine_wall:.1f} s" if a.refine_steps else ""),
             f"dPL total wall {ours_wall + refine_wall:.1f} s, wall to median <= target {ours_to_target:.1f} s, "
             f"median final 1-NSE on SCE-UA's sites {np.nanmedian(obj_ours[sub]):.4f} (on all {len(idx)}: "
             f"{np.nanmedian(obj_ours):.4f}{nan_note}); dPL at or below SCE-UA at "
             f"{np.mean(obj_ours[sub] <= obj_sce + 1e-6):.0%} of SCE-UA's sites",
             "dPL median 1-NSE on SCE-UA's sites by wall time (s): " + ", ".join(
                 f"{t:.0f} {np.nanmedian(v[sub]):.4f}" for t, v in trace[::max(1, len(trace) // 12)]),
             f"speed-up to target: {sce_to_target / ours_to_target:.1f}x" if np.isfinite(ours_to_target)
             else "speed-up to target: dPL did not reach the target",
             "parameter recovery r(true, inferred), SCE-UA vs dPL: " + ", ".join(
                 f"{n} {r(th_sce, j, sub):.2f} vs {r(th_ours, j):.2f}" for j, n in enumerate(PARAMS))
             + (f" (SCE-UA on its {len(sub)} sites)" if scale > 1 else ""),
             "cost per site of one run of the calibration years, by sites per batch (forward / forward + "
             "backward, ms): " + ", ".join(f"{n}: {f * 1e3:.2f} / {b * 1e3:.2f}" for n, f, b in cost)]
    record("Calibration: SCE-UA per site vs dPL through the emulator", lines)


if __name__ == "__main__":
    main()
