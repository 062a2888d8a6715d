"""A synthetic longitudinal cohort with known ground truth, built on the ICBM152 2009a template.

Every scan is the skull-stripped 1 mm template (shipped in the ``nilearn`` wheel) pulled back
through one warp, ``scan(x) = template(Φ_A(p(x)))``:

- ``p``: the subject's anatomy: a small residual affine, a smooth low-frequency (DCT)
  displacement of a few mm, and a constitutional ventricle size (one step of the ventricle field);
- ``Φ_A``: the atrophy flow run for a severity ``A(t)`` (:func:`atrophy`: grows with age, faster
  under AD) along the unit field ``U`` = lateral-ventricle expansion + hippocampal shrinkage +
  grey-matter thinning, each the gradient of a smoothed template mask. Unit Euler steps are each
  invertible, so ``Φ_A`` is a diffeomorphism at any severity (no folding).

Intensities then get a gamma, a smooth bias field and Rician noise, and the brain mask is applied.
A scan's ground truth (ventricle and hippocampal volumes) is the volume of the template masks
pulled back through the same warp. See ``docs/synthetic-cohort.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import io
import json
import os
import shutil
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from napari_ldae import __version__
from napari_ldae.errors import CohortError, LDAEError

#: Bumped whenever the same seed would produce different scans.
GENERATOR_VERSION = "1"
#: Field of view of every synthetic scan (mm, RAS): 64×80×64 at 3 mm, 128×160×128 at 1.5 mm.
FOV_MM = (192.0, 240.0, 192.0)
#: MNI point at the centre of the field of view (centre of the template brain's bounding box).
FOV_CENTER_MM = (0.0, -17.0, 5.0)
DIAGNOSES = ("CN", "MCI", "AD")

# Ground-truth structure definitions (MNI mm).
_VENTRICLE_SEEDS_MM = ((12.0, -10.0, 22.0), (-12.0, -10.0, 22.0))
_VENTRICLE_BOX_MM = ((-40.0, 40.0), (-85.0, 45.0), (-25.0, 45.0))
_HIPPOCAMPUS_CENTER_MM = (28.0, -22.0, -13.0)  # right; the left one is mirrored in x
_HIPPOCAMPUS_RADII_MM = (7.0, 20.0, 6.0)  # (lateral, long axis, short axis)
_HIPPOCAMPUS_TILT_DEG = 30.0  # long axis descends anteriorly

# Atrophy model: A(t) = k·[C_AGE·(age_t − AGE_ONSET)² + R_DISEASE[dx]·m·(d0 + years)].
AGE_ONSET = 40.0
C_AGE = 0.0033  # severity per year² of age beyond AGE_ONSET (CN: A ≈ 4 at 75, +0.23/year)
R_DISEASE = {"CN": 0.0, "MCI": 0.3, "AD": 0.6}  # extra severity per year of disease
DISEASE_YEARS_AT_BASELINE = {"CN": (0.0, 0.0), "MCI": (1.0, 5.0), "AD": (3.0, 8.0)}
# Weights of the unit fields in U (largest speed in mm per unit of severity) and their smoothing.
_W_VENTRICLES, _W_HIPPOCAMPUS, _W_CORTEX = 1.0, 0.13, 0.03
_SIGMA_VENTRICLES_MM, _SIGMA_HIPPOCAMPUS_MM, _SIGMA_CORTEX_MM = 4.0, 3.0, 3.0
_TRUTH_FWHM_MM = 1.5  # resolution of the ground-truth masks, the same at every spacing
_SEPTUM_MM = 4.0  # half-width of the midline band where ventricles do not expand sideways
_WARP_SCALE_MM = 1.2  # DCT coefficient scale of the subject warp (mean ≈ 2.5 mm, max ≈ 5 mm)
MAX_ATROPHY = 20.0  # severity cap (ventricles ≈ 80 ml)

#: Most visits per subject (baseline + 11 follow-ups ≈ 10 years).
MAX_VISITS = 12
#: NIfTI files store int16 with this fixed slope (intensity = stored · slope).
INTENSITY_SLOPE = 1.0 / 10000.0


@dataclass(frozen=True, eq=False)
class SyntheticVisit:
    """One scan: ``data`` float32 (X, Y, Z) RAS in [0, 1]-ish, its 4×4 ``affine`` and truth."""

    data: np.ndarray
    affine: np.ndarray
    months: int
    session: str
    truth: dict[str, float]


@dataclass(frozen=True, eq=False)
class SyntheticSubject:
    """One subject: id, diagnosis (CN/MCI/AD), baseline age, sex and visits (baseline first)."""

    subject: str
    diagnosis: str
    age: float
    sex: str
    seed: int
    visits: list[SyntheticVisit]


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


def _ventricle_gradient(mask: np.ndarray, grid: Grid, sigma_mm: float) -> np.ndarray:
    """Ventricle expansion field: each lateral ventricle expands on its own, away from the septum.

    The left-right component fades out within a few mm of the midline so the septum stays.
    """
    x = grid.world()[0]
    grad = sum(_unit_gradient(mask * side, grid, sigma_mm) for side in (x < 0, x >= 0))
    grad[0] *= 1.0 - np.exp(-((x / _SEPTUM_MM) ** 2))
    return grad / np.sqrt((grad**2).sum(0)).max()


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
    vent = _ventricle_gradient(masks[0], work, max(_SIGMA_VENTRICLES_MM, spacing))
    hipp = -_unit_gradient(masks[1], work, max(_SIGMA_HIPPOCAMPUS_MM, spacing))
    cortex = -_unit_gradient(gm, work, max(_SIGMA_CORTEX_MM, spacing))
    total = _W_VENTRICLES * vent + _W_HIPPOCAMPUS * hipp + _W_CORTEX * cortex
    fields = np.stack([_resample(c, work, coarse, 0.0) for c in (*vent, *total)])
    return _Template(grid, work, coarse, images, masks, fields[:3], fields[3:], grid.world())


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


def hippocampus_mask_template(spacing: float = 3.0) -> np.ndarray:
    """The ground-truth hippocampal-region mask (fractional, float32) on the output grid."""
    return _mask_on_output_grid(spacing, 1)


def _mask_on_output_grid(spacing: float, channel: int) -> np.ndarray:
    tpl = _template(float(spacing))
    coords = tpl.work.to_voxel(tpl.world)
    return ndi.map_coordinates(tpl.masks[channel], coords, order=1, output=np.float32)


# --------------------------------------------------------------------------- one subject


def atrophy(
    age: float, diagnosis: str, months: np.ndarray | float, rate: float = 1.0,
    disease_rate: float = 1.0, disease_years: float = 0.0,
) -> np.ndarray:
    """Atrophy severity A at ``months`` after baseline (how long the atrophy flow runs).

    ``A = rate·[C_AGE·max(age_t − 40, 0)² + R_DISEASE[dx]·disease_rate·(disease_years + years)]``,
    monotone in time. At 75 the severity grows by 0.23/year from ageing, plus 0.6/year under AD
    (≈ 3.6× the CN rate) or 0.3/year under MCI.
    """
    years = np.asarray(months, dtype=np.float64) / 12.0
    ageing = C_AGE * np.maximum(age + years - AGE_ONSET, 0.0) ** 2
    disease = R_DISEASE[diagnosis] * disease_rate * (disease_years + years)
    return np.minimum(rate * (ageing + disease), MAX_ATROPHY)


def visit_months(rng: np.random.Generator, n_visits: int) -> list[int]:
    """ADNI-like visit months: 0, then 6 (often skipped), 12, 24, 36, …, an occasional gap."""
    schedule = [6, *range(12, 12 * (n_visits + 2), 12)]
    if rng.random() < 0.35:
        schedule.remove(6)
    if n_visits > 2 and rng.random() < 0.2:
        schedule.pop(int(rng.integers(1, n_visits - 1)))
    return [0, *schedule[: n_visits - 1]]


def _dct_field(rng: np.random.Generator, grid: Grid, order: int, scale: float) -> np.ndarray:
    """Smooth random field: a sum of low-frequency DCT basis functions (no constant term)."""
    bases = [
        np.cos(np.pi * np.outer(np.arange(order + 1), (np.arange(n) + 0.5) / n)).astype(np.float32)
        for n in grid.shape
    ]
    freq = np.add.outer(np.add.outer(np.arange(order + 1), np.arange(order + 1)),
                        np.arange(order + 1))
    coef = rng.normal(0.0, 1.0, freq.shape) * scale / np.maximum(freq, 1)
    coef[0, 0, 0] = 0.0
    return np.einsum("ijk,ix,jy,kz->xyz", coef.astype(np.float32), *bases, optimize=True)


def _rotation(angles: np.ndarray) -> np.ndarray:
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _subject_warp(rng: np.random.Generator, tpl: _Template) -> np.ndarray:
    """Subject anatomy p(x) (3, X, Y, Z) mm: residual affine (after registration) + DCT warp."""
    matrix = _rotation(np.deg2rad(rng.normal(0.0, 1.0, 3))) * rng.normal(1.0, 0.02, 3)
    shift = rng.normal(0.0, 1.0, 3)
    center = np.asarray(FOV_CENTER_MM).reshape(3, 1, 1, 1)
    p = np.einsum("ij,j...->i...", matrix, tpl.world - center) + center + shift.reshape(3, 1, 1, 1)
    return p + np.stack([_dct_field(rng, tpl.grid, 3, _WARP_SCALE_MM) for _ in range(3)])


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


@dataclass(frozen=True)
class _Intensity:
    gamma: float
    scale: float
    log_bias: np.ndarray


def _subject_intensity(rng: np.random.Generator, grid: Grid) -> _Intensity:
    return _Intensity(
        gamma=float(np.exp(rng.normal(0.0, 0.1))),
        scale=float(rng.normal(1.0, 0.05)),
        log_bias=_dct_field(rng, grid, 2, 0.08),
    )


def _render(
    rng: np.random.Generator, tpl: _Template, q: np.ndarray, style: _Intensity,
) -> np.ndarray:
    """The scan whose voxels sample the template at ``q`` (mm): intensities, noise, brain mask."""
    coords = tpl.work.to_voxel(q)
    t1, brain = (ndi.map_coordinates(im, coords, order=1, output=np.float32) for im in tpl.images)
    gamma = style.gamma * float(np.exp(rng.normal(0.0, 0.03)))
    bias = np.exp(style.log_bias + _dct_field(rng, tpl.grid, 1, 0.03))
    signal = style.scale * np.power(np.clip(t1, 0.0, None), gamma) * bias
    sigma = float(rng.uniform(0.01, 0.03))
    noise = rng.standard_normal((2, *signal.shape), dtype=np.float32) * sigma
    data = np.sqrt((signal + noise[0]) ** 2 + noise[1] ** 2) * (brain >= 0.5)
    return data.astype(np.float32)


def _support(tpl: _Template, q: np.ndarray, channel: int) -> tuple[np.ndarray, ...]:
    """Output voxels where a truth mask pulled back through ``q`` is non-zero, dilated by 2."""
    near = ndi.map_coordinates(tpl.masks[channel], tpl.work.to_voxel(q), order=1) > 1e-3
    return np.nonzero(ndi.binary_dilation(near, iterations=2))


def _structure_ml(
    tpl: _Template, q: np.ndarray, channel: int, idx: tuple[np.ndarray, ...],
) -> float:
    """Volume (ml) of a truth mask pulled back through the warp ``q`` (mm, on the output grid).

    Each voxel of ``idx`` (the structure's support) is sampled at 2×2×2 sub-voxel points (the
    warp's local linearisation), so the volume hardly depends on the output spacing and is
    smooth in the warp.
    """
    mask = tpl.masks[channel]
    centre = q[(slice(None), *idx)]
    halves = []  # q(x + s/4 along an axis) − q(x) ≈ (q[i+1] − q[i−1]) / 8
    for axis, n in enumerate(tpl.grid.shape):
        up, down = list(idx), list(idx)
        up[axis] = np.minimum(idx[axis] + 1, n - 1)
        down[axis] = np.maximum(idx[axis] - 1, 0)
        halves.append((q[(slice(None), *up)] - q[(slice(None), *down)]) / 8.0)
    total = 0.0
    for signs in np.ndindex(2, 2, 2):
        pts = centre + sum((2 * sgn - 1) * h for sgn, h in zip(signs, halves, strict=True))
        total += float(ndi.map_coordinates(mask, tpl.work.to_voxel(pts), order=1).sum())
    return total / 8.0 * tpl.grid.voxel_ml


def make_subject(
    seed: int = 0,
    spacing: float = 3.0,
    n_visits: int = 4,
    diagnosis: str | None = None,
    age: float | None = None,
) -> SyntheticSubject:
    """Generate one subject's visits (deterministic in its arguments).

    ``diagnosis`` None draws CN or AD (1:1); ``age`` None draws a baseline age in 55–90.
    """
    diagnosis = diagnosis.upper() if diagnosis else None
    if diagnosis is not None and diagnosis not in DIAGNOSES:
        raise LDAEError(f"diagnosis must be one of {', '.join(DIAGNOSES)}, got {diagnosis!r}")
    if not 1 <= n_visits <= MAX_VISITS:
        raise LDAEError(f"n_visits must be 1–{MAX_VISITS}, got {n_visits}")
    tpl = _template(float(spacing))
    rng = np.random.default_rng(seed)
    dx = diagnosis or ("CN", "AD")[int(rng.integers(2))]
    sex = ("F", "M")[int(rng.integers(2))]
    age0 = float(np.clip(rng.normal(75.0 if dx == "AD" else 72.0, 7.0), 55.0, 90.0))
    age0 = round(age0 if age is None else float(age), 1)
    lo, hi = DISEASE_YEARS_AT_BASELINE[dx]
    rates = dict(rate=float(rng.lognormal(0.0, 0.2)), disease_rate=float(rng.lognormal(0.0, 0.25)),
                 disease_years=float(rng.uniform(lo, hi)))
    months = visit_months(rng, n_visits)
    severity = atrophy(age0, dx, np.asarray(months, dtype=float), **rates)
    # constitutional ventricle size (one invertible step of the ventricle field)
    offset = float(np.clip(rng.normal(0.2 if sex == "M" else 0.0, 0.6), -1.5, 1.5))
    p = _subject_warp(rng, tpl)
    p = p + offset * _sample_field(tpl.ventricle_field, tpl.fields, p)
    style = _subject_intensity(rng, tpl.grid)
    visits = []
    points = _atrophy_points(tpl, p, [float(a) for a in severity])
    # supports: ventricles are largest at the last visit, the hippocampi at the first
    support = (_support(tpl, points[-1], 0), _support(tpl, points[0], 1))
    for m, a, q in zip(months, severity, points, strict=True):
        data = _render(rng, tpl, q, style)
        truth = {"age": round(age0 + m / 12.0, 2), "months": float(m),
                 "ventricle_ml": _structure_ml(tpl, q, 0, support[0]),
                 "hippocampus_ml": _structure_ml(tpl, q, 1, support[1]), "atrophy": float(a)}
        visits.append(SyntheticVisit(data, tpl.grid.affine.copy(), m, f"ses-M{m:02d}", truth))
    return SyntheticSubject(f"sub-s{seed}", dx, age0, sex, int(seed), visits)


# --------------------------------------------------------------------------- writing a cohort


def nifti_gz_bytes(data: np.ndarray, affine: np.ndarray) -> bytes:
    """A .nii.gz (int16, fixed slope :data:`INTENSITY_SLOPE`) with a fixed gzip header."""
    import nibabel as nib

    stored = np.clip(np.round(data / INTENSITY_SLOPE), -32768, 32767).astype("<i2")
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(stored.shape)
    hdr.set_data_dtype(np.int16)
    hdr.set_xyzt_units("mm")
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=4)  # aligned to MNI152 (like affinely registered scans)
    hdr["scl_slope"], hdr["scl_inter"] = INTENSITY_SLOPE, 0.0
    hdr["vox_offset"] = 352
    hdr["descrip"] = f"napari-ldae synthetic v{GENERATOR_VERSION}".encode()
    raw = hdr.binaryblock + b"\0" * 4 + stored.tobytes(order="F")
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=6) as gz:
        gz.write(raw)
    return buf.getvalue()


def _write_atomic(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(content)
    os.replace(tmp, path)


def _tsv(header: Sequence[str], rows: Sequence[Sequence[object]]) -> bytes:
    lines = ["\t".join(header)] + ["\t".join(str(v) for v in row) for row in rows]
    return ("\n".join(lines) + "\n").encode()


def _write_subject(out: Path, label: str, subj: SyntheticSubject) -> None:
    """The subject's scans and its ``sub-XXX_sessions.tsv``."""
    rows = []
    for v in subj.visits:
        anat = out / label / v.session / "anat"
        _write_atomic(anat / f"{label}_{v.session}_T1w.nii.gz", nifti_gz_bytes(v.data, v.affine))
        t = v.truth
        rows.append([v.session, v.months, f"{t['age']:.2f}", f"{t['ventricle_ml']:.3f}",
                     f"{t['hippocampus_ml']:.3f}", f"{t['atrophy']:.4f}"])
    header = ["session_id", "months", "age", "ventricle_ml", "hippocampus_ml", "atrophy"]
    _write_atomic(out / label / f"{label}_sessions.tsv", _tsv(header, rows))


@dataclass(frozen=True)
class _Job:
    out: str
    label: str
    seed: int
    spacing: float
    n_visits: int
    diagnosis: str


def _run_job(job: _Job) -> list[object]:
    """Generate and write one subject; returns its participants.tsv row."""
    subj = make_subject(job.seed, job.spacing, job.n_visits, job.diagnosis)
    _write_subject(Path(job.out), job.label, subj)
    return [job.label, subj.diagnosis, f"{subj.age:.1f}", subj.sex, subj.seed]


def _plan(out: Path, subjects: int, seed: int, spacing: float, visits: tuple[int, int],
          mci: bool) -> list[_Job]:
    """Per-subject seeds, diagnoses (balanced, shuffled) and visit counts; from ``seed`` only."""
    rng = np.random.default_rng(seed)
    labels = ("CN", "MCI", "AD") if mci else ("CN", "AD")
    dxs = rng.permutation([labels[i % len(labels)] for i in range(subjects)])
    counts = rng.integers(visits[0], visits[1] + 1, subjects)
    width = max(3, len(str(subjects)))
    return [
        _Job(str(out), f"sub-{i + 1:0{width}d}",
             int(np.random.SeedSequence([seed, i]).generate_state(1)[0]),
             spacing, int(counts[i]), str(dxs[i]))
        for i in range(subjects)
    ]


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Create ``out``; refuse a non-empty one unless ``overwrite`` and it is a synthetic cohort."""
    if out.exists() and not out.is_dir():
        raise CohortError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise CohortError(f"{out} is not empty; choose a new folder or pass --overwrite")
        desc = out / "dataset_description.json"
        if not desc.is_file() or "napari-ldae" not in desc.read_text(errors="replace"):
            raise CohortError(
                f"{out} is not empty and is not a synthetic cohort written by napari-ldae; "
                "refusing to delete its content"
            )
        for child in out.glob("sub-*"):
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _description(subjects: int, seed: int, spacing: float, visits: tuple[int, int],
                 mci: bool) -> bytes:
    import scipy

    command = (f"napari-ldae make-cohort --out DIR --subjects {subjects} --seed {seed} "
               f"--spacing {spacing:g} --visits {visits[0]} {visits[1]}")
    command += " --mci" if mci else ""
    grid = template_grid(spacing)
    desc = {
        "Name": "napari-ldae synthetic longitudinal cohort (ICBM152 2009a, known ground truth)",
        "BIDSVersion": "1.9.0",
        "DatasetType": "raw",
        "GeneratedBy": [{"Name": "napari-ldae", "Version": __version__,
                         "Description": "napari_ldae.data.synthetic.make_cohort"}],
        "GeneratorVersion": GENERATOR_VERSION,
        "Command": command,
        "Parameters": {"subjects": subjects, "seed": seed, "spacing_mm": spacing,
                       "visits": list(visits), "mci": mci},
        "Grid": {"shape": list(grid.shape), "affine": grid.affine.tolist()},
        "Software": {"numpy": np.__version__, "scipy": scipy.__version__},
    }
    return (json.dumps(desc, indent=2) + "\n").encode()


def _fork_pool(workers: int) -> ProcessPoolExecutor:
    import multiprocessing as mp

    methods = mp.get_all_start_methods()
    ctx = mp.get_context("fork" if "fork" in methods else None)
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx)


def make_cohort(
    out: str | Path,
    subjects: int,
    seed: int,
    spacing: float = 3.0,
    visits: tuple[int, int] = (3, 6),
    mci: bool = False,
    overwrite: bool = False,
    progress: Callable[[int, int], object] | None = None,
    *,
    workers: int = 1,
) -> Path:
    """Write a BIDS-like synthetic cohort to ``out`` and return its path.

    Layout: ``sub-XXX/ses-MYY/anat/sub-XXX_ses-MYY_T1w.nii.gz``, ``sub-XXX/sub-XXX_sessions.tsv``
    (session_id, months, age, ventricle_ml, hippocampus_ml, atrophy), ``participants.tsv``
    (participant_id, diagnosis, age, sex, seed) and ``dataset_description.json``. The same
    arguments give byte-identical files whatever ``workers``. ``progress(done, total)`` is called
    once the arguments are checked (``done`` = 0) and after each subject.
    """
    if subjects < 1:
        raise LDAEError(f"subjects must be at least 1, got {subjects}")
    lo, hi = visits
    if not 1 <= lo <= hi <= MAX_VISITS:
        raise LDAEError(f"visits must satisfy 1 <= MIN <= MAX <= {MAX_VISITS}, got {lo} {hi}")
    out = Path(out)
    template_grid(spacing)  # validates spacing before anything is written
    _prepare_out(out, overwrite)
    jobs = _plan(out, subjects, seed, float(spacing), (lo, hi), mci)
    tpl = _template(float(spacing))  # built once here, inherited by forked workers
    if workers > 1:
        _flow_entry(tpl, int(MAX_ATROPHY) + 1)
    if progress is not None:
        progress(0, subjects)
    rows = []
    with _fork_pool(workers) if workers > 1 else contextlib.nullcontext() as pool:
        results = pool.map(_run_job, jobs) if pool else map(_run_job, jobs)
        for done, row in enumerate(results, 1):
            rows.append(row)
            if progress is not None:
                progress(done, subjects)
    header = ["participant_id", "diagnosis", "age", "sex", "seed"]
    _write_atomic(out / "participants.tsv", _tsv(header, rows))
    _write_atomic(out / "dataset_description.json", _description(subjects, seed, spacing,
                                                                 (lo, hi), mci))
    return out


__all__ = [
    "FOV_MM",
    "GENERATOR_VERSION",
    "Grid",
    "SyntheticSubject",
    "SyntheticVisit",
    "atrophy",
    "hippocampus_mask_template",
    "make_cohort",
    "make_subject",
    "template_grid",
    "ventricle_mask_mni",
    "ventricle_mask_template",
]
