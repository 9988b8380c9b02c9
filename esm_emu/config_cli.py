"""`esm-emu config list | show NAME | copy NAME DIR`: the configs that ship with esm-emu, to start from."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("config", help="list, show or copy the shipped configs (quickstart, emulator, "
                              "inverse, parameter table) to start your own from",
                              description="The configs that ship with esm-emu (package data): list them, "
                              "print one, or copy one into a folder to edit.")
    sub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    sub.add_parser("list", help="the shipped configs").set_defaults(func=_list)
    s = sub.add_parser("show", help="print a shipped config")
    s.add_argument("name", metavar="NAME", help="e.g. quickstart.yaml")
    s.set_defaults(func=_show)
    c = sub.add_parser("copy", help="copy a shipped config into DIR (never overwrites a file)")
    c.add_argument("name", metavar="NAME", help="e.g. quickstart.yaml")
    c.add_argument("dest", metavar="DIR", help="folder to copy it into (created if needed)")
    c.set_defaults(func=_copy)


def _list(args: argparse.Namespace) -> int:
    from ppe_ingest import configs

    for name in configs.names():
        print(name)
    return 0


def _show(args: argparse.Namespace) -> int:
    from ppe_ingest import configs

    print(configs.path(args.name).read_text(), end="")
    return 0


def _copy(args: argparse.Namespace) -> int:
    from ppe_ingest import configs
    from ppe_ingest.base.config import output_folder

    configs.path(args.name)  # an unknown name is refused before the folder is made
    output_folder(args.dest, "DIR", create=False)
    dest = configs.copy_to(args.name, args.dest)
    print(f"wrote {dest}")
    for other in configs.referenced(args.name):
        if not (dest.parent / other).exists():
            print(f"note: {args.name} names {other} beside it; `esm-emu config copy {other} {args.dest}` "
                  f"copies it too (or point that key at your own file)")
    return 0
