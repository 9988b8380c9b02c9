"""bench/RESULTS.md records the command behind each figure without the paths of the machine it ran on."""
from __future__ import annotations

from bench._record import REPO, portable


def test_the_recorded_command_names_repository_files_relative_and_other_absolute_paths_as_DIR():
    assert portable(str(REPO / "bench" / "quickstart.py")) == "bench/quickstart.py"
    assert portable("/scratch/someone/run60") == "DIR"
    assert portable("--out=/scratch/someone/run60") == "--out=DIR"
    assert [portable(a) for a in ("--out", "run60", "--seed", "60", "--no-run")] == [
        "--out", "run60", "--seed", "60", "--no-run"]
