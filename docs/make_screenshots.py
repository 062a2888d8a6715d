"""Regenerate the screenshots of docs/user-guide.md into docs/images/.

Runs ``napari-ldae demo --screenshot docs/images`` (the same steps as the interactive demo,
driven headless; without a display it re-runs itself under ``xvfb-run -a``). Usage::

    python docs/make_screenshots.py [--bundle PATH] [--device cpu]

The demo bundle (``resources/demo``) is used unless ``--bundle`` or ``NAPARI_LDAE_BUNDLE``
names another one.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

IMAGES = Path(__file__).resolve().parent / "images"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help="model bundle (default: the demo bundle)")
    parser.add_argument("--device", help="cpu, cuda:0, mps")
    parser.add_argument("--out", default=str(IMAGES), help="folder for the PNGs")
    a = parser.parse_args(argv)
    cmd = [sys.executable, "-m", "napari_ldae.cli", "demo", "--screenshot", a.out]
    for flag, value in (("--bundle", a.bundle), ("--device", a.device)):
        if value:
            cmd += [flag, value]
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
