"""Does a scan already look prepared? The cheap test behind ``--prepare auto``.

A scan looks prepared (skull-stripped and in MNI position) when all of these hold:

1. **skull-stripped**: :func:`~napari_ldae.data.skullstrip.looks_skull_stripped` (background at
   one constant value, a foreground of brain size, not head size);
2. **placed like the MNI brain**: the brain's centroid lies within :data:`MAX_CENTROID_MM` of
   the ICBM152 2009a brain's, its spread (standard deviation of its voxels' positions) along
   each axis is within :data:`MAX_SPREAD_CHANGE` of the template's, and the correlations
   between its axes are within :data:`MAX_CORRELATION_CHANGE` of the template's (a tilt
   about the left-right or the vertical axis shows there);
3. **symmetric about the MNI midline**: at least :data:`MIN_MIRROR_OVERLAP` of the brain's
   voxels, mirrored about the plane x = 0, fall inside the brain (a roll or a yaw shows there).

The template's numbers are constants measured once from the template's brain mask (a test
measures them again), so the test needs numpy and scipy only and works without the
``prepare`` extra. It runs on a copy of the scan thinned to voxels of about 2 mm: a fraction of
a second for a 1 mm head. Measured with the ICBM152 brain moved by known motions: 10° about
any axis, 5 mm of shift or a size 10 % off fails; synthetic cohort scans, Colin27's skull-stripped
brain (``ch2bet``) and heads prepared by :func:`~napari_ldae.data.prepare.prepare` pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_ldae.data.io import Scan

#: The ICBM152 2009a brain mask (nilearn's wheel; ``mni.template(2.0)``), RAS mm.
MNI_BRAIN_CENTROID_MM = (0.0, -21.96, 9.32)
MNI_BRAIN_SPREAD_MM = (34.06, 41.32, 32.27)
MNI_BRAIN_CORRELATION = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.094), (0.0, 0.094, 1.0))
MAX_CENTROID_MM = 5.0
MAX_SPREAD_CHANGE = 0.08
MAX_CORRELATION_CHANGE = 0.05
MIN_MIRROR_OVERLAP = 0.93
#: The test runs on the scan thinned to voxels of at least this size.
CHECK_SPACING_MM = 2.0
_MAX_POINTS = 20_000


@dataclass(frozen=True)
class PositionCheck:
    """The verdict on one scan: ``looks_prepared``, in words (``reason``) and numbers."""

    looks_prepared: bool
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)


def check_prepared(scan: Scan) -> PositionCheck:
    """Whether ``scan`` already looks skull-stripped and in MNI position (module docstring)."""
    from napari_ldae.data.skullstrip import looks_skull_stripped

    thin = _thinned(scan)
    mask = looks_skull_stripped(thin)
    if mask is None:
        return PositionCheck(False, "not skull-stripped, no constant background around a "
                                    "brain-sized foreground")
    numbers = brain_placement(mask, thin.affine)
    off = np.asarray(numbers["centroid_mm"]) - MNI_BRAIN_CENTROID_MM
    spread = np.asarray(numbers["spread_mm"]) / MNI_BRAIN_SPREAD_MM - 1.0
    axis = int(np.argmax(np.abs(spread)))
    if np.linalg.norm(off) > MAX_CENTROID_MM:
        return PositionCheck(False, f"the brain's centre is {np.linalg.norm(off):.1f} mm from "
                                    "the MNI brain's", numbers)
    if abs(spread[axis]) > MAX_SPREAD_CHANGE:
        return PositionCheck(False, f"the brain's size along {'xyz'[axis]} differs from the "
                                    f"MNI brain's by {spread[axis]:+.0%}", numbers)
    if numbers["correlation_change"] > MAX_CORRELATION_CHANGE:
        return PositionCheck(False, "the brain is tilted against the MNI axes (axis "
                                    f"correlation off by {numbers['correlation_change']:.2f})",
                             numbers)
    if numbers["mirror_overlap"] < MIN_MIRROR_OVERLAP:
        return PositionCheck(False, "the brain is not symmetric about the MNI midline (only "
                                    f"{numbers['mirror_overlap']:.1%} of it mirrors into "
                                    "itself): rotated or shifted sideways", numbers)
    return PositionCheck(True, "skull-stripped and in MNI position (centre "
                               f"{np.linalg.norm(off):.1f} mm off, size within "
                               f"{abs(spread[axis]):.0%}, {numbers['mirror_overlap']:.0%} "
                               "left-right symmetric)", numbers)


def brain_placement(mask: np.ndarray, affine: np.ndarray) -> dict[str, Any]:
    """Centroid, spread and axis correlations (RAS mm) of a brain mask, and its mirror overlap."""
    idx = np.argwhere(mask).T
    idx = idx[:, ::max(1, idx.shape[1] // _MAX_POINTS)]
    pts = affine[:3, :3] @ idx + affine[:3, 3:]
    cov = np.cov(pts)
    spread = np.sqrt(np.diag(cov))
    corr = cov / np.outer(spread, spread)
    return {"centroid_mm": [round(float(v), 2) for v in pts.mean(axis=1)],
            "spread_mm": [round(float(v), 2) for v in spread],
            "correlation_change": round(float(np.abs(corr - MNI_BRAIN_CORRELATION).max()), 3),
            "mirror_overlap": round(_mirror_overlap(mask, affine, pts), 3)}


def _mirror_overlap(mask: np.ndarray, affine: np.ndarray, pts: np.ndarray) -> float:
    """The share of brain points whose mirror image about x = 0 (RAS) lies in the brain."""
    inv = np.linalg.inv(affine)
    mirrored = pts * np.array([[-1.0], [1.0], [1.0]])
    u = np.rint(inv[:3, :3] @ mirrored + inv[:3, 3:]).astype(int)
    inside = np.all((u >= 0) & (u < np.asarray(mask.shape)[:, None]), axis=0)
    hits = np.zeros(u.shape[1], dtype=bool)
    hits[inside] = mask[tuple(u[:, inside])]
    return float(hits.mean())


def _thinned(scan: Scan) -> Scan:
    """The scan with every k-th voxel per axis, k chosen so voxels are about 2 mm."""
    steps = [max(1, int(CHECK_SPACING_MM // z)) for z in scan.zooms]
    if steps == [1, 1, 1]:
        return scan
    data = scan.data[::steps[0], ::steps[1], ::steps[2]]
    return Scan(np.ascontiguousarray(data), scan.affine @ np.diag([*steps, 1.0]), scan.header)
