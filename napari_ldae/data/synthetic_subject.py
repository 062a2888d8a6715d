"""One synthetic subject: anatomy, atrophy over time, intensities and ground-truth volumes.

A scan is the template sampled at ``Φ_A(p(x))`` (see :mod:`napari_ldae.data.synthetic_template`):

- ``p``, the subject's anatomy, the same at every visit: a small residual affine (as after an
  affine registration) and a smooth DCT displacement of a few mm; then, in the ``template``
  variety, one small step of the ventricle field (v1); in the ``realistic`` variety (v2), an
  isotropic brain scale (head size, larger in men) and invertible Euler steps along the
  constitution fields: ventricle size (lognormal, left and right apart), hippocampal size and
  cortical thickness, with a left–right asymmetry;
- ``Φ_A``: the shared atrophy flow run for the severity ``A(t)`` of :func:`atrophy`.

The truth volumes are the template masks pulled back through the same warp.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from napari_ldae.data.synthetic_template import (
    FOV_CENTER_MM,
    MAX_STEP,
    Grid,
    _atrophy_points,
    _sample_field,
    _Template,
    _template,
)
from napari_ldae.errors import LDAEError

DIAGNOSES = ("CN", "MCI", "AD")
#: Between-subject variety: ``realistic`` (generator v2, the default), ``registered`` (v2 after
#: an affine registration to MNI took out each brain's size) or ``template`` (v1).
VARIETIES = ("realistic", "registered", "template")
#: Generator version per variety: the same seed, variety and version give the same scans.
GENERATOR_VERSIONS = {"realistic": "2", "registered": "2", "template": "1"}

# Atrophy model: A(t) = k·[C_AGE·(age_t − AGE_ONSET)² + R_DISEASE[dx]·m·(d0 + years)].
AGE_ONSET = 40.0
C_AGE = 0.0033  # severity per year² of age beyond AGE_ONSET (CN: A ≈ 4 at 75, +0.23/year)
R_DISEASE = {"CN": 0.0, "MCI": 0.3, "AD": 0.6}  # extra severity per year of disease
DISEASE_YEARS_AT_BASELINE = {"CN": (0.0, 0.0), "MCI": (1.0, 5.0), "AD": (3.0, 8.0)}
MAX_ATROPHY = 20.0  # severity cap (ventricles ≈ 80 ml in the template)
#: Most visits per subject (baseline + 11 follow-ups ≈ 10 years).
MAX_VISITS = 12
_WARP_SCALE_MM = 1.2  # DCT coefficient scale of the subject warp (mean ≈ 2.5 mm, max ≈ 5 mm)

# Realistic variety (participants.tsv). Brain scale s (linear; volumes scale with s³):
# log s ~ N(±0.02 for men / women, 0.028), so brain volume is ≈ 13 % larger in men, SD ≈ 8.5 %.
_SCALE_LOG_SEX, _SCALE_LOG_SD, _SCALE_RANGE = 0.02, 0.028, (0.9, 1.1)
# Constitutional ventricle volume (ml, template size, before atrophy): lognormal, right-skewed.
_VENTRICLE_MEDIAN_ML = {"F": 11.0, "M": 12.5}
_VENTRICLE_LOG_SD = 0.45
# Lateral-ventricle volume (ml) of the template after a step (mm) of V alone, measured at 3 mm:
# maps a drawn volume onto a step (and bounds the steps to −4…10).
_VENTRICLE_STEPS = (-4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0)
_VENTRICLE_STEP_ML = (5.08, 6.47, 8.40, 10.98, 13.95, 17.82, 21.65, 29.75, 38.19, 46.38, 53.78)
# Hippocampal size and cortical thickness steps (mm): one unit ≈ ±30 % hippocampal volume.
_HIPPOCAMPUS_SD, _CORTEX_SD, _STEP_CLIP = 0.3, 0.3, 0.9
# Left − right half-difference of the ventricle steps (left ventricles usually larger); the
# hippocampi get a quarter of it the other way (the right one usually larger).
_ASYMMETRY_MEAN, _ASYMMETRY_SD, _ASYMMETRY_CLIP = 0.1, 0.4, 1.2


@dataclass(frozen=True, eq=False)
class SyntheticVisit:
    """One scan: ``data`` float32 (X, Y, Z) RAS in [0, 1]-ish, its 4×4 ``affine`` and truth."""

    data: np.ndarray
    affine: np.ndarray
    months: int
    session: str
    truth: dict[str, float]
    #: (2, X, Y, Z) fractions of the truth ventricles and hippocampal region, when asked for
    labels: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class SyntheticSubject:
    """One subject: id, diagnosis (CN/MCI/AD), baseline age, sex and visits (baseline first).

    ``anatomy`` holds the per-subject truth of the realistic variety (the participants.tsv
    columns brain_scale, brain_ml, ventricle_step, hippocampus_step, cortex_step, asymmetry);
    it is empty for the template variety.
    """

    subject: str
    diagnosis: str
    age: float
    sex: str
    seed: int
    visits: list[SyntheticVisit]
    variety: str = "realistic"
    anatomy: dict[str, float] = field(default_factory=dict)


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


def _subject_warp(
    rng: np.random.Generator, tpl: _Template, brain_scale: float = 1.0,
) -> np.ndarray:
    """Subject anatomy p(x) (3, X, Y, Z) mm: residual affine (after registration) + DCT warp.

    ``brain_scale`` s makes the brain s times the template's size about FOV_CENTER_MM.
    """
    matrix = _rotation(np.deg2rad(rng.normal(0.0, 1.0, 3))) * rng.normal(1.0, 0.02, 3)
    if brain_scale != 1.0:
        matrix = matrix / brain_scale
    shift = rng.normal(0.0, 1.0, 3)
    center = np.asarray(FOV_CENTER_MM).reshape(3, 1, 1, 1)
    p = np.einsum("ij,j...->i...", matrix, tpl.world - center) + center + shift.reshape(3, 1, 1, 1)
    return p + np.stack([_dct_field(rng, tpl.grid, 3, _WARP_SCALE_MM) for _ in range(3)])



# --------------------------------------------------------------------------- realistic variety


@dataclass(frozen=True)
class _Constitution:
    """A subject's constitutional anatomy (realistic variety), drawn from its own stream."""

    brain_scale: float  # linear, about FOV_CENTER_MM
    ventricle_step: float  # mm along V (mean of left and right)
    hippocampus_step: float  # mm along −H (positive: larger)
    cortex_step: float  # mm along −C (positive: thicker)
    asymmetry: float  # left − right half-difference of the ventricle steps (mm)

    @classmethod
    def draw(cls, seed: int, sex: str) -> _Constitution:
        # a stream of its own, so the rest of the subject is the same as in the template variety
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1]))
        male = sex == "M"
        scale = np.exp(rng.normal(_SCALE_LOG_SEX if male else -_SCALE_LOG_SEX, _SCALE_LOG_SD))
        ventricle_ml = rng.lognormal(np.log(_VENTRICLE_MEDIAN_ML[sex]), _VENTRICLE_LOG_SD)
        hipp, cortex = rng.normal(0.0, (_HIPPOCAMPUS_SD, _CORTEX_SD))
        asym = rng.normal(_ASYMMETRY_MEAN, _ASYMMETRY_SD)
        return cls(
            brain_scale=float(np.clip(scale, *_SCALE_RANGE)),
            ventricle_step=float(np.interp(ventricle_ml, _VENTRICLE_STEP_ML, _VENTRICLE_STEPS)),
            hippocampus_step=float(np.clip(hipp, -_STEP_CLIP, _STEP_CLIP)),
            cortex_step=float(np.clip(cortex, -_STEP_CLIP, _STEP_CLIP)),
            asymmetry=float(np.clip(asym, -_ASYMMETRY_CLIP, _ASYMMETRY_CLIP)),
        )

    def weights(self) -> np.ndarray:
        """Step (mm) along each of CONSTITUTION_FIELDS."""
        v, h, a = self.ventricle_step, self.hippocampus_step, self.asymmetry
        return np.array([v + a, v - a, h - a / 4, h + a / 4, self.cortex_step])


def _constitute(tpl: _Template, p: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Points ``p`` carried along Σ wᵢ·Fᵢ (the constitution fields) in n equal Euler steps.

    ``n = ceil(Σ|wᵢ| / MAX_STEP)``, so each step is a combination of unit fields with absolute
    weights adding up to at most MAX_STEP: invertible, and so is their composition. ``n``
    depends on the weights only, so a subject is the same map at every spacing.
    """
    n = max(1, int(np.ceil(np.abs(weights).sum() / MAX_STEP)))
    step = np.tensordot((weights / n).astype(np.float32), tpl.constitution_fields, axes=1)
    for _ in range(n):
        p = p + _sample_field(step, tpl.fields, p)
    return p


def _brain_ml(tpl: _Template, p: np.ndarray) -> float:
    """Volume (ml) of the template's brain (filled brain mask) pulled back through ``p``."""
    brain = ndi.map_coordinates(tpl.images[1], tpl.work.to_voxel(p), order=1)
    return float(brain.sum(dtype=np.float64)) * tpl.grid.voxel_ml


# --------------------------------------------------------------------------- intensities, truth


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
    *,
    variety: str = "realistic",
    labels: bool = False,
) -> SyntheticSubject:
    """Generate one subject's visits (deterministic in its arguments).

    ``diagnosis`` None draws CN or AD (1:1); ``age`` None draws a baseline age in 55–90.
    ``variety`` "realistic" (v2) varies head size, ventricle and hippocampal size, cortical
    thickness and asymmetry between subjects (:attr:`SyntheticSubject.anatomy`); "registered" is
    the same subject with its size taken out, as an affine registration to MNI does (its
    ``brain_scale`` is the factor removed, its volumes in template space); "template" (v1)
    is the template with a small residual affine, a DCT warp and a small ventricle offset. The
    diagnosis, age, sex, visits, atrophy and intensities are the same in both for one seed.
    ``labels`` adds each visit's truth masks (:attr:`SyntheticVisit.labels`); nothing else changes.
    """
    diagnosis = diagnosis.upper() if diagnosis else None
    if diagnosis is not None and diagnosis not in DIAGNOSES:
        raise LDAEError(f"diagnosis must be one of {', '.join(DIAGNOSES)}, got {diagnosis!r}")
    if not 1 <= n_visits <= MAX_VISITS:
        raise LDAEError(f"n_visits must be 1–{MAX_VISITS}, got {n_visits}")
    if variety not in VARIETIES:
        raise LDAEError(f"variety must be one of {', '.join(VARIETIES)}, got {variety!r}")
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
    # v1 constitutional ventricle size (one invertible step of the ventricle field); drawn in
    # both varieties so that the rest of the stream is the same
    offset = float(np.clip(rng.normal(0.2 if sex == "M" else 0.0, 0.6), -1.5, 1.5))
    anatomy: dict[str, float] = {}
    if variety == "template":
        p = _subject_warp(rng, tpl)
        p = p + offset * _sample_field(tpl.ventricle_field, tpl.fields, p)
    else:
        body = _Constitution.draw(seed, sex)
        # registered: the size an affine registration to MNI removes stays in participants.tsv
        scale = body.brain_scale if variety == "realistic" else 1.0
        p = _constitute(tpl, _subject_warp(rng, tpl, scale), body.weights())
        anatomy = {"brain_scale": body.brain_scale, "brain_ml": _brain_ml(tpl, p),
                   "ventricle_step": body.ventricle_step,
                   "hippocampus_step": body.hippocampus_step,
                   "cortex_step": body.cortex_step, "asymmetry": body.asymmetry}
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
        masks = None
        if labels:
            coords = tpl.work.to_voxel(q)
            masks = np.stack([ndi.map_coordinates(tpl.masks[c], coords, order=1,
                                                  output=np.float32) for c in (0, 1)])
        visits.append(SyntheticVisit(data, tpl.grid.affine.copy(), m, f"ses-M{m:02d}", truth,
                                     masks))
    return SyntheticSubject(f"sub-s{seed}", dx, age0, sex, int(seed), visits, variety, anatomy)
