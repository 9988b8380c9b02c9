"""Emulator skill on held-out data: per variable and per gridcell, CSV/JSON and plots.

Groups (from the store's split flags; 0 train, 1 val, 2 test):
- ``members``: test members x training gridcells, training years;
- ``gridcells``: training members x test gridcells, training years;
- ``years``: training members x training gridcells, test (held-out) years;
- ``members_x_gridcells``: test members x test gridcells, every year (the quickstart target).
Every series is run from its first day; the store's warm-up days are left out of the scores.
Groups larger than `evaluate.max_series` series are scored on a seeded random subset.
A group the split holds out but that gives no score (fewer than two scored days, e.g. a store
whose held-out "year" is one end-of-interval stamp, or no finite score at all) is refused
(UserError, exit 2) rather than reported as NaN; a group the split leaves empty gets a note.
Daily NSE, KGE, RMSE, bias and R2 per (member, gridcell, variable); medians per group in JSON.
An emulator ensemble (`train.ensemble: K`) is scored on its mean; each variable also gets the
spread over members: ``spread_median`` (median over series of the time-mean std / the series'
std) and ``coverage_2sd`` (median over series of the fraction of scored days within mean +- 2 std).
The predictive spread calibrated on the validation series (`esm_emu.spread`; fitted at the end of
training, or by `esm-emu evaluate RUN --calibrate-spread` for a run from before) is reported beside
it: ``spread_calibration`` per group (its form, or ``none``) and per variable ``coverage`` (share
of all scored days of the group within +-1.64 and +-2 std, raw members' spread and calibrated: a
calibrated Gaussian gives about 0.90 and 0.95) and ``calibrated_spread_median``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ppe_ingest.base.atomic import atomic_path
from ppe_ingest.base.errors import UserError
from ppe_ingest.store import TEST, TRAIN, VAL

from .data import SequenceStore, SummaryTable
from .emulator import load_emulator
from .metrics import METRICS
from .spread import CAL_SERIES, Z_LEVELS, calibrated_std, coverage, fit_calibration, validation_pairs
from .training.config import EVALUATE

MIN_DAYS = 2  # daily NSE/KGE/R2 need at least two days of a series
GROUPS = {"members": ([TEST], [TRAIN], "train_years"), "gridcells": ([TRAIN], [TEST], "train_years"),
          "years": ([TRAIN], [TRAIN], "test_years"), "members_x_gridcells": ([TEST], [TEST], "all_years")}


@torch.no_grad()
def predict_pairs(emu, store: SequenceStore, m: np.ndarray, g: np.ndarray, batch_size: int = 64,
                  progress: bool = False, spread: bool = False):
    """Emulator responses (N, T, R) for whole series of member/gridcell index pairs, physical units;
    with `spread`, (mean, std over the ensemble's members)."""
    from ppe_ingest.base.progress import progress as _progress

    out = np.empty((len(m), store.n_time, len(emu.response_names)), np.float32)
    sd = np.zeros_like(out) if spread else None
    for i in _progress(range(0, len(m), batch_size), desc="evaluate", enabled=progress):
        mm, gg = m[i:i + batch_size], g[i:i + batch_size]
        f = torch.from_numpy(store.forcing_for(mm, gg, np.zeros(len(mm), int), store.n_time))
        args = (f, torch.from_numpy(store.static[gg]), torch.from_numpy(store.theta[mm]))
        if spread:
            y, s = emu.predict_with_spread(*args)
            sd[i:i + len(mm)] = s.float().numpy()
        else:
            y = emu(*args)
        out[i:i + len(mm)] = y.float().numpy()
    return (out, sd) if spread else out


def spread_scores(pred: np.ndarray, sd: np.ndarray, obs: np.ndarray) -> dict:
    """Per series (N, R): time-mean ensemble std / the series' std, and the fraction of finite days
    with |obs - mean| <= 2 std. Arrays (N, T, R) over scored days."""
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = np.isfinite(obs)
        rel = np.nanmean(np.where(ok, sd, np.nan), 1) / np.nanstd(obs, 1)
        inside = (np.abs(obs - pred) <= 2 * sd) & ok
        cov = inside.sum(1) / ok.sum(1)
    return {"spread": rel, "coverage_2sd": cov}


def calibrate_spread(emu, store: SequenceStore, warmup: int, max_series: int = CAL_SERIES, batch_size: int = 64,
                     progress: bool = False) -> dict:
    """Fit `emu.calibration` (esm_emu.spread) on the validation series of `store`, set it, and return
    its payload entry: one prediction pass over at most `max_series` series (validation members or
    gridcells, never test ones), scored after `warmup` in the training and validation years."""
    pairs = validation_pairs(store, max_series)
    if len(pairs) == 0:
        raise UserError(f"{store.path}: no validation members or gridcells to calibrate the spread on "
                        f"(split_member/split_gridcell == {VAL})")
    days = (np.arange(store.n_time) >= warmup) & (store.split_time != TEST)
    emu.calibration.fitted = False  # the raw spread is what the fit calibrates
    mean, spread = predict_pairs(emu, store, pairs[:, 0], pairs[:, 1], batch_size, progress, spread=True)
    obs = store.responses[pairs[:, 0], pairs[:, 1]]
    entry = fit_calibration(mean[:, days], spread[:, days], np.asarray(obs, np.float64)[:, days], emu.response_names,
                            {"validation_series": int(len(pairs)), "validation_days": int(days.sum()),
                             "members": int(getattr(emu, "n_members", 1))})
    emu.calibration.load(entry, emu.response_names)
    return entry


def calibrate_run(run: str | Path, store: str | Path | None = None, max_series: int = CAL_SERIES,
                  progress: bool = False) -> dict:
    """Calibrate the spread of a finished run's emulator and store it in its best.pt (rewritten
    atomically: every other entry kept); returns the payload entry."""
    from .checkpoint import read_torch_file, save_checkpoint

    run = Path(run)
    ckpt = run / "best.pt" if run.is_dir() else run
    emu = load_emulator(ckpt)
    if emu.kind == "tabular":
        raise UserError(f"{ckpt}: a tabular (summary) emulator gives its own predictive variance (gp, "
                        "mlp_ensemble); --calibrate-spread is for sequence emulators")
    meta = read_torch_file(ckpt, what="emulator checkpoint")
    cfg = meta.get("config") or {}
    store = store or cfg.get("store")
    if store is None:
        raise UserError(f"{ckpt}: no training store recorded; pass --store")
    st = SequenceStore(store, emu.forcing_names, emu.static_names, emu.param_names, emu.response_names,
                       reading="stream")
    try:
        warmup = (cfg.get("data") or {}).get("warmup")
        entry = calibrate_spread(emu, st, st.warmup_days if warmup is None else int(warmup), max_series,
                                 progress=progress)
    finally:
        st.close()
    save_checkpoint(ckpt, {**meta, "emulator": emu.payload()})
    return entry


def _day_mask(store: SequenceStore, which: str, warmup: int) -> np.ndarray:
    keep = np.arange(store.n_time) >= warmup
    if which == "train_years":
        keep &= store.split_time == TRAIN
    elif which == "test_years":
        keep &= store.split_time == TEST
    return keep


def score(sim: np.ndarray, obs: np.ndarray) -> dict:
    """Every metric of METRICS over the last axis."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return {k: np.asarray(f(sim, obs)) for k, f in METRICS.items()}


def evaluate_run(run: str | Path, out_dir: str | Path | None = None, store: str | Path | None = None,
                 plots: bool = True, batch_size: int = 64, progress: bool = True,
                 max_series: int | None = None) -> dict:
    """Evaluate the emulator of a run directory (or checkpoint); write CSV/JSON/PNG into `out_dir`."""
    run = Path(run)
    ckpt = run / "best.pt" if run.is_dir() else run
    emu = load_emulator(ckpt)
    meta = torch.load(ckpt, map_location="cpu", weights_only=True)
    cfg = meta.get("config") or {}
    store = store or cfg.get("store")
    if store is None:
        raise UserError(f"{ckpt}: no training store recorded; pass --store")
    out_dir = Path(out_dir) if out_dir else (run if run.is_dir() else run.parent) / "eval"
    if emu.kind == "tabular":
        return _evaluate_tabular(emu, store, cfg, out_dir, plots)
    if max_series is None:
        # checkpoints record the validated emulator section; the schema's default covers older ones
        max_series = int((cfg.get("evaluate") or {}).get("max_series", EVALUATE["max_series"].default))
    # streamed: only the scored series are read (at most max_series per group), so the evaluation's
    # memory does not grow with the store (a 64 x 200 x 5-year store: peak 0.79 GB against 1.15 GB
    # loaded, the same scores, the same time)
    st = SequenceStore(store, emu.forcing_names, emu.static_names, emu.param_names, emu.response_names,
                       reading="stream")
    try:
        return _evaluate_sequence(emu, st, store, cfg, ckpt, out_dir, plots, batch_size, progress, max_series)
    finally:
        st.close()


def _evaluate_sequence(emu, st: SequenceStore, store, cfg: dict, ckpt: Path, out_dir: Path, plots: bool,
                       batch_size: int, progress: bool, max_series: int) -> dict:
    """evaluate_run's work for a sequence emulator on an open store."""
    warmup = (cfg.get("data") or {}).get("warmup")
    warmup = st.warmup_days if warmup is None else warmup
    rows, summary, series = [], {}, {}
    n_members = int(getattr(emu, "n_members", 1))
    cal = emu.calibration
    with_spread = n_members > 1 or cal.fitted
    groups = {}
    for group, (msplit, gsplit, days) in GROUPS.items():  # every group checked before any prediction
        pairs = st.pairs(msplit, gsplit)
        if len(pairs) > max_series:  # a seeded subset keeps evaluation of big stores affordable
            pairs = pairs[np.sort(np.random.default_rng(0).choice(len(pairs), max_series, replace=False))]
        keep = _day_mask(st, days, warmup)
        if len(pairs) and 0 < keep.sum() < MIN_DAYS:
            raise UserError(f"{store}: held-out group {group!r} has {int(keep.sum())} scored day(s) "
                            f"({_days_text(st, keep)}), too few for daily skill (at least {MIN_DAYS}); "
                            "re-ingest the store so the split holds out whole years")
        groups[group] = (pairs, keep)
    for group, (pairs, keep) in groups.items():
        if len(pairs) == 0 or not keep.any():
            summary[group] = {"n_series": 0, "note": "no members/gridcells/years in this split"}
            continue
        if with_spread:  # the members' raw spread; the calibrated std from it below
            fitted, cal.fitted = cal.fitted, False
            try:
                pred, sd = predict_pairs(emu, st, pairs[:, 0], pairs[:, 1], batch_size, progress, spread=True)
            finally:
                cal.fitted = fitted
        else:
            pred, sd = predict_pairs(emu, st, pairs[:, 0], pairs[:, 1], batch_size, progress), None
        obs = st.responses[pairs[:, 0], pairs[:, 1]]
        series[group] = (pairs, pred, obs, keep)
        sc = score(np.moveaxis(pred[:, keep], 1, -1), np.moveaxis(obs[:, keep], 1, -1))  # (N, R) each
        if not np.isfinite(sc["NSE"]).any():
            raise UserError(f"{store}: held-out group {group!r} has no finite score in any of its "
                            f"{len(pairs)} series over {int(keep.sum())} day(s) (missing or constant responses)")
        summary[group] = {"n_series": int(len(pairs)), "days": int(keep.sum()), "variables": {}}
        spr = spread_scores(pred[:, keep], sd[:, keep], obs[:, keep]) if sd is not None else None
        if spr is not None:
            summary[group]["ensemble_members"] = n_members
            summary[group]["spread_calibration"] = cal.describe()
        for r, var in enumerate(st.response_names):
            summary[group]["variables"][var] = {
                f"{k}_median": float(np.nanmedian(v[:, r])) if np.isfinite(v[:, r]).any() else None
                for k, v in sc.items()}
            summary[group]["variables"][var].update(
                {f"{k}_mean": float(np.nanmean(v[:, r])) if np.isfinite(v[:, r]).any() else None
                 for k, v in sc.items() if k in ("NSE", "KGE")})
            if spr is not None:
                summary[group]["variables"][var].update(
                    {"spread_median": _median(spr["spread"][:, r]), "coverage_2sd": _median(spr["coverage_2sd"][:, r])})
                summary[group]["variables"][var].update(_coverage_entry(pred[:, keep, r], sd[:, keep, r],
                                                                        obs[:, keep, r], cal, r))
            for i, (m, g) in enumerate(pairs):
                rows.append({"group": group, "member": st.members[m], "gridcell": int(g),
                             "lat": float(st.lat[g]), "lon": float(st.lon[g]), "variable": var,
                             **{k: float(v[i, r]) for k, v in sc.items()}})
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(out_dir / "metrics_per_series.csv", rows)
    per_gc = _per_gridcell(rows)
    _write_csv(out_dir / "metrics_per_gridcell.csv", per_gc)
    result = {"checkpoint": str(ckpt), "store": str(store), "warmup_days": int(warmup), "groups": summary,
              "metric": "daily scores per (member, gridcell); medians over series"}
    with atomic_path(out_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    if plots:
        _plots(st, series, per_gc, out_dir)
    lines = []
    for group, s in summary.items():
        for var, d in s.get("variables", {}).items():
            lines.append(f"{group:20s} {var:15s} NSE median {_fmt(d['NSE_median'])}  KGE median {_fmt(d['KGE_median'])}"
                         f"  n={s['n_series']}" + (f"  spread/std {_fmt(d.get('spread_median'))}  "
                                                   f"within 2sd {_fmt(d.get('coverage_2sd'))}"
                                                   if "spread_median" in d else ""))
            if "coverage" in d:
                c = d["coverage"]
                lines.append(f"{'':20s} {'':15s} days within 1.64/2 sd: members' spread {_fmt(c['raw']['1.64'])}/"
                             f"{_fmt(c['raw']['2'])}" + (f" -> calibrated {_fmt(c['calibrated']['1.64'])}/"
                                                          f"{_fmt(c['calibrated']['2'])} (nominal 0.900/0.954)"
                                                          if c.get("calibrated") else "  (spread calibration: none)"))
    return {"out_dir": str(out_dir), "summary": summary, "summary_lines": lines}


def _coverage_entry(pred, raw, obs, cal, r: int) -> dict:
    """Held-out coverage of the +-1.64 and +-2 std bands of one variable (N, T): the members' raw
    spread and, where the emulator is calibrated, its calibrated std (shares of all scored days)."""
    out = {"raw": {k: coverage(pred, raw, obs, z) for k, z in Z_LEVELS.items()}, "calibrated": None}
    if cal.fitted:
        sd = calibrated_std(pred, raw, float(cal.a[r]), float(cal.b[r]), float(cal.c[r]))
        out["calibrated"] = {k: coverage(pred, sd, obs, z) for k, z in Z_LEVELS.items()}
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.nanmean(np.where(np.isfinite(obs), sd, np.nan), 1) / np.nanstd(obs, 1)
        return {"coverage": out, "calibrated_spread_median": _median(rel)}
    return {"coverage": out}


def _days_text(st: SequenceStore, keep: np.ndarray) -> str:
    """The first scored time steps, as the days they describe where the store's time axis decodes
    (its stamps are CTSM's interval ends: `ctsmio.history.record_days`)."""
    from ppe_ingest.ctsmio.history import record_days

    idx = np.flatnonzero(keep)[:3]
    try:
        text = ", ".join(str(d)[:10] for d in record_days(st.ds["time"].values)[idx])
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):  # an undecoded (numeric) axis
        text = ", ".join(f"step {i}" for i in idx)
    return (text + (", ..." if keep.sum() > 3 else "")) or "none"


def _median(x):
    return float(np.nanmedian(x)) if np.isfinite(x).any() else None


def _fmt(x):
    return "  nan" if x is None else f"{x:.3f}"


def _write_csv(path: Path, rows: list[dict]):
    import pandas as pd

    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


def _per_gridcell(rows: list[dict]) -> list[dict]:
    import pandas as pd

    if not rows:
        return []
    df = pd.DataFrame(rows)
    agg = df.groupby(["group", "gridcell", "variable"]).agg(
        lat=("lat", "first"), lon=("lon", "first"), n_members=("member", "count"),
        NSE=("NSE", "median"), KGE=("KGE", "median"), RMSE=("RMSE", "median"), bias=("bias", "median"),
        R2=("R2", "median")).reset_index()
    return agg.to_dict("records")


def _plots(st: SequenceStore, series: dict, per_gc: list[dict], out_dir: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = {v: str(st.ds[v].attrs.get("units", "")) for v in st.response_names}
    group = next((g for g in ("members_x_gridcells", "members", "gridcells", "years") if g in series), None)
    if group is None:
        return
    pairs, pred, obs, keep = series[group]
    R = len(st.response_names)
    # example hydrographs: the first series of the group, its first scored year
    t0 = int(np.flatnonzero(keep)[0])
    t1 = min(t0 + 365, st.n_time)
    fig, axes = plt.subplots(R, 1, figsize=(10, 2.4 * R), squeeze=False, sharex=True)
    for r, var in enumerate(st.response_names):
        ax = axes[r, 0]
        ax.plot(np.arange(t0, t1), obs[0, t0:t1, r], label="simulator", lw=1.2, color="k")
        ax.plot(np.arange(t0, t1), pred[0, t0:t1, r], label="emulator", lw=1.0, color="tab:red")
        ax.set_ylabel(f"{var}\n[{units[var]}]")
    axes[0, 0].legend(loc="upper right")
    axes[-1, 0].set_xlabel("day of series")
    m, g = pairs[0]
    fig.suptitle(f"{group}: member {st.members[m]}, gridcell {g}")
    fig.tight_layout()
    with atomic_path(out_dir / "hydrographs.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    # scatter of daily values, all series of the group (subsampled)
    fig, axes = plt.subplots(1, R, figsize=(4 * R, 4), squeeze=False)
    rng = np.random.default_rng(0)
    for r, var in enumerate(st.response_names):
        o, p = obs[:, keep, r].ravel(), pred[:, keep, r].ravel()
        ok = np.flatnonzero(np.isfinite(o) & np.isfinite(p))
        ok = rng.choice(ok, min(len(ok), 20000), replace=False) if len(ok) else ok
        ax = axes[0, r]
        ax.scatter(o[ok], p[ok], s=2, alpha=0.3)
        if len(ok):
            lo, hi = float(min(o[ok].min(), p[ok].min())), float(max(o[ok].max(), p[ok].max()))
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel(f"simulator {var} [{units[var]}]")
        ax.set_ylabel("emulator")
    fig.suptitle(f"daily values, {group}")
    fig.tight_layout()
    with atomic_path(out_dir / "scatter.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    # map of per-gridcell NSE (median over members): held-out members, every gridcell that has one
    fig, axes = plt.subplots(1, R, figsize=(4.5 * R, 3.6), squeeze=False)
    for r, var in enumerate(st.response_names):
        ax = axes[0, r]
        pts = [d for d in per_gc if d["variable"] == var and d["group"] in ("members", "members_x_gridcells")]
        if pts:
            finite = [d["NSE"] for d in pts if np.isfinite(d["NSE"])]
            sc = ax.scatter([d["lon"] for d in pts], [d["lat"] for d in pts], c=[d["NSE"] for d in pts],
                            cmap="viridis", vmin=max(0.0, min(finite)) if finite else 0.0, vmax=1.0, s=30,
                            edgecolors="k", linewidths=0.3)
            fig.colorbar(sc, ax=ax, label="NSE")
        ax.set_title(f"{var}: per-gridcell NSE")
        ax.set_xlabel("longitude [deg]")
        ax.set_ylabel("latitude [deg]")
    fig.tight_layout()
    with atomic_path(out_dir / "nse_map.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _evaluate_tabular(emu, store, cfg, out_dir: Path, plots: bool) -> dict:
    """Tabular emulators: scores across the validation members (the loop's split, same seed)."""
    tab = SummaryTable(store, emu.response_names, emu.param_names)
    seed = (cfg.get("train") or {}).get("seed", 0)
    frac = (cfg.get("data") or {}).get("val_fraction", 0.2)
    if tab.split_member is not None:
        held_out = TEST if (tab.split_member == TEST).any() else VAL
        idx = np.flatnonzero(tab.split_member == held_out)
    else:
        perm = np.random.default_rng([seed, 31]).permutation(len(tab.theta))
        idx = np.sort(perm[:max(1, int(round(frac * len(tab.theta))))])
    with torch.no_grad():
        pred = emu(torch.tensor(tab.theta[idx], dtype=torch.float32)).double().numpy()
    obs = tab.y[idx]
    sc = score(pred.T, obs.T)
    if len(idx) < MIN_DAYS or not np.isfinite(sc["R2"]).any():
        raise UserError(f"{store}: {len(idx)} held-out member(s) give no finite score")
    res = {"store": str(store), "n_members": int(len(idx)),
           "variables": {v: {k: float(sc[k][r]) for k in sc} for r, v in enumerate(tab.response_names)}}
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(res, indent=2))
    lines = [f"{v:15s} R2 {d['R2']:.3f}  NSE {d['NSE']:.3f}" for v, d in res["variables"].items()]
    return {"out_dir": str(out_dir), "summary": res, "summary_lines": lines}
