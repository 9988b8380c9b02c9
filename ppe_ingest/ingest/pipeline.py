"""Ingest as a library: a validated ``ingest:`` section in, a catalog and a training store out.

`ingest_ppe` runs discover -> parameter check -> catalog -> store for a PPE folder;
`ingest_summary` builds the tabular store from the CLM5 PPE summary outputs. `esm-emu ingest` and
the run pipeline both call these.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ppe_ingest.base.errors import UserError

from .checks import Report
from .config import IngestConfig


@dataclass
class Ingested:
    """What an ingest wrote: the store, the catalog (or None), the skip report, the member count."""

    store: Path
    catalog: Path | None
    report: Report
    n_members: int


def _check_outputs(cfg: IngestConfig) -> None:
    """The store and catalog can be written where asked (before any member is read)."""
    from ppe_ingest.base.config import output_file

    output_file(cfg.out, "ingest.out")
    if cfg.catalog:
        output_file(cfg.catalog, "ingest.catalog")


def ingest_ppe(cfg: IngestConfig, progress: bool = True) -> Ingested:
    """Discover the PPE in ``cfg.ppe_dir``, check its parameters, write the catalog (optional) and
    the training store ``cfg.out``.

    History headers and members are read where ``cfg.workers`` / ``cfg.scheduler`` /
    ``cfg.scheduler_file`` say (`parallel.pool`: this process by default, or dask workers); this
    process checks the parameters and is the one writer of the store, so the store is the same.
    """
    from .parallel import pool

    if not cfg.ppe_dir:
        raise UserError("ingest.ppe_dir: give a PPE folder (PPE_DIR on the command line or ingest.ppe_dir)")
    if not cfg.out:
        raise UserError("ingest.out: give the output store (--out STORE or ingest.out)")
    _check_outputs(cfg)
    with pool(cfg.workers, cfg.scheduler, cfg.scheduler_file) as workers:
        return _ingest(cfg, progress, workers)


def _ingest(cfg: IngestConfig, progress: bool, workers) -> Ingested:
    import netCDF4

    from ..param_table import load_param_table
    from .catalog import write_catalog
    from .discover import discover
    from .theta import check_design, member_theta, ppe_table, read_design
    from .writer import write_store

    report = Report(cfg.skip_bad)
    ppe = discover(cfg.ppe_dir, variables=cfg.vars, report=report, pool=workers)
    if cfg.design:
        ppe.design = Path(cfg.design)
    if cfg.params:
        base = next(iter(ppe.paramfiles.values()), None)
        table = load_param_table(cfg.params, base_paramfile=base)
    else:
        table = ppe_table(ppe)  # PPE_DIR/params.csv when the PPE carries its own table
    theta = member_theta(ppe, table=table)
    if ppe.design is not None:
        check_design(theta[0], read_design(ppe.design), str(ppe.design), report, theta[2])
    catalog = None
    if cfg.catalog:
        good = [m for m in theta[0].index if m not in report.bad_members()]
        catalog = Path(write_catalog(ppe, cfg.catalog, theta[0].loc[good]))
    out = write_store(ppe, cfg.out, variables=cfg.vars, table=table, seed=cfg.seed, split=cfg.split,
                      log_vars=cfg.log_transform_vars, log_eps=cfg.log_eps,
                      chunk_gridcell=cfg.chunk_gridcell, chunk_time=cfg.chunk_time,
                      catalog=str(catalog) if catalog else None, progress=progress, theta=theta, pool=workers)
    with netCDF4.Dataset(out) as ds:
        n = len(ds.dimensions["member"])
    return Ingested(Path(out), catalog, report, n)


def ingest_summary(cfg: IngestConfig):
    """The (member, param) -> (member, output) store of the CLM5 PPE summary outputs ``cfg.summary``."""
    from ppe_ingest.base.netcdf import require_netcdf

    from .summary import build_summary_store

    if not (cfg.design and cfg.params):
        raise UserError("ingest.summary: needs --design (e.g. lhc220926.nc) and --params (e.g. lhc_220926.csv)")
    if not cfg.out:
        raise UserError("ingest.out: give the output store (--out STORE or ingest.out)")
    _check_outputs(cfg)
    require_netcdf(cfg.summary, "ingest.summary", "summary outputs file")
    if cfg.base_paramfile:
        require_netcdf(cfg.base_paramfile, "ingest.base_paramfile", "paramfile")
    return build_summary_store(cfg.summary, cfg.design, cfg.params, out=cfg.out, base_paramfile=cfg.base_paramfile,
                               report=Report(cfg.skip_bad))
