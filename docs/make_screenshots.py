"""Regenerate the screenshots of docs/user-guide.md into docs/images/.

The demo's pictures come from ``napari-ldae demo --screenshot docs/images`` (the same steps as
the interactive demo, driven headless; without a display it re-runs itself under
``xvfb-run -a``): the model panel, an edit carried onto the 1.5 mm demo subject with its
difference, its log-Jacobian, the 3D view, the sweeps over the visits and past them, and the
region volume table and plot of a sweep (``napari_ldae.gui.demo.SCREENSHOTS``).
``prepare-qc.png`` shows the encode panel's QC layers after preparing a synthetic head with
skull (``synthetic_head``, moved off the MNI position): it needs a display
too, and re-runs this script under ``xvfb-run -a`` without one. Usage::

    python docs/make_screenshots.py [--bundle PATH] [--device cpu] [--only demo|qc]

The demo bundle (``resources/demo``) is used unless ``--bundle`` or ``NAPARI_LDAE_BUNDLE``
names another one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

IMAGES = Path(__file__).resolve().parent / "images"
QC_PICTURE = "prepare-qc.png"
#: The subject's motion in the scanner (rotation °, shift mm): off MNI, yet in one slice.
QC_MOTION = ((8.0, 0.0, 6.0), (6.0, -8.0, 4.0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help="model bundle (default: the demo bundle)")
    parser.add_argument("--device", help="cpu, cuda:0, mps")
    parser.add_argument("--out", default=str(IMAGES), help="folder for the PNGs")
    parser.add_argument("--only", choices=("demo", "qc"), help="one group of pictures")
    a = parser.parse_args(argv)
    options = [x for flag, value in (("--bundle", a.bundle), ("--device", a.device)) if value
               for x in (flag, value)]
    if a.only != "qc":
        code = subprocess.call([sys.executable, "-m", "napari_ldae.cli", "demo",
                                "--screenshot", a.out, *options])
        if code:
            return code
    if a.only == "demo":
        return 0
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        xvfb = shutil.which("xvfb-run")
        if xvfb is None:
            print("no display and no xvfb-run: install xvfb and xauth", file=sys.stderr)
            return 2
        return subprocess.call([xvfb, "-a", "-s", "-screen 0 1600x1000x24", sys.executable,
                                __file__, "--only", "qc", "--out", a.out, *options])
    print(f"wrote {qc_screenshot(Path(a.out), a.bundle, a.device)}")
    return 0


def qc_screenshot(out: Path, bundle: str | None, device: str | None) -> Path:
    """Prepare a raw head in the encode panel (auto) and shoot its QC layers side by side:
    the scan with the brain mask's outline, the registered brain over the template."""
    import napari
    import nibabel as nib

    from napari_ldae.data.synthetic_head import make_head, motion, move_head
    from napari_ldae.gui._state import get_state
    from napari_ldae.gui.demo import _shooter, axial_view
    from napari_ldae.gui.encode_widget import EncodeWidget
    from napari_ldae.gui.model_widget import ModelWidget
    from napari_ldae.session import Session

    os.environ["NAPARI_LDAE_SYNC"] = "1"  # drive the panel step by step
    head = move_head(make_head(1.5), motion(*QC_MOTION))
    viewer = napari.Viewer(title="napari-ldae: prepare a raw scan")
    try:
        get_state(viewer).set_session(Session(bundle, device=device))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "sub-demo_T1w.nii.gz"
            nib.save(nib.Nifti1Image(head.data, head.affine), path)
            raw = viewer.open(str(path), plugin="napari-ldae")[0]
        viewer.window.add_dock_widget(ModelWidget(viewer), name="LDAE model", area="right")
        encode = EncodeWidget(viewer)
        dock = viewer.window.add_dock_widget(encode, name="LDAE encode", area="right",
                                             tabify=True)
        dock.show()
        dock.raise_()
        encode.layer_combo.select(raw.name)
        encode.controls.button.click()
        viewer.grid.enabled = True
        viewer.grid.stride = 2  # the scan with its mask; the template with the brain
        viewer.layers.selection.active = viewer.layers[f"{raw.name} [prepared]"]
        axial_view(viewer, z_mm=10.0)
        target = out / QC_PICTURE
        _shooter(viewer)(target)
        return target
    finally:
        viewer.close()


if __name__ == "__main__":
    sys.exit(main())
