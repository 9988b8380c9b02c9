"""`esm-emu regrid weights|apply|dlnd`: build ESMF weight files, apply them, feed DLND."""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("regrid", help="regrid between component grids (ESMF weight files)",
                              description="Build regridding weights between grid files (SCRIP, ESMF mesh, UGRID, "
                              "CTSM domain) in ESMF's weight-file format, apply them to netCDF fields, or write "
                              "emulator runoff as DLND coupler history.")
    sub = p.add_subparsers(dest="regrid_command", metavar="ACTION")

    w = sub.add_parser("weights", help="build weights from two grid files")
    w.add_argument("--src", required=True, help="source grid file")
    w.add_argument("--dst", required=True, help="destination grid file")
    w.add_argument("--method", default="conserve",
                   choices=["conserve", "bilinear", "nearest", "nearest_s2d", "nearest_d2s"])
    w.add_argument("--norm", default="fracarea", choices=["fracarea", "destarea"],
                   help="conservative normalisation (ESMF's)")
    w.add_argument("--backend", default="native", choices=["native", "esmpy"],
                   help="native (default) or ESMPy when installed")
    w.add_argument("--ignore-mask", action="store_true", help="treat every cell as active")
    w.add_argument("--out", required=True, help="output weight file")
    w.set_defaults(func=_weights)

    a = sub.add_parser("apply", help="apply a weight file to the fields of a netCDF file")
    a.add_argument("--weights", required=True, help="ESMF weight file (ours or ESMF's, e.g. a CESM map_*.nc)")
    a.add_argument("input", help="input netCDF file on the source grid")
    a.add_argument("output", help="output netCDF file on the destination grid")
    a.add_argument("--vars", nargs="+", help="variables to regrid (default: every variable on the source grid)")
    a.add_argument("--skipna", action="store_true", help="leave out missing source values and renormalise")
    a.set_defaults(func=_apply)

    d = sub.add_parser("dlnd", help="write runoff as lnd2rof coupler history for DLND and print the case settings")
    d.add_argument("runoff", help="netCDF with QOVER/QDRAI (mm/s) on the land grid")
    d.add_argument("--grid", required=True, help="land grid file (SCRIP, ESMF mesh, domain)")
    d.add_argument("--case", required=True, help="DLND_CPLHIST_CASE name used in the file names")
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--stream", default="rof_forcing", help="DLND stream name in the case's dlnd.streams.xml")
    d.set_defaults(func=_dlnd)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _weights(args) -> int:
    from ppe_ingest.base.config import output_file
    from ppe_ingest.base.netcdf import require_netcdf
    from ppe_ingest.base.progress import progress

    from .grids import read_grid
    from .regridder import build_weights
    from .weights import write_weights

    require_netcdf(args.src, "--src", "grid file")
    require_netcdf(args.dst, "--dst", "grid file")
    output_file(args.out)
    src = read_grid(args.src, use_mask=not args.ignore_mask)
    dst = read_grid(args.dst, use_mask=not args.ignore_mask)
    with progress(desc="cell pairs", unit="pair") as bar:
        w = build_weights(src, dst, args.method, args.norm, args.backend, progress=bar.update)
    path = write_weights(w, args.out, inputs=[args.src, args.dst])
    print(f"{path}: {w.n_s} weights, {w.n_a} -> {w.n_b} cells ({w.method}, {w.normalization})")
    return 0


def _apply(args) -> int:
    import xarray as xr

    from ppe_ingest.base.atomic import atomic_path
    from ppe_ingest.base.config import output_file
    from ppe_ingest.base.errors import UserError
    from ppe_ingest.base.netcdf import open_xarray, require_netcdf

    from .regridder import Regridder

    require_netcdf(args.weights, "--weights", "weight file")
    require_netcdf(args.input)
    output_file(args.output, "OUTPUT")
    rg = Regridder(None, None, weights=args.weights, skipna=args.skipna)
    with open_xarray(args.input) as ds:
        rg.check_coordinates(ds, args.input)  # the input must be on the weights' source grid
        if args.vars:
            missing = [v for v in args.vars if v not in ds]
            if missing:
                raise UserError(f"{args.input}: variable '{missing[0]}' not found")
            ds = ds[args.vars]
        todo = [v for v in ds.data_vars if rg._find_dims(ds[v])]
        if not todo:
            raise UserError(f"{args.input}: no variable has horizontal dims matching the weights' "
                            f"{rg.weights.n_a} source cells")
        out = xr.Dataset({v: rg(ds[v]) for v in todo}, attrs=dict(ds.attrs))
        out.attrs["history"] = (str(ds.attrs.get("history", ""))
                                + f"\nesm-emu regrid apply --weights {args.weights}").strip()
        with atomic_path(args.output, inputs=[args.input, args.weights]) as tmp:
            out.to_netcdf(tmp)
    print(f"{args.output}: {', '.join(todo)} regridded ({rg.method}) to {rg.weights.n_b} cells")
    return 0


def _dlnd(args) -> int:
    import xarray as xr

    from ppe_ingest.base.config import output_folder
    from ppe_ingest.base.netcdf import open_xarray, require_netcdf

    from .dlnd import case_settings, write_lnd2rof
    from .grids import read_grid, write_esmf_mesh

    require_netcdf(args.grid, "--grid", "grid file")
    require_netcdf(args.runoff)
    output_folder(args.out, create=False)
    grid = read_grid(args.grid)
    with open_xarray(args.runoff, decode_times=xr.coders.CFDatetimeCoder(use_cftime=True)) as ds:
        files = write_lnd2rof(ds, grid, args.out, args.case)
    from pathlib import Path

    mesh = write_esmf_mesh(grid, Path(args.out) / f"{args.case}_lnd_ESMFmesh.nc", inputs=[args.grid])
    for f in files:
        print(f)
    print(case_settings(files, args.case, mesh, args.stream))
    return 0
