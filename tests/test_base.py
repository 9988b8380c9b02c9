"""The shared base: great-circle nearest-gridcell matching and batch-friendly progress."""
from __future__ import annotations

import io

import numpy as np
import pytest

from ppe_ingest.base.geometry import great_circle_deg, nearest_gridcell
from ppe_ingest.base.progress import progress


def test_great_circle_distance_across_the_dateline_and_at_the_pole():
    assert great_circle_deg(0.0, 179.5, 0.0, -179.5) == pytest.approx(1.0)
    # a degree of longitude at 60N is half a degree of arc
    assert great_circle_deg(60.0, 10.0, 60.0, 11.0) == pytest.approx(0.49996, abs=1e-4)
    assert great_circle_deg(90.0, 0.0, 90.0, 123.0) == pytest.approx(0.0, abs=1e-9)


def test_nearest_gridcell_uses_arc_distance_not_degree_boxes():
    # At 70N a cell 3 degrees of longitude away is nearer (about 1.03 deg of arc) than one 1.5
    # degrees of latitude away; a lat/lon-box measure picks the wrong one.
    grid_lat = np.array([71.5, 70.0])
    grid_lon = np.array([20.0, 23.0])
    idx, dist = nearest_gridcell([70.0], [20.0], grid_lat, grid_lon)
    assert idx.tolist() == [1]
    assert dist[0] == pytest.approx(great_circle_deg(70.0, 20.0, 70.0, 23.0))


def test_nearest_gridcell_marks_points_beyond_the_limit():
    idx, dist = nearest_gridcell([10.0, 45.0], [359.9, 100.0], [10.0, 0.0], [-0.1, 0.0], max_deg=0.5)
    assert idx.tolist() == [0, -1]
    assert dist[0] < 0.01 and dist[1] > 0.5


def test_nearest_gridcell_gives_no_cell_to_a_point_without_location():
    idx, dist = nearest_gridcell([np.nan, 10.0], [5.0, 0.0], [10.0, np.nan], [0.0, 0.0])
    assert idx.tolist() == [-1, 0] and np.isinf(dist[0])


def test_nearest_gridcell_in_blocks_matches_one_pass():
    rng = np.random.default_rng(3)
    lat, lon = rng.uniform(-80, 80, 50), rng.uniform(0, 360, 50)
    glat, glon = rng.uniform(-80, 80, 30), rng.uniform(-180, 180, 30)
    a, _ = nearest_gridcell(lat, lon, glat, glon, block=7)
    b, _ = nearest_gridcell(lat, lon, glat, glon)
    assert a.tolist() == b.tolist()


def test_progress_in_a_batch_log_writes_a_few_whole_lines():
    log = io.StringIO()  # not a terminal, like a Slurm output file
    seen = list(progress(range(1000), desc="ingest", unit="member", stream=log))
    assert seen == list(range(1000))
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 3 <= len(lines) <= 12, lines
    assert lines[0].startswith("ingest: started") and "done 1000/1000 member" in lines[-1]


def test_progress_by_update_and_disabled():
    log = io.StringIO()
    with progress(total=20, desc="train", stream=log) as bar:
        for _ in range(20):
            bar.update(1)
            bar.set_postfix(loss="0.1")
    assert "done 20/20" in log.getvalue().splitlines()[-1]
    quiet = io.StringIO()
    with progress(total=5, desc="x", stream=quiet, enabled=False) as bar:
        bar.update(5)
    assert quiet.getvalue() == ""
