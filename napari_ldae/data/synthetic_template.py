"""The synthetic cohort's template: the ICBM152 2009a brain, its truth masks and its unit fields.

Every synthetic scan samples the skull-stripped 1 mm template (shipped in the ``nilearn`` wheel)
at warped points. This module holds what all subjects share, built once per process and spacing
(:func:`_template`):

- the output grid (:func:`template_grid`) and a finer work grid the images are sampled from;
- the ground-truth structures (lateral ventricles, hippocampal regions) as fractional masks;
- the unit deformation fields, each the gradient of a smoothed template mask scaled to a maximum
  norm of 1 (mm per unit step) with a Lipschitz constant ≈ 0.3/mm, so a step of up to 1.5 units
  (and of any combination of fields whose absolute weights add up to 1.5) is invertible:
  lateral-ventricle expansion ``V`` (each side on its own), hippocampal shrinkage ``H``,
  grey-matter thinning ``C``, and the atrophy field ``U`` = 1.0·V + 0.13·H + 0.03·C;
- the atrophy flow ``Φ_k`` (``k`` unit Euler steps along ``U``), tabulated on demand.

Subjects (:mod:`napari_ldae.data.synthetic_subject`) and the cohort writer
(:mod:`napari_ldae.data.synthetic`) build on it. See ``docs/synthetic-cohort.md``.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from napari_ldae.errors import LDAEError

#: Field of view of every synthetic scan (mm, RAS): 64×80×64 at 3 mm, 128×160×128 at 1.5 mm.
FOV_MM = (192.0, 240.0, 192.0)
#: MNI point at the centre of the field of view (centre of the template brain's bounding box).
FOV_CENTER_MM = (0.0, -17.0, 5.0)

# Ground-truth structure definitions (MNI mm).
_VENTRICLE_SEEDS_MM = ((12.0, -10.0, 22.0), (-12.0, -10.0, 22.0))
_VENTRICLE_BOX_MM = ((-40.0, 40.0), (-85.0, 45.0), (-25.0, 45.0))
_HIPPOCAMPUS_CENTER_MM = (28.0, -22.0, -13.0)  # right; the left one is mirrored in x
_HIPPOCAMPUS_RADII_MM = (7.0, 20.0, 6.0)  # (lateral, long axis, short axis)
_HIPPOCAMPUS_TILT_DEG = 30.0  # long axis descends anteriorly

# Weights of the unit fields in U (largest speed in mm per unit of severity) and their smoothing.
_W_VENTRICLES, _W_HIPPOCAMPUS, _W_CORTEX = 1.0, 0.13, 0.03
_SIGMA_VENTRICLES_MM, _SIGMA_HIPPOCAMPUS_MM, _SIGMA_CORTEX_MM = 4.0, 3.0, 3.0
_TRUTH_FWHM_MM = 1.5  # resolution of the ground-truth masks, the same at every spacing
_SEPTUM_MM = 4.0  # half-width of the midline band where ventricles do not expand sideways
#: The unit fields a subject's constitution steps along (positive steps enlarge / thicken).
CONSTITUTION_FIELDS = ("ventricle_left", "ventricle_right", "hippocampus_left",
                       "hippocampus_right", "cortex")
#: Largest sum of absolute unit-field weights in one Euler step (≈ 0.45 of the inverse Lipschitz
#: constant of every unit field; v1 clipped its one ventricle step to this), so each is invertible.
MAX_STEP = 1.5


@dataclass(frozen=True, eq=False)
class Grid:
    """An axis-aligned RAS voxel grid: ``shape`` and ``affine`` (diagonal spacing)."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def spacing(self) -> float:
        return float(self.affine[0, 0])

    @property
    def voxel_ml(self) -> float:
        return self.spacing**3 / 1000.0

    def world(self) -> np.ndarray:
        """World (mm) coordinates of every voxel centre, (3, X, Y, Z) float64."""
        axes = [self.affine[i, 3] + self.spacing * np.arange(n) for i, n in enumerate(self.shape)]
        return np.stack(np.meshgrid(*axes, indexing="ij"))

    def to_voxel(self, points_mm: np.ndarray) -> np.ndarray:
        """World (mm) points (3, ...) → voxel coordinates of this grid."""
        origin = self.affine[:3, 3].reshape((3,) + (1,) * (points_mm.ndim - 1))
        return (points_mm - origin) / self.spacing


def template_grid(spacing: float = 3.0) -> Grid:
    """The fixed grid of synthetic scans at ``spacing`` mm (FOV 192×240×192 mm around the brain)."""
    if not 0.5 <= spacing <= 12.0:
        raise LDAEError(f"spacing must be between 0.5 and 12 mm, got {spacing}")
    shape = tuple(round(f / spacing) for f in FOV_MM)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = np.asarray(FOV_CENTER_MM) - (np.asarray(shape) - 1) / 2 * spacing
    return Grid(shape, affine)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the template


@dataclass(frozen=True, eq=False)
class _Template:
    grid: Grid  # output grid
    work: Grid  # finer grid the images are sampled from
    fields: Grid  # grid of the (smooth) deformation fields: the output grid, at most 3 mm fine
    images: np.ndarray  # (2, *work.shape): t1, brain (anti-aliased to the output spacing)
    masks: np.ndarray  # (2, *work.shape): ventricles, hippocampus (the truth, FWHM 1.5 mm)
    ventricle_field: np.ndarray  # (3, *fields.shape) unit ventricle expansion V
    atrophy_field: np.ndarray  # (3, *fields.shape) unit atrophy U
    # (5, 3, *fields.shape) the unit fields of CONSTITUTION_FIELDS (positive steps enlarge)
    constitution_fields: np.ndarray
    world: np.ndarray  # (3, *grid.shape) mm
    flow: list[np.ndarray] = dataclasses.field(default_factory=list)  # Φ_k − id, float16
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


_ICBM_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


def _icbm_images() -> dict[str, object]:
    """The 1 mm ICBM152 2009a images inside the nilearn wheel (without importing nilearn, slow)."""
    import importlib.util

    import nibabel as nib

    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise LDAEError(
            "the synthetic cohort needs nilearn (it ships the ICBM152 template): "
            "pip install 'napari-ldae[data]'"
        )
    folder = Path(spec.origin).parent / "datasets" / "data"
    if all((folder / f).is_file() for f in _ICBM_FILES.values()):
        return {k: nib.load(folder / f) for k, f in _ICBM_FILES.items()}
    from nilearn import datasets  # pragma: no cover - a nilearn that moved its files

    return {"t1": datasets.load_mni152_template(resolution=1),  # pragma: no cover
            "gm": datasets.load_mni152_gm_template(resolution=1),
            "wm": datasets.load_mni152_wm_template(resolution=1)}


def _load_icbm() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The 1 mm T1 (skull-stripped), GM and WM maps, each scaled to max 1, cropped to the brain."""
    images = _icbm_images()
    maps = {k: np.asarray(img.get_fdata(dtype=np.float32)) for k, img in images.items()}
    maps = {k: v / v.max() for k, v in maps.items()}
    inside = maps["t1"] > 0.01
    spans = [np.flatnonzero(inside.any(axis=tuple(j for j in range(3) if j != i)))
             for i in range(3)]
    lo = np.maximum([sp[0] - 8 for sp in spans], 0)
    hi = np.array([sp[-1] + 9 for sp in spans])
    crop = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    affine = np.asarray(images["t1"].affine, dtype=np.float64).copy()  # type: ignore[attr-defined]
    affine[:3, 3] += affine[:3, :3] @ lo
    return {k: np.ascontiguousarray(v[crop]) for k, v in maps.items()}, affine


def _mm_grid(shape: Sequence[int], affine: np.ndarray) -> list[np.ndarray]:
    """Open (broadcastable) world coordinates of an axis-aligned grid."""
    shapes = [[-1 if j == i else 1 for j in range(3)] for i in range(3)]
    return [(affine[i, 3] + affine[i, i] * np.arange(n)).reshape(shapes[i])
            for i, n in enumerate(shape)]


def _ventricle_mask(maps: dict[str, np.ndarray], affine: np.ndarray) -> np.ndarray:
    """Lateral ventricles: dark CSF components of the template connected to two seed points."""
    t1, tissue = maps["t1"], maps["gm"] + maps["wm"]
    csf = (t1 > 0.01) & (t1 < 0.4) & (tissue < 0.5)
    x, y, z = _mm_grid(t1.shape, affine)
    (x0, x1), (y0, y1), (z0, z1) = _VENTRICLE_BOX_MM
    csf &= (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1) & (z >= z0) & (z <= z1)
    labels, _ = ndi.label(csf)
    inv = np.linalg.inv(affine)
    seeds = [tuple(np.round(inv[:3, :3] @ s + inv[:3, 3]).astype(int)) for s in _VENTRICLE_SEEDS_MM]
    keep = [labels[s] for s in seeds if labels[s] > 0]
    if not keep:  # pragma: no cover - the template is fixed
        raise LDAEError("could not locate the ventricles in the ICBM152 template")
    return np.isin(labels, keep)


def _hippocampus_mask(maps: dict[str, np.ndarray], affine: np.ndarray) -> np.ndarray:
    """Hippocampal region: grey matter inside two tilted ellipsoids (MNI ≈ (±28, −22, −13))."""
    x, y, z = _mm_grid(maps["gm"].shape, affine)
    cx, cy, cz = _HIPPOCAMPUS_CENTER_MM
    rx, ru, rw = _HIPPOCAMPUS_RADII_MM
    ang = np.deg2rad(_HIPPOCAMPUS_TILT_DEG)
    u = (y - cy) * np.cos(ang) - (z - cz) * np.sin(ang)
    w = (y - cy) * np.sin(ang) + (z - cz) * np.cos(ang)
    inside = (u / ru) ** 2 + (w / rw) ** 2
    region = ((x - cx) / rx) ** 2 + inside <= 1
    region |= ((x + cx) / rx) ** 2 + inside <= 1
    return region & (maps["gm"] > 0.4)


def _resample(vol: np.ndarray, src: Grid, dst: Grid, fwhm_mm: float) -> np.ndarray:
    """Gaussian anti-aliasing (to ``fwhm_mm``) then linear resampling of ``vol`` onto ``dst``.

    Both grids are axis-aligned, so the linear interpolation is done one axis at a time.
    """
    sigma = np.sqrt(max(fwhm_mm**2 - src.spacing**2, 0.0)) / 2.3548 / src.spacing
    out = vol.astype(np.float32)
    if sigma > 0.1:
        out = ndi.gaussian_filter(out, sigma, truncate=3.0)
    for axis in range(3):
        pos = (dst.affine[axis, 3] + dst.spacing * np.arange(dst.shape[axis])
               - src.affine[axis, 3]) / src.spacing
        i0 = np.floor(pos).astype(int)
        w = (pos - i0).astype(np.float32)
        valid = (i0 >= 0) & (i0 + 1 < out.shape[axis])
        i0 = np.clip(i0, 0, out.shape[axis] - 2)
        shape = [-1 if j == axis else 1 for j in range(3)]
        lo, hi = np.take(out, i0, axis), np.take(out, i0 + 1, axis)
        out = (lo + (hi - lo) * w.reshape(shape)) * valid.reshape(shape)
    return np.ascontiguousarray(out, dtype=np.float32)


def _unit_gradient(mask: np.ndarray, grid: Grid, sigma_mm: float) -> np.ndarray:
    """Gradient (3, ...) of the Gaussian-smoothed mask, scaled to a maximum norm of 1."""
    smooth = ndi.gaussian_filter(mask.astype(np.float32), sigma_mm / grid.spacing)
    grad = np.stack(np.gradient(smooth, grid.spacing))
    return grad / np.sqrt((grad**2).sum(0)).max()


def _ventricle_gradient(
    mask: np.ndarray, grid: Grid, sigma_mm: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ventricle expansion field: each lateral ventricle expands on its own, away from the septum.

    The left-right component fades out within a few mm of the midline so the septum stays.
    Returns the field V and its left and right parts (V = left + right, one common scale).
    """
    x = grid.world()[0]
    sides = [_unit_gradient(mask * side, grid, sigma_mm) for side in (x < 0, x >= 0)]
    grad = sum(sides)
    fade = 1.0 - np.exp(-((x / _SEPTUM_MM) ** 2))
    grad[0] *= fade
    norm = np.sqrt((grad**2).sum(0)).max()
    for side in sides:
        side[0] *= fade
    return grad / norm, sides[0] / norm, sides[1] / norm


@functools.lru_cache(maxsize=4)
def _template(spacing: float) -> _Template:
    """Template images on the work grid and unit fields on the field grid (cached per process)."""
    maps, affine = _load_icbm()
    native = Grid(maps["t1"].shape, affine)  # type: ignore[arg-type]
    grid = template_grid(spacing)
    work = template_grid(max(spacing / 2.0, 1.0))
    coarse = template_grid(max(spacing, 3.0))
    t1 = maps["t1"]
    brain = ndi.binary_fill_holes(t1 > 0.15)
    images = np.stack([_resample(v, native, work, spacing) for v in (t1, brain)])
    structures = (_ventricle_mask(maps, affine), _hippocampus_mask(maps, affine))
    masks = np.stack([_resample(m, native, work, _TRUTH_FWHM_MM) for m in structures])
    gm = _resample(maps["gm"], native, work, spacing)
    vent, left, right = _ventricle_gradient(masks[0], work, max(_SIGMA_VENTRICLES_MM, spacing))
    hipp = -_unit_gradient(masks[1], work, max(_SIGMA_HIPPOCAMPUS_MM, spacing))
    cortex = -_unit_gradient(gm, work, max(_SIGMA_CORTEX_MM, spacing))
    total = _W_VENTRICLES * vent + _W_HIPPOCAMPUS * hipp + _W_CORTEX * cortex
    fields = np.stack([_resample(c, work, coarse, 0.0) for c in (*vent, *total)])
    # constitution fields; the hippocampal field is ~0 far from x = ±28 mm, so it splits at x = 0
    grow = [_resample(c, work, coarse, 0.0) for c in (*left, *right, *-hipp, *-cortex)]
    grow = np.stack(grow).reshape(4, 3, *coarse.shape)
    x_left = coarse.world()[0] < 0
    constitution = np.stack([grow[0], grow[1], grow[2] * x_left, grow[2] * ~x_left, grow[3]])
    return _Template(grid, work, coarse, images, masks, fields[:3], fields[3:], constitution,
                     grid.world())


def ventricle_mask_template(spacing: float = 3.0) -> np.ndarray:
    """The ground-truth ventricle mask (fractional, float32) on :func:`template_grid`'s grid.

    Its volume in ml is ``mask.sum() * grid.voxel_ml``; a scan's ``ventricle_ml`` is the volume of
    this mask pulled back through that scan's warp.
    """
    return _mask_on_output_grid(spacing, 0)


def ventricle_mask_mni() -> tuple[np.ndarray, np.ndarray]:
    """The ground-truth ventricle definition at 1 mm: a binary float32 mask and its MNI affine.

    Blur it to a target voxel size and resample it onto any MNI-aligned grid to locate the
    lateral ventricles of a scan that has no ground truth.
    """
    maps, affine = _load_icbm()
    return _ventricle_mask(maps, affine).astype(np.float32), affine


def template_mni() -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The 1 mm ICBM152 2009a maps (``t1`` and the tissue maps), the ground-truth hippocampal
    region as a binary float32 mask, and their MNI affine: the twin of
    :func:`ventricle_mask_mni` for measurements of the hippocampal region."""
    maps, affine = _load_icbm()
    return maps, _hippocampus_mask(maps, affine).astype(np.float32), affine


def hippocampus_mask_template(spacing: float = 3.0) -> np.ndarray:
    """The ground-truth hippocampal-region mask (fractional, float32) on the output grid."""
    return _mask_on_output_grid(spacing, 1)


def _mask_on_output_grid(spacing: float, channel: int) -> np.ndarray:
    tpl = _template(float(spacing))
    coords = tpl.work.to_voxel(tpl.world)
    return ndi.map_coordinates(tpl.masks[channel], coords, order=1, output=np.float32)


def _sample_field(field: np.ndarray, grid: Grid, p_mm: np.ndarray) -> np.ndarray:
    coords = grid.to_voxel(p_mm)
    return np.stack([ndi.map_coordinates(c, coords, order=1, output=np.float32) for c in field])


def _flow_entry(tpl: _Template, k: int) -> np.ndarray:
    """Displacement of the atrophy flow after ``k`` unit Euler steps, on the field grid (cached).

    Each step ``q ← q + U(q)`` is invertible (U's Lipschitz constant is < 1), so every entry is
    a diffeomorphism; entries are built on demand and shared by all subjects.
    """
    with tpl.lock:
        if not tpl.flow:
            tpl.flow.append(np.zeros((3, *tpl.fields.shape), np.float16))
        while len(tpl.flow) <= k:
            q = tpl.fields.world() + tpl.flow[-1].astype(np.float64)
            step = _sample_field(tpl.atrophy_field, tpl.fields, q)
            tpl.flow.append((tpl.flow[-1].astype(np.float32) + step).astype(np.float16))
        return tpl.flow[k]


def _atrophy_points(tpl: _Template, p: np.ndarray, amounts: Sequence[float]) -> list[np.ndarray]:
    """Points ``p`` (mm) carried by the atrophy flow for each severity in ``amounts``.

    Between integer severities the flow is interpolated linearly (the Euler step itself), so the
    result is continuous and monotone in the severity.
    """
    cache: dict[int, np.ndarray] = {}

    def at(k: int) -> np.ndarray:
        if k not in cache:
            cache[k] = p + _sample_field(_flow_entry(tpl, k).astype(np.float32), tpl.fields, p)
        return cache[k]

    out = []
    for a in amounts:
        k, r = int(np.floor(a)), a - np.floor(a)
        out.append(at(k) if r == 0 else (1.0 - r) * at(k) + r * at(k + 1))
    return out

