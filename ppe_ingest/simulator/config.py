"""The `simulate:` section of a config (e.g. configs/quickstart.yaml) for the built-in simulator."""
from __future__ import annotations

from ppe_ingest.base.config import Field, load_config, section_type

DEFAULT_PARAMS = ["fff", "FMAX", "hksat_sf", "baseflow_scalar", "n_baseflow", "d_max", "medlynslope",
                  "n_melt_coef"]
OBS_VARIABLES = ("QRUNOFF", "EFLX_LH_TOT", "SOILWATER_10CM")

TRUTH = {
    "n_gridcells": Field(int, None, min=1, max=100_000, nullable=True,
                         help="gridcells of the truth run (default: the PPE's gridcells)"),
    "seed": Field(int, None, min=0, max=2**32 - 1, nullable=True, help="seed of the truth maps (default: seed + 1)"),
    "params": Field(list, None, items=str, nullable=True,
                    help="parameters with spatial truth maps (default: the perturbed ones)"),
    "length_deg": Field(float, 6.0, gt=0, max=180, help="correlation length of the truth maps (degrees)"),
    "margin": Field(float, 0.0, min=0, max=0.45,
                    help="share of each range the truth maps keep inside its bounds (0: every value the PPE design, "
                         "the calibration's uniform prior, spans)"),
    "n_obs_sites": Field(int, 20, min=0, max=100_000,
                        help="gridcells that get observations, one site each (more than the gridcells is refused)"),
    "variables": Field(list, list(OBS_VARIABLES), items=str, choices=OBS_VARIABLES),
    "streamflow_log_sigma": Field(float, 0.1, min=0, max=2, help="log-normal streamflow noise"),
    "latent_heat_sigma": Field(float, 10.0, min=0, max=500, help="additive latent heat noise (W/m2)"),
    "soil_moisture_sigma": Field(float, 0.02, min=0, max=0.5, help="additive soil moisture noise (m3/m3)"),
    "gap_fraction": Field(float, 0.05, min=0, max=0.9, help="fraction of days missing"),
}

# Physics options of the built-in simulator (physics.PHYSICS_OPTIONS), all off (the quickstart twin).
PHYSICS = {"frozen_soil": Field(bool, False, help="CLM5 ice impedance of infiltration in frozen topsoil"),
           "aquifer": Field(bool, False, help="groundwater store below bedrock (CLM4.5 unconfined aquifer)"),
           "canopy_longwave": Field(bool, False, help="the canopy's longwave onto the snow below it (CTSM emv)")}

SCHEMA = {
    "case": Field(str, "esmemu_sim", help="case name in history file names"),
    "n_members": Field(int, 64, min=1, max=9999),
    "seed": Field(int, 0, min=0, max=2**32 - 1),
    "prefix": Field(str, "LHC", choices=("LHC", "OAAT", "SIM")),
    "params": Field(list, list(DEFAULT_PARAMS), items=str, help="table rows to perturb"),
    "table": Field(str, None, path=True, nullable=True,
                   help="parameter table CSV (default: the shipped params_hydrology.csv)"),
    "n_gridcells": Field(int, 200, min=1, max=100000),
    "grid": Field(str, "builtin", choices=("builtin", "camels", "sparsegrid")),
    "camels_attributes": Field(str, None, path=True, nullable=True,
                               help="folder of camels_*.txt tables (grid: camels)"),
    "sparsegrid": Field(str, None, path=True, nullable=True, help="whitkey.nc (grid: sparsegrid)"),
    "forcing": Field(str, "generator", choices=("generator", "camels")),
    "forcing_dir": Field(str, None, path=True, nullable=True,
                         help="CAMELS basin_mean_forcing/<source> folder (forcing: camels)"),
    "start_year": Field(int, 2000, min=1, max=9999),
    "n_years": Field(int, 5, min=1, max=200),
    "spinup_years": Field(int, 2, min=0, max=100),
    "years_per_file": Field(int, None, min=1, max=200, nullable=True, help="default: all years in one file"),
    "batch_memory_mb": Field(float, 768.0, min=16, max=1_000_000,
                             help="memory the members run together may take (MB); the batch is sized from "
                                  "gridcells x days x variables (ppe.batch_members), so a run's peak stays "
                                  "bounded whatever the member count"),
    "members_per_batch": Field(int, None, min=1, max=9999, nullable=True,
                               help="at most this many members run together (default: as many as "
                                    "batch_memory_mb allows)"),
    "compress": Field(bool, True, help="zlib-compress history files (NETCDF4_CLASSIC)"),
    "truth": Field(dict, None, schema=TRUTH, nullable=True, help="twin-experiment truth and observations"),
    "physics": Field(schema=PHYSICS, default={},
                     help="simulator physics options (physics.PHYSICS_OPTIONS); all off by default"),
    "basins": Field(list, None, items=str, nullable=True,
                    help="grid camels: these gauge ids (8 digits) instead of a random n_gridcells"),
}

SimulateConfig = section_type(SCHEMA, "SimulateConfig")


def load_simulate_config(path, sets=(), values=None, check_files=True) -> SimulateConfig:
    """The validated ``simulate:`` section of a YAML file with command-line overrides.

    More observation sites than gridcells (each site is one gridcell) is refused here, before any
    output exists; `truth.check_obs_sites` checks again against the gridcells the grid gives.
    """
    cfg = load_config(path, SCHEMA, "simulate", sets, values, check_files)
    truth = cfg["truth"]
    if truth is not None and truth["n_obs_sites"] > cfg["n_gridcells"]:
        from ppe_ingest.base.errors import UserError

        raise UserError(f"simulate.truth.n_obs_sites: {truth['n_obs_sites']} observation sites asked for, but the "
                        f"grid has {cfg['n_gridcells']} gridcells (simulate.n_gridcells) and each site is one "
                        f"gridcell; give at most {cfg['n_gridcells']}")
    return cfg
