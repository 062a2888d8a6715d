"""demo: napari with the demo bundle, or its screenshots without a display."""

from __future__ import annotations

import argparse
import sys

from napari_ldae.cli._common import command
from napari_ldae.errors import LDAEError


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub, "demo", run_demo,
        help="open napari with the demo bundle, a synthetic subject and the LDAE widgets "
        "(without a display: save screenshots instead)",
    )
    p.add_argument("--bundle", help="model bundle (default: $NAPARI_LDAE_BUNDLE, else the "
                   "demo bundle in resources/demo)")
    p.add_argument("--device", help="cpu, cuda:0, mps (default: the first that works)")
    p.add_argument("--screenshot", metavar="DIR", help="drive the demo headless, save PNGs "
                   "(2D edit with its difference map, 3D view, interpolation sweep) and exit")


def run_demo(a: argparse.Namespace) -> None:
    import os

    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        _rerun_under_xvfb(a)
        return
    from napari_ldae.gui import demo

    for path in demo.run_demo(a.bundle, a.screenshot, a.device):
        print(f"wrote {path}")


def _rerun_under_xvfb(a: argparse.Namespace) -> None:
    """No display: run the screenshot demo again under ``xvfb-run -a`` (or say how)."""
    import shutil
    import subprocess

    out = a.screenshot or "ldae-demo-screenshots"
    xvfb = shutil.which("xvfb-run")
    if xvfb is None:
        raise LDAEError("no display (DISPLAY and WAYLAND_DISPLAY are unset) and no xvfb-run: "
                        "install it (apt-get install xvfb xauth) or run on a desktop; then "
                        f"`xvfb-run -a napari-ldae demo --screenshot {out}`")
    argv = [xvfb, "-a", "-s", "-screen 0 1600x1000x24", sys.executable, "-m",
            "napari_ldae.cli", "demo", "--screenshot", out]
    for flag, value in (("--bundle", a.bundle), ("--device", a.device)):
        if value:
            argv += [flag, value]
    print(f"no display: running the demo under xvfb-run; screenshots go to {out}",
          file=sys.stderr)
    code = subprocess.call(argv)
    if code:
        raise SystemExit(code)
