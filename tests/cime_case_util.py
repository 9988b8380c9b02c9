"""Build CIME case directories for the cime_hooks tests.

The env XML files follow CIME's real format (``<file id="env_run.xml" version="2.0">`` with
``<group>``s of ``<entry id=... value=...>`` carrying ``<type>`` and ``<desc>``). CIME itself is not
installable from PyPI, so the case's ``xmlchange`` is a small stand-in this module writes: like the
real one it takes ``NAME=VALUE[,NAME=VALUE]`` and edits the entry's ``value`` in whichever env file
defines it, and fails on an unknown name.
"""
from __future__ import annotations

import sys
from pathlib import Path
from xml.sax.saxutils import quoteattr

ENV = {
    "env_case.xml": {
        "case_def": [("CASE", "char", "{case}"), ("CASEROOT", "char", "{caseroot}"),
                     ("CIMEROOT", "char", "{cimeroot}"), ("MODEL", "char", "cesm")],
        "case_comp": [("COMP_LND", "char", "clm")],
    },
    "env_run.xml": {
        "run_desc": [("RUNDIR", "char", "{rundir}")],
        "run_begin_stop_restart": [("CONTINUE_RUN", "logical", "FALSE"), ("STOP_OPTION", "char", "ndays"),
                                   ("STOP_N", "integer", "30"), ("RESUBMIT", "integer", "0")],
        "external_tools": [("DATA_ASSIMILATION_CYCLES", "integer", "1"), ("DATA_ASSIMILATION_SCRIPT", "char", ""),
                           ("PRERUN_SCRIPT", "char", ""), ("POSTRUN_SCRIPT", "char", "")],
        "run_component_cpl": [("DATA_ASSIMILATION_LND", "logical", "FALSE")],
    },
    "env_mach_pes.xml": {
        "mach_pes": [("NINST_LND", "integer", "{ninst}")],
    },
}

XMLCHANGE = '''#!{python}
"""Test stand-in for CIME's xmlchange: ./xmlchange NAME=VALUE[,NAME=VALUE...]"""
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

here = Path(__file__).resolve().parent
REFUSE = {refuse!r}  # variables this case's xmlchange fails on (a test of a failing xmlchange)
for arg in sys.argv[1:]:
    for setting in arg.split(","):
        name, _, value = setting.partition("=")
        if name in REFUSE:
            sys.exit("ERROR: " + name + " is locked in this case (test stand-in)")
        for f in sorted(here.glob("env_*.xml")):
            tree = ET.parse(f)
            hits = [e for e in tree.getroot().iter("entry") if e.get("id") == name]
            if hits:
                for e in hits:
                    e.set("value", value)
                tree.write(f, xml_declaration=True, encoding="UTF-8")
                break
        else:
            sys.exit("ERROR: No results found for variable " + name)
'''


def env_xml(file_id: str, groups: dict, fmt: dict) -> str:
    out = ['<?xml version="1.0"?>', f'<file id="{file_id}" version="2.0">',
           "  <header>", "      These variables may be changed anytime during a run, they",
           "      control jobs that will be submitted and their dependancies.", "  </header>"]
    for gid, entries in groups.items():
        out.append(f'  <group id="{gid}">')
        for vid, typ, value in entries:
            out += [f"    <entry id=\"{vid}\" value={quoteattr(value.format(**fmt))}>", f"      <type>{typ}</type>"]
            if typ == "logical":
                out.append("      <valid_values>TRUE,FALSE</valid_values>")
            out += [f"      <desc>{vid} (test case)</desc>", "    </entry>"]
        out.append("  </group>")
    out.append("</file>")
    return "\n".join(out) + "\n"


def make_case(tmp: Path, name: str = "ctsm_test", ninst: int = 1, rundir: str = "$CASEROOT/run",
              refuse: tuple[str, ...] = ()) -> Path:
    """A case directory with env_case.xml, env_run.xml, env_mach_pes.xml, user_nl_clm and xmlchange
    (which exits non-zero, as CIME's does on an error, when asked to change a name in `refuse`)."""
    caseroot = tmp / name
    caseroot.mkdir(parents=True)
    fmt = {"case": name, "caseroot": str(caseroot), "cimeroot": str(tmp / "no_cime_here"),
           "rundir": rundir, "ninst": str(ninst)}
    for fname, groups in ENV.items():
        (caseroot / fname).write_text(env_xml(fname, groups, fmt))
    x = caseroot / "xmlchange"
    x.write_text(XMLCHANGE.format(python=sys.executable, refuse=tuple(refuse)))
    x.chmod(0o755)
    (caseroot / "user_nl_clm").write_text(
        "!----------------------------------------------------------------------------------\n"
        "! Users should add all user specific namelist changes below in the form of\n"
        "! namelist_var = new_namelist_value\n"
        "!----------------------------------------------------------------------------------\n"
        "hist_fincl2 = 'QRUNOFF','RAIN'   ! my own output, must survive\n")
    (caseroot / "run").mkdir()
    return caseroot


def tiny_paramfile(path: Path, values: dict | None = None) -> Path:
    """A CTSM-layout paramfile with a few 0-d float64 hydrology scalars (as in ctsm51_params)."""
    import netCDF4

    with netCDF4.Dataset(path, "w", format="NETCDF3_CLASSIC") as ds:
        for name, value in (values or {"fff": 0.5, "d_max": 15.0, "n_baseflow": 1.0}).items():
            v = ds.createVariable(name, "f8", ())
            v.assignValue(value)
    return path


def tiny_obs(path: Path, variable: str = "QRUNOFF") -> Path:
    """An observation file in the esm-emu schema: two sites, ten days of `variable`."""
    import numpy as np

    from ppe_ingest.obs.schema import make_obs

    values = np.full((2, 10), 1e-5)
    make_obs(values, variable, "mm/s", ["site_a", "site_b"], [40.1, 41.3], [-105.2, -104.1],
             time=np.datetime64("2001-01-01") + np.arange(10), source="test").to_netcdf(path)
    return path
