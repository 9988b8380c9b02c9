"""The twin's true parameter maps: drawn from the distribution the calibration's prior assumes."""
from __future__ import annotations

import numpy as np

from ppe_ingest.param_table import default_table_path, load_param_table
from ppe_ingest.simulator.sites import builtin_sites
from ppe_ingest.simulator.truth import true_parameter_maps

NAMES = ["fff", "FMAX", "hksat_sf", "baseflow_scalar", "d_max", "medlynslope"]


def _unit_values(margin=None, seeds=range(8)):
    """Each truth value's position in its table range, pooled over several maps (one map is one
    spatially correlated draw, so its own histogram is lumpy)."""
    table = load_param_table(default_table_path())
    sites = builtin_sites(300, seed=3)
    kw = {} if margin is None else {"margin": margin}
    out = []
    for s in seeds:
        t = true_parameter_maps(sites, table, NAMES, seed=s, **kw)
        lo, hi = t["param_min"].values, t["param_max"].values
        out.append((t["theta"].values - lo) / (hi - lo))
    return np.concatenate(out)


def test_truths_span_the_prior_so_a_prior_wide_interval_holds_ninety_percent_of_them():
    """By default every value the PPE design (the calibration's uniform prior) spans is a possible
    truth: about 5 % of them lie in each outer 5 % of the range, where a prior-wide 90 % interval ends.
    An explicit margin keeps them all inside."""
    u = _unit_values()
    assert np.all((u > 0) & (u < 1))
    for share in (np.mean(u < 0.05), np.mean(u > 0.95)):
        assert 0.025 < share < 0.085
    assert 0.8 < np.mean((u >= 0.05) & (u <= 0.95)) < 0.95
    kept = _unit_values(margin=0.05, seeds=range(2))
    assert np.all((kept >= 0.05) & (kept <= 0.95))
