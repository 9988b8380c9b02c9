"""intake-esm catalog of a PPE: an ESM collection spec (JSON) and its CSV, one row per history file.

Each row is one history file; its ``variable`` column lists every (time, space) variable in the
file, as CESM catalogs do. A search for several variables then selects each file once and
intake-esm opens it once and keeps the requested variables; one row per (file, variable) instead
makes intake-esm open the file once per variable and the merge fails (xarray MergeError). Other
columns: component, stream, case, member_id, frequency, path, time_range, start, end, layout, plus
one column per perturbed parameter (theta). Aggregation control: members joined along a new
``member_id`` dimension (join_new), files along ``time`` (join_existing), union of variables.

The JSON declares ``"columns_with_iterables": ["variable"]``, but intake-esm (2025.12.12) does not
read that key (intake-esm#595): open the catalog with :func:`open_catalog`, or with
``intake.open_esm_datastore(json, columns_with_iterables=["variable"])`` under pandas < 3. Under
pandas 3 the latter cannot search the list column (intake-esm keeps it as a pyarrow list, which
the ``.str`` accessor its search uses refuses); :func:`open_catalog` hands intake-esm the parsed
table instead (its documented ``{"esmcat": ..., "df": ...}`` form), which works under both.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pandas as pd

from ppe_ingest.base.atomic import atomic_path
from ppe_ingest.base.errors import UserError

from .discover import Ppe

GROUPBY = ["component", "stream", "case", "frequency"]
ITERABLE = ["variable"]


def catalog_frame(ppe: Ppe, theta: pd.DataFrame | None = None) -> pd.DataFrame:
    """The catalog rows: one per history file of a kept member, ``variable`` the sorted list of its variables."""
    rows = []
    for h in sorted(ppe.hist, key=lambda h: (h.member, h.tape, float(h.times[0]))):
        if h.member not in ppe.members:
            continue
        row = dict(component="clm2", stream=h.tape, case=h.case, member_id=h.member, frequency=h.frequency,
                   variable=sorted(h.variables), path=str(h.path.resolve()), time_range=h.time_range,
                   start=h.start.strftime("%Y-%m-%d"), end=h.end.strftime("%Y-%m-%d"), layout=h.layout)
        if theta is not None and h.member in theta.index:
            row.update({p: float(theta.at[h.member, p]) for p in theta.columns})
        rows.append(row)
    return pd.DataFrame(rows)


def write_catalog(ppe: Ppe, out: str | Path, theta: pd.DataFrame | None = None) -> Path:
    """Write `out` (.json) and its CSV beside it (same stem); return the JSON path."""
    out = Path(out)
    if out.suffix != ".json":
        out = out.with_suffix(".json")
    csv = out.with_suffix(".csv")
    df = catalog_frame(ppe, theta)
    params = [] if theta is None else list(theta.columns)
    spec = {
        "esmcat_version": "0.1.0",
        "id": out.stem,
        "description": f"CTSM perturbed-parameter ensemble in {ppe.root} ({len(ppe.members)} members, "
                       f"tapes {' '.join(ppe.tapes)}, {ppe.layout} output); written by esm-emu ingest. "
                       "One row per history file; 'variable' lists its variables.",
        "catalog_file": csv.name,
        "attributes": [{"column_name": c, "vocabulary": ""} for c in
                       ["component", "stream", "case", "member_id", "frequency", "variable", "time_range",
                        "start", "end", "layout", *params]],
        "assets": {"column_name": "path", "format": "netcdf"},
        "columns_with_iterables": ITERABLE,
        "aggregation_control": {
            "variable_column_name": "variable",
            "groupby_attrs": GROUPBY,
            "aggregations": [
                {"type": "union", "attribute_name": "variable"},
                {"type": "join_existing", "attribute_name": "time_range",
                 "options": {"dim": "time", "coords": "minimal", "compat": "override"}},
                {"type": "join_new", "attribute_name": "member_id",
                 "options": {"coords": "minimal", "compat": "override"}},
            ],
        },
        "last_updated": pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    inputs = [h.path for h in ppe.hist]
    with atomic_path(csv, inputs=inputs) as tmp:
        df.to_csv(tmp, index=False)  # lists as Python literals, "['QRUNOFF', 'TBOT']", as intake-esm parses them
    with atomic_path(out, inputs=inputs) as tmp:
        tmp.write_text(json.dumps(spec, indent=2) + "\n")
    return out


def _parse_list(text: str, csv: Path) -> tuple[str, ...]:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = None
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise UserError(f"{csv}: 'variable' is not a list of variable names: {text[:60]!r}")
    return tuple(value)


def open_catalog(path: str | Path, **kwargs):
    """Open a catalog written by :func:`write_catalog` as an ``intake_esm.esm_datastore``.

    Reads the CSV itself so that the iterable columns the JSON declares are lists intake-esm can
    search under pandas 2 and 3 (see the module docstring). Opened through intake's own
    ``intake.open_esm_datastore``; `kwargs` go to it.
    """
    import intake

    path = Path(path)
    try:
        spec = json.loads(path.read_text())
        csv = path.parent / spec["catalog_file"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not an esm-emu intake-esm catalog ({e})") from None
    iterable = spec.pop("columns_with_iterables", ITERABLE)
    spec.pop("catalog_file")
    try:
        df = pd.read_csv(csv)
    except (OSError, ValueError) as e:
        raise UserError(f"{csv}: cannot read the catalog table ({e})") from None
    for col in iterable:
        if col not in df.columns:
            raise UserError(f"{csv}: no column {col!r}")
        df[col] = df[col].astype(object).map(lambda t: _parse_list(str(t), csv))
    return intake.open_esm_datastore({"esmcat": spec, "df": df}, **kwargs)
