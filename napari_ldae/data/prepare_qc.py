"""Quality control of a prepared scan: numbers, the refusal of bad input, a figure, the files.

:func:`measure` compares the registered brain with the template on the model grid (Dice of the
brain masks, correlation of intensities), and finds how much of the template brain falls inside
the input's field of view. :func:`check` turns those into a :class:`ScanError` (not a T1-like
contrast, part of the brain outside the scan) or warnings (a poor registration).
:func:`figure` draws three planes of the registered brain with the template's edges (red) and
the brain mask's outline (green); :func:`write_outputs` writes every file of one prepared scan,
all or none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage as ndi

from napari_ldae._files import atomic_write
from napari_ldae.errors import ScanError

if TYPE_CHECKING:
    from napari_ldae.data.prepare import Prepared

#: Below this correlation with the T1 template the contrast is not T1-like (an error).
MIN_T1_CORRELATION = 0.2
#: Below these the registration is poor (a warning, with the QC figure).
MIN_DICE, MIN_CORRELATION = 0.85, 0.5
#: Share of the template brain that must fall inside the input's field of view.
MIN_IN_FOV = 0.97
SUFFIXES = {"prepared": "_prepared.nii.gz", "mask": "_brainmask.nii.gz",
            "transform": "_transform.json", "png": "_qc.png", "qc": "_qc.json"}


def measure(prep: Prepared, edge_share: float = 0.0) -> dict[str, Any]:
    """QC numbers of a prepared scan (see the module docstring)."""
    from napari_ldae.data.mni import template_on

    t = prep.transform
    t1, tmask = template_on(t.prepared_affine, t.prepared_shape)
    mgrid = prep.mask_on_grid()
    dice = 2.0 * (tmask & mgrid).sum() / max(int(tmask.sum() + mgrid.sum()), 1)
    a, b = prep.data[tmask].astype(np.float64), t1[tmask].astype(np.float64)
    ncc = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 else 0.0
    pts = np.argwhere(tmask)[::8].T
    vox = t.prepared_to_input_voxels()
    u = vox[:3, :3] @ pts + vox[:3, 3:]
    shape = np.asarray(t.input_shape)[:, None]
    in_fov = float(np.mean(np.all((u >= -0.5) & (u <= shape - 0.5), axis=0)))
    lin = t.template_to_input[:3, :3]
    return {
        "dice_template": round(float(dice), 4),
        "correlation_template": round(ncc, 4),
        "brain_in_field_of_view": round(in_fov, 4),
        "mask_on_edge": round(float(edge_share), 4),
        "brain_ml": round(float(prep.mask.sum() * abs(np.linalg.det(t.input_affine[:3, :3])))
                          / 1000.0, 1),
        "scale": round(float(abs(np.linalg.det(lin)) ** (1 / 3)), 4),
        "steps": dict(t.steps),
    }


def check(prep: Prepared) -> list[str]:
    """Refuse bad input (:class:`ScanError`); return warnings about a poor registration."""
    qc, name = prep.qc, prep.transform.input_name or "scan"
    if qc["correlation_template"] < MIN_T1_CORRELATION:
        raise ScanError(
            f"{name}: the contrast does not look T1-weighted (correlation with the T1 template "
            f"{qc['correlation_template']:.2f} after registration); the model needs a T1 scan")
    if qc["brain_in_field_of_view"] < MIN_IN_FOV:
        raise ScanError(
            f"{name}: partial field of view: {1 - qc['brain_in_field_of_view']:.0%} of the brain "
            "lies outside the scan; the model needs the whole brain")
    warnings = []
    if qc["dice_template"] < MIN_DICE or qc["correlation_template"] < MIN_CORRELATION:
        warnings.append(
            f"{name}: poor registration QC (brain overlap with the template "
            f"{qc['dice_template']:.2f}, intensity correlation "
            f"{qc['correlation_template']:.2f}; expected ≥ {MIN_DICE} and ≥ {MIN_CORRELATION}). "
            "Check the QC figure before using the results.")
    return warnings


def figure(prep: Prepared, zoom: int | None = None) -> np.ndarray:
    """Sagittal, coronal and axial planes through the grid centre as an RGB uint8 image."""
    from napari_ldae.data.mni import template_on

    t = prep.transform
    t1, _ = template_on(t.prepared_affine, t.prepared_shape)
    edges = np.hypot(*(ndi.sobel(ndi.gaussian_filter(t1, 1.0), axis=i) for i in range(2)))
    edges = np.hypot(edges, ndi.sobel(ndi.gaussian_filter(t1, 1.0), axis=2))
    edges = edges > np.percentile(edges, 93)
    mask = prep.mask_on_grid()
    outline = mask & ~ndi.binary_erosion(mask)
    img = prep.data / max(float(t.intensity_max or prep.data.max()), 1e-6)
    c = [s // 2 for s in t.prepared_shape]
    panels = []
    for axis in range(3):
        cut = [slice(None)] * 3
        cut[axis] = c[axis]
        gray, red, green = (np.rot90(v[tuple(cut)]) for v in (img, edges, outline))
        rgb = np.repeat(np.clip(gray, 0, 1)[..., None], 3, axis=2)
        rgb[red] = (1.0, 0.2, 0.2)
        rgb[green] = (0.2, 1.0, 0.2)
        panels.append(rgb)
    height = max(p.shape[0] for p in panels)
    panels = [np.pad(p, ((0, height - p.shape[0]), (0, 2), (0, 0))) for p in panels]
    out = (np.concatenate(panels, axis=1) * 255).astype(np.uint8)
    zoom = zoom or max(1, round(256 / max(t.prepared_shape)))
    return np.kron(out, np.ones((zoom, zoom, 1), dtype=np.uint8))


def png_bytes(prep: Prepared) -> bytes:
    """The QC figure as PNG bytes, captioned with the QC numbers."""
    import io

    from PIL import Image, ImageDraw

    rgb = figure(prep)
    canvas = np.zeros((rgb.shape[0] + 34, rgb.shape[1], 3), dtype=np.uint8)
    canvas[:rgb.shape[0]] = rgb
    im = Image.fromarray(canvas)
    draw = ImageDraw.Draw(im)
    qc = prep.qc
    draw.text((4, rgb.shape[0] + 2), "red: template edges, green: brain mask outline",
              fill=(230, 230, 230))
    draw.text((4, rgb.shape[0] + 18),
              f"Dice {qc.get('dice_template', 0):.3f}  r {qc.get('correlation_template', 0):.3f}"
              f"  in FOV {qc.get('brain_in_field_of_view', 0):.3f}"
              + ("  POOR" if prep.warnings else ""), fill=(230, 230, 230))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def output_paths(outdir: str | Path, stem: str) -> dict[str, Path]:
    """The files :func:`write_outputs` writes for ``stem`` (plus the image's JSON sidecar)."""
    return {k: Path(outdir) / f"{stem}{s}" for k, s in SUFFIXES.items()}


def write_outputs(prep: Prepared, outdir: str | Path, stem: str, *,
                  overwrite: bool = False) -> dict[str, Path]:
    """Write the prepared brain, the mask, the transform, the QC figure and the QC numbers.

    An existing output is an error unless ``overwrite``; each file is written atomically, and
    when one fails the files this call already wrote are removed.
    """
    from napari_ldae.data.io import sidecar_path, write_scan

    paths = output_paths(outdir, stem)
    if not overwrite:
        for p in [*paths.values(), sidecar_path(paths["prepared"])]:
            if p.exists():
                raise FileExistsError(f"{p} already exists; pass --overwrite to replace it")
    t = prep.transform
    qc = {**prep.qc, "warnings": list(prep.warnings), "files": {k: p.name for k, p in
                                                                 paths.items()}}
    written: list[Path] = []
    try:
        written.append(paths["transform"])
        t.save(paths["transform"], overwrite=True)
        written.append(paths["mask"])
        write_mask(prep, paths["mask"])
        written.append(paths["png"])
        atomic_write(paths["png"], png_bytes(prep))
        written.append(paths["qc"])
        atomic_write(paths["qc"], json.dumps(qc, indent=2) + "\n")
        written += [paths["prepared"], sidecar_path(paths["prepared"])]
        write_scan(paths["prepared"], prep.data, affine=t.prepared_affine, space="model",
                   source=prep.scan.path, overwrite=True,
                   provenance={"prepared": True, "transform": paths["transform"].name,
                               "steps": dict(t.steps)})
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    return paths


def write_mask(prep: Prepared, path: str | Path) -> Path:
    """The brain mask (uint8, 1 inside) in the input's space and header, written atomically."""
    import nibabel as nib

    hdr = prep.scan.header.copy()
    img = (nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image)(
        prep.mask.astype(np.uint8), prep.scan.affine, hdr)
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1.0, 0.0)
    return atomic_write(path, lambda tmp: nib.save(img, tmp))
