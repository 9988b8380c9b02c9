"""The configs that ship with esm-emu, installed as the package ``ppe_ingest.configs``.

pyproject.toml maps this folder to that package, so a wheel carries it and an editable install
reads it in place; code finds it through importlib.resources, never through the source tree.
`esm-emu config list|show NAME|copy NAME DIR` starts a user from these files.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from ppe_ingest.base.atomic import atomic_path
from ppe_ingest.base.errors import UserError

SUFFIXES = (".yaml", ".yml", ".csv")


def folder() -> Path:
    """The installed folder of the shipped configs (relative paths inside them resolve against it)."""
    root = resources.files(__name__)
    if not isinstance(root, Path):
        raise UserError(f"{root}: the shipped configs are inside an archive; install esm-emu unpacked")
    return root


def names() -> list[str]:
    """File names of the shipped configs, sorted."""
    return sorted(p.name for p in folder().iterdir() if p.suffix in SUFFIXES and p.is_file())


def path(name: str) -> Path:
    """The shipped config called `name` (e.g. quickstart.yaml); UserError listing the shipped ones."""
    if name not in names():
        raise UserError(f"{name}: no shipped config of that name (shipped: {', '.join(names())})")
    return folder() / name


def copy_to(name: str, dest_dir: str | Path) -> Path:
    """Copy a shipped config into `dest_dir` (created if needed); never overwrites a file."""
    src = path(name)
    dest = Path(dest_dir) / name
    if dest.exists():
        raise UserError(f"{dest}: already exists; refusing to overwrite it (remove it or copy into another folder)")
    with atomic_path(dest) as tmp:
        tmp.write_bytes(src.read_bytes())
    return dest


def referenced(name: str) -> list[str]:
    """Other shipped files that a shipped config names (by relative path), e.g. its parameter table."""
    text = path(name).read_text()
    return [other for other in names() if other != name and other in text]
