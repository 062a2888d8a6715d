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
3. **Intensity levels, from the scan itself.** CSF level ``C``: the 5th percentile inside the
   prior's core (prior ≥ 0.5). Tissue level ``W``: the 75th percentile of the brain voxels
   (> 5 % of the maximum) within 20 mm of the prior (periventricular white matter, caudate,
   thalamus). The partial-volume CSF fraction of a voxel of intensity ``v`` is
   ``clip((T − v) / (T − C), 0, 1)`` with ``T = C + 0.75·(W − C)``.
4. **Connected components.** Voxels of fraction ≥ 0.5 are labelled (26-connectivity); only
   components overlapping the prior core are kept (dropping sulcal and cisternal CSF). The kept
   components dilated by one voxel (their partial-volume rim) and restricted to the ROI are
   summed, fraction times voxel volume, in ml.

Validated against the synthetic cohort's true volumes (``docs/method.md``, region volumes): on
the template variety r ≈ 0.98–0.999 and a mean relative error of 0.03–0.07 at 1.5–6 mm; on the
realistic variety, whose ventricles range from 5 to 65 ml, about 0.1 at 1.5 and 3 mm, small
ventricles read too large and large ones 5–10 % too small. Supported: grids of 1–6 mm that
cover the ventricles, intensities of a skull-stripped T1.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

#: Distance (mm) around the template ventricles inside which ventricle voxels are counted.
MARGIN_MM = 9.0
#: Radius (mm) around the template ventricles where the tissue level is measured.
REFERENCE_MM = 20.0
#: Percentiles giving the CSF level (inside the prior core) and the tissue level (around it).
CSF_PERCENTILE, TISSUE_PERCENTILE = 5.0, 75.0
#: Where the CSF fraction reaches 0, between the CSF level (0) and the tissue level (1).
TISSUE_THRESHOLD = 0.75
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
    spacing = float(np.mean(_spacings(affine)))
    mni_mm = float(np.mean(_spacings(image_affine)))
    sigma = max(spacing**2 - mni_mm**2, 0.0) ** 0.5 / 2.3548 / mni_mm
    smooth = ndi.gaussian_filter(image, sigma) if sigma > 0.1 else image
    index = np.linalg.inv(image_affine) @ affine
    return ndi.affine_transform(smooth, index[:3, :3], index[:3, 3], output_shape=tuple(shape),
                                order=1, mode="constant", cval=0.0).astype(np.float32)


def segment_ventricles(volume: np.ndarray, affine: np.ndarray) -> VentricleSegmentation:
    """Measure the lateral ventricles of one MNI-aligned volume (see the module docstring)."""
    vol = np.asarray(volume, dtype=np.float32).squeeze()
    if vol.ndim != 3:
        raise ValueError(f"expected one 3D volume, got shape {np.shape(volume)}")
    geo = _geometry(vol.shape, np.asarray(affine, dtype=np.float64).round(6).tobytes())
    fraction = _csf_fraction(vol, geo) * (geo.distance <= MARGIN_MM)
    labels, _ = ndi.label(fraction >= 0.5, structure=_CUBE)
    keep = np.unique(labels[geo.core & (labels > 0)])
    kept = ndi.binary_dilation(np.isin(labels, keep), structure=_CUBE)
    fraction = np.where(kept, fraction, 0.0).astype(np.float32)
    return VentricleSegmentation(fraction, float(fraction.sum()) * geo.voxel_ml)


def ventricle_ml(volume: np.ndarray, affine: np.ndarray) -> float:
    """Lateral-ventricle volume (ml) of one MNI-aligned volume in [0, 1]."""
    return segment_ventricles(volume, affine).ml


@functools.lru_cache(maxsize=8)
def _geometry(shape: tuple[int, ...], affine_bytes: bytes) -> _Geometry:
    affine = np.frombuffer(affine_bytes, dtype=np.float64).reshape(4, 4)
    prior = ventricle_prior(affine, shape)
    if prior.max() < 0.5:
        raise ValueError("this grid does not cover the MNI152 lateral ventricles; the ventricle "
                         "measurement needs volumes affinely registered to MNI space, at ≤ 6 mm")
    spacings = _spacings(affine)
    distance = ndi.distance_transform_edt(prior < 0.3, sampling=spacings)
    return _Geometry(prior, distance, prior >= 0.5, float(np.prod(spacings)) / 1000.0)


def _csf_fraction(vol: np.ndarray, geo: _Geometry) -> np.ndarray:
    """Partial-volume CSF fraction of every voxel, from the scan's own CSF and tissue levels."""
    brain = vol > 0.05 * float(vol.max())
    around = brain & (geo.distance <= REFERENCE_MM)
    if not around.any():
        return np.zeros_like(vol)
    csf = float(np.percentile(vol[geo.core], CSF_PERCENTILE))
    tissue = float(np.percentile(vol[around], TISSUE_PERCENTILE))
    threshold = csf + TISSUE_THRESHOLD * (tissue - csf)
    if threshold <= csf:
        return np.zeros_like(vol)
    return np.clip((threshold - vol) / (threshold - csf), 0.0, 1.0).astype(np.float32)


def _spacings(affine: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
