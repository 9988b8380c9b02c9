"""Every command refuses bad input in one line with exit 2, and leaves nothing behind (issue 16).

Table-driven: each Case builds its inputs in a fresh folder and names what the line must say.
More classes live beside this file in tests/test_hostile_*.py, on the same harness (hostile.py).
"""
from __future__ import annotations

import pytest
from hostile import Case, check_refused

CASES = [
    Case("simulate: missing config", lambda t: ["simulate", t / "missing.yaml", "--out", t / "o"],
         mentions=["missing.yaml"], outputs=["o"]),
    Case("train: missing config", lambda t: ["train", t / "nope.yaml"], mentions=["nope.yaml"]),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bad_input_is_refused_in_one_line(case, tmp_path):
    check_refused(case, tmp_path)
