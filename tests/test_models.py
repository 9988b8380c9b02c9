"""Model zoo and the Emulator contract the inverse model, coupler and CIME hooks rely on."""
import pytest
import torch

from esm_emu.emulator import Emulator, TabularEmulator, load_emulator
from esm_emu.models import available_models, build_model
from esm_emu.normalize import Normalizer, Scaler
from ppe_ingest.base.errors import UserError

BASE = dict(name="lstm", hidden=16, embed=8, layers=1, dropout=0.0, ea_gate=False, heads=2, context=20)
CASES = {"lstm": BASE, "ea_lstm": dict(BASE, ea_gate=True),
         "transformer": dict(BASE, name="transformer", layers=2)}


def _norm():
    # a real (non-identity) normaliser with a log-transformed response, like the store's QRUNOFF
    return Normalizer(Scaler([1, 2, 3], [2, 2, 2], [False] * 3, 1e-6),
                      Scaler([10, 0.3], [5, 0.1], [False] * 2, 1e-6),
                      Scaler([1, 1, 1, 1], [0.5] * 4, [False] * 4, 1e-6),
                      Scaler([-12, 30], [2, 10], [True, False], 1e-6))


def _emu(cfg):
    torch.manual_seed(0)
    return Emulator.build(cfg, _norm(), ["RAIN", "TBOT", "FSDS"], ["PCT_SAND", "FMAX"],
                          ["a", "b", "c", "d"], ["QRUNOFF", "EFLX_LH_TOT"]).eval()


def test_registry_lists_and_rejects():
    assert {"lstm", "transformer", "tabular"} <= set(available_models())
    with pytest.raises(UserError, match="emulator.model.name"):
        build_model({"name": "nope"}, {})


@pytest.mark.parametrize("case", CASES)
def test_shapes_names_and_physical_units(case):
    emu = _emu(CASES[case])
    f, s, th = torch.rand(3, 40, 3), torch.rand(3, 2), torch.rand(3, 4)
    y = emu(f, s, th)
    assert y.shape == (3, 40, 2)
    assert emu.response_names == ["QRUNOFF", "EFLX_LH_TOT"] and emu.param_names == ["a", "b", "c", "d"]
    assert (y[..., 0] > -1e-6).all()  # log-normalised runoff comes back as exp(.) - eps >= -eps
    with pytest.raises(ValueError, match="theta must be"):
        emu(f, s, torch.rand(3, 5))


@pytest.mark.parametrize("case", CASES)
def test_stepping_in_chunks_equals_one_call(case):
    emu = _emu(CASES[case])
    f, s, th = torch.rand(2, 96, 3), torch.rand(2, 2), torch.rand(2, 4)
    whole = emu(f, s, th)
    state, parts = None, []
    for k in range(0, 96, 8):  # "a year in twelve monthly calls"
        y, state = emu(f[:, k:k + 8], s, th, state=state, return_state=True)
        parts.append(y)
    torch.testing.assert_close(torch.cat(parts, 1), whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_differentiable_wrt_theta_and_static(case):
    emu = _emu(CASES[case])
    s = torch.rand(2, 2, requires_grad=True)
    th = torch.rand(2, 4, requires_grad=True)
    emu(torch.rand(2, 30, 3), s, th).sum().backward()
    assert th.grad.abs().sum() > 0 and s.grad.abs().sum() > 0


def test_conditioning_changes_the_output():
    emu = _emu(CASES["lstm"])
    f, s = torch.rand(1, 30, 3), torch.rand(1, 2)
    assert not torch.allclose(emu(f, s, torch.zeros(1, 4)), emu(f, s, torch.ones(1, 4)))


@pytest.mark.parametrize("case", ["lstm", "transformer"])
def test_load_emulator_round_trip(tmp_path, case):
    emu = _emu(CASES[case])
    path = tmp_path / "best.pt"
    torch.save({"emulator": emu.payload()}, path)
    back = load_emulator(tmp_path)  # a run directory means its best.pt
    f, s, th = torch.rand(2, 25, 3), torch.rand(2, 2), torch.rand(2, 4)
    torch.testing.assert_close(back(f, s, th), emu(f, s, th))
    assert back.forcing_names == emu.forcing_names and back.static_names == emu.static_names


def test_load_emulator_bad_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_emulator(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pt"):
        load_emulator(junk)


def test_tabular_emulator():
    norm = Normalizer(Scaler([], [], [], 1e-6), Scaler([], [], [], 1e-6),
                      Scaler([0.5] * 3, [0.3] * 3, [False] * 3, 1e-6),
                      Scaler([2.0, 40.0], [0.5, 5.0], [False, False], 1e-6))
    emu = TabularEmulator.build(dict(name="tabular", hidden=8, layers=2, dropout=0.0), norm, ["p", "q", "r"],
                                ["TLAI", "EFLX_LH_TOT"])
    assert emu(torch.rand(5, 3)).shape == (5, 2)
