"""Find what a PPE folder holds: members, history tapes h0..h4, their time ranges and grid layout.

Members come from ``paramfiles/<member>.nc``, ``namelist_mods/<member>.txt`` and history names
``<case>_<member>.clm2.h<N>.<YYYY-MM-DD-SSSSS>.nc`` (the CLM5 PPE layout, ``LHC0001``,
``OAAT0001``, ``PHSens001``...). Only headers and the time axis are read here; every file that
cannot be opened, or that disagrees with the other members (missing file, missing variable,
other gridcells, other units, duplicate), becomes a Problem in the Report.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import netCDF4
import numpy as np

from ppe_ingest.base.errors import UserError
from ppe_ingest.base.netcdf import NC_LOCK
from ppe_ingest.ctsmio.vocabulary import FORCING, RESPONSES

from .checks import CTSM_UNITS, Report, units_ok

# HDF5 and netCDF-C are not thread-safe: every netCDF4 call in the ingest holds this lock.

HIST_RE = re.compile(r"^(?P<stem>.+)\.clm2\.h(?P<tape>[0-9])\.(?P<date>\d{4}-\d{2}(?:-\d{2}(?:-\d{5})?)?)\.nc$")
MEMBER_TAIL = re.compile(r"_(?P<member>[A-Za-z][A-Za-z0-9]*\d+)$")
TIME_BOOKKEEPING = {"time", "time_bounds", "time_bnds", "mcdate", "mcsec", "mdcur", "mscur", "nstep",
                    "date_written", "time_written"}
SPATIAL_DIMS = {"1d": ("gridcell",), "latlon": ("lat", "lon"), "lndgrid": ("lndgrid",)}
FREQ_NAMES = {"day_1": "day", "month_1": "mon", "year_1": "year", "hour_1": "1hr", "hour_3": "3hr",
              "hour_6": "6hr"}


@dataclass
class HistFile:
    """Header facts of one history file."""

    path: Path
    case: str
    member: str
    tape: str  # "h0".."h4"
    layout: str  # "1d" (gridcell), "latlon" or "lndgrid"
    frequency: str  # "day", "mon", "year", ...
    time_units: str
    calendar: str
    times: np.ndarray  # raw time values (time_units, calendar)
    variables: dict[str, str]  # (time, space) variable -> units
    lat: np.ndarray  # one per gridcell, in the file's gridcell order
    lon: np.ndarray
    # variables over time and space in another dim order or shape: name -> dims (reported, not read)
    misshapen: dict[str, tuple] = field(default_factory=dict)

    @property
    def start(self):
        return netCDF4.num2date(self.times[0], self.time_units, self.calendar)

    @property
    def end(self):
        return netCDF4.num2date(self.times[-1], self.time_units, self.calendar)

    @property
    def time_range(self) -> str:
        return f"{self.start.strftime('%Y%m%d')}-{self.end.strftime('%Y%m%d')}"


@dataclass
class Ppe:
    """A discovered PPE: members and their files."""

    root: Path
    members: list[str]
    paramfiles: dict[str, Path]
    namelist_mods: dict[str, Path]
    hist: list[HistFile]
    report: Report
    design: Path | None = None
    surfdata: Path | None = None
    skipped_members: set[str] = field(default_factory=set)

    def files(self, member: str, tape: str | None = None) -> list[HistFile]:
        """A member's history files in time order (one tape, or all)."""
        hs = [h for h in self.hist if h.member == member and (tape is None or h.tape == tape)]
        return sorted(hs, key=lambda h: (h.tape, float(h.times[0])))

    @property
    def tapes(self) -> list[str]:
        return sorted({h.tape for h in self.hist})

    @property
    def layout(self) -> str:
        return self.hist[0].layout if self.hist else "1d"


def _stems(folder: Path, suffix: str) -> dict[str, Path]:
    return {p.name[: -len(suffix)]: p for p in sorted(folder.glob(f"*{suffix}"))} if folder.is_dir() else {}


def _split_name(stem: str, known: set[str]) -> tuple[str, str] | None:
    """(case, member) from '<case>_<member>', preferring the longest known member name."""
    for m in sorted(known, key=len, reverse=True):
        if stem.endswith("_" + m) and len(stem) > len(m) + 1:
            return stem[: -len(m) - 1], m
    mt = MEMBER_TAIL.search(stem)
    return (stem[: mt.start()], mt.group("member")) if mt else None


def _frequency(attr: str | None, times: np.ndarray) -> str:
    if attr:
        return FREQ_NAMES.get(attr, attr)
    if len(times) < 2:
        return "fx"
    step = float(np.median(np.diff(times)))  # days
    for name, days in (("1hr", 1 / 24), ("3hr", 0.125), ("6hr", 0.25), ("day", 1.0), ("mon", 30.4), ("year", 365.0)):
        if abs(step - days) <= 0.1 * days:
            return name
    return f"{step:g}days"


def read_header(path: Path, case: str, member: str, tape: str) -> HistFile:
    """Header, time axis and gridcell coordinates of one history file (raises on unreadable files)."""
    h = _read_header_classic(path, case, member, tape)
    if h is not None:
        return h
    with NC_LOCK:
        with netCDF4.Dataset(path, "r") as ds:
            if "time" not in ds.variables:
                raise ValueError("no time variable (not a CTSM history file?)")
            tv = ds.variables["time"]
            times = np.asarray(tv[:], dtype="f8")
            units = getattr(tv, "units", None)
            if not units or "since" not in units:
                raise ValueError(f"time has units {units!r}, expected 'days since ...'")
            calendar = getattr(tv, "calendar", "standard")
            dims = set(ds.dimensions)
            if "gridcell" in dims and "grid1d_lat" in ds.variables:
                layout = "1d"
                lat = np.asarray(ds.variables["grid1d_lat"][:], dtype="f8")
                lon = np.asarray(ds.variables["grid1d_lon"][:], dtype="f8")
            elif {"lat", "lon"} <= dims and "lat" in ds.variables and ds.variables["lat"].ndim == 1:
                layout = "latlon"
                la = np.asarray(ds.variables["lat"][:], dtype="f8")
                lo = np.asarray(ds.variables["lon"][:], dtype="f8")
                lat, lon = (a.ravel() for a in np.meshgrid(la, lo, indexing="ij"))
            elif "lndgrid" in dims:
                layout = "lndgrid"
                lat = np.asarray(ds.variables["lat"][:], dtype="f8")
                lon = np.asarray(ds.variables["lon"][:], dtype="f8")
            else:
                raise ValueError("no gridcell/grid1d_lat, lat/lon or lndgrid dimension")
            space = SPATIAL_DIMS[layout]
            variables = {n: getattr(v, "units", None) for n, v in ds.variables.items()
                         if n not in TIME_BOOKKEEPING and v.dimensions == ("time", *space)}
            misshapen = _misshapen({n: v.dimensions for n, v in ds.variables.items()}, ("time", *space))
            freq = _frequency(getattr(ds, "time_period_freq", None), times)
    return HistFile(path, case, member, f"h{tape}", layout, freq, units, calendar, times, variables, lat, lon,
                    misshapen)


def _misshapen(dims_of: dict[str, tuple], want: tuple) -> dict[str, tuple]:
    """Variables on the time and space dims in another order, or CTSM fields with other dims."""
    known = set(FORCING) | set(RESPONSES)
    return {n: tuple(d) for n, d in dims_of.items()
            if n not in TIME_BOOKKEEPING and tuple(d) != want and (set(d) == set(want) or n in known)}


def _read_header_classic(path: Path, case: str, member: str, tape: str) -> HistFile | None:
    """`read_header` for a netCDF-3 1-D history file without netCDF-C (None: not such a file).

    netCDF-C reads the time axis, a record variable, with one read() per time step, which made
    discovery cost as much as reading a sixth of the data; here it is a few block reads.
    """
    from .classic import NotClassic, read_fixed_var, read_record_vars
    from .classic import read_header as classic_header

    try:
        hdr = classic_header(path)
    except NotClassic:
        return None
    tv = hdr.variables.get("time")
    if tv is None or not tv.is_record or tv.shape or "gridcell" not in hdr.dims or "grid1d_lat" not in hdr.variables:
        return None  # no time axis, lat/lon output...: the netCDF4 path reads (or rejects) it
    times = read_record_vars(path, ["time"], header=hdr)["time"].astype("f8")
    units = tv.attrs.get("units")
    if not isinstance(units, str) or "since" not in units:
        raise ValueError(f"time has units {units!r}, expected 'days since ...'")
    calendar = tv.attrs.get("calendar", "standard")
    lat = read_fixed_var(path, "grid1d_lat", hdr).astype("f8")
    lon = read_fixed_var(path, "grid1d_lon", hdr).astype("f8")
    variables = {n: v.attrs.get("units") for n, v in hdr.variables.items()
                 if n not in TIME_BOOKKEEPING and v.dims == ("time", "gridcell")}
    misshapen = _misshapen({n: v.dims for n, v in hdr.variables.items()}, ("time", "gridcell"))
    freq = _frequency(hdr.attrs.get("time_period_freq"), times)
    return HistFile(path, case, member, f"h{tape}", "1d", freq, units, calendar, times, variables, lat, lon,
                    misshapen)


def _header_or_problem(path: Path, case: str, member: str, tape: str) -> HistFile | str:
    """`read_header`, or why the file is not a readable CTSM history file (a task of a parallel ingest)."""
    try:
        return read_header(path, case, member, tape)
    except (OSError, RuntimeError, ValueError, IndexError, KeyError) as e:
        return f"not a readable CTSM history file ({e})"


def discover(root: str | Path, variables=None, skip_bad: bool = False, report: Report | None = None,
             pool=None) -> Ppe:
    """Find members and history files under `root` and check that they agree with each other.

    `variables`: the history variables that must be present in every member (None: no demand).
    `pool` (`parallel.pool`): where the headers are read (None: in this process); problems are
    reported in file order either way.
    """
    from .parallel import Pool

    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: PPE folder not found")
    report = report or Report(skip_bad)
    paramfiles = _stems(root / "paramfiles", ".nc")
    nlmods = _stems(root / "namelist_mods", ".txt")
    known = set(paramfiles) | set(nlmods)

    hist: list[HistFile] = []
    named = []  # (path, case, member, tape) or (path, None, None, None) for a file with another name
    for path in sorted(root.rglob("*.clm2.h*.nc")):
        if path.name.startswith("."):
            continue
        m = HIST_RE.match(path.name)
        split = _split_name(m.group("stem"), known) if m else None
        named.append((path, *split, m.group("tape")) if split else (path, None, None, None))
    readable = [n for n in named if n[1] is not None]
    headers = dict(zip((n[0] for n in readable), (pool or Pool()).map(_header_or_problem, readable)))
    for path, _case, member, _tape in named:
        h = headers.get(path)
        if h is None:
            report.add(path, "", "history file name is not <case>_<member>.clm2.h<N>.<date>.nc")
        elif isinstance(h, str):
            report.add(path, member, h)
        else:
            hist.append(h)
    members = sorted(known | {h.member for h in hist})
    if not members:
        raise UserError(f"{root}: no PPE members found (no paramfiles/*.nc, namelist_mods/*.txt or *.clm2.h*.nc files)")
    design = root / "design.csv"
    surf = sorted(root.glob("surfdata*.nc"))
    ppe = Ppe(root, members, paramfiles, nlmods, hist, report,
              design if design.is_file() else None, surf[0] if surf else None)
    _check_members(ppe, variables)
    return ppe


def _expected_name(ref: HistFile, member: str) -> str:
    return ref.path.name.replace(f"_{ref.member}.clm2.", f"_{member}.clm2.")


def _check_members(ppe: Ppe, variables) -> None:
    """Report members whose files are missing, duplicated, or disagree with the majority."""
    report = ppe.report
    if not ppe.hist:
        return
    by_member: dict[str, list[HistFile]] = defaultdict(list)
    for h in ppe.hist:
        by_member[h.member].append(h)
    for m in ppe.members:
        if m not in by_member:
            where = ppe.paramfiles.get(m) or ppe.namelist_mods.get(m)
            report.add(where, m, "member has no history files (missing member file)")
        if ppe.paramfiles and m not in ppe.paramfiles and m in by_member:
            report.add(ppe.root / "paramfiles" / f"{m}.nc", m, "member has history files but no paramfile")
    # Duplicates: the same member, tape and time found in two files.
    for m, hs in by_member.items():
        seen: dict[tuple, HistFile] = {}
        for h in sorted(hs, key=lambda h: str(h.path)):
            for t in (h.tape, float(h.times[0])), (h.tape, float(h.times[-1])):
                if t in seen and seen[t] is not h:
                    report.add(h.path, m,
                               f"duplicate member: tape {h.tape} time {h.time_range} is also in {seen[t].path}")
                    break
                seen[t] = h
    # The common layout: the (tape, time range) files, gridcells and variables most members have.
    sig = {m: frozenset((h.tape, h.time_range) for h in hs) for m, hs in by_member.items()}
    majority = Counter(sig.values()).most_common(1)[0][0]
    ref_member = next(m for m in sorted(by_member) if sig[m] == majority)
    ref = {(h.tape, h.time_range): h for h in by_member[ref_member]}
    grid_ref = ref[min(ref)]
    for m, hs in sorted(by_member.items()):
        have = {(h.tape, h.time_range): h for h in hs}
        for key in sorted(set(ref) - set(have)):
            report.add(ppe.root / ref[key].path.parent.relative_to(ppe.root) / _expected_name(ref[key], m), m,
                       f"missing member file: no {key[0]} history for {key[1]} (other members have it)")
        for key, h in have.items():
            for v, dims in sorted(h.misshapen.items()):
                if variables is None or v in variables:
                    want = ", ".join(("time", *SPATIAL_DIMS[h.layout]))
                    report.add(h.path, m, f"variable {v} has dims ({', '.join(dims)}), expected ({want})")
            r = ref.get(key)
            if r is None:
                report.add(h.path, m, f"extra file: no other member has {key[0]} history for {key[1]}")
                continue
            if h.layout != grid_ref.layout or h.lat.shape != grid_ref.lat.shape or not (
                    np.allclose(h.lat, grid_ref.lat, atol=1e-4) and np.allclose(h.lon, grid_ref.lon, atol=1e-4)):
                report.add(h.path, m, f"mismatched gridcell set: {h.lat.size} gridcells whose lat/lon differ "
                                      f"from {grid_ref.path.name} ({grid_ref.lat.size} gridcells)")
            if len(h.times) != len(r.times) or not np.allclose(h.times, r.times):
                report.add(h.path, m, f"time axis differs from {r.path.name}")
            for v in sorted(set(r.variables) - set(h.variables)):
                if variables is None or v in variables:
                    report.add(h.path, m, f"variable {v} is absent (present in {r.path.name})")
            for v, u in h.variables.items():
                if variables is not None and v not in variables:
                    continue
                if not units_ok(v, u):
                    report.add(h.path, m, f"variable {v} has units {u!r}, expected CTSM units {CTSM_UNITS[v]!r}")
                elif v not in CTSM_UNITS and v in r.variables and u != r.variables[v]:
                    report.add(h.path, m, f"variable {v} has units {u!r}, {r.path.name} has {r.variables[v]!r}")
    if variables:
        present = set().union(*(set(h.variables) for h in ppe.hist))
        for v in variables:
            if v not in present:
                raise UserError(f"{ppe.root}: variable {v} is in no history file (found: {', '.join(sorted(present))})")
    bad = report.bad_members()
    if bad:
        ppe.skipped_members = bad
        ppe.members = [m for m in ppe.members if m not in bad]
        ppe.hist = [h for h in ppe.hist if h.member not in bad]
        if not ppe.members:
            raise UserError(f"{ppe.root}: every member has a problem; first: {report.lines()[0]}")
