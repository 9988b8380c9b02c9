"""Emulator throughput through Fortran (FTorch) against Python, on the same model and inputs.

    python bench/ftorch.py [--gridcells 200 2000] [--days 365] [--repeats 3] [--threads 1]

The model is the quickstart's LSTM shape (hidden 64, embed 32; untrained weights: throughput does
not depend on them), exported with `esm-emu export --ftorch`. Each run steps a year in calendar
months with the state carried and reports gridcell-days per second of the emulator calls:

- Python eager: `esm_emu.emulator.Emulator(..., return_state=True)`, as coupler/component.py steps it;
- Python TorchScript: the exported emulator.pt through `torch.jit.load` (the file Fortran loads);
- Fortran: coupler/fortran's driver (esm_emu_land_run through FTorch) as it times its calls: after
  the first interval (steady state, what Python's best-of-N measures), over all intervals (the
  first call carries TorchScript's warm-up in each new process), and its whole process (load,
  netCDF in and out) by wall clock.

Best of --repeats. Builds FTorch and the driver first (coupler/fortran/build.sh, cached).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._record import record


def make_checkpoint(path: Path) -> None:
    import torch

    from esm_emu.emulator import Emulator
    from esm_emu.normalize import Normalizer
    from ppe_ingest.ctsmio.vocabulary import FORCING

    torch.manual_seed(0)
    cfg = {"name": "lstm", "hidden": 64, "embed": 32, "layers": 1, "dropout": 0.0, "ea_gate": False}
    emu = Emulator.build(cfg, Normalizer.empty(8, 2, 2, 3), list(FORCING), ["PCT_SAND", "FMAX"],
                         ["baseflow_scalar", "medlynslope"], ["QRUNOFF", "EFLX_LH_TOT", "SOILWATER_10CM"])
    with torch.no_grad():  # forcing scales so the normalised inputs are O(1)
        emu.norm.forcing.mean.copy_(torch.tensor([3e-5, 3e-6, 283.0, 180.0, 300.0, 0.006, 95000.0, 3.0]))
        emu.norm.forcing.std.copy_(torch.tensor([5e-5, 1e-5, 12.0, 100.0, 30.0, 0.003, 500.0, 1.0]))
    torch.save({"emulator": emu.payload()}, path)


def inputs(G: int, T: int):
    import torch

    g = torch.Generator().manual_seed(1)
    scale = torch.tensor([1e-4, 1e-5, 30, 300, 350, 0.01, 1e4, 5])
    offset = torch.tensor([0, 0, 265, 20, 220, 0.002, 9e4, 0.5])
    forcing = torch.rand(G, T, 8, generator=g) * scale + offset
    static = torch.rand(G, 2, generator=g) * torch.tensor([70.0, 0.4]) + torch.tensor([10.0, 0.1])
    theta = torch.rand(G, 2, generator=g) * torch.tensor([1.8, 6.0]) + torch.tensor([0.2, 2.0])
    return forcing, static, theta


def time_python(step, forcing, static, theta, state0, months, repeats):
    import torch

    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            state, d0 = state0, 0
            for n in months:
                _, state = step(forcing[:, d0:d0 + n], static, theta, state)
                d0 += n
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gridcells", type=int, nargs="+", default=[200, 2000])
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    from esm_emu.emulator import load_emulator
    from esm_emu.export_ftorch import export_ftorch, monthly_intervals, read_manifest, write_driver_input

    r = subprocess.run([str(ROOT / "coupler/fortran/build.sh"), "--install"], capture_output=True, text=True,
                       env=dict(os.environ, PYTHON=sys.executable))
    if r.returncode != 0:
        sys.exit(f"bench/ftorch.py: the Fortran build failed: {r.stderr.strip()}")
    driver = r.stdout.strip().splitlines()[-1]
    lines = [f"model: LSTM hidden 64, embed 32 (the quickstart's shape); a year of {args.days} days in calendar "
             f"months with the state carried; float32; {args.threads} thread(s); best of {args.repeats}",
             "gridcell-days/s of the emulator calls; Fortran as the driver times esm_emu_land_run: 'steady' after "
             "the first interval, 'all' with the first call's TorchScript warm-up, 'whole' the process incl. load "
             "and netCDF I/O by wall clock",
             f"{'gridcells':>9}  {'Python eager':>12}  {'Python TorchScript':>18}  {'Fortran steady':>14}  "
             f"{'Fortran all':>11}  {'Fortran whole':>13}"]
    months = monthly_intervals(args.days)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_checkpoint(tmp / "emu.pt")
        export_ftorch(tmp / "emu.pt", tmp / "export")
        man = read_manifest(tmp / "export")
        emu = load_emulator(tmp / "emu.pt")
        scripted = torch.jit.load(str(tmp / "export" / "emulator.pt"))
        for G in args.gridcells:
            forcing, static, theta = inputs(G, args.days)
            gd = G * args.days
            t_eager = time_python(lambda f, s, th, st: emu(f, s, th, state=st, return_state=True),
                                  forcing, static, theta, None, months, args.repeats)
            t_ts = time_python(scripted, forcing, static, theta, torch.zeros(G, man["state_size"]), months,
                               args.repeats)
            src = write_driver_input(tmp / f"in{G}.nc", man, forcing.numpy(), static.numpy(), theta.numpy())
            t_f, t_steady, t_whole = float("inf"), float("inf"), float("inf")
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                res = subprocess.run([driver, str(tmp / "export" / "manifest.txt"), str(src), str(tmp / "out.nc")],
                                     capture_output=True, text=True, env=dict(os.environ))
                t_whole = min(t_whole, time.perf_counter() - t0)
                if res.returncode != 0:
                    sys.exit(f"bench/ftorch.py: the driver failed: {res.stderr.strip()}")
                m = re.search(r"emulator\s+(\S+) s .*first interval\s+(\S+) s for (\d+) days", res.stdout)
                total, first, first_days = float(m.group(1)), float(m.group(2)), int(m.group(3))
                t_f = min(t_f, total)
                t_steady = min(t_steady, (total - first) / (G * (args.days - first_days)))
            lines.append(f"{G:>9}  {gd / t_eager:>12.3g}  {gd / t_ts:>18.3g}  {1 / t_steady:>14.3g}  "
                         f"{gd / t_f:>11.3g}  {gd / t_whole:>13.3g}")
    lines.append("measured while other jobs share the 2 cores: figures are noisy; compare columns within one row")
    record("Emulator throughput: Fortran through FTorch vs Python (issue 17)", lines)


if __name__ == "__main__":
    main()
