"""Rigid then affine registration of skull-stripped brains with SimpleITK, as 4×4 world matrices.

Every transform here is a 4×4 matrix in RAS+ millimetres (nibabel's convention) that maps a
point of the *fixed* image's world to the *moving* image's world: ``moving_mm = M @ fixed_mm``.
That is how resampling uses it (each fixed voxel takes the moving image's value at ``M`` of its
position), and it is what SimpleITK's transforms mean too (they work in LPS; the conversion is
``F @ M @ F`` with ``F = diag(-1, -1, 1, 1)``). SimpleITK is imported inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Multi-resolution schedule per stage: shrink factors and smoothing sigmas (voxels).
_RIGID_LEVELS = ((4, 2), (2.0, 1.0))
_AFFINE_LEVELS = ((2, 1), (1.0, 0.0))
_SEARCH_DEG = 20.0  # step of the coarse search over starting rotations
_SEARCH_MM = 8.0  # voxel size of that search


@dataclass(frozen=True)
class Registration:
    """A registration's result: the fixed → moving world matrix and its final metric value."""

    matrix: np.ndarray
    metric: float
    iterations: int


def to_sitk(data: np.ndarray, affine: np.ndarray):
    """A SimpleITK float32 image of ``data`` (file axis order) placed by the RAS ``affine``."""
    import SimpleITK as sitk

    lps = _LPS @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    arr = np.ascontiguousarray(np.asarray(data, np.float32).transpose(2, 1, 0))  # ITK: z, y, x
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in lps[:3, 3]))
    img.SetDirection(tuple(float(d) for d in (lps[:3, :3] / spacing).ravel()))
    return img


def matrix_of(transform) -> np.ndarray:
    """The RAS 4×4 matrix of an affine-like SimpleITK transform (composites included)."""
    pts = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    mapped = np.array([transform.TransformPoint(tuple(p)) for p in pts])
    lps = np.eye(4)
    lps[:3, 3] = mapped[0]
    lps[:3, :3] = (mapped[1:] - mapped[0]).T
    return _LPS @ lps @ _LPS


def _sitk_affine(matrix: np.ndarray, center_lps):
    import SimpleITK as sitk

    lps = _LPS @ matrix @ _LPS
    tx = sitk.AffineTransform(3)
    tx.SetCenter(tuple(float(c) for c in center_lps))
    c = np.asarray(center_lps, dtype=float)
    tx.SetMatrix(tuple(float(v) for v in lps[:3, :3].ravel()))
    tx.SetTranslation(tuple(float(v) for v in lps[:3, :3] @ c + lps[:3, 3] - c))
    return tx


def _method(levels, iterations: int, seed: int, threads: int, sampling: float = 0.05):
    import SimpleITK as sitk

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(sampling, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-2, numberOfIterations=iterations,
        relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(levels[0]))
    reg.SetSmoothingSigmasPerLevel(list(levels[1]))
    reg.SetNumberOfThreads(threads)
    return reg


def register(fixed: np.ndarray, fixed_affine: np.ndarray, moving: np.ndarray,
             moving_affine: np.ndarray, *, affine: bool = True, init: np.ndarray | None = None,
             iterations: int = 100, seed: int = 1, threads: int = 2) -> Registration:
    """Register ``moving`` onto ``fixed`` (both skull-stripped, background 0): rigid, then
    affine (12 degrees of freedom) unless ``affine=False``.

    Starts from ``init`` (a fixed → moving world matrix) or else from the centres of mass.
    The random metric sampling is seeded, so a run is repeatable.
    """
    import SimpleITK as sitk

    fixed_img = to_sitk(fixed, fixed_affine)
    moving_img = to_sitk(moving, moving_affine)
    if init is None:
        start = sitk.CenteredTransformInitializer(
            fixed_img, moving_img, sitk.Euler3DTransform(),
            sitk.CenteredTransformInitializerFilter.MOMENTS)
    else:
        centre = _centre_lps(fixed_img)
        start = sitk.Euler3DTransform()
        start.SetCenter(centre)
        aff = _sitk_affine(np.asarray(init, float), centre)
        start.SetTranslation(aff.GetTranslation())
        rot = _nearest_rotation(np.asarray(aff.GetMatrix()).reshape(3, 3))
        start.SetMatrix(tuple(float(v) for v in rot.ravel()))
    if init is None:
        start = _search_rotation(fixed_img, moving_img, start, seed, threads)
    reg = _method(_RIGID_LEVELS, iterations, seed, threads)
    reg.SetInitialTransform(start, inPlace=False)
    rigid = reg.Execute(fixed_img, moving_img)
    result = Registration(matrix_of(rigid), reg.GetMetricValue(),
                          reg.GetOptimizerIteration())
    if not affine:
        return result
    reg = _method(_AFFINE_LEVELS, iterations, seed, threads)
    reg.SetInitialTransform(_sitk_affine(result.matrix, _centre_lps(fixed_img)), inPlace=False)
    final = reg.Execute(fixed_img, moving_img)
    return Registration(matrix_of(final), reg.GetMetricValue(), reg.GetOptimizerIteration())


def _search_rotation(fixed_img, moving_img, start, seed: int, threads: int):
    """The best of 27 starting rotations (0 and ±20° about each axis), compared at 8 mm."""
    import itertools

    import SimpleITK as sitk

    def small(img):
        shrink = [max(1, round(_SEARCH_MM / s)) for s in img.GetSpacing()]
        return sitk.Shrink(sitk.SmoothingRecursiveGaussian(img, _SEARCH_MM / 2), shrink)

    fixed_small, moving_small = small(fixed_img), small(moving_img)
    reg = _method(((1,), (0.0,)), 1, seed, threads, sampling=0.5)
    best, best_value = start, np.inf
    step = np.deg2rad(_SEARCH_DEG)
    base = np.asarray(start.GetParameters())
    for k in itertools.product((-1, 0, 1), repeat=3):
        tx = sitk.Euler3DTransform(start)
        tx.SetParameters(tuple(base + np.array([*k, 0, 0, 0], float) * step))
        reg.SetInitialTransform(tx, inPlace=True)
        value = reg.MetricEvaluate(fixed_small, moving_small)
        if value < best_value:
            best, best_value = tx, value
    return best


def _centre_lps(img) -> tuple[float, float, float]:
    size = np.asarray(img.GetSize(), dtype=float)
    return img.TransformContinuousIndexToPhysicalPoint(tuple((size - 1) / 2))


def _nearest_rotation(m: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(m)
    r = u @ vt
    if np.linalg.det(r) < 0:
        u[:, -1] *= -1
        r = u @ vt
    return r


def resample(data: np.ndarray, affine: np.ndarray, matrix: np.ndarray, out_affine: np.ndarray,
             out_shape, *, order: int = 1, cval: float = 0.0) -> np.ndarray:
    """Sample ``data`` (grid ``affine``) at ``matrix @ out_affine @ v`` for each voxel ``v`` of
    the output grid (``out_shape``, ``out_affine``); outside the data: ``cval``."""
    from scipy import ndimage

    m = np.linalg.inv(affine) @ matrix @ out_affine
    return ndimage.affine_transform(
        np.asarray(data, dtype=np.float32), m[:3, :3], m[:3, 3], output_shape=tuple(out_shape),
        order=order, mode="constant", cval=float(cval), prefilter=order > 1,
    ).astype(np.float32, copy=False)
