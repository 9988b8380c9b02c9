"""Schema of the ``inverse:`` YAML section (validated with ppe_ingest.base.config)."""
from __future__ import annotations

from pathlib import Path

from ppe_ingest.base.config import Field, load_config, section_type, validate
from ppe_ingest.simulator.config import PHYSICS as SIM_PHYSICS

PERIOD = {"start": Field((str, int), None, nullable=True, help="first day (YYYY-MM-DD or year)"),
          "end": Field((str, int), None, nullable=True, help="last day (YYYY-MM-DD or year)")}

KGSSL = {
    "embedding": Field(int, 16, min=2, max=1024, help="embedding size"),
    "hidden": Field(int, 32, min=2, max=4096, help="LSTM hidden size"),
    "window_days": Field(int, 365, min=30, max=3660, help="window length (one year)"),
    "pool_days": Field(int, 5, min=1, max=366, help="days averaged per encoder step"),
    "temperature": Field(float, 0.1, gt=0, help="NT-Xent temperature"),
    "w_recon": Field(float, 1.0, min=0, help="weight of the response reconstruction loss"),
    "w_forcing": Field(float, 0.1, min=0, help="weight of the forcing (climate) reconstruction loss"),
    "w_contrast": Field(float, 0.5, min=0, help="weight of the contrastive loss"),
    "w_inverse": Field(float, 1.0, min=0, help="weight of the pseudo-inverse loss"),
    "steps": Field(int, 300, min=1, max=1_000_000), "batch": Field(int, 64, min=4, max=65_536),
    "lr": Field(float, 3e-3, gt=0),
    "min_obs_fraction": Field(float, 0.5, min=0, max=1),
    "ppe_samples": Field(int, 4, min=1, max=1000, help="forward-model PPE samples per entity for pretraining"),
    "noise": Field(float, 0.02, min=0, help="noise added to PPE responses, fraction of their std"),
}

DPL = {
    "hidden": Field(int, 64, min=2, max=4096), "dropout": Field(float, 0.1, min=0, max=0.9),
    "steps": Field(int, 300, min=1, max=1_000_000), "lr": Field(float, 1e-2, gt=0),
    "weight_decay": Field(float, 1e-4, min=0),
    "batch": Field(int, 0, min=0, max=1_000_000, help="observed sites per step (0: all)"),
    "loss": Field(str, "nse", choices=("nse", "rmse")),
    "warmup_days": Field(int, 180, min=0, max=3660, help="days not scored while the model spins up"),
    "z_dropout": Field(float, 0.5, min=0, max=1, help="g_z: share of steps a site's embedding is hidden"),
}

UNCERTAINTY = {
    "ensemble": Field(int, 3, min=1, max=100, help="inverse models trained with different seeds"),
    "mc_samples": Field(int, 20, min=0, max=10_000, help="MC-dropout draws per member (0: off)"),
    "level": Field(float, 0.9, gt=0, max=0.999, help="interval level for coverage"),
    "holdout": Field(float, 0.2, min=0, max=0.5,
                     help="share of observed sites each ensemble member leaves out (regionalisation error)"),
}

IDENTIFIABILITY = {
    "max_variance_ratio": Field(float, 0.1, gt=0, max=1,
                                help="identified: median posterior/prior variance at observed sites at most this"),
}

TRUST = {
    "design_weight": Field(float, 1.0, min=0, help="penalty on parameter sets far from every PPE member"),
    "spread_weight": Field(float, 1.0, min=0, help="penalty on emulator-ensemble disagreement (when it has one)"),
    "quantile": Field(float, 0.9, gt=0, max=1, help="distance quantile of the design's box that is still trusted"),
}

ROUTING = {"QRUNOFF": Field(str, "none", choices=("gamma", "none"),
                            help="streamflow: gamma unit hydrograph from runoff to the gauge (esm_emu.routing)")}

PER_SITE = {
    "steps": Field(int, 300, min=1, max=1_000_000, help="gradient steps of the per-site calibration"),
    "lr": Field(float, 0.05, gt=0, help="Adam step on the parameters' logits"),
    "prior_sd": Field(float, 2.0, gt=0, help="sd (logit units) of the prior around the table default"),
    "block_days": Field(int, 30, min=1, max=3660, help="block length of the bootstrap of calibration days"),
    "screen": Field(int, 256, min=0, max=1_000_000,
                    help="Latin-hypercube candidates per site run first; members start from the best (0: default)"),
}

WAVES = {
    "count": Field(int, 0, min=0, max=20, help="run pipeline: PPE waves after the first inversion (0: none)"),
    "members": Field(int, 16, min=1, max=100_000, help="members per wave, drawn from the posterior region"),
    "train_steps": Field(int, 150, min=1, max=10_000_000, help="fine-tuning steps of the emulator per wave"),
    "dpl_steps": Field(int, 50, min=0, max=1_000_000,
                       help="dPL steps per wave, started from the previous wave's networks (0: a cold start "
                            "with inverse.dpl.steps and a new KGSSL embedding)"),
    "ablation": Field(bool, False, help="also run the ablation in each wave's inversion"),
}

SCHEMA = {
    "forward": Field(schema={
        "kind": Field(str, "emulator", choices=("emulator", "simulator")),
        "checkpoint": Field(str, None, nullable=True, path=True, help="emulator checkpoint (.pt) or run folder"),
        "physics": Field(schema=SIM_PHYSICS, default={}, help="simulator physics options (forward.kind simulator)"),
    }, default={}),
    "param_table": Field(str, None, nullable=True, path=True,
                         help="parameter table CSV (default: the shipped params_hydrology.csv)"),
    "params": Field(list, None, items=str, nullable=True,
                    help="parameters to infer (default: all the forward model takes)"),
    "variables": Field(list, ["QRUNOFF"], items=str, help="observed responses in the loss"),
    "entities": Field(str, None, nullable=True, path=True,
                      help="netCDF with (gridcell|site, time) forcing and static fields"),
    "store": Field(str, None, nullable=True, path=True, help="training store: forcing and static fields from it"),
    "observations": Field(list, [], items=str, path=True, help="observation netCDF files (observation schema)"),
    "truth": Field(str, None, nullable=True, path=True, help="true parameter map (twin experiment)"),
    "train_period": Field(schema=PERIOD, default=None, nullable=True),
    "test_period": Field(schema=PERIOD, default=None, nullable=True),
    "max_site_distance_deg": Field(float, 2.0, gt=0,
                                   help="observation sites farther than this (great-circle degrees) from every "
                                   "gridcell are refused"),
    "shared_gridcells": Field(bool, False,
                              help="allow several observation sites on one gridcell (their daily values averaged)"),
    "scale": Field(str, "linear", choices=("linear", "log"),
                   help="the scale each parameter's uniform prior and search space is on: linear, as PPE designs "
                   "sample (min + s (max - min)), so the calibration's prior is the PPE's; log: positive ranges "
                   "spanning >= 20x log-uniform, for a PPE sampled so"),
    "method": Field(str, "auto", choices=("auto", "g_z", "g_A", "kgssl", "per_site"),
                    help="auto: per_site below inverse.per_site.PER_SITE_MAX_SITES (20) observed sites, else g_z"),
    "routing": Field(schema=ROUTING, default={},
                     help="per observation source: gamma (a learnable unit hydrograph to the gauge) or none"),
    "per_site": Field(schema=PER_SITE, default={}),
    "ablation": Field(bool, False, help="also run g_A and KGSSL alone and report their recovery"),
    "clusters": Field(int, 0, min=0, max=1000,
                      help="k-means clusters of inferred parameters (one paramfile each); 0: none"),
    "seed": Field(int, 0, min=0, max=2**32 - 1),
    "out": Field(str, "inverse_out", output_path=True),
    "kgssl": Field(schema=KGSSL, default={}),
    "dpl": Field(schema=DPL, default={}),
    "uncertainty": Field(schema=UNCERTAINTY, default={}),
    "identifiability": Field(schema=IDENTIFIABILITY, default={}),
    "trust": Field(schema=TRUST, default={}),
    "waves": Field(schema=WAVES, default={}),
}


InverseConfig = section_type(SCHEMA, "InverseConfig")


def period_keys(period, key: str) -> tuple[int | None, int | None]:
    """(start, end) of a period {start, end} as YYYYMMDD integers (bare years: Jan 1 / Dec 31).

    A date that does not parse, or an end before the start, is a UserError naming `key`
    (``inverse.train_period``, ``inverse.test_period``).
    """
    from ppe_ingest.base.errors import UserError

    if period is None:
        return None, None
    get = period.get if hasattr(period, "get") else dict(zip(("start", "end"), period)).get
    out = []
    for which in ("start", "end"):
        v = get(which)
        if v is None:
            out.append(None)
            continue
        text = str(v).strip()
        if text.isdigit() and len(text) <= 4:
            out.append(int(text) * 10000 + (1231 if which == "end" else 101))
            continue
        try:
            import pandas as pd

            t = pd.Timestamp(text)
        except (ValueError, TypeError, OverflowError):
            raise UserError(f"{key}.{which}: {text[:40]!r} is not a date (YYYY-MM-DD) or a year") from None
        if t is pd.NaT:
            raise UserError(f"{key}.{which}: {text[:40]!r} is not a date (YYYY-MM-DD) or a year")
        out.append(t.year * 10000 + t.month * 100 + t.day)
    start, end = out
    if start is not None and end is not None and end < start:
        raise UserError(f"{key}: ends ({get('end')}) before it starts ({get('start')})")
    return start, end


def _check_periods(cfg: InverseConfig) -> InverseConfig:
    for key in ("train_period", "test_period"):
        period_keys(cfg[key], f"inverse.{key}")
    return cfg


def load_inverse_config(path: str | Path, sets=(), values=None, check_files=True) -> InverseConfig:
    """The validated ``inverse:`` section of a YAML file with command-line overrides."""
    return _check_periods(load_config(path, SCHEMA, "inverse", sets, values, check_files))


def inverse_config(data: dict | None = None, source: str = "inverse") -> InverseConfig:
    """Validate an ``inverse:`` mapping given in code (defaults filled in)."""
    return _check_periods(validate(data or {}, SCHEMA, source=source, _prefix="inverse."))
