"""Regenerate the usage blocks of docs/cli.md from the parser itself (`--help`), so they stay true.

    python docs/make_cli_reference.py           # rewrite the blocks in place
    python docs/make_cli_reference.py --check   # exit 1 if docs/cli.md is out of date

Each block lies between ``<!-- usage: napari-ldae CMD -->`` and ``<!-- end usage -->``. A
sub-command without a section gets one appended (usage only), to be described by hand. Help is
rendered 100 columns wide; argparse's layout differs slightly between Python versions, so run
this with the project's venv.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

DOC = Path(__file__).with_name("cli.md")
BLOCK = re.compile(r"(<!-- usage: (napari-ldae[\w -]*?) -->\n).*?(<!-- end usage -->)", re.S)


def helps() -> dict[str, str]:
    """``napari-ldae`` and each ``napari-ldae CMD`` → its ``--help`` text."""
    os.environ["COLUMNS"] = "100"
    from napari_ldae.cli import build_parser

    parser = build_parser()
    out = {"napari-ldae": parser.format_help()}
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        out[f"napari-ldae {name}"] = p.format_help()
    return out


def render(doc: str, texts: dict[str, str]) -> str:
    def block(m: re.Match) -> str:
        text = texts.get(m.group(2))
        if text is None:
            return f"{m.group(1)}(no such command in this version){m.group(3)}"
        return f"{m.group(1)}```text\n{text.rstrip()}\n```\n{m.group(3)}"

    doc = BLOCK.sub(block, doc)
    for command, text in texts.items():
        if command != "napari-ldae" and f"<!-- usage: {command} -->" not in doc:
            doc = doc.rstrip("\n") + (f"\n\n## `{command}`\n\n<!-- usage: {command} -->\n"
                                      f"```text\n{text.rstrip()}\n```\n<!-- end usage -->\n")
    return doc


def main() -> int:
    check = "--check" in sys.argv[1:]
    old = DOC.read_text()
    new = render(old, helps())
    if check:
        if new != old:
            print(f"{DOC} is out of date: run python docs/make_cli_reference.py")
            return 1
        return 0
    if new != old:
        DOC.write_text(new)
        print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
