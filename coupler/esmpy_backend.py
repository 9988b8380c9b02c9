"""ESMF's own weights through ESMPy, used when `import esmpy` works (conda-forge or an HPC module).

ESMPy has no PyPI wheel; without it `esmpy_weights` raises a UserError saying so.
"""
from __future__ import annotations

import numpy as np

from ppe_ingest.base.errors import UserError

from .grids import Grid


def available() -> tuple[bool, str]:
    """(True, version) when ESMPy imports, else (False, the reason)."""
    try:
        import esmpy
    except Exception as e:  # ImportError or a broken ESMF shared library
        return False, (f"esmpy is not importable ({e.__class__.__name__}: {e}); "
                       "install it from conda-forge or load an ESMF module")
    return True, getattr(esmpy, "__version__", "unknown")


def _mesh(esmpy, grid: Grid):
    """An ESMPy Mesh with one element per cell (corners as nodes, shared nodes merged)."""
    from . import sphere

    P, nv, _ = grid.polygons()
    lon, lat = sphere.xyz_to_lonlat(P)
    key = np.round(P.reshape(-1, 3) * 1e10).astype(np.int64)
    uniq, first, inv = np.unique(key, axis=0, return_index=True, return_inverse=True)
    inv = inv.reshape(P.shape[:2])
    node_lon, node_lat = lon.reshape(-1)[first], lat.reshape(-1)[first]
    mesh = esmpy.Mesh(parametric_dim=2, spatial_dim=2, coord_sys=esmpy.CoordSys.SPH_DEG)
    nn = uniq.shape[0]
    mesh.add_nodes(nn, np.arange(1, nn + 1), np.stack([node_lon, node_lat], 1).ravel(), np.zeros(nn, dtype=np.int32))
    conn = np.concatenate([inv[i, : nv[i]] for i in range(grid.n)])
    etypes = np.where(nv == 3, esmpy.MeshElemType.TRI, np.where(nv == 4, esmpy.MeshElemType.QUAD, nv))
    mesh.add_elements(grid.n, np.arange(1, grid.n + 1), etypes, conn,
                      element_mask=np.where(grid.mask, 0, 1).astype(np.int32),
                      element_coords=np.stack([grid.lon, grid.lat], 1).ravel())
    return mesh


def esmpy_weights(src: Grid, dst: Grid, method: str = "conserve", normalization: str = "fracarea"):
    """`Weights` computed by ESMF (ESMPy) between two grids given as cell polygons."""
    ok, why = available()
    if not ok:
        raise UserError(why)
    import esmpy

    from .weights import Weights

    meth = {"conserve": esmpy.RegridMethod.CONSERVE, "bilinear": esmpy.RegridMethod.BILINEAR,
            "nearest_s2d": esmpy.RegridMethod.NEAREST_STOD, "nearest_d2s": esmpy.RegridMethod.NEAREST_DTOS}[method]
    loc = esmpy.MeshLoc.ELEMENT
    smesh, dmesh = _mesh(esmpy, src), _mesh(esmpy, dst)
    sf = esmpy.Field(smesh, name="src", meshloc=loc)
    df = esmpy.Field(dmesh, name="dst", meshloc=loc)
    sfrac = esmpy.Field(smesh, name="sfrac", meshloc=loc)
    dfrac = esmpy.Field(dmesh, name="dfrac", meshloc=loc)
    norm = esmpy.NormType.FRACAREA if normalization == "fracarea" else esmpy.NormType.DSTAREA
    kw = dict(regrid_method=meth, unmapped_action=esmpy.UnmappedAction.IGNORE, factors=True,
              src_mask_values=np.array([1]), dst_mask_values=np.array([1]))
    if method == "conserve":
        kw.update(norm_type=norm, src_frac_field=sfrac, dst_frac_field=dfrac)
    rh = esmpy.Regrid(sf, df, **kw)
    fl, fi = rh.get_factors()
    row, col, S = fi[:, 1].astype(np.int64) - 1, fi[:, 0].astype(np.int64) - 1, np.array(fl, dtype=float)
    rh.destroy()
    order = np.lexsort((col, row))
    return Weights(S=S[order], row=row[order], col=col[order], n_a=src.n, n_b=dst.n,
                   frac_a=np.array(sfrac.data) if method == "conserve" else None,
                   frac_b=np.array(dfrac.data) if method == "conserve" else None,
                   area_a=src.cell_area() if method == "conserve" else None,
                   area_b=dst.cell_area() if method == "conserve" else None,
                   src=src, dst=dst, method=method,
                   normalization=normalization if method == "conserve" else "none",
                   attrs={"CVS_revision": f"ESMPy {esmpy.__version__}"})
