"""Schema of the ``ingest:`` section of a YAML config (command-line flags override its keys)."""
from __future__ import annotations

from ppe_ingest.base.config import Field, load_config, section_type

SPLIT_SCHEMA = {
    "val_members": Field(float, 0.1, min=0, help="fraction (or count if >= 1) of members for validation"),
    "test_members": Field(float, 0.1, min=0, help="fraction (or count if >= 1) of members held out"),
    "val_gridcells": Field(float, 0.1, min=0),
    "test_gridcells": Field(float, 0.1, min=0),
    "test_years": Field(int, 1, min=0, max=200, help="number of held-out years (never the first, warm-up year)"),
}

INGEST_SCHEMA = {
    "ppe_dir": Field(str, None, nullable=True, path=True,
                     help="PPE folder (paramfiles/, namelist_mods/, history files); PPE_DIR on the command line"),
    "out": Field(str, None, nullable=True, output_path=True, help="output training store (.nc); --out"),
    "catalog": Field(str, None, nullable=True, output_path=True,
                     help="also write an intake-esm catalog (JSON + CSV beside it); --catalog"),
    "design": Field(str, None, nullable=True, path=True,
                    help="member x parameter design to check against (default: PPE_DIR/design.csv)"),
    "vars": Field(list, None, items=str, nullable=True,
                  help="history variables (default: every CTSM forcing/response found)"),
    "seed": Field(int, 0, min=0, max=2**32 - 1, help="seed of the member/gridcell/year split"),
    "split": Field(dict, {}, schema=SPLIT_SCHEMA),
    "log_transform_vars": Field(list, ["QRUNOFF", "QOVER", "QDRAI"], items=str),
    "log_eps": Field(float, 1e-8, gt=0, help="log(max(x, 0) + log_eps), mm/s for runoff"),
    "chunk_gridcell": Field(int, 64, min=1, max=1_000_000),
    "chunk_time": Field(int, 365, min=1, max=36_600),
    "skip_bad": Field(bool, False),
    "workers": Field(int, None, nullable=True, min=1, max=4096,
                     help="read and check members on a dask LocalCluster of this many worker processes "
                          "(default: in this process); --workers"),
    "scheduler": Field(str, None, nullable=True,
                       help="address of a running dask scheduler to use instead (e.g. tcp://node01:8786); --scheduler"),
    "scheduler_file": Field(str, None, nullable=True, path=True,
                            help="scheduler file of a running dask cluster (dask-mpi, dask scheduler "
                                 "--scheduler-file); --scheduler-file"),
    "params": Field(str, None, nullable=True, path=True, help="parameter table (bounds, locations)"),
    "summary": Field(str, None, nullable=True, path=True,
                     help="summary-PPE outputs (var x ens) instead of a PPE folder: the tabular store"),
    "base_paramfile": Field(str, None, nullable=True, path=True,
                            help="paramfile holding defaults for XXpercent bounds (summary mode)"),
}

IngestConfig = section_type(INGEST_SCHEMA, "IngestConfig")


def load_ingest_config(path, sets=(), values=None, check_files=True) -> IngestConfig:
    """The validated ``ingest:`` section of a YAML file (path None: the defaults) with overrides."""
    return load_config(path, INGEST_SCHEMA, "ingest", sets, values, check_files)
