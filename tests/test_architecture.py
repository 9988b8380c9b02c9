"""The house rules of ARCHITECTURE.md, read from the source: import direction, no import cycles,
a base that depends on nothing, and one definition of each shared noun."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ppe_ingest", "esm_emu", "coupler", "cime_hooks")
LAYER = {"ppe_ingest": 0, "esm_emu": 1, "coupler": 2, "cime_hooks": 2}
# configs/ is installed as ppe_ingest.configs (pyproject.toml package-dir)
EXTRA = {"ppe_ingest.configs": ROOT / "configs" / "__init__.py"}


def _modules() -> dict[str, Path]:
    out = dict(EXTRA)
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module a dotted import name lands in (a package's __init__ counts as the package)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(mod: str, path: Path) -> set[str]:
    """Project modules `mod` imports, at any depth in the file (lazy imports count too)."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                prefix = ".".join(anchor + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names = [f"{prefix}.{a.name}" for a in node.names] + [prefix]
        else:
            continue
        for n in names:
            target = _resolve(n)
            if target and target != mod:
                found.add(target)
    return found


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def test_imports_flow_one_way_between_layers():
    bad = []
    for mod, deps in GRAPH.items():
        for dep in deps:
            a, b = mod.split(".")[0], dep.split(".")[0]
            if LAYER[b] > LAYER[a] or (LAYER[a] == LAYER[b] and a != b):
                bad.append(f"{mod} -> {dep}")
    assert not bad, bad


def test_no_two_modules_import_each_other_even_through_others():
    # strongly connected components of the import graph (Tarjan): each must be one module
    edges = GRAPH
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_the_base_depends_on_nothing_else_of_the_project():
    for mod, deps in GRAPH.items():
        if mod.startswith("ppe_ingest.base"):
            assert all(d.startswith("ppe_ingest.base") for d in deps), (mod, deps)


def _definitions(name: str) -> list[str]:
    """Modules (outside tests) that define a function or class called `name`."""
    out = []
    for mod, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
                out.append(mod)
    return out


@pytest.mark.parametrize("name, home", [
    ("read_history", "ppe_ingest.ctsmio.history"),
    ("record_days", "ppe_ingest.ctsmio.history"),
    ("interval_start", "ppe_ingest.ctsmio.history"),
    ("nse", "esm_emu.metrics"),
    ("nearest_gridcell", "ppe_ingest.base.geometry"),
    ("great_circle_deg", "ppe_ingest.base.geometry"),
    ("read_static", "ppe_ingest.ctsmio.surfdata"),
    ("open_store", "ppe_ingest.store"),
    ("physical_range", "ppe_ingest.ctsmio.physical"),
    ("check_physical", "ppe_ingest.ctsmio.surfdata"),
])
def test_shared_nouns_have_one_definition(name, home):
    assert _definitions(name) == [home]


def _string_tuples(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.Tuple, ast.List)) and node.elts and all(
                isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
            yield node.lineno, [e.value for e in node.elts]


@pytest.mark.parametrize("marker", [{"RAIN", "SNOW", "TBOT", "FSDS"}, {"PCT_SAND", "PCT_CLAY", "ORGANIC"},
                                    {"QRUNOFF", "QOVER", "QDRAI", "EFLX_LH_TOT"}])
def test_vocabulary_lists_are_written_out_once(marker):
    home = "ppe_ingest.ctsmio.vocabulary"
    where = [f"{mod}:{line}" for mod, path in MODULES.items() if mod != home
             for line, items in _string_tuples(path) if marker <= set(items)]
    assert not where, f"write these names as imports from {home}: {where}"
