"""POSTRUN: evaluate the run against the observations; metrics JSON and PNG plots in the run folder.

Writes `RUNDIR/esm_emu_report/metrics.json` (NSE, KGE, RMSE, bias per site and their medians,
from `esm_emu.metrics`, over every day of the history in RUNDIR that has an observation),
`<variable>_<site>.png` time series for each matched site, and, when the DA hook ran,
`da_cycles.png` (objective and parameters per cycle).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from esm_emu import metrics as M
from ppe_ingest.base.atomic import atomic_path
from ppe_ingest.base.errors import UserError
from ppe_ingest.ctsmio.history import history_files, read_history
from ppe_ingest.obs.io import paired_with_gridcells, read_observations

from .case import open_case
from .config import load_case_config
from .prerun import check_single_instance
from .state import read_state

REPORT_DIR = "esm_emu_report"
MAX_SITE_PLOTS = 20


def run_postrun(caseroot) -> Path:
    """Write the report; return the path of metrics.json."""
    case = open_case(caseroot)
    check_single_instance(case)
    cfg = load_case_config(case.caseroot)
    if cfg["observations"] is None:
        raise UserError(f"{case.caseroot}/esm-emu/config.yaml: observations: needed by the POSTRUN report")
    obs_cfg = cfg["observations"]
    var = obs_cfg["variable"]
    hist = read_history(history_files(case.require("RUNDIR"), case.require("CASE"), cfg["history_tape"]), [var])
    if hist["days"].size == 0:
        raise UserError(f"{case.require('RUNDIR')}: the {cfg['history_tape']} history files hold no time steps")
    obs, usable = read_observations(obs_cfg["file"], var, obs_cfg["mask"])
    cell, y_obs, y_sim = paired_with_gridcells(obs, usable, var, hist["days"], hist["data"][var],
                                               hist["lat"], hist["lon"], obs_cfg["max_distance_deg"])
    use = (cell >= 0) & (np.isfinite(y_obs).sum(axis=1) >= 2)
    if not use.any():
        raise UserError(f"{obs_cfg['file']}: no site has two or more observations on days "
                        f"{hist['days'][0]}..{hist['days'][-1]} at a gridcell of the history files")
    sites = [str(s) for s in obs["site"].values]
    per_site = {}
    for i in np.flatnonzero(use):
        s, o = y_sim[i], y_obs[i]
        per_site[sites[i]] = {"nse": float(M.nse(s, o)), "kge": float(M.kge(s, o)), "rmse": float(M.rmse(s, o)),
                              "bias": float(M.bias(s, o)), "n_days": int(np.isfinite(o).sum()),
                              "gridcell": int(cell[i]),
                              "gridcell_lat": float(hist["lat"][cell[i]]), "gridcell_lon": float(hist["lon"][cell[i]])}
    summary = {k: float(np.nanmedian([m[k] for m in per_site.values()])) for k in ("nse", "kge", "rmse", "bias")}
    state = read_state(case.caseroot)
    report = {
        "case": case.get_value("CASE"), "variable": var, "units": hist["units"].get(var, ""),
        "period": [str(hist["days"][0]), str(hist["days"][-1])], "history_tape": cfg["history_tape"],
        "observations": obs_cfg["file"], "n_sites": len(per_site),
        "median": summary, "sites": per_site,
        "da_cycles": [{k: c.get(k) for k in ("cycle", "first_day", "last_day", "objective", "parameters")}
                      for c in state["cycles"]],
    }
    out = Path(case.require("RUNDIR")) / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.json"
    with atomic_path(metrics_path) as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")
    _plots(out, var, report["units"], hist["days"], y_sim, y_obs, sites, use, per_site, state["cycles"])
    print(f"esm-emu postrun: {len(per_site)} sites, median NSE {summary['nse']:.3f}, KGE {summary['kge']:.3f}; "
          f"report in {out}")
    return metrics_path


def _plots(out: Path, var, units, days, y_sim, y_obs, sites, use, per_site, cycles) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(days.size)
    ticks = np.linspace(0, days.size - 1, min(6, days.size)).astype(int)
    for i in np.flatnonzero(use)[:MAX_SITE_PLOTS]:
        fig, ax = plt.subplots(figsize=(9, 3.2))
        ax.plot(x, y_obs[i], ".", ms=3, color="k", label="observed")
        ax.plot(x, y_sim[i], "-", lw=1, color="tab:blue", label="CTSM")
        m = per_site[sites[i]]
        ax.set_title(f"{var} at site {sites[i]}: NSE {m['nse']:.2f}, KGE {m['kge']:.2f}")
        ax.set_ylabel(f"{var} ({units})")
        ax.set_xticks(ticks, [days[t] for t in ticks])
        ax.legend(loc="upper right")
        fig.tight_layout()
        _save(fig, out / f"{var}_{_safe(sites[i])}.png")
        plt.close(fig)
    if cycles:
        names = list(cycles[-1]["parameters"])
        fig, axes = plt.subplots(1 + len(names), 1, figsize=(6, 2 + 1.6 * len(names)), sharex=True)
        k = [c["cycle"] for c in cycles]
        axes[0].plot(k, [np.nan if c["objective"] is None else c["objective"] for c in cycles], "o-")
        axes[0].set_ylabel("1 - NSE")
        axes[0].set_title("esm-emu data assimilation cycles")
        for ax, n in zip(axes[1:], names):
            ax.plot(k, [c["parameters"][n] for c in cycles], "o-")
            ax.set_ylabel(n)
        axes[-1].set_xlabel("cycle")
        fig.tight_layout()
        _save(fig, out / "da_cycles.png")
        plt.close(fig)


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
