"""configs/camels_basins.yaml: the real-basin workflow's config, its periods and its data location."""
from __future__ import annotations

import pytest
from hostile import Case, check_refused

from ppe_ingest import configs

CFG = str(configs.path("camels_basins.yaml"))


def _run(*sets: str):
    def make(tmp):
        args = ["run", CFG, "--out", str(tmp / "out")]
        for s in sets:
            args += ["--set", s]
        return args
    return make


PERIOD_CASES = [
    Case("test year after the data", _run("inverse.test_period.start=2005", "inverse.test_period.end=2005"),
         mentions=["inverse.test_period", "2000-2002"], outputs=["out"]),
    Case("test year before the data", _run("inverse.test_period.start=1999", "inverse.test_period.end=1999"),
         mentions=["inverse.test_period"], outputs=["out"]),
    Case("calibration running past the data", _run("inverse.train_period.end=2004"),
         mentions=["inverse.train_period"], outputs=["out"]),
    Case("test period ending before it starts", _run("inverse.test_period.start=2002", "inverse.test_period.end=2001"),
         mentions=["inverse.test_period"], outputs=["out"]),
]


@pytest.mark.parametrize("case", PERIOD_CASES, ids=str)
def test_periods_outside_the_data_are_refused_naming_the_key(case, tmp_path, shared_data):
    shared_data("camels_us", "neuralhydrology_test_data", "camels_us")
    check_refused(case, tmp_path)


def test_missing_data_is_one_line_naming_the_variable(tmp_path):
    case = Case("no shared data", _run(), mentions=["ESM_EMU_SHARED_DATA"], outputs=["out"],
                env={"ESM_EMU_SHARED_DATA": str(tmp_path / "nowhere")})
    check_refused(case, tmp_path)


def test_config_sections_validate_and_choose_per_site_routing(shared_data):
    from esm_emu.inverse.config import load_inverse_config
    from esm_emu.inverse.per_site import choose_method
    from ppe_ingest.simulator.config import load_simulate_config

    shared_data("camels_us", "neuralhydrology_test_data", "camels_us")
    sim = load_simulate_config(CFG, check_files=False)
    inv = load_inverse_config(CFG, check_files=False)
    assert sim.grid == "camels" and sim.truth is None and sim.physics["canopy_longwave"]
    assert len(sim.basins) == 4
    assert inv.routing["QRUNOFF"] == "gamma" and choose_method(inv.method, len(sim.basins)) == "per_site"
    # the calibration and test periods come from the config and can be moved
    moved = load_inverse_config(CFG, sets=["inverse.test_period.start=2000", "inverse.test_period.end=2000"],
                                check_files=False)
    assert moved.test_period["start"] == 2000 and inv.test_period["start"] == 2002
