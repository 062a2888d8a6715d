"""SimpleITK's diffeomorphic demons on voxel grids, shared by the transfer and the region volumes
(with the bounding box of a mask, which both crop to).

Images here live in index space (unit spacing, no rotation): the image index ``(i, j, k)`` is
``volume[i, j, k]`` and a displacement is in voxels of the full-resolution grid, whatever the
grid's affine. Demons smooths its field with a Gaussian of ``smoothing`` voxels of the level it
runs at. SimpleITK is imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def sitk_image(volume: np.ndarray):
    """A float32 SimpleITK image whose index ``(i, j, k)`` is ``volume[i, j, k]``."""
    import SimpleITK as sitk

    return sitk.GetImageFromArray(
        np.ascontiguousarray(np.asarray(volume, dtype=np.float32).transpose(2, 1, 0)))


def demons(fixed, moving, levels: Sequence[int], iterations: int | Sequence[int],
           smoothing: float, *, first_order_exp: bool = False):
    """The displacement field (SimpleITK vector image on ``fixed``'s grid) carrying each point
    of ``fixed`` to the point of ``moving`` that shows the same thing, coarse to fine over the
    shrink factors ``levels`` (e.g. ``(4, 2, 1)``), with ``iterations`` at every level or one
    count per level. ``first_order_exp``: exponentiate each update to first order instead of
    by scaling and squaring (a third faster, still invertible for the small updates of one
    iteration)."""
    import SimpleITK as sitk

    counts = [iterations] * len(levels) if isinstance(iterations, int) else list(iterations)
    if len(counts) != len(levels):
        raise ValueError(f"{len(counts)} iteration counts for {len(levels)} levels")
    field = None
    for factor, count in zip(levels, counts, strict=True):
        level_fixed, level_moving = ((sitk.Shrink(im, [int(factor)] * 3) if factor > 1 else im)
                                     for im in (fixed, moving))
        if field is None:
            field = sitk.Image(level_fixed.GetSize(), sitk.sitkVectorFloat64)
            field.CopyInformation(level_fixed)
        else:
            field = _resampled(field, level_fixed)
        registration = sitk.DiffeomorphicDemonsRegistrationFilter()
        registration.SetNumberOfIterations(int(count))
        registration.SetStandardDeviations(float(smoothing))
        registration.SetUseFirstOrderExp(first_order_exp)
        field = registration.Execute(level_fixed, level_moving, field)
    return field if field.GetSize() == fixed.GetSize() else _resampled(field, fixed)


def bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...] | None:
    """The box of ``mask``'s voxels grown by ``margin`` (within the grid), None if empty."""
    if not mask.any():
        return None
    spans = [np.flatnonzero(mask.any(axis=tuple(j for j in range(3) if j != i)))
             for i in range(3)]
    return tuple(slice(max(int(s[0]) - margin, 0), min(int(s[-1]) + margin + 1, n))
                 for s, n in zip(spans, mask.shape, strict=True))


def field_array(field) -> np.ndarray:
    """A displacement field as a (3, X, Y, Z) float32 array (voxels)."""
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(field).transpose(3, 2, 1, 0).astype(np.float32)


def _resampled(field, reference):
    import SimpleITK as sitk

    return sitk.Resample(field, reference, sitk.Transform(), sitk.sitkLinear, 0.0,
                         sitk.sitkVectorFloat64)
