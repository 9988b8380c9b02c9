"""`esm-emu invert CONFIG`: infer parameters from observations through a frozen forward model."""
from __future__ import annotations

import argparse
from pathlib import Path


def _handler(args) -> int:
    from .config import load_inverse_config

    cfg = load_inverse_config(args.config, args.set, {"out": args.out, "seed": args.seed})
    from .pipeline import check_inputs, run_from_config  # torch only after the config and its files pass

    check_inputs(cfg)
    from ..distributed import active

    dist = active()  # under mpiexec -n N / torchrun: dPL's sites split over the ranks, rank 0 writes and reports
    with dist.guard():
        _, metrics = run_from_config(cfg, progress=not args.quiet and dist.is_root)
        dist.shutdown()
    if not dist.is_root:
        return 0
    out = Path(cfg.out)
    print(f"parameter map: {out / 'parameter_map.nc'}")
    print(f"metrics: {out / 'metrics.json'}")
    sk = metrics["skill_test_period"]
    for v in metrics["variables"]:
        print(f"{v} test-period median NSE: default {sk['default'][v]['nse_median']:.3f}, "
              f"inferred {sk['inferred'][v]['nse_median']:.3f}")
    ident = metrics.get("identifiability") or {}
    if ident:
        print("identifiability (" + ident.get("_criterion", "") + "):")
        for p, d in ident.items():
            if p.startswith("_"):
                continue
            partners = ", ".join(f"{q} r={d['posterior_correlation'][q]:+.2f}" for q in d["trades_off_with"])
            print(f"  {p:24s} {'identified' if d['identified'] else 'NOT identified':15s} posterior/prior "
                  f"variance {d['posterior_to_prior_variance']:.3f}"
                  + (f" + emulator {d['emulator_error_to_prior_variance']:.3f}"
                     if d.get('emulator_error_to_prior_variance') else "")
                  + (f"; trades off with {partners}" if partners else ""))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "invert", help="infer soil/hydrologic parameters from observations through the emulator",
        description="Infer spatially varying parameters theta(gridcell|site, param) from observations "
                    "(KGSSL embedding + dPL through the frozen emulator or the built-in simulator). "
                    "Writes parameter_map.nc, metrics.json and PNG plots in the output folder; "
                    "then `esm-emu write-ctsm --values OUT/parameter_map.nc` writes CTSM files.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("config", help="YAML file with an `inverse:` section (see `esm-emu config show inverse.yaml`)")
    p.add_argument("--out", help="output folder (overrides inverse.out)")
    p.add_argument("--seed", type=int, help="random seed (overrides inverse.seed)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the inverse: section, e.g. --set dpl.steps=100 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_handler)
