"""How finely one quickstart twin can measure the coverage of 90 % intervals.

The twin's truths are smooth fields (ppe_ingest/simulator/truth.py: a Gaussian kernel of 6 degrees
plus a linked attribute, over 200 gridcells of the conterminous US), so its 140 unobserved
gridcells hold far fewer than 140 independent checks of an interval. This script draws the twin's
truths for many seeds exactly as the quickstart does and gives each seed the *exact* Bayesian
posterior of the process that drew them (the generative oracle of bench/twin_ceiling.py: the kernel,
its length and the attribute link known; the truth observed at the observed gridcells, exactly or
with noise in the latent Gaussian). Its 90 % intervals are calibrated by construction over seeds, so
the spread of their per-seed coverage is what any calibrated method would show: the resolution of
the issue's "85-95 % for every parameter" on one seed. (The truth's fields are random Fourier
features standardised over the map, not exactly the Gaussian process the posterior assumes, so the
intervals are widened or narrowed by one factor per noise level that makes their coverage over all
seeds 90 %; the factor is printed.)

With finished quickstart runs (RUN ...), their own per-seed coverage at the unobserved gridcells
(last wave's map) is printed beside it, and pooled over the runs.

    python bench/coverage_resolution.py [RUN ...] [--seeds 400] [--noise 0 0.5 1 2] [--gaussian]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench._record import record

QUICKSTART_PARAMS = ["fff", "FMAX", "hksat_sf", "baseflow_scalar", "d_max", "medlynslope"]


def oracle_errors(seed: int, names, table, n_gridcells: int = 200, n_obs: int = 60, length_deg: float = 6.0,
                  noise_sd: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """((P, n_unobserved) |truth - posterior mean| / posterior sd, (P,) median posterior variance) at the
    unobserved gridcells of one seed, in the latent Gaussian (prior variance 1; an interval's verdict
    is the same in the parameter's units).

    The truth is drawn as `esm-emu run` draws it for ``--seed seed`` (builtin_sites(seed), truth maps
    and observed gridcells with seed + 1). Each parameter's latent Gaussian z = r a + sqrt(1 - r^2) f
    (a: the standardised linked attribute, f: a unit Gaussian-kernel field) is observed at the observed
    gridcells with independent N(0, noise_sd^2) errors; the posterior is the conditional Gaussian."""
    from scipy.stats import norm

    from ppe_ingest.simulator.sites import builtin_sites, field_kernel
    from ppe_ingest.simulator.truth import linked_attribute, true_parameter_maps

    sites = builtin_sites(n_gridcells, seed)
    truth = true_parameter_maps(sites, table, names, seed + 1, length_deg=length_deg, margin=0.0)
    rng = np.random.default_rng([seed + 1, 31])  # the observed gridcells, as write_observations picks them
    obs = np.zeros(n_gridcells, bool)
    obs[rng.choice(n_gridcells, n_obs, replace=False)] = True
    un = ~obs
    k = field_kernel(sites["grid1d_lat"].values, sites["grid1d_lon"].values, length_deg)
    noise_rng = np.random.default_rng([seed, 77])
    out, ratio = [], []
    for p in names:
        lo, hi = table.bounds(p)
        u = (truth["theta"].sel(param=p).values - lo) / (hi - lo)
        z = norm.ppf(np.clip(u, 1e-12, 1 - 1e-12))
        a, r = linked_attribute(sites, p)
        s = np.sqrt(1 - r ** 2)
        y = (z[obs] + noise_sd * noise_rng.normal(size=obs.sum()) - r * a[obs]) / s  # f at the observed, noisy
        tau2 = (noise_sd / s) ** 2
        koo = k[np.ix_(obs, obs)] + (tau2 + 1e-6) * np.eye(obs.sum())
        kuo = k[np.ix_(un, obs)]
        mean = r * a[un] + s * (kuo @ np.linalg.solve(koo, y))
        var = s ** 2 * np.clip(1.0 - np.einsum("ij,ji->i", kuo, np.linalg.solve(koo, kuo.T)), 1e-12, None)
        out.append(np.abs(z[un] - mean) / np.sqrt(var))
        ratio.append(np.median(var))
    return np.array(out), np.array(ratio)


def calibrated_coverage(errors: np.ndarray, level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """((seeds, P) coverage, (P,) factors): per-seed coverage of intervals mean +- factor * z * sd, each
    parameter's factor the one that makes its coverage over every seed and gridcell ``level``."""
    from scipy.stats import norm

    zq = norm.ppf(0.5 + level / 2)
    t = np.quantile(errors.transpose(1, 0, 2).reshape(errors.shape[1], -1), level, axis=1)  # (P,)
    return (errors <= t[None, :, None]).mean(-1), t / zq


def run_coverage(run: Path, names, gaussian: bool = False) -> np.ndarray:
    """(P,) coverage at the unobserved gridcells of a finished quickstart run's last map (its
    theta_lower/theta_upper) of the twin's truth. ``gaussian``: instead, of the Gaussian interval
    theta +- z theta_std clipped to the bounds (the same mean and sd; the quickstart's linear scale),
    which the maps carried before their intervals became the Beta's on the prior's range."""
    import xarray as xr
    from scipy.stats import norm

    waves = sorted((run / "waves").glob("*/inverse/parameter_map.nc"), key=lambda p: int(p.parts[-3]))
    path = waves[-1] if waves else run / "inverse" / "parameter_map.nc"
    with xr.open_dataset(path) as pm, xr.open_dataset(run / "ppe" / "truth" / "parameter_map.nc") as tr:
        un = ~pm["observed"].values.astype(bool)
        out = []
        for p in names:
            t = tr["theta"].sel(param=p).values[un]
            if gaussian:
                th, sd = pm["theta"].sel(param=p).values[un], pm["theta_std"].sel(param=p).values[un]
                b0, b1 = float(pm["param_min"].sel(param=p)), float(pm["param_max"].sel(param=p))
                half = norm.ppf(0.95) * sd
                lo, hi = np.clip(th - half, b0, b1), np.clip(th + half, b0, b1)
            else:
                lo, hi = pm["theta_lower"].sel(param=p).values[un], pm["theta_upper"].sel(param=p).values[un]
            out.append(np.mean((t >= lo) & (t <= hi)))
    return np.array(out)


def summarise(cov: np.ndarray, band=(0.85, 0.95)) -> dict:
    """Figures of a (seeds, P) coverage table: mean and sd per parameter, the share of seed x parameter
    cells inside ``band``, the share of seeds with every parameter inside, and the 5-95 % range."""
    inside = (cov >= band[0] - 1e-9) & (cov <= band[1] + 1e-9)
    return {"mean": cov.mean(0), "sd": cov.std(0, ddof=1) if len(cov) > 1 else np.zeros(cov.shape[1]),
            "cells_in_band": float(inside.mean()), "seeds_all_in_band": float(inside.all(1).mean()),
            "cells_under": float((cov < band[0] - 1e-9).mean()), "cells_over": float((cov > band[1] + 1e-9).mean()),
            "p05": np.quantile(cov, 0.05, axis=0), "p95": np.quantile(cov, 0.95, axis=0)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", type=Path, help="finished quickstart runs (esm-emu run ... --out RUN)")
    ap.add_argument("--seeds", type=int, default=400, help="twin seeds drawn for the exact posterior")
    ap.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0],
                    help="sd of the observed truths' error in the latent Gaussian (0: exact truths)")
    ap.add_argument("--n-obs", type=int, default=60)
    ap.add_argument("--length-deg", type=float, default=6.0)
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to bench/RESULTS.md")
    ap.add_argument("--gaussian", action="store_true",
                    help="also the runs' coverage had their intervals been Gaussian (theta +- z theta_std, clipped)")
    a = ap.parse_args(argv)

    from ppe_ingest.param_table import default_table_path, load_param_table

    table = load_param_table(default_table_path())
    names = QUICKSTART_PARAMS
    lines = [f"90 % intervals at the {200 - a.n_obs} unobserved of 200 gridcells; band 85-95 %; "
             f"order {' / '.join(names)}"]

    def block(label, cov):
        s = summarise(cov)
        lines.append(f"{label}: {len(cov)} seeds; seed x parameter cells in band {s['cells_in_band']:.2f}, "
                     f"under {s['cells_under']:.2f}, over {s['cells_over']:.2f}; "
                     f"seeds with all six in band {s['seeds_all_in_band']:.2f}")
        lines.append("    mean " + " / ".join(f"{v:.3f}" for v in s["mean"])
                     + "; sd over seeds " + " / ".join(f"{v:.3f}" for v in s["sd"]))
        lines.append("    5-95 % of seeds " + " / ".join(f"{lo:.2f}-{hi:.2f}" for lo, hi in zip(s["p05"], s["p95"])))
        return s

    sd = None
    for noise in a.noise:
        got = [oracle_errors(s, names, table, n_obs=a.n_obs, length_deg=a.length_deg, noise_sd=noise)
               for s in range(a.seeds)]
        cov, factor = calibrated_coverage(np.stack([e for e, _ in got]))
        ratio = np.median(np.stack([r for _, r in got]), axis=0)
        sd = block(f"exact posterior, latent noise sd {noise:g} (median posterior variance at the unobserved, prior 1: "
              f"{' / '.join(f'{v:.2f}' for v in ratio)}; interval factors {' / '.join(f'{v:.2f}' for v in factor)})",
              cov)["sd"]
    for gaussian in ([False, True] if a.gaussian else [False]) if a.runs else []:
        cov = np.stack([run_coverage(r, names, gaussian) for r in a.runs])
        kind = "Gaussian theta +- z theta_std clipped" if gaussian else "theta_lower-theta_upper"
        for r, c in zip(a.runs, cov):
            lines.append(f"run {r.name} ({kind}): " + " / ".join(f"{v:.2f}" for v in c))
        block(f"the runs given (their last wave; {kind})", cov)
        if sd is not None:  # the exact posterior's spread at the last noise level, over as many seeds as runs
            half = 1.96 * sd / np.sqrt(len(cov))
            lines.append(f"    a calibrated method's mean over {len(cov)} seeds: 0.90 +- "
                         + " / ".join(f"{h:.3f}" for h in half) + " (95 %); the runs' mean is "
                         + " / ".join("inside" if abs(m - 0.9) <= h else ("over" if m > 0.9 else "under")
                                      for m, h in zip(cov.mean(0), half)))
    if a.no_record:
        print("\n".join(lines))
    else:
        record("Quickstart twin: how finely one seed measures 90 % coverage (exact posterior over seeds)", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
