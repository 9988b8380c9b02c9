"""The next PPE wave from a calibration: members drawn from the posterior region of a parameter map.

`propose_wave` reads ``parameter_map.nc`` (theta, its interval theta_lower/theta_upper, or
theta +- z theta_std where a map has no interval) and draws N parameter sets: a Latin hypercube
over (which gridcell, where inside its interval in each parameter), so the wave spans the region
the calibration landed in, including the whole interval an unidentified parameter still has. Each
member is written in the PPE layout through the member writer history matching uses
(`esm_emu.history_match.write_wave` -> `ppe_ingest.design.write_member_files`): paramfiles/,
namelist_mods/, design.nc/.csv, params.csv and paramfile_default.nc, and a RUN_WAVE.md note on
running them as CTSM cases. `esm-emu ingest WAVE --append-to STORE` then adds the wave to the
training store and `esm-emu train` fine-tunes on it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ppe_ingest.base.atomic import atomic_path
from ppe_ingest.base.errors import UserError

Z90 = 1.6448536269514722

NOTE = """# Running wave {prefix} as CTSM cases

{n} members drawn by `esm-emu propose` from the posterior region of {pmap}
(seed {seed}; parameters {params}).

Each member `<member>` has
- `paramfiles/<member>.nc`: the CTSM parameter file for the case (`paramfile = ...` in user_nl_clm);
- `namelist_mods/<member>.txt`: lines to append to the case's `user_nl_clm`;
- its row in `design.csv` (parameters located in the surface dataset are set only there: write
  them into a copy of the case's fsurdat with `esm-emu write-ctsm`).

One case per member, e.g. with CIME (CTSM's `tools/site_and_regional` or a clone per member):

    ./create_clone --case wave_<member> --clone BASE_CASE
    cd wave_<member>
    echo "paramfile = '$WAVE/paramfiles/<member>.nc'" >> user_nl_clm
    cat $WAVE/namelist_mods/<member>.txt >> user_nl_clm
    ./case.setup && ./case.build && ./case.submit

Keep the history output of the PPE (same tapes, variables and years as the first wave), with the
member name at the end of the case name (`<case>_<member>.clm2.h1.*.nc`) and the history files in
`hist/` of this folder. Then

    esm-emu ingest {out} --append-to STORE      # adds these members to the training store
    esm-emu train CONFIG --set train.init_from=RUN_DIR/best.pt   # fine-tunes the emulator on it
"""


def _unit(x, lo, hi, log):
    return np.where(log, np.log(np.maximum(x, 1e-300) / lo) / np.log(hi / lo), (x - lo) / (hi - lo))


def _from_unit(u, lo, hi, log):
    return np.where(log, lo * np.exp(u * np.log(hi / lo)), lo + (hi - lo) * u)


def posterior_region(pmap) -> dict:
    """Per parameter: bounds and each entity's interval, from a parameter map (checked)."""
    for v in ("param_min", "param_max"):
        if v not in pmap.data_vars:
            raise UserError(f"parameter map: variable {v} is missing (write it with esm-emu invert)")
    dim = "gridcell" if "gridcell" in pmap.dims else "site"
    params = [str(p) for p in pmap["param"].values]
    lo, hi = pmap["param_min"].values.astype(float), pmap["param_max"].values.astype(float)
    th = pmap["theta"].transpose(dim, "param").values.astype(float)
    if "theta_lower" in pmap.data_vars and "theta_upper" in pmap.data_vars:
        lower = pmap["theta_lower"].transpose(dim, "param").values.astype(float)
        upper = pmap["theta_upper"].transpose(dim, "param").values.astype(float)
    else:
        sd = pmap["theta_std"].transpose(dim, "param").values.astype(float)
        lower, upper = th - Z90 * sd, th + Z90 * sd
    ok = np.isfinite(th).all(1) & np.isfinite(lower).all(1) & np.isfinite(upper).all(1)
    if not ok.any():
        raise UserError("parameter map: no entity has finite theta and interval")
    lower, upper = np.clip(lower[ok], lo, hi), np.clip(upper[ok], lo, hi)
    return {"params": params, "lo": lo, "hi": hi, "lower": np.minimum(lower, upper),
            "upper": np.maximum(lower, upper), "log": (lo > 0) & (hi / np.where(lo > 0, lo, 1) >= 20)}


def draw(region: dict, n: int, seed: int = 0) -> np.ndarray:
    """(n, P) parameter sets: a Latin hypercube over (entity, position inside its interval per parameter)."""
    from ppe_ingest.design import latin_hypercube

    P = len(region["params"])
    s = latin_hypercube(n, P + 1, seed)
    ent = np.minimum((s[:, 0] * len(region["lower"])).astype(int), len(region["lower"]) - 1)
    lo, hi, log = region["lo"], region["hi"], region["log"]
    a = _unit(region["lower"][ent], lo, hi, log)
    b = _unit(region["upper"][ent], lo, hi, log)
    return _from_unit(a + (b - a) * s[:, 1:], lo, hi, log)


def propose_wave(parameter_map, n: int, out, table=None, base_paramfile=None, prefix: str = "WAVE",
                 seed: int = 0, progress: bool = False) -> dict:
    """Write the next wave of ``n`` members into ``out``; return a summary (members, files, design)."""
    from ppe_ingest.base.config import output_folder
    from ppe_ingest.param_table import default_table_path

    from .history_match import write_wave
    from .inverse.param_map import read_param_map

    if n < 1 or n > 100_000:
        raise UserError(f"--n: {n} members is not in 1..100000")
    if not prefix or not prefix.isalpha() or len(prefix) > 16:
        raise UserError(f"--prefix: {prefix[:40]!r} must be 1 to 16 letters (members are PREFIX0001 ...)")
    if base_paramfile is None:
        raise UserError("--base-paramfile: give the PPE's default paramfile (copied into each member's)")
    from ppe_ingest.base.netcdf import require_netcdf

    require_netcdf(base_paramfile, "--base-paramfile")
    pmap = read_param_map(parameter_map)
    region = posterior_region(pmap)
    out = Path(out)
    output_folder(out, create=False)  # made by the member writer once the inputs have passed
    theta = draw(region, n, seed)
    res = write_wave(np.zeros_like(theta), region["params"], out, table or default_table_path(), base_paramfile,
                     prefix, seed, progress=progress, theta=theta)
    note = out / "RUN_WAVE.md"
    with atomic_path(note) as tmp:
        tmp.write_text(NOTE.format(prefix=prefix, n=n, pmap=parameter_map, seed=seed, out=out,
                                   params=", ".join(region["params"])))
    res.update(note=str(note), params=region["params"], theta=theta)
    return res
