"""CTSM's own names, units and long_names for the fields esm-emu reads and writes: one home.

Forcing and responses are history-file fields (as CTSM's hist_addfld calls write them);
static fields are surface-dataset (fsurdat) fields, plus LAI_MAX/LAI_MIN derived from
fsurdat MONTHLY_LAI. Every module takes these lists from here.
"""
from __future__ import annotations

# Atmospheric forcing on CTSM history tapes (the inputs of every forward model).
FORCING = ("RAIN", "SNOW", "TBOT", "FSDS", "FLDS", "QBOT", "PBOT", "WIND")

# Responses on CTSM history tapes that an emulator can learn and observations can constrain.
RESPONSES = ("QRUNOFF", "QOVER", "QDRAI", "EFLX_LH_TOT", "QSOIL", "QVEGT", "QVEGE",
             "SOILWATER_10CM", "H2OSNO", "TWS", "ZWT")

# Runoff components stored log-transformed in the training store (heavy-tailed, >= 0).
LOG_RESPONSES = ("QRUNOFF", "QOVER", "QDRAI")

# name -> (long_name, units), as CTSM's history field list writes them.
HIST_FIELDS: dict[str, tuple[str, str]] = {
    "RAIN": ("atmospheric rain, after rain/snow repartitioning based on temperature", "mm/s"),
    "SNOW": ("atmospheric snow, after rain/snow repartitioning based on temperature", "mm/s"),
    "TBOT": ("atmospheric air temperature (downscaled to columns in glacier regions)", "K"),
    "FSDS": ("atmospheric incident solar radiation", "W/m^2"),
    "FLDS": ("atmospheric longwave radiation (downscaled to columns in glacier regions)", "W/m^2"),
    "QBOT": ("atmospheric specific humidity (downscaled to columns in glacier regions)", "kg/kg"),
    "PBOT": ("atmospheric pressure at surface (downscaled to columns in glacier regions)", "Pa"),
    "WIND": ("atmospheric wind velocity magnitude", "m/s"),
    "QRUNOFF": ("total liquid runoff not including correction for land use change", "mm/s"),
    "QOVER": ("total surface runoff (includes QH2OSFC)", "mm/s"),
    "QDRAI": ("sub-surface drainage", "mm/s"),
    "EFLX_LH_TOT": ("total latent heat flux [+ to atm]", "W/m^2"),
    "QSOIL": ("Ground evaporation (soil/snow evaporation + soil/snow sublimation - dew)", "mm/s"),
    "QVEGT": ("canopy transpiration", "mm/s"),
    "QVEGE": ("canopy evaporation", "mm/s"),
    "SOILWATER_10CM": ("soil liquid water + ice in top 10cm of soil (veg landunits only)", "kg/m2"),
    "H2OSNO": ("snow depth (liquid water)", "mm"),
    "TWS": ("total water storage", "mm"),
    "ZWT": ("water table depth (natural vegetated and crop landunits only)", "m"),
}


def units(name: str) -> str:
    """CTSM units of a history field ('' when unknown)."""
    return HIST_FIELDS.get(name, ("", ""))[1]


def long_name(name: str) -> str:
    """CTSM long_name of a history field ('' when unknown)."""
    return HIST_FIELDS.get(name, ("", ""))[0]


def hist_attrs(name: str) -> dict[str, str]:
    """{'long_name', 'units'} of a history field, as CTSM writes them."""
    ln, u = HIST_FIELDS[name]
    return {"long_name": ln, "units": u}


# Soil texture fields on nlevsoi in fsurdat.
SOIL_FIELDS = ("PCT_SAND", "PCT_CLAY", "ORGANIC")
# Per-gridcell fsurdat fields a forward model conditions on.
STATIC_FIELDS = ("PCT_SAND", "PCT_CLAY", "ORGANIC", "FMAX", "zbedrock", "SLOPE", "STD_ELEV")
# Derived from fsurdat MONTHLY_LAI (time, lsmpft, ...) and PCT_NAT_PFT (natpft, ...).
LAI_FIELDS = ("LAI_MAX", "LAI_MIN")
LAI_DERIVATION = ("LAI_MAX, LAI_MIN: max and min over the 12 months of surfdata MONTHLY_LAI averaged over the "
                  "natural PFTs with PCT_NAT_PFT weights (0 where no natural PFT has weight)")
SOIL_LAYER_REDUCTION = "PCT_SAND, PCT_CLAY, ORGANIC: unweighted mean over the nlevsoi levels"
# Every static field the training store and the forward models know.
ALL_STATIC_FIELDS = STATIC_FIELDS + LAI_FIELDS

# name -> (long_name, units), as in fsurdat (FORMAT.md); LAI_* as derived here.
STATIC_ATTRS: dict[str, tuple[str, str]] = {
    "PCT_SAND": ("percent sand", "unitless"),
    "PCT_CLAY": ("percent clay", "unitless"),
    "ORGANIC": ("organic matter density at soil levels", "kg/m3 (assumed carbon content 0.58 gC per gOM)"),
    "FMAX": ("maximum fractional saturated area", "unitless"),
    "zbedrock": ("soil depth", "m"),
    "SLOPE": ("mean topographic slope", "degrees"),
    "STD_ELEV": ("standard deviation of elevation", "m"),
    "LAI_MAX": ("maximum leaf area index of the seasonal cycle", "m2/m2"),
    "LAI_MIN": ("minimum leaf area index of the seasonal cycle", "m2/m2"),
}
