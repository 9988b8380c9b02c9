"""Paramfile I/O on the real CTSM paramfiles: changes only what is asked, keeps everything else."""
from __future__ import annotations

import hashlib

import netCDF4
import numpy as np
import pytest

from ppe_ingest.base.errors import UserError
from ppe_ingest.ctsmio.paramfile import NPFT, PFT_NAMES, create_paramfile, pft_names, read_paramfile, write_paramfile

CTSM51 = ("ctsm", "paramfiles", "ctsm51_params.c210217_kwo.c210222.nc")
CLM5 = ("ctsm", "paramfiles", "clm5_params.c171117.nc")


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def assert_same_except(a, b, changed):
    """Every variable of `a` other than `changed` is identical in `b` (values, dtype, attributes)."""
    with netCDF4.Dataset(a) as x, netCDF4.Dataset(b) as y:
        x.set_auto_maskandscale(False)
        y.set_auto_maskandscale(False)
        assert x.file_format == y.file_format
        assert {k: (len(d), d.isunlimited()) for k, d in x.dimensions.items()} == \
               {k: (len(d), d.isunlimited()) for k, d in y.dimensions.items()}
        assert list(x.variables) == list(y.variables)
        for k in x.ncattrs():
            if k != "history":
                assert np.array_equal(np.asarray(x.getncattr(k)), np.asarray(y.getncattr(k))), k
        for name, vx in x.variables.items():
            vy = y.variables[name]
            assert vx.dtype == vy.dtype and vx.dimensions == vy.dimensions, name
            assert {a: str(vx.getncattr(a)) for a in vx.ncattrs()} == {a: str(vy.getncattr(a)) for a in vy.ncattrs()}
            if name not in changed:
                assert np.array_equal(vx[...], vy[...]), name


@pytest.mark.parametrize("parts", [CTSM51, CLM5])
def test_read_both_layouts(shared_data, parts):
    p = shared_data(*parts)
    vals = read_paramfile(p)
    assert vals["medlynslope"].shape == (NPFT,)
    assert vals["kmax"].shape == (4, NPFT)
    assert vals["aereoxid"].shape == ()
    assert vals["br_mr"].shape == ()  # (allpfts=1,) in clm5_params.c171117 reads as 0-d
    assert pft_names(p) == list(PFT_NAMES)


def test_ctsm51_hydrology_defaults(shared_data):
    vals = read_paramfile(shared_data(*CTSM51), ["fff", "d_max", "n_melt_coef", "medlynslope"])
    assert float(vals["fff"]) == 0.5 and float(vals["d_max"]) == 15 and float(vals["n_melt_coef"]) == 200
    assert vals["medlynslope"][14] == pytest.approx(1.62)


@pytest.mark.parametrize("parts", [CTSM51, CLM5])
def test_write_changes_only_named(shared_data, tmp_path, parts):
    src = shared_data(*parts)
    before = sha(src)
    dst = tmp_path / "out.nc"
    scalar = "fff" if parts == CTSM51 else "br_mr"  # br_mr is (allpfts=1,) in clm5
    write_paramfile(src, dst, {scalar: 0.77, "medlynslope": {"c3_arctic_grass": 5.0, 7: 4.1},
                               "kmax": {"c4_grass": 1e-8}})
    assert sha(src) == before
    assert_same_except(src, dst, {scalar, "medlynslope", "kmax"})
    new, old = read_paramfile(dst), read_paramfile(src)
    assert float(new[scalar]) == 0.77
    assert new["medlynslope"][12] == 5.0 and new["medlynslope"][7] == 4.1
    untouched = np.ones(NPFT, bool)
    untouched[[7, 12]] = False
    assert np.array_equal(new["medlynslope"][untouched], old["medlynslope"][untouched])
    assert np.all(new["kmax"][:, 14] == 1e-8) and np.array_equal(new["kmax"][:, :14], old["kmax"][:, :14])
    with netCDF4.Dataset(src) as a, netCDF4.Dataset(dst) as b:
        assert b.history.startswith(a.history) and "esm-emu write_paramfile" in b.history.splitlines()[-1]
    assert [p.name for p in tmp_path.iterdir()] == ["out.nc"]


def test_whole_array_and_scalar_broadcast(shared_data, tmp_path):
    src = shared_data(*CTSM51)
    arr = np.linspace(1, 2, NPFT)
    write_paramfile(src, tmp_path / "a.nc", {"medlynslope": arr, "mbbopt": 3.0})
    v = read_paramfile(tmp_path / "a.nc", ["medlynslope", "mbbopt"])
    assert np.array_equal(v["medlynslope"], arr) and np.all(v["mbbopt"] == 3.0)


@pytest.mark.parametrize("values, words", [
    ({"no_such_param": 1.0}, ["no_such_param", "ctsm51_params"]),
    ({"medlynslope": np.ones(5)}, ["medlynslope", "shape"]),
    ({"fff": {"c4_grass": 1.0}}, ["fff", "pft"]),
    ({"medlynslope": {"oak_tree": 1.0}}, ["medlynslope", "oak_tree"]),
    ({"medlynslope": {99: 1.0}}, ["medlynslope", "99"]),
    ({"fff": float("nan")}, ["fff", "non-finite"]),
    ({"mxmat": 1.5}, ["mxmat", "integer"]),
])
def test_bad_values_refused_nothing_written(shared_data, tmp_path, values, words):
    src = shared_data(*CTSM51)
    with pytest.raises(UserError) as e:
        write_paramfile(src, tmp_path / "bad.nc", values)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_input(shared_data, tmp_path):
    src = tmp_path / "p.nc"
    src.write_bytes(shared_data(*CTSM51).read_bytes())
    before = sha(src)
    with pytest.raises(UserError, match="overwrite"):
        write_paramfile(src, src, {"fff": 1.0})
    assert sha(src) == before


def test_real_oaat_member_differs_in_perturbed_parameter(shared_data):
    """OAAT0001/0002 perturb taulnir to min/max (OAAT_20210408.csv); nothing else differs."""
    key = shared_data("ppe", "param_tables", "OAAT_20210408.csv").read_text().splitlines()
    assert key[1].split(",") == ["OAAT0001", "taulnir", "min"]
    base = read_paramfile(shared_data("ppe", "paramfiles", "OAAT0000.nc"))
    lo = read_paramfile(shared_data("ppe", "paramfiles", "OAAT0001.nc"))
    hi = read_paramfile(shared_data("ppe", "paramfiles", "OAAT0002.nc"))
    differ = sorted(k for k in base if not np.array_equal(base[k], lo[k]))
    assert differ == ["taulnir"]
    veg = slice(1, 17)
    assert np.all(lo["taulnir"][veg] <= base["taulnir"][veg]) and np.all(hi["taulnir"][veg] >= base["taulnir"][veg])
    assert (lo["taulnir"] < hi["taulnir"]).any()


def test_create_paramfile_layout(tmp_path):
    med = np.full(NPFT, 4.84)
    p = create_paramfile(tmp_path / "new.nc", {"fff": 0.5, "medlynslope": med, "kmax": np.ones((4, NPFT))},
                         attrs={"fff": {"long_name": "Decay factor for fractional saturated area", "units": "1/m"}})
    with netCDF4.Dataset(p) as ds:
        assert ds.file_format == "NETCDF3_CLASSIC"
        assert {k: len(d) for k, d in ds.dimensions.items()} == {"pft": 79, "segment": 4, "string_length": 40,
                                                                 "variants": 2}
        assert ds["fff"].dimensions == () and ds["fff"].dtype == np.float64 and ds["fff"].units == "1/m"
        assert ds["medlynslope"].dimensions == ("pft",) and ds["medlynslope"].coordinates == "pftname"
        assert ds["kmax"].dimensions == ("segment", "pft")
        assert ds["pftname"].dtype == np.dtype("S1")
    assert pft_names(p) == list(PFT_NAMES)
    # A created paramfile works as a base for write_paramfile.
    write_paramfile(p, tmp_path / "m.nc", {"medlynslope": {"c4_grass": 1.0}})
    assert read_paramfile(tmp_path / "m.nc", ["medlynslope"])["medlynslope"][14] == 1.0


def test_create_paramfile_bad_shape(tmp_path):
    with pytest.raises(UserError, match="medlynslope"):
        create_paramfile(tmp_path / "x.nc", {"medlynslope": np.ones(17)})
    assert list(tmp_path.iterdir()) == []
