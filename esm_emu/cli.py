"""The `esm-emu` command line: one entry point whose subcommands are plugins.

Each package registers its subcommands under the ``esm_emu.commands`` entry-point group
(pyproject.toml) with a ``register(subparsers)`` function that adds a parser and sets
``func(args) -> int``. Handlers import their heavy dependencies lazily so ``--help`` is fast.
"""
from __future__ import annotations

import argparse
import sys
from importlib import import_module, metadata

from ppe_ingest.base.errors import EXIT_STATUS_HELP, run_guarded, shown


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (``esm-emu CMD: error: ...; see esm-emu CMD --help``), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {shown(message, limit=400, quote=False)} "
                     f"(see `{self.prog} --help`)\n")


def _registrars():
    eps = metadata.entry_points(group="esm_emu.commands")
    return sorted(eps, key=lambda ep: ep.name)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(
        prog="esm-emu",
        description="Emulate CTSM perturbed-parameter ensembles, infer soil and hydrologic "
        "parameters from in-situ data, and write them back as CTSM files.",
        epilog=f"{EXIT_STATUS_HELP} --debug may follow the command too.",
    )
    parser.add_argument("--version", action="version", version=f"esm-emu {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback on errors (anywhere on the command line)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for ep in _registrars():
        module_name, _, func = ep.value.partition(":")
        try:
            module = import_module(module_name)
        except ModuleNotFoundError as e:
            # A plugin whose own module is absent (not installed in this checkout) is left out;
            # any other missing import is a real error and propagates.
            if e.name and module_name.startswith(e.name):
                continue
            raise
        getattr(module, func or "register")(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug anywhere before a "--" (also after the subcommand, whose parser does not know it)
    end = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:end]
    argv = [a for i, a in enumerate(argv) if not (a == "--debug" and i < end)]
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return run_guarded(f"esm-emu {args.command}", lambda: args.func(args), debug=debug)


if __name__ == "__main__":
    sys.exit(main())
