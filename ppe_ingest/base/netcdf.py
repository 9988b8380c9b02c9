"""Public netCDF helpers: one-line-error opens, the global netCDF lock, and the copy-and-modify
machinery every CTSM file writer shares.

A writer copies the input byte for byte to a temporary file beside the output, opens the copy
in place, overwrites only the named variables (in their own dtype), appends one line to the
global ``history`` attribute and renames it. Every other variable, dimension, dtype, fill value,
attribute and the file format are therefore kept exactly.
"""
from __future__ import annotations

import shutil
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Mapping

import netCDF4
import numpy as np

from .atomic import atomic_path
from .errors import UserError, shown, user_error_from_os

# netCDF-C and HDF5 are not thread-safe (concurrent opens crash in HDF5's free lists): every
# netCDF4-python call made from worker threads (dask ingest) holds this lock.
NC_LOCK = threading.RLock()


_MAGIC = (b"CDF\x01", b"CDF\x02", b"CDF\x05", b"\x89HDF\r\n\x1a\n")


def require_netcdf(path: str | Path, what: str = "", kind: str = "file") -> Path:
    """`path` if it is a netCDF file (classic, 64-bit offset, CDF5 or netCDF-4/HDF5), else one line
    naming the file and what it is instead. `what` (e.g. "--values") prefixes the message; `kind`
    (e.g. "grid file") says what the file was to be.

    Every command that opens an input with xarray or netCDF4 asks this first, so a text file, a
    folder or a missing file never reaches the libraries' multi-line messages.
    """
    path = Path(path)
    label = f"{what}: {path}" if what else str(path)
    if path.is_dir():
        raise UserError(f"{label}: is a folder, expected a netCDF {kind}")
    if not path.exists():
        raise UserError(f"{label}: {kind} not found")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            for offset in (512, 1024, 2048):  # HDF5 may start after a user block
                if head.startswith(_MAGIC):
                    break
                f.seek(offset)
                head = f.read(8)
    except OSError as e:
        raise user_error_from_os(e, what) from None
    if not head.startswith(_MAGIC):
        form = "an empty file" if path.stat().st_size == 0 else "a file of another format"
        raise UserError(f"{label}: not a netCDF {kind} ({form})")
    return path


def open_dataset(path: str | Path) -> netCDF4.Dataset:
    """Open a netCDF file read-only with raw values (no masking/scaling), one-line error if absent."""
    path = require_netcdf(path)
    try:
        ds = netCDF4.Dataset(path, "r")
    except OSError as e:
        raise UserError(f"{path}: not a readable netCDF file ({shown(str(e), quote=False)})") from None
    ds.set_auto_maskandscale(False)
    return ds


def open_xarray(path: str | Path, what: str = "", load: bool = False, **kwargs):
    """`xarray.open_dataset` (or `open_zarr` for a ``.zarr`` folder) with one-line errors naming the
    file: missing, not netCDF, or unreadable. `load` reads it all and closes the file."""
    import xarray as xr

    path = Path(path)
    label = f"{what}: {path}" if what else str(path)
    if path.suffix == ".zarr" and path.is_dir():
        try:
            return xr.open_zarr(path, **kwargs)
        except Exception as e:  # any failure of a foreign folder is the folder's
            raise UserError(f"{label}: not a readable zarr store ({type(e).__name__})") from None
    require_netcdf(path, what)
    try:
        ds = xr.open_dataset(path, **kwargs)
        if load:
            with ds:
                ds = ds.load()
    except OSError as e:
        raise user_error_from_os(e, what) if e.filename else UserError(
            f"{label}: not a readable netCDF file ({shown(str(e), quote=False)})") from None
    except (ValueError, KeyError, IndexError, TypeError) as e:  # decoding (times, CF attributes)
        first = (str(e).strip().splitlines() or [""])[0]
        raise UserError(f"{label}: cannot be decoded ({type(e).__name__}: "
                        f"{shown(first, quote=False)})") from None
    return ds


def history_line(what: str) -> str:
    """A history entry in the NCO style: timestamp, colon, what was done."""
    return f"{datetime.now(timezone.utc):%a %b %d %H:%M:%S %Y} UTC: esm-emu {what}"


def append_history(ds: netCDF4.Dataset, line: str) -> None:
    """Append `line` to the global history attribute (CF: newest entry last)."""
    old = ds.getncattr("history") if "history" in ds.ncattrs() else ""
    if not isinstance(old, str):
        old = str(old)
    ds.setncattr("history", f"{old}\n{line}" if old else line)


def cast_to(var: netCDF4.Variable, value: np.ndarray, name: str, path: Path) -> np.ndarray:
    """Cast `value` to the variable's dtype; refuse non-finite values and lossy integer casts."""
    value = np.asarray(value)
    if value.dtype.kind in "fc" and not np.all(np.isfinite(value)):
        raise UserError(f"{path}: variable {name}: non-finite value (NaN or inf) given")
    target = var.dtype
    if target.kind in "iu":
        if value.dtype.kind == "f" and not np.all(value == np.round(value)):
            raise UserError(f"{path}: variable {name}: is integer ({target}) but got non-integer values")
        info = np.iinfo(target)
        if value.size and (value.min() < info.min or value.max() > info.max):
            raise UserError(f"{path}: variable {name}: values out of range for {target}")
    return value.astype(target)


def copy_and_modify(src: str | Path, dst: str | Path, updates: Mapping[str, tuple],
                    history: str, inputs: Iterable[str | Path] = ()) -> Path:
    """Copy `src` to `dst` replacing `updates[name] = (index, value)` in place, atomically.

    `index` is a tuple usable on the netCDF variable (``()`` or ``Ellipsis`` for all);
    `value` is already cast to the variable's dtype. `dst` may never be `src` or any of `inputs`.
    """
    src, dst = Path(src), Path(dst)
    with atomic_path(dst, inputs=[src, *inputs]) as tmp:
        shutil.copyfile(src, tmp)
        ds = netCDF4.Dataset(tmp, "r+")
        try:
            ds.set_auto_maskandscale(False)
            for name, (index, value) in updates.items():
                var = ds.variables[name]
                if var.ndim == 0:
                    var.assignValue(np.asarray(value).reshape(()))
                else:
                    var[index] = value
            append_history(ds, history)
        finally:
            ds.close()
    return dst
