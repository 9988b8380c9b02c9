"""intake-esm catalog of a PPE: an ESM collection spec (JSON) and its CSV, one row per history file.

One row per (history file, variable), so a plain ``intake.open_esm_datastore(json)`` reads it
(no iterable columns). Columns: component, stream, case, member_id, frequency, variable, path,
time_range, start, end, layout, units, plus one column per perturbed parameter (theta). The
aggregation control joins files over time (join_existing), members over member_id (join_new) and
takes the union of variables, so ``to_dataset_dict()`` gives one (member_id, time, gridcell)
Dataset per (component, stream, case, frequency).
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..atomic import atomic_path
from .discover import Ppe

GROUPBY = ["component", "stream", "case", "frequency"]


def catalog_frame(ppe: Ppe, theta: pd.DataFrame | None = None) -> pd.DataFrame:
    """The catalog rows (one per history file and variable, kept members only)."""
    rows = []
    for h in sorted(ppe.hist, key=lambda h: (h.member, h.tape, float(h.times[0]))):
        if h.member not in ppe.members:
            continue
        common = dict(component="clm2", stream=h.tape, case=h.case, member_id=h.member, frequency=h.frequency,
                      path=str(h.path.resolve()), time_range=h.time_range, start=h.start.strftime("%Y-%m-%d"),
                      end=h.end.strftime("%Y-%m-%d"), layout=h.layout)
        if theta is not None and h.member in theta.index:
            common.update({p: float(theta.at[h.member, p]) for p in theta.columns})
        for v, units in sorted(h.variables.items()):
            rows.append({**common, "variable": v, "units": units or ""})
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
                       f"tapes {' '.join(ppe.tapes)}, {ppe.layout} output); written by esm-emu ingest",
        "catalog_file": csv.name,
        "attributes": [{"column_name": c, "vocabulary": ""} for c in
                       ["component", "stream", "case", "member_id", "frequency", "variable", "time_range",
                        "start", "end", "layout", "units", *params]],
        "assets": {"column_name": "path", "format": "netcdf"},
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
        df.to_csv(tmp, index=False)
    with atomic_path(out, inputs=inputs) as tmp:
        tmp.write_text(json.dumps(spec, indent=2) + "\n")
    return out
