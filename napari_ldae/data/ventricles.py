"""A simple lateral-ventricle volume measurement for MNI-aligned T1 volumes.

The lateral ventricles of the region volumes (:mod:`napari_ldae.data.regions`), which evaluate
uses to check manipulations against ground truth (does the "toward AD" direction enlarge the
ventricles?). It is deliberately simple and is validated, not trusted: the evaluation reports
its correlation and error against the cohort's ``ventricle_ml`` column before using it.

The method, for a volume in [0, 1] and its voxel-to-world affine (world = MNI152 mm, as for
scans registered to MNI like the paper's ADNI preprocessing, and for the synthetic cohort):

1. **Prior.** The lateral ventricles of the ICBM152 2009a template, exactly as the synthetic
   cohort defines them (:mod:`napari_ldae.data.synthetic`: dark CSF connected to two seeds),
   blurred to the target voxel size and sampled onto the target grid (a fraction per voxel).
2. **Region of interest.** Voxels within :data:`MARGIN_MM` (9 mm) of the prior (prior ≥ 0.3):
   ventricles grow outward from the template's with age and disease.
3. **Intensity levels, from the scan itself**, mapped onto the template's. Tissue level
   ``W``: the 90th percentile of the brain voxels (> 5 % of the maximum) within 20 mm of the
   prior (periventricular white matter; it hardly moves with the amount of CSF there). CSF
   level ``C``: the 5th percentile inside the prior's core (prior ≥ 0.5). The same two levels
   of the template on the same grid give ``W₀`` and ``C₀``; the scan's intensities are mapped
   linearly so that ``C → C₀/W₀`` and ``W → 1`` (the template's relative intensity). Matching
   both levels absorbs the scan's scale and most of its CSF-to-tissue contrast.
4. **Partial volume, calibrated on the template.** At 1 mm, within :data:`CALIBRATION_MM` of the
   template's ventricles, the template T1 blurred to the grid's voxel size (over ``W₀``) is
   paired with the ventricle definition at its 1.5 mm resolution;
   the mean definition per intensity bin, made monotone (1 at the dark end), is the curve that
   turns a voxel's mapped intensity into its ventricle fraction. A thin template ventricle
   never reaches pure CSF at 3 mm, so a linear ramp between the levels reads small ventricles
   too large and large ones too small; the curve is what the template itself shows at that
   resolution. Nothing is fitted to any cohort.
5. **Connected components.** Voxels whose mapped intensity is below :data:`DARK` are labelled
   (26-connectivity); only components overlapping the prior core (prior ≥ 0.5) are kept
   (dropping sulcal and cisternal CSF), dilated by one voxel (their partial-volume rim) within
   the region of interest, and their fractions summed times the voxel volume, in ml.

Validated against the synthetic cohort's true volumes (``docs/method.md``, region volumes): on
the realistic variety, whose ventricles range from 5 to 65 ml, a mean relative error of
0.04–0.08 at 3 mm and 0.05–0.07 at 1.5 mm (max ≈ 0.1–0.3) over three cohorts. Supported: grids
of 1–6 mm that cover the ventricles, intensities of a skull-stripped T1.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

#: Distance (mm) around the template ventricles inside which ventricle voxels are counted.
MARGIN_MM = 9.0
#: Radius (mm) around the template ventricles where the tissue level is measured.
REFERENCE_MM = 20.0
#: Percentiles giving the CSF level (inside the prior core) and the tissue level (around it).
CSF_PERCENTILE, TISSUE_PERCENTILE = 5.0, 90.0
#: Voxels whose mapped intensity (tissue level 1) is below this seed the ventricle components.
DARK = 0.6
#: Template points this close (mm) to its ventricles calibrate the intensity → fraction curve.
CALIBRATION_MM = 4.0
#: Resolution (FWHM, mm) of the ventricle definition, as the synthetic cohort's truth.
DEFINITION_FWHM_MM = 1.5
_BINS = np.linspace(0.0, 1.6, 81)  # relative intensity bins of the curve
_CUBE = np.ones((3, 3, 3), bool)


@dataclass(frozen=True)
class VentricleSegmentation:
    """One measurement: the partial-volume CSF ``fraction`` of the kept voxels and its ``ml``."""

    fraction: np.ndarray  # float32, the volume's shape; 0 outside the kept components
    ml: float


@dataclass(frozen=True)
class _Geometry:
    prior: np.ndarray  # template ventricle fraction per voxel
    distance: np.ndarray  # mm to the prior (prior ≥ 0.3)
    core: np.ndarray  # prior ≥ 0.5 (bool)
    voxel_ml: float
    csf: float  # the template's CSF level over its tissue level on this grid
    curve: np.ndarray  # ventricle fraction at the centre of each mapped-intensity bin


@functools.lru_cache(maxsize=1)
def mni_ventricles() -> tuple[np.ndarray, np.ndarray]:
    """The ICBM152 2009a lateral-ventricle mask (1 mm, float32) and its affine (needs nilearn)."""
    from napari_ldae.data.synthetic import ventricle_mask_mni

    return ventricle_mask_mni()


def ventricle_prior(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The template ventricles on a grid (fraction per voxel, float32), blurred to its voxels."""
    mask, mni_affine = mni_ventricles()
    return on_grid(mask, mni_affine, affine, shape)


def on_grid(image: np.ndarray, image_affine: np.ndarray, affine: np.ndarray,
            shape: tuple[int, ...]) -> np.ndarray:
    """A fine MNI image (a template mask or map) blurred to the voxel size of a grid (a Gaussian
    of FWHM √(s² − s₀²)) and sampled onto it (linear, 0 outside), float32."""
    affine = np.asarray(affine, dtype=np.float64)
    smooth = _blurred(image, image_affine, float(np.mean(_spacings(affine))))
    index = np.linalg.inv(image_affine) @ affine
    return ndi.affine_transform(smooth, index[:3, :3], index[:3, 3], output_shape=tuple(shape),
                                order=1, mode="constant", cval=0.0).astype(np.float32)


def segment_ventricles(volume: np.ndarray, affine: np.ndarray) -> VentricleSegmentation:
    """Measure the lateral ventricles of one MNI-aligned volume (see the module docstring)."""
    vol = np.asarray(volume, dtype=np.float32).squeeze()
    if vol.ndim != 3:
        raise ValueError(f"expected one 3D volume, got shape {np.shape(volume)}")
    geo = _geometry(vol.shape, np.asarray(affine, dtype=np.float64).round(6).tobytes())
    relative = _relative(vol, geo)
    if relative is None:
        return VentricleSegmentation(np.zeros_like(vol), 0.0)
    roi = geo.distance <= MARGIN_MM
    labels, _ = ndi.label((relative < DARK) & roi, structure=_CUBE)
    keep = np.unique(labels[geo.core & (labels > 0)])
    kept = ndi.binary_dilation(np.isin(labels, keep), structure=_CUBE) & roi
    centres = (_BINS[:-1] + _BINS[1:]) / 2
    fraction = np.where(kept, np.interp(relative, centres, geo.curve), 0.0).astype(np.float32)
    return VentricleSegmentation(fraction, float(fraction.sum(dtype=np.float64)) * geo.voxel_ml)


def ventricle_ml(volume: np.ndarray, affine: np.ndarray) -> float:
    """Lateral-ventricle volume (ml) of one MNI-aligned volume in [0, 1]."""
    return segment_ventricles(volume, affine).ml


@functools.lru_cache(maxsize=8)
def _geometry(shape: tuple[int, ...], affine_bytes: bytes) -> _Geometry:
    from napari_ldae.data.synthetic import template_mni

    affine = np.frombuffer(affine_bytes, dtype=np.float64).reshape(4, 4)
    prior = ventricle_prior(affine, shape)
    if prior.max() < 0.5:
        raise ValueError("this grid does not cover the MNI152 lateral ventricles; the ventricle "
                         "measurement needs volumes affinely registered to MNI space, at ≤ 6 mm")
    spacings = _spacings(affine)
    distance = ndi.distance_transform_edt(prior < 0.3, sampling=spacings)
    maps, _, mni_affine = template_mni()
    t1 = on_grid(maps["t1"], mni_affine, affine, shape)
    core = prior >= 0.5
    level = _tissue_level(t1, distance)
    csf = float(np.percentile(t1[core], CSF_PERCENTILE)) / level
    spacing = round(float(np.mean(spacings)), 3)
    return _Geometry(prior, distance, core, float(np.prod(spacings)) / 1000.0, csf,
                     _curve(spacing, level))


@functools.lru_cache(maxsize=4)
def _curve(spacing: float, level: float) -> np.ndarray:
    """Mean ventricle definition per bin of the template's relative intensity, at 1 mm near its
    ventricles, the template blurred to ``spacing`` (FWHM) and divided by ``level``; made
    monotone, 1 below its darkest point and 0 above its brightest."""
    from napari_ldae.data.demons import bounding_box
    from napari_ldae.data.synthetic import template_mni

    maps, _, mni_affine = template_mni()
    mask, _ = mni_ventricles()
    box = bounding_box(mask > 0.5, math.ceil(CALIBRATION_MM + 3 * max(spacing, 3.0)))
    t1 = _blurred(maps["t1"][box], mni_affine, spacing)
    definition = _blurred(mask[box], mni_affine, DEFINITION_FWHM_MM)
    near = ndi.distance_transform_edt(mask[box] < 0.5,
                                      sampling=_spacings(mni_affine)) <= CALIBRATION_MM
    bins = np.digitize(t1[near] / level, _BINS) - 1
    inside = (bins >= 0) & (bins < len(_BINS) - 1)
    total = np.bincount(bins[inside], definition[near][inside], len(_BINS) - 1)
    count = np.bincount(bins[inside], minlength=len(_BINS) - 1)
    centres = (_BINS[:-1] + _BINS[1:]) / 2
    seen = count >= 20
    curve = np.interp(centres, centres[seen], total[seen] / count[seen], left=1.0, right=0.0)
    return np.minimum.accumulate(np.clip(curve, 0.0, 1.0))


def _blurred(image: np.ndarray, image_affine: np.ndarray, fwhm_mm: float) -> np.ndarray:
    """A fine image blurred to a resolution of ``fwhm_mm`` (a Gaussian of FWHM √(s² − s₀²))."""
    mm = float(np.mean(_spacings(image_affine)))
    sigma = max(fwhm_mm**2 - mm**2, 0.0) ** 0.5 / 2.3548 / mm
    return ndi.gaussian_filter(image, sigma) if sigma > 0.1 else image


def _relative(vol: np.ndarray, geo: _Geometry) -> np.ndarray | None:
    """The volume mapped linearly onto the template's intensities over its tissue level (its
    CSF and tissue levels onto the template's); None without a tissue level or contrast."""
    level = _tissue_level(vol, geo.distance)
    if not level > 0:
        return None
    csf = float(np.percentile(vol[geo.core], CSF_PERCENTILE)) / level
    if not csf < 1.0:
        return None
    return geo.csf + (vol / level - csf) * ((1.0 - geo.csf) / (1.0 - csf))


def _tissue_level(vol: np.ndarray, distance: np.ndarray) -> float:
    """The tissue level: a high percentile of the brain voxels around the ventricles."""
    around = (vol > 0.05 * float(vol.max())) & (distance <= REFERENCE_MM)
    return float(np.percentile(vol[around], TISSUE_PERCENTILE)) if around.any() else math.nan


def _spacings(affine: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
