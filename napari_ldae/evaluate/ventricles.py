"""A simple lateral-ventricle volume measurement for MNI-aligned T1 volumes.

Used to check manipulations against ground truth (does the "toward AD" direction enlarge the
ventricles?). It is deliberately simple and is validated, not trusted: the evaluation reports
its correlation and error against the cohort's ``ventricle_ml`` column before using it.

The method, for a volume in [0, 1] and its voxel-to-world affine (world = MNI152 mm, as for
scans affinely registered to MNI like the paper's ADNI preprocessing and the synthetic cohort):

1. **Prior.** The lateral ventricles of the ICBM152 2009a template, exactly as the synthetic
   cohort defines them (:mod:`napari_ldae.data.synthetic`: dark CSF connected to two seeds),
   Gaussian-blurred to the target voxel size and sampled onto the target grid.
2. **Region of interest.** Voxels within ``margin_mm`` (12 mm) of the prior (prior ≥ 0.3):
   ventricles may grow several mm beyond the template's.
3. **CSF fraction.** The white-matter level is the 90th percentile of the brain voxels
   (> 5 % of the maximum); each ROI voxel gets a partial-volume CSF fraction
   ``clip((0.7·wm − v) / (0.7·wm − 0.3·wm), 0, 1)`` (0.3·wm ≈ CSF, 0.7·wm ≈ grey matter).
4. **Connected components.** Voxels with fraction ≥ 0.5 are labelled (26-connectivity); only
   components overlapping the prior core (prior ≥ 0.5) are kept, which drops sulcal CSF and the
   third ventricle's neighbours. The kept components, dilated by one voxel to take in their
   partial-volume rim, are summed by fraction times the voxel volume (ml).

Supported resolutions: 1–6 mm isotropic (validated at 3 and 6 mm on the synthetic cohort;
see ``tests/test_evaluate.py`` and ``docs/reproducing-the-paper.md``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

#: Distance (mm) around the template ventricles inside which ventricle voxels are counted.
MARGIN_MM = 12.0
#: CSF and grey-matter levels as fractions of the white-matter level.
CSF_LEVEL, GM_LEVEL = 0.30, 0.70


@dataclass(frozen=True)
class VentricleSegmentation:
    """The measurement of one volume: partial-volume CSF ``fraction`` map and its ``ml``."""

    fraction: np.ndarray  # float32, the volume's shape; 0 outside the kept components
    ml: float


@functools.lru_cache(maxsize=1)
def mni_ventricles() -> tuple[np.ndarray, np.ndarray]:
    """The ICBM152 2009a lateral-ventricle mask (1 mm, float32) and its affine (needs nilearn)."""
    from napari_ldae.data import synthetic

    maps, affine = synthetic._load_icbm()
    mask = synthetic._ventricle_mask(maps, affine).astype(np.float32)
    return mask, affine


def ventricle_prior(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """The template ventricles on a grid (fraction per voxel, float32), blurred to its voxels."""
    mask, mni_affine = mni_ventricles()
    affine = np.asarray(affine, dtype=np.float64)
    spacing = float(np.mean(np.linalg.norm(affine[:3, :3], axis=0)))
    mni_mm = float(np.mean(np.linalg.norm(mni_affine[:3, :3], axis=0)))
    sigma = max(spacing**2 - mni_mm**2, 0.0) ** 0.5 / 2.3548 / mni_mm
    smooth = ndi.gaussian_filter(mask, sigma) if sigma > 0.1 else mask
    to_mni_voxels = np.linalg.inv(mni_affine) @ affine
    return ndi.affine_transform(smooth, to_mni_voxels[:3, :3], to_mni_voxels[:3, 3],
                                output_shape=tuple(shape), order=1, mode="constant",
                                cval=0.0).astype(np.float32)


def segment_ventricles(volume: np.ndarray, affine: np.ndarray,
                       margin_mm: float = MARGIN_MM) -> VentricleSegmentation:
    """Measure the lateral ventricles of one MNI-aligned volume (see the module docstring)."""
    vol = np.asarray(volume, dtype=np.float32).squeeze()
    if vol.ndim != 3:
        raise ValueError(f"expected one 3D volume, got shape {np.shape(volume)}")
    affine = np.asarray(affine, dtype=np.float64)
    spacings = np.linalg.norm(affine[:3, :3], axis=0)
    prior = ventricle_prior(affine, vol.shape)
    roi = ndi.distance_transform_edt(prior < 0.3, sampling=spacings) <= margin_mm
    fraction = _csf_fraction(vol) * roi
    labels, _ = ndi.label(fraction >= 0.5, structure=np.ones((3, 3, 3), bool))
    keep = np.unique(labels[(prior >= 0.5) & (labels > 0)])
    kept = ndi.binary_dilation(np.isin(labels, keep), structure=np.ones((3, 3, 3), bool))
    fraction = np.where(kept & roi, fraction, 0.0).astype(np.float32)
    voxel_ml = float(np.prod(spacings)) / 1000.0
    return VentricleSegmentation(fraction, float(fraction.sum()) * voxel_ml)


def ventricle_ml(volume: np.ndarray, affine: np.ndarray, margin_mm: float = MARGIN_MM) -> float:
    """Lateral-ventricle volume (ml) of one MNI-aligned volume."""
    return segment_ventricles(volume, affine, margin_mm).ml


def _csf_fraction(vol: np.ndarray) -> np.ndarray:
    """Partial-volume CSF fraction of every voxel, relative to the white-matter level."""
    brain = vol > 0.05 * float(vol.max())
    if not brain.any():
        return np.zeros_like(vol)
    wm = float(np.percentile(vol[brain], 90))
    csf, gm = CSF_LEVEL * wm, GM_LEVEL * wm
    return np.clip((gm - vol) / (gm - csf), 0.0, 1.0).astype(np.float32)
