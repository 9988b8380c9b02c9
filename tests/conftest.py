"""Shared fixtures: where the real public data lives, and skipping with a reason when it does not."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    """`$ESM_EMU_SHARED_DATA`, else ../shared/data beside the repository."""
    env = os.environ.get("ESM_EMU_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data():
    """Return a function giving a path under the shared data folder, skipping the test if absent."""

    def get(*parts: str) -> Path:
        p = shared_data_root().joinpath(*parts)
        if not p.exists():
            pytest.skip(f"real data not available: {p} is absent (set ESM_EMU_SHARED_DATA to the shared data folder)")
        return p

    return get


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    """`ESM_EMU_TEST_THREADS=N` runs every test with N torch threads (CI reruns the statistical tests
    this way, so that a threshold does not hold only for one machine's kernels and reduction order)."""
    n = os.environ.get("ESM_EMU_TEST_THREADS")
    if n:
        import torch

        torch.set_num_threads(int(n))
    yield
