"""History matching with a tabular emulator: implausibility, the not-ruled-out-yet (NROY) space, the next wave.

For each target output k with observed value z_k, observation variance var_obs and model
discrepancy variance var_disc, the implausibility of a parameter set is

    I_k(theta) = |z_k - E[f_k(theta)]| / sqrt(var_obs + var_emulator_k(theta) + var_disc)

with the emulator's predictive mean and variance. theta is ruled out when max_k I_k > cutoff
(3, Pukelsheim's three-sigma rule, as in Williamson et al. 2013 and the CLM5 PPE's wave design).
The design space is sampled by a large Latin hypercube between the store's bounds (how the PPE
was drawn); NROY is reported as its fraction of that sample and as ranges per parameter.

The next wave: members drawn from the NROY sample (a seeded subset spread by a greedy maximin
pass) written in the PPE layout by `ppe_ingest.design` (`write_member_files`, `write_design`),
the writer the gridded PPE uses, so `esm-emu ingest` reads the wave back with its design values.

Targets YAML::

    cutoff: 3.0            # optional
    targets:
      GPP:                 # an output of the emulator
        value: 2.6e-5      # observed, the output's units
        sd: 2.0e-6         # observation uncertainty (1 sd)
        discrepancy_sd: 2.0e-6   # model discrepancy (1 sd), optional (0)
        source: "Beer et al. 2010, Science 329, 834"
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ppe_ingest.base.atomic import atomic_path
from ppe_ingest.base.config import read_yaml
from ppe_ingest.base.errors import UserError

TARGET_KEYS = {"value", "sd", "discrepancy_sd", "source"}


def read_targets(path, outputs: list[str]) -> tuple[dict, float]:
    """{output: {value, sd, discrepancy_sd, source}} and the cutoff, validated against the emulator's outputs."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: targets file not found")
    raw = read_yaml(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("targets"), dict) or not raw["targets"]:
        raise UserError(f"{path}: needs a non-empty 'targets:' mapping of output -> value, sd, source")
    unknown = set(raw) - {"targets", "cutoff"}
    if unknown:
        raise UserError(f"{path}: unknown key {sorted(unknown)[0]!r} (targets, cutoff)")
    cutoff = raw.get("cutoff", 3.0)
    if isinstance(cutoff, bool) or not isinstance(cutoff, (int, float)) or not cutoff > 0:
        raise UserError(f"{path}: cutoff: {cutoff!r} is not a positive number")
    out = {}
    for name, t in raw["targets"].items():
        where = f"{path}: targets.{name}"
        if str(name) not in outputs:
            raise UserError(f"{where}: not an output of the emulator ({', '.join(outputs[:8])} ...)")
        if not isinstance(t, dict):
            raise UserError(f"{where}: expected a mapping with value, sd, source")
        bad = set(t) - TARGET_KEYS
        if bad:
            raise UserError(f"{where}: unknown key {sorted(bad)[0]!r} ({', '.join(sorted(TARGET_KEYS))})")
        for key in ("value", "sd", "source"):
            if key not in t:
                raise UserError(f"{where}: '{key}' is missing")
        vals = {}
        for key in ("value", "sd", "discrepancy_sd"):
            v = t.get(key, 0.0)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise UserError(f"{where}.{key}: {v!r} is not a finite number")
            if key != "value" and v < 0:
                raise UserError(f"{where}.{key}: {v!r} is negative")
            vals[key] = float(v)
        if not isinstance(t["source"], str) or not t["source"].strip():
            raise UserError(f"{where}.source: name where the value comes from")
        out[str(name)] = {**vals, "source": t["source"]}
    return out, float(cutoff)


def implausibility(mean: np.ndarray, var_emu: np.ndarray, value: np.ndarray, var_obs: np.ndarray,
                   var_disc: np.ndarray) -> np.ndarray:
    """|z - E f| / sqrt(var_obs + var_emu + var_disc), elementwise over (M, K)."""
    return np.abs(value - mean) / np.sqrt(var_obs + var_emu + var_disc)


def _spread_subset(u: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Indices of k rows of u chosen greedily to be far apart (maximin), from a seeded random start."""
    rng = np.random.default_rng([seed, 5])
    pool = rng.permutation(len(u))[: min(len(u), 20 * k)]
    chosen = [pool[0]]
    d = ((u[pool] - u[pool[0]]) ** 2).sum(1)
    for _ in range(1, k):
        j = int(np.argmax(d))
        chosen.append(pool[j])
        d = np.minimum(d, ((u[pool] - u[pool[j]]) ** 2).sum(1))
    return np.array(chosen)


def history_match(run_dir, targets_path, out_dir=None, n_samples: int = 100_000, seed: int = 0,
                  wave: int = 0, table=None, base_paramfile=None, prefix: str = "WAVE", cutoff=None,
                  progress: bool = False) -> dict:
    """Implausibility over an LHC of the design space; NROY fraction and ranges; optionally the next wave."""
    import torch

    from ppe_ingest.design import latin_hypercube

    from .emulator import TabularEmulator, load_emulator
    from .sensitivity import design_bounds

    run_dir = Path(run_dir)
    emu = load_emulator(run_dir)
    if not isinstance(emu, TabularEmulator):
        raise UserError(f"{run_dir}: history matching needs a tabular (summary-PPE) emulator")
    targets, file_cutoff = read_targets(targets_path, emu.response_names)
    cutoff = file_cutoff if cutoff is None else float(cutoff)
    if n_samples < 10:
        raise UserError(f"--samples: {n_samples} is too few (>= 10)")
    if wave < 0:
        raise UserError(f"--wave: {wave} is negative")
    if wave and base_paramfile is None:
        raise UserError("--base-paramfile: needed to write the wave's paramfiles (the PPE's default paramfile)")
    if wave:  # every parameter of the wave must be writable before anything is computed or written
        table = table or _table_of(run_dir)
        _wave_table(table, base_paramfile, emu.param_names)
    names = list(targets)
    cols = [emu.response_names.index(n) for n in names]
    lo, hi = design_bounds(run_dir, emu.param_names)
    u = latin_hypercube(n_samples, len(lo), seed)
    mean, var = np.empty((n_samples, len(cols))), np.empty((n_samples, len(cols)))
    with torch.no_grad():
        for i in range(0, n_samples, 8192):
            th = torch.tensor(lo + (hi - lo) * u[i:i + 8192], dtype=torch.float32)
            m, v = emu.predict(th)
            mean[i:i + 8192], var[i:i + 8192] = m.double().numpy()[:, cols], v.double().numpy()[:, cols]
    z = np.array([targets[n]["value"] for n in names])
    imp = implausibility(mean, var, z, np.array([targets[n]["sd"] ** 2 for n in names]),
                         np.array([targets[n]["discrepancy_sd"] ** 2 for n in names]))
    imax = imp.max(1)
    nroy = imax <= cutoff
    theta = lo + (hi - lo) * u
    ranges = {p: {"min": float(theta[nroy, j].min()), "max": float(theta[nroy, j].max()),
                  "design_min": float(lo[j]), "design_max": float(hi[j]),
                  "s_min": float(u[nroy, j].min()), "s_max": float(u[nroy, j].max()),
                  "s_q05": float(np.quantile(u[nroy, j], 0.05)), "s_q95": float(np.quantile(u[nroy, j], 0.95))}
              if nroy.any() else None for j, p in enumerate(emu.param_names)}
    result = {"samples": n_samples, "seed": seed, "cutoff": cutoff, "nroy_fraction": float(nroy.mean()),
              "nroy_count": int(nroy.sum()), "targets": targets,
              "ruled_out_by": {n: float((imp[:, k] > cutoff).mean()) for k, n in enumerate(names)},
              "emulator_sd_median": {n: float(np.median(np.sqrt(var[:, k]))) for k, n in enumerate(names)},
              "param_ranges": ranges, "run_dir": str(run_dir)}
    out_dir = Path(out_dir) if out_dir else run_dir / "history_match"
    if wave:
        if nroy.sum() < wave:
            raise UserError(f"--wave: {wave} members asked for, only {int(nroy.sum())} of {n_samples} samples "
                            "are not ruled out (loosen the targets or sample more)")
        idx = np.flatnonzero(nroy)[_spread_subset(u[nroy], wave, seed)]
        result["wave"] = write_wave(u[idx], emu.param_names, out_dir / "wave", table, base_paramfile, prefix,
                                    seed, progress, theta=theta[idx])
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["param,nroy_min,nroy_max,design_min,design_max,s_min,s_max,s_q05,s_q95"]
    for p, r in ranges.items():
        if r is not None:
            lines.append(",".join([p] + [f"{r[k]:.6g}" for k in ("min", "max", "design_min", "design_max",
                                                                  "s_min", "s_max", "s_q05", "s_q95")]))
    with atomic_path(out_dir / "nroy_ranges.csv") as t:
        Path(t).write_text("\n".join(lines) + "\n")
    with atomic_path(out_dir / "history_match.json") as t:
        Path(t).write_text(json.dumps(result, indent=1))
    try:
        _plot(out_dir / "nroy.png", result, imax)
    except ImportError:  # matplotlib is optional
        pass
    result["out_dir"] = str(out_dir)
    result["_imp"] = imp
    return result


def _plot(path: Path, result: dict, imax: np.ndarray) -> None:
    """NROY ranges per parameter on the unit cube (full range, 5-95% of NROY) and the implausibility."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranges = {p: r for p, r in result["param_ranges"].items() if r is not None}
    order = sorted(ranges, key=lambda p: ranges[p]["s_q95"] - ranges[p]["s_q05"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 0.25 * len(order) + 2.0),
                               gridspec_kw={"width_ratios": [2, 1]})
    for i, p in enumerate(order):
        r = ranges[p]
        a.plot([r["s_min"], r["s_max"]], [i, i], color="0.7", lw=2)
        a.plot([r["s_q05"], r["s_q95"]], [i, i], color="C0", lw=5)
    a.set_yticks(range(len(order)), order, fontsize=7)
    a.set_xlim(0, 1)
    a.set_xlabel("position in the design range (0 = min, 1 = max)")
    a.set_title(f"NROY: {result['nroy_fraction']:.3g} of {result['samples']} samples "
                "(grey: full range, blue: 5-95%)", fontsize=9)
    b.hist(np.minimum(imax, 10), bins=50, color="0.5")
    b.axvline(result["cutoff"], color="C3", label=f"cutoff {result['cutoff']:g}")
    b.set_xlabel("max implausibility over targets (clipped at 10)")
    b.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as t:
        fig.savefig(t, format="png", dpi=90)
    plt.close(fig)


def _table_of(run_dir: Path):
    from .data import _open
    from .sensitivity import run_config

    store = run_config(run_dir).get("store")
    src = _open(store).attrs.get("source_table")
    if not src or not Path(src).is_file():
        raise UserError(f"{store}: names no parameter table (source_table); pass --table")
    return src


def _wave_table(table, base_paramfile, params: list[str]):
    """The parameter table of the wave, checked: every emulator parameter in it, with usable bounds."""
    from ppe_ingest.param_table import ParamTable, load_param_table

    if not isinstance(table, ParamTable):
        table = load_param_table(table, base_paramfile=base_paramfile)
    missing = [p for p in params if p not in table]
    if missing:
        raise UserError(f"{table.source}: parameter {missing[0]} of the emulator is not in the table")
    for p in params:
        table[p].bounds()  # one line naming the parameter when its bounds cannot be resolved
    return table


def write_wave(s: np.ndarray, params: list[str], out: Path, table, base_paramfile, prefix: str, seed: int,
               progress: bool = False, theta: np.ndarray | None = None) -> dict:
    """Members at unit-cube positions `s` of the table (or at the values `theta`) in the PPE layout:
    paramfiles/, namelist_mods/, design.nc/.csv, and the table and base paramfile ingest reads them with."""
    from ppe_ingest.design import make_design, write_design, write_member_files, write_ppe_context

    table_path = None if hasattr(table, "names") else table
    table = _wave_table(table, base_paramfile, params)
    design = make_design(table, len(s), seed, prefix, names=params)
    if theta is None:
        theta = np.column_stack([table[p].theta(s[:, j]) for j, p in enumerate(params)])
    else:  # the table's own unit-cube positions of these values (its ends may run either way)
        ends = np.array([table[p].ends() for p in params])
        s = (theta - ends[:, 0]) / (ends[:, 1] - ends[:, 0])
    design["s"].values[:] = s
    design["theta"].values[:] = theta
    design.attrs["title"] = "PPE design: next wave inside the NROY space (esm-emu history-match)"
    files = write_member_files(design, out, base_paramfile, table, progress=progress)
    files += write_design(design, out)
    if table_path is not None:
        files += write_ppe_context(out, table_path, base_paramfile)
    return {"dir": str(out), "members": [str(m) for m in design["member"].values], "files": len(files)}
