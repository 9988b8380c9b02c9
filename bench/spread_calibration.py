"""Held-out coverage of the emulator's spread before and after calibration (esm_emu/spread.py).

    python bench/spread_calibration.py RUN_DIR [--store STORE] [--label TEXT] [--forms] [--no-record]

RUN_DIR is a trained sequence emulator (e.g. a quickstart's emulator/). Its best.pt is copied to a
temporary folder (the run is not modified); the copy is calibrated on the validation series unless
it already carries a calibration (a run trained with it), then evaluated. The figures: the fitted
(a, b, c) per variable, the fit's wall time, and per held-out group and variable the share of
scored days within +-1.64 and +-2 std of the members' raw spread and of the calibrated std (a
calibrated Gaussian: 0.900 and 0.954). Appended to bench/RESULTS.md.

--forms also compares the error model's forms (a spread^2 alone; + b; + c mean^2, the shipped one),
each fitted on the same validation series by Gaussian likelihood, on 256 test-member series
(training years): coverage, mean negative log-likelihood in units of the series' std, and the 2-std
coverage per tercile of the predicted value (does the band hold on dry and on wet days alike).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _record import record

GROUPS = ("members", "members_x_gridcells", "gridcells", "years")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--store")
    ap.add_argument("--label", default="")
    ap.add_argument("--forms", action="store_true", help="compare the error model's forms (see above)")
    ap.add_argument("--no-record", action="store_true")
    a = ap.parse_args(argv)
    import torch

    from esm_emu.checkpoint import read_torch_file
    from esm_emu.evaluate import calibrate_run, evaluate_run

    torch.set_num_threads(1)
    src = Path(a.run_dir)
    with tempfile.TemporaryDirectory(prefix="spread_bench_") as tmp:
        run = Path(tmp) / "run"
        run.mkdir()
        shutil.copy2(src / "best.pt", run / "best.pt")
        meta = read_torch_file(run / "best.pt")
        cal = meta["emulator"].get("spread_calibration")
        how = "fitted at the end of training"
        fit_s = None
        if cal is None:
            t0 = time.perf_counter()
            cal = calibrate_run(run, store=a.store)
            fit_s = time.perf_counter() - t0
            how = f"fitted on the copy by calibrate_run in {fit_s:.1f} s (store opened, one prediction pass, fit)"
        res = evaluate_run(run, out_dir=Path(tmp) / "eval", store=a.store, plots=False, progress=False)
    summary = res["summary"]
    lines = [f"run: {src} {a.label}".rstrip(), f"calibration ({cal['form']}): {how}; "
             f"{cal.get('validation_series')} validation series x {cal.get('validation_days')} days, "
             f"{cal.get('members')} members"]
    for r, v in enumerate(cal["response_names"]):
        lines.append(f"  {v:15s} a {cal['a'][r]:.4g}  b {cal['b'][r]:.4g}  c {cal['c'][r]:.4g}")
    lines.append("held-out share of scored days within +-1.64 / +-2 std (nominal 0.900 / 0.954): "
                 "members' raw spread -> calibrated")
    for g in GROUPS:
        s = summary.get(g) or {}
        for v, d in (s.get("variables") or {}).items():
            c = d.get("coverage")
            if not c or not c.get("calibrated"):
                continue
            lines.append(f"  {g:20s} {v:15s} {c['raw']['1.64']:.3f} / {c['raw']['2']:.3f} -> "
                         f"{c['calibrated']['1.64']:.3f} / {c['calibrated']['2']:.3f}   "
                         f"(std / series std: raw {d['spread_median']:.3f}, calibrated "
                         f"{d['calibrated_spread_median']:.3f}; n={s['n_series']} series x {s['days']} days)")
    if a.forms:
        lines += compare_forms(src, a.store)
    if a.no_record:
        print("\n".join(lines))
    else:
        record("Emulator spread: held-out coverage before and after calibration", lines)
    return 0


FORMS = {"a spread^2": (True, False, False), "a spread^2 + b": (True, True, False),
         "a spread^2 + b + c mean^2": (True, True, True)}


def _fit_form(m, s, o, use):
    """Log parameters of one form by Gaussian likelihood (arrays in units of the series' std)."""
    import torch

    ok = np.isfinite(o)
    m, s2, r2 = (torch.as_tensor(x[ok], dtype=torch.float64) for x in (m, s ** 2, (o - m) ** 2))
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor(use, dtype=torch.float64)

    def var(q):
        e = torch.exp(q.clamp(-40, 20)) * mask
        return (e[0] * s2 + e[1] + e[2] * m ** 2).clamp_min(1e-30)

    opt = torch.optim.LBFGS([p], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        v = var(p)
        loss = 0.5 * (torch.log(v) + r2 / v).mean()
        loss.backward()
        return loss

    opt.step(closure)
    return (torch.exp(p.detach().clamp(-40, 20)) * mask).numpy()


def _inside(err, sd, z, sel) -> float:
    return float((err[sel] <= z * sd[sel]).mean())


def compare_forms(run: Path, store=None) -> list[str]:
    from esm_emu.checkpoint import read_torch_file
    from esm_emu.data import SequenceStore
    from esm_emu.emulator import load_emulator
    from esm_emu.evaluate import predict_pairs
    from esm_emu.spread import validation_pairs
    from ppe_ingest.store import TEST, TRAIN

    emu = load_emulator(run)
    emu.calibration.fitted = False
    cfg = read_torch_file(run / "best.pt").get("config") or {}
    st = SequenceStore(store or cfg["store"], emu.forcing_names, emu.static_names, emu.param_names,
                       emu.response_names, reading="stream")
    warm = (cfg.get("data") or {}).get("warmup")
    warm = st.warmup_days if warm is None else int(warm)
    after = np.arange(st.n_time) >= warm
    out = []
    try:
        pv = validation_pairs(st)
        pt = st.pairs([TEST], [TRAIN])
        pt = pt[np.sort(np.random.default_rng(0).choice(len(pt), min(256, len(pt)), replace=False))]
        sets = {}
        for name, pairs, days in (("val", pv, after & (st.split_time != TEST)),
                                  ("test", pt, after & (st.split_time == TRAIN))):
            mean, sd = predict_pairs(emu, st, pairs[:, 0], pairs[:, 1], spread=True)
            obs = np.asarray(st.responses[pairs[:, 0], pairs[:, 1]], np.float64)
            sets[name] = (mean[:, days].astype(np.float64), sd[:, days].astype(np.float64), obs[:, days])
    finally:
        st.close()
    out.append(f"forms of the error model: fitted on {len(pv)} validation series, scored on {len(pt)} test-member "
               "series x training years; cover 1.64 / 2 sd, NLL (per day, std units), 2-sd cover per tercile of "
               "the predicted value (low, mid, high)")
    for r, v in enumerate(emu.response_names):
        vm, vs, vo = (x[..., r] for x in sets["val"])
        tm, ts, to = (x[..., r] for x in sets["test"])
        scale = float(np.nanstd(vo))
        vm, vs, vo, tm, ts, to = (x / scale for x in (vm, vs, vo, tm, ts, to))
        ok = np.isfinite(to)
        q = np.quantile(tm[ok], [1 / 3, 2 / 3])
        tb = np.digitize(tm, q)
        for form, use in FORMS.items():
            a, b, c = _fit_form(vm, vs, vo, use)
            sd = np.sqrt(np.maximum(a * ts ** 2 + b + c * tm ** 2, 1e-30))
            err = np.abs(to - tm)
            nll = float(np.mean(0.5 * (np.log(2 * np.pi * sd[ok] ** 2) + err[ok] ** 2 / sd[ok] ** 2)))
            terc = " ".join(f"{_inside(err, sd, 2.0, ok & (tb == k)):.3f}" for k in range(3))
            tail = (f"NLL {nll:8.3f}  terciles {terc}" if nll < 1e3 else
                    f"NLL {'huge':>8s}  terciles {terc}  (days with zero spread: no a makes them likely)")
            out.append(f"  {v:15s} {form:26s} {_inside(err, sd, 1.6449, ok):.3f} / {_inside(err, sd, 2.0, ok):.3f}"
                       f"  {tail}")
    return out


if __name__ == "__main__":
    sys.exit(main())
