"""A template boundary-shift measurement of the hippocampal region of MNI-aligned T1 volumes.

The twin of :mod:`.ventricles` in the region volumes (:mod:`napari_ldae.data.regions`), used
the same way: evaluate validates it against the cohort's ``hippocampus_ml`` column before the
edits toward AD are measured with it.

Why not a threshold. The ventricles are CSF in tissue, dark in bright, so a partial-volume
threshold finds them. The hippocampal region is grey matter among grey and white matter: in the
ICBM152 template its mean intensity is 0.63 and its surroundings' 0.68–0.71 (CSF 0.30), so at
3–6 mm voxels there is no edge to threshold: grey-matter fractions inside a template mask
correlated with the true volume at r ≈ 0.6 on the synthetic cohort, and not at all with its
within-subject change. What *is* visible is the intensity inside the region drifting toward its
surroundings' as the region shrinks. This module measures that drift against the template, as the
boundary shift integral measures atrophy between two registered scans (Freeborough and Fox,
1997), with the template as the first scan:

1. **Template on the scan.** The ICBM152 2009a T1, its brain mask and its hippocampal region,
   defined exactly as the synthetic cohort defines it (:mod:`napari_ldae.data.synthetic`: grey
   matter inside two tilted ellipsoids about MNI (±28, −22, −13)), are blurred to the grid's
   voxel size and sampled onto it through an affine map that matches the centroid and second
   moments of the template's brain mask to the scan's (voxels above 5 % of its maximum). This
   absorbs head size and position, which an affinely registered scan may still carry.
   ``template_ml`` is the mapped region's volume.
2. **Intensity match.** The scan is mapped onto the template's intensities by the least-squares
   line ``scan ≈ gain·template + offset`` over brain voxels 6–20 mm from the region
   (:data:`REFERENCE_MM`), leaving out those within 3 mm of the template ventricles (they grow
   with age and disease): this absorbs the scan's contrast and a smooth bias.
3. **Boundary shift.** Inside the region (template prior ≥ :data:`REGION_PRIOR`), the matched
   scan and the template are clipped to the intensity window [``inside``, ``outside``] (the
   template's mean in the region's core, and 3–9 mm around it). Their clipped difference summed
   over the region, over the window's width, is the volume lost (voxels turned from hippocampal
   to surrounding intensity): ``ml = template_ml − loss_ml``. Nothing is fitted to any cohort.

What it measures, honestly: the template's hippocampal region, scaled to the scan's brain, minus
the region's intensity drift toward its surroundings. It does not find the hippocampus in the
scan: hippocampi lying a few mm off the template's (after the moment match) read as a loss, and a
contrast change the intensity match cannot absorb moves it too. Validated against the synthetic
cohort's true volumes on the model grid after preprocessing (``docs/reproducing-the-paper.md``):
at 3 mm r ≈ 0.8–0.9 and a mean relative error ≈ 0.1 (max ≈ 0.3–0.5); it follows within-subject
change only roughly (r ≈ 0.5 between measured and true changes over ~3 years) and sees about half
of it, so edit slopes in ml are underestimated and their sign is the robust reading; at 6 mm (the
region is ~30 voxels) r ≈ 0.7–0.8, a mean relative error ≈ 0.1, and within-subject changes are
lost in its noise. Supported: grids of 1–6 mm that cover the hippocampi, intensities of a
skull-stripped T1.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from napari_ldae.data.ventricles import _spacings, mni_ventricles

#: Voxels where the blurred template region reaches this fraction are measured.
REGION_PRIOR = 0.3
#: Distances (mm) from the region of the voxels that set the intensity match.
REFERENCE_MM = (6.0, 20.0)
#: Reference voxels this close (mm) to the template ventricles are left out of the match.
VENTRICLE_GAP_MM = 3.0
#: Distances (mm) from the region where the template's "outside" level is read.
OUTSIDE_MM = (3.0, 9.0)
#: Scan voxels above this fraction of the maximum are its brain (for the moment match).
BRAIN_FRACTION = 0.05
#: Brain volume ratios (scan / template) beyond which the scan is not taken for a brain.
SCALE_RANGE = (0.5, 2.0)


@dataclass(frozen=True)
class HippocampusMeasurement:
    """One measurement: ``ml`` = ``template_ml`` − ``loss_ml``, the template region's volume
    once mapped onto the scan (``scale``: the map's volume ratio, template → scan) and
    ``gain``/``offset`` of the intensity match. ``ml`` is ``nan`` when the scan does not look
    like a brain: intensities that do not follow the template's (gain ≤ 0) or a "brain" (voxels
    above 5 % of the maximum) outside :data:`SCALE_RANGE` times the template's volume, as an
    untrained model's decoded noise."""

    ml: float
    loss_ml: float
    template_ml: float
    scale: float
    gain: float
    offset: float


@functools.lru_cache(maxsize=1)
def mni_hippocampus() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 1 mm ICBM152 2009a T1 (max 1), its brain mask, the hippocampal-region mask (float32)
    as the synthetic cohort defines it, and their affine (needs nilearn)."""
    from napari_ldae.data.synthetic import template_mni

    maps, region, affine = template_mni()
    brain = ndi.binary_fill_holes(maps["t1"] > 0.15).astype(np.float32)
    return maps["t1"].astype(np.float32), brain, region, affine


def measure_hippocampus(volume: np.ndarray, affine: np.ndarray) -> HippocampusMeasurement:
    """Measure the hippocampal region of one MNI-aligned volume (see the module docstring)."""
    vol = np.asarray(volume, dtype=np.float32).squeeze()
    if vol.ndim != 3:
        raise ValueError(f"expected one 3D volume, got shape {np.shape(volume)}")
    affine = np.asarray(affine, dtype=np.float64)
    spacings = _spacings(affine)
    images = _blurred(round(float(np.mean(spacings)), 3))
    brain_t = _sample(images[2], affine, vol.shape) >= 0.5
    if vol.max() <= 0 or not brain_t.any():
        raise ValueError("this grid does not cover the MNI152 brain")
    to_template = _moment_map(vol > BRAIN_FRACTION * float(vol.max()), brain_t, affine)
    mapped = to_template @ affine  # grid voxel → template mm
    t1, prior, brain, ventricles = (_sample(im, mapped, vol.shape) for im in images)
    if prior.max() < 0.5:
        raise ValueError("this grid does not cover the MNI152 hippocampi; the hippocampal "
                         "measurement needs volumes affinely registered to MNI space, at ≤ 6 mm")
    brain = brain >= 0.5
    distance = ndi.distance_transform_edt(prior < REGION_PRIOR, sampling=spacings)
    gap = ndi.distance_transform_edt(ventricles < 0.3, sampling=spacings)
    reference = (brain & (distance > REFERENCE_MM[0]) & (distance <= REFERENCE_MM[1])
                 & (gap > VENTRICLE_GAP_MM))
    around = brain & (distance > OUTSIDE_MM[0]) & (distance <= OUTSIDE_MM[1])
    inside, outside = float(t1[prior >= 0.5].mean()), float(t1[around].mean())
    voxel_ml = float(np.prod(spacings)) / 1000.0
    template_ml = float(prior.sum()) * voxel_ml
    scale = 1.0 / abs(float(np.linalg.det(to_template[:3, :3])))
    x, y = t1[reference].astype(np.float64), vol[reference].astype(np.float64)
    gain, offset = np.polyfit(x, y, 1) if len(x) > 2 and np.ptp(y) > 0 else (0.0, 0.0)
    if not gain > 1e-6 or not outside > inside or not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
        return HippocampusMeasurement(float("nan"), float("nan"), template_ml, scale,
                                      float(gain), float(offset))
    region = (prior >= REGION_PRIOR) & brain
    shift = (np.clip((vol[region] - offset) / gain, inside, outside)
             - np.clip(t1[region], inside, outside))
    loss = float(shift.sum(dtype=np.float64)) / (outside - inside) * voxel_ml
    return HippocampusMeasurement(template_ml - loss, loss, template_ml, scale, float(gain),
                                  float(offset))


def hippocampus_ml(volume: np.ndarray, affine: np.ndarray) -> float:
    """Hippocampal-region volume (ml) of one MNI-aligned volume in [0, 1]."""
    return measure_hippocampus(volume, affine).ml


@functools.lru_cache(maxsize=1)
def _blurred(spacing: float) -> tuple[np.ndarray, ...]:
    """Template T1, region, brain and ventricles at 1 mm, blurred to ``spacing`` (FWHM)."""
    t1, brain, region, mni_affine = mni_hippocampus()
    ventricles, _ = mni_ventricles()
    mni_mm = float(np.mean(_spacings(mni_affine)))
    sigma = max(spacing**2 - mni_mm**2, 0.0) ** 0.5 / 2.3548 / mni_mm
    return tuple(ndi.gaussian_filter(im, sigma) if sigma > 0.1 else im
                 for im in (t1, region, brain, ventricles))


def _sample(image: np.ndarray, affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A 1 mm template image at the template points ``affine`` gives for each grid voxel."""
    *_, mni_affine = mni_hippocampus()
    index = np.linalg.inv(mni_affine) @ affine
    return ndi.affine_transform(image, index[:3, :3], index[:3, 3], output_shape=tuple(shape),
                                order=1, mode="constant", cval=0.0)


def _moment_map(scan_brain: np.ndarray, template_brain: np.ndarray,
                affine: np.ndarray) -> np.ndarray:
    """The 4×4 map scan mm → template mm matching the brain masks' centroids and covariances
    (``L = Σ_t^½ Σ_s^-½``: the match closest to no rotation)."""
    (cs, ss), (ct, st) = (_moments(m, affine) for m in (scan_brain, template_brain))
    linear = _sqrtm(st) @ np.linalg.inv(_sqrtm(ss))
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = linear, ct - linear @ cs
    return out


def _moments(mask: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    points = affine[:3, :3] @ np.asarray(np.nonzero(mask), dtype=np.float64) + affine[:3, 3:]
    centre = points.mean(axis=1)
    centred = points - centre[:, None]
    return centre, centred @ centred.T / points.shape[1]


def _sqrtm(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.maximum(values, 1e-12))) @ vectors.T
