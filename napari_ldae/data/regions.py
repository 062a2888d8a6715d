"""Region volumes (ml) of a brain: lateral ventricles, hippocampal region, grey matter, white
matter, CSF and the whole brain, on any volume (a scan or a result) placed in MNI space.

The regions are defined once, in MNI, on the 1 mm ICBM152 2009a template inside the ``nilearn``
wheel (:data:`REGIONS`): the synthetic cohort's two ground-truth structures
(:mod:`napari_ldae.data.synthetic_template`), the template's grey- and white-matter maps, CSF as
the rest of its brain mask, and the brain mask itself. A volume is placed in MNI by its affine
and its map to MNI (``to_mni``, e.g. a prepared scan's ``input_to_template``).

- The two structures are measured by the structure network (:mod:`napari_ldae.data.structures`:
  a 3D U-Net trained on synthetic scans whose truth masks are known), the same measurement
  ``napari-ldae evaluate`` validates against the synthetic cohort's ``ventricle_ml`` and
  ``hippocampus_ml``.
- Tissues and the whole brain by atlas propagation: the template is registered onto the volume
  by SimpleITK's diffeomorphic demons (after histogram matching, so contrast and units do not
  matter), and each map is pulled back through that mapping onto the volume's voxels and
  summed, ``ml = Σ map(φ(x)) × voxel ml``.

Why not propagate the structures too, or measure them on the template's terms: measured on the
synthetic cohort (docs/method.md), registration recovers only part of a subject's local shape, and
intensity rules on the template's masks err per subject with the scan's contrast.

:func:`write_volumes_tsv` writes a BIDS-derivative style table, one row per output, the regions
as columns, with a JSON sidecar giving each column's meaning and unit.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_ldae._files import atomic_write
from napari_ldae.data.demons import bounding_box
from napari_ldae.errors import LDAEError

#: Region name (a column of the volume table) → what it holds.
REGIONS = {
    "lateral_ventricles": "lateral ventricles of the template (dark CSF connected to the "
                          "bodies), as the synthetic cohort's ventricle_ml defines them",
    "hippocampal_region": "grey matter inside two ellipsoids about MNI (±28, −22, −13), as the "
                          "synthetic cohort's hippocampus_ml defines it (not a segmentation)",
    "grey_matter": "ICBM152 2009a grey-matter probability inside the brain mask",
    "white_matter": "ICBM152 2009a white-matter probability inside the brain mask",
    "csf": "the rest of the brain mask: ventricles and sulcal CSF",
    "whole_brain": "the template's brain mask (filled, CSF inside it included)",
}
#: Extra columns of a result's row: a structure's change from the result's reference (the model's
#: reconstruction) by the deformation between them (:mod:`napari_ldae.data.tbm`).
CHANGE_BY_DEFORMATION = {
    f"{name}_change_by_deformation": f"change of the {name.replace('_', ' ')} from the model's "
    "reconstruction to this result, read from the deformation between them on the model grid"
    for name in ("lateral_ventricles", "hippocampal_region")}
#: The regions measured by atlas propagation.
TISSUES = ("grey_matter", "white_matter", "csf", "whole_brain")
#: Registered template and volume must correlate this well inside the brain to be measured.
MIN_MATCH = 0.5
#: Volumes finer than this (mm) are measured on a grid this fine: the measurements were
#: validated down to it, and a 1 mm scan takes a quarter of the time.
MEASURE_MM = 1.5
#: Finest spacing (mm) the registration runs at; finer volumes are registered at a multiple.
REGISTRATION_MM = 3.0
#: Diffeomorphic demons: iterations per level, Gaussian smoothing of the field (voxels).
ITERATIONS, SMOOTHING = 50, 0.5
#: The maps are pulled back onto the template brain's box grown by this (mm).
BOX_MARGIN_MM = 12.0
#: The tissue maps are blurred to the volume's spacing, and at least to this FWHM (mm).
TISSUE_FWHM_MM = 1.5
_BRAIN_T1 = 0.15  # template voxels above this (holes filled) are its brain, as in the cohort


@dataclass(frozen=True)
class RegionVolumes:
    """One measurement: ``ml`` per region of :data:`REGIONS` (``nan`` when the volume does not
    look like a brain) and ``match``, the correlation of the registered template with it."""

    ml: dict[str, float]
    match: float


def measure_regions(volume: np.ndarray, affine: np.ndarray, *,
                    to_mni: np.ndarray | None = None) -> RegionVolumes:
    """Measure every region of :data:`REGIONS` on one skull-stripped brain volume.

    ``affine``: voxel → world (4×4); ``to_mni``: world → MNI (4×4), the identity when the
    world is MNI already. Volumes are in the volume's own world (ml).
    """
    from scipy import ndimage as ndi

    vol, affine = _measurable(volume, affine)
    grid_to_mni, native = _geometry(affine, to_mni)
    voxel_ml = abs(float(np.linalg.det(grid_to_mni[:3, :3]))) / 1000.0 * native
    spacing = float(np.mean(np.linalg.norm(grid_to_mni[:3, :3], axis=0)))
    maps, mni_affine = _atlas(round(max(spacing, TISSUE_FWHM_MM), 2))
    index = np.linalg.inv(mni_affine) @ grid_to_mni  # volume voxel → atlas voxel
    template = ndi.affine_transform(maps["t1"], index[:3, :3], index[:3, 3],
                                    output_shape=vol.shape, order=1)
    if vol.max() <= 0 or template.max() <= 0:
        raise LDAEError("this volume does not overlap the MNI152 brain: region volumes need a "
                        "brain in MNI position (or its map to MNI)")
    displacement = _register(vol, template, spacing)
    box = bounding_box(template > 0, round(BOX_MARGIN_MM / spacing))
    points = np.indices(vol.shape, dtype=np.float32)[(slice(None), *box)]
    points += displacement[(slice(None), *box)]
    atlas_points = (np.einsum("ij,j...->i...", index[:3, :3].astype(np.float32), points)
                    + index[:3, 3].astype(np.float32).reshape(3, 1, 1, 1))
    pulled = {name: ndi.map_coordinates(maps[name], atlas_points, order=1, output=np.float32)
              for name in ("t1", *TISSUES)}
    warped = _matched(pulled.pop("t1"), vol[box])
    brain = pulled["whole_brain"] >= 0.5
    match = float(np.corrcoef(vol[box][brain], warped[brain])[0, 1]) if brain.sum() > 2 else 0.0
    if not match >= MIN_MATCH:
        return RegionVolumes(dict.fromkeys(REGIONS, math.nan), match)
    ml = structure_volumes(vol, affine, to_mni=to_mni)
    ml |= {name: float(m.sum(dtype=np.float64)) * voxel_ml for name, m in pulled.items()}
    return RegionVolumes(ml, match)


def region_volumes(volume: np.ndarray, affine: np.ndarray, *,
                   to_mni: np.ndarray | None = None) -> dict[str, float]:
    """Region → ml of one brain volume (see :func:`measure_regions`)."""
    return measure_regions(volume, affine, to_mni=to_mni).ml


def structure_volumes(volume: np.ndarray, affine: np.ndarray, *,
                      to_mni: np.ndarray | None = None) -> dict[str, float]:
    """The lateral ventricles and the hippocampal region (ml of the volume's own world) by the
    structure network (:mod:`napari_ldae.data.structures`), whatever the volume holds:
    :func:`measure_regions` says whether it is a brain."""
    from napari_ldae.data.structures import structures_ml

    vol, affine = _measurable(volume, affine)
    grid_to_mni, native = _geometry(affine, to_mni)
    return {name: ml * native for name, ml in structures_ml(vol, grid_to_mni).items()}


def lateral_ventricles_ml(volume: np.ndarray, affine: np.ndarray, *,
                          to_mni: np.ndarray | None = None) -> float:
    """The lateral ventricles (ml) of one brain volume (:func:`structure_volumes`)."""
    return structure_volumes(volume, affine, to_mni=to_mni)["lateral_ventricles"]


# ----------------------------------------------------------------------------- the table
def write_volumes_tsv(path: str | os.PathLike, rows: Mapping[str, Mapping[str, float]], *,
                      overwrite: bool = False) -> Path:
    """Write ``{output name: {region: ml}}`` as a tab-separated table, one row per output,
    column ``output`` then the regions of :data:`REGIONS` and, when some row has them, the
    columns of :data:`CHANGE_BY_DEFORMATION` (``n/a`` where missing or not a number), and its
    JSON sidecar (``.json`` beside it) describing the columns. Atomic."""
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if not overwrite and (path.exists() or sidecar.exists()):
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    if not rows:
        raise LDAEError("no volumes to write")
    text = io.StringIO()
    writer = csv.writer(text, delimiter="\t", lineterminator="\n")
    changes = any(k in volumes for k in CHANGE_BY_DEFORMATION for volumes in rows.values())
    described = REGIONS | (CHANGE_BY_DEFORMATION if changes else {})
    writer.writerow(["output", *described])
    for name, volumes in rows.items():
        writer.writerow([name, *(_cell(volumes.get(column)) for column in described)])
    columns = {"output": {"Description": "the volume measured (an input or a result)"}}
    columns |= {name: {"Description": what, "Units": "mL"} for name, what in described.items()}
    atomic_write(sidecar, json.dumps(columns, indent=2, ensure_ascii=False) + "\n")
    return atomic_write(path, text.getvalue())


def read_volumes_tsv(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """The table :func:`write_volumes_tsv` wrote (``n/a`` → ``nan``)."""
    with open(path, newline="") as f:
        return {row.pop("output"): {k: math.nan if v == "n/a" else float(v)
                                    for k, v in row.items()}
                for row in csv.DictReader(f, delimiter="\t")}


def _cell(value: float | None) -> str:
    return f"{value:.3f}" if value is not None and math.isfinite(value) else "n/a"


# ----------------------------------------------------------------------------- measurement
def _measurable(volume, affine) -> tuple[np.ndarray, np.ndarray]:
    """The volume, checked, and on a grid no finer than :data:`MEASURE_MM` (anti-aliased)."""
    from scipy import ndimage as ndi

    vol = np.asarray(volume, dtype=np.float32).squeeze()
    if vol.ndim != 3 or not np.isfinite(vol).all():
        raise LDAEError(f"region volumes need one finite 3D volume, got shape {np.shape(volume)}")
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0) if affine.shape == (4, 4) else np.ones(3)
    factor = MEASURE_MM / spacing
    if np.all(factor <= 1.0 + 1e-6):
        return vol, affine
    factor = np.maximum(factor, 1.0)
    sigma = np.sqrt(factor**2 - 1.0) / 2.3548  # FWHM of the new voxel
    shape = tuple(int(n) for n in np.ceil(np.asarray(vol.shape) / factor))
    coarse = ndi.affine_transform(ndi.gaussian_filter(vol, sigma), factor, output_shape=shape,
                                  order=1)
    return coarse, affine @ np.diag([*factor, 1.0])


def _geometry(affine, to_mni) -> tuple[np.ndarray, float]:
    """Volume voxel → MNI mm (4×4), and the volume's world ml per MNI ml."""
    matrices = [np.asarray(m, dtype=np.float64) for m in (affine, np.eye(4) if to_mni is None
                                                          else to_mni)]
    for m in matrices:
        if m.shape != (4, 4) or not np.isfinite(m).all() or abs(np.linalg.det(m)) < 1e-9:
            raise LDAEError("the affine and the map to MNI must be invertible 4×4 matrices")
    return matrices[1] @ matrices[0], 1.0 / abs(float(np.linalg.det(matrices[1][:3, :3])))


def _register(vol: np.ndarray, template: np.ndarray, spacing: float) -> np.ndarray:
    """The demons displacement (3, X, Y, Z; voxels) that carries each voxel of ``vol`` to its
    point on ``template`` (both on the volume's grid), at :data:`REGISTRATION_MM` or coarser."""
    import SimpleITK as sitk

    from napari_ldae.data.demons import demons, field_array, sitk_image

    fixed = sitk_image(vol)
    moving = sitk.HistogramMatching(sitk_image(template), fixed, 256, 7, True)
    finest = max(1, round(REGISTRATION_MM / spacing))
    return field_array(demons(fixed, moving, (2 * finest, finest), ITERATIONS, SMOOTHING))


def _matched(template: np.ndarray, vol: np.ndarray) -> np.ndarray:
    """The template's intensities mapped onto the volume's (histogram matching)."""
    import SimpleITK as sitk

    from napari_ldae.data.demons import sitk_image

    matched = sitk.HistogramMatching(sitk_image(template), sitk_image(vol), 256, 7, True)
    return sitk.GetArrayFromImage(matched).transpose(2, 1, 0)


@functools.lru_cache(maxsize=2)
def _atlas(fwhm_mm: float) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The template T1 and the tissue maps at 1 mm, each blurred to ``fwhm_mm`` (the maps'
    integrals are kept), and their MNI affine (needs nilearn's wheel)."""
    from scipy import ndimage as ndi

    from napari_ldae.data.synthetic_template import template_mni

    maps, _, affine = template_mni()
    brain = ndi.binary_fill_holes(maps["t1"] > _BRAIN_T1).astype(np.float32)
    tissue = np.clip(maps["gm"], 0, 1) + np.clip(maps["wm"], 0, 1)
    share = brain / np.maximum(tissue, 1.0)  # grey + white ≤ 1 inside the brain, 0 outside
    grey, white = np.clip(maps["gm"], 0, 1) * share, np.clip(maps["wm"], 0, 1) * share
    sharp = {"t1": maps["t1"], "grey_matter": grey, "white_matter": white,
             "csf": brain - grey - white, "whole_brain": brain}
    sigma = math.sqrt(max(fwhm_mm**2 - 1.0, 0.0)) / 2.3548  # the atlas is at 1 mm
    out = {}
    for name, image in sharp.items():
        out[name] = ndi.gaussian_filter(image.astype(np.float32), sigma) if sigma > 0.1 else image
        out[name].setflags(write=False)
    return out, affine
