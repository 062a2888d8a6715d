"""Test heads with skull, scalp and neck around the ICBM152 brain, moved by known transforms.

The ICBM152 2009a T1 in the nilearn wheel is skull-stripped. :func:`make_head` wraps its brain
in layers built from the distance to the brain mask (CSF, dark cortical bone with brighter
marrow, bright scalp fat over muscle) and adds a neck, in a field of view like a scanner's.
:func:`move_head` resamples such a head after a known rigid/affine motion of the subject, so a
registration can be scored against the truth. Used by the tests and the benchmarks of
``napari-ldae prepare`` (``docs/preparation.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

# Layers outside the brain's smooth envelope: (outer distance in mm, intensity × brain max):
# CSF, outer table, marrow, inner table, scalp fat, skin and muscle.
_LAYERS = ((2.0, 0.15), (4.0, 0.05), (7.0, 0.55), (9.0, 0.05), (13.0, 0.9), (16.0, 0.5))
_ENVELOPE_MM = 5.0  # smoothing that rounds the brain's outline into a skull
_BRAIN_BOTTOM_MM = -60.0  # the brain mask stops here (lower brainstem excluded)
_FOV_MM = (200.0, 240.0, 240.0)  # head and neck, RAS
_FOV_CENTER_MM = (0.0, -15.0, -15.0)


@dataclass(frozen=True, eq=False)
class Head:
    """A head image (float32, RAS, axis-aligned), its affine and the brain mask (bool)."""

    data: np.ndarray
    affine: np.ndarray
    brain: np.ndarray


def make_head(spacing: float = 2.0, *, seed: int = 0, noise: float = 0.02,
              scale: float = 1000.0) -> Head:
    """A head with skull around the ICBM152 brain, in MNI position, at ``spacing`` mm."""
    from napari_ldae.data.synthetic_template import template_mni

    maps, _, t_aff = template_mni()
    shape = tuple(round(f / spacing) for f in _FOV_MM)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = np.asarray(_FOV_CENTER_MM) - (np.asarray(shape) - 1) / 2 * spacing
    matrix = np.linalg.inv(t_aff) @ affine
    t1 = ndi.affine_transform(maps["t1"], matrix[:3, :3], matrix[:3, 3], output_shape=shape,
                              order=1, cval=0.0)
    brain = ndi.binary_fill_holes(t1 > 0.05)
    envelope = ndi.gaussian_filter(brain.astype(np.float32), _ENVELOPE_MM / spacing) > 0.25
    envelope |= brain
    dist = ndi.distance_transform_edt(~envelope, sampling=spacing)
    head = np.where(brain, t1, 0.0).astype(np.float32)
    head[envelope & ~brain] = _LAYERS[0][1]
    inner = 0.0
    for outer, value in _LAYERS:
        head[(dist > inner) & (dist <= outer)] = value
        inner = outer
    head[_neck(affine, shape) & (head == 0)] = 0.5
    head = ndi.gaussian_filter(head, 0.6 / spacing)
    z = affine[2, 2] * np.arange(shape[2]) + affine[2, 3]
    brain &= (z >= _BRAIN_BOTTOM_MM)[None, None, :]
    rng = np.random.default_rng(seed)
    head = np.abs(head + rng.normal(0.0, noise, shape) + 1j * rng.normal(0.0, noise, shape))
    return Head((head * scale).astype(np.float32), affine, brain)


def _neck(affine: np.ndarray, shape) -> np.ndarray:
    """An elliptic cylinder below the brain (MNI z < -45 mm) around the spine."""
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1)
    x, y, z = (affine[:3, :3] @ idx + affine[:3, 3:]).reshape(3, *shape)
    return (z < -45.0) & ((x / 55.0) ** 2 + ((y + 20.0) / 60.0) ** 2 <= 1.0)


def motion(rotation_deg=(0.0, 0.0, 0.0), shift_mm=(0.0, 0.0, 0.0),
           scale=(1.0, 1.0, 1.0), center_mm=(0.0, -18.0, 10.0)) -> np.ndarray:
    """4×4 world (mm) motion: scale and rotate (x, y, z Euler, degrees) about ``center_mm``,
    then shift."""
    rx, ry, rz = np.deg2rad(rotation_deg)
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    rot = (np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
           @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
           @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]))
    lin = rot @ np.diag(scale)
    c = np.asarray(center_mm, dtype=float)
    out = np.eye(4)
    out[:3, :3] = lin
    out[:3, 3] = c - lin @ c + np.asarray(shift_mm, dtype=float)
    return out


def move_head(head: Head, world: np.ndarray) -> Head:
    """The head after the subject moved by ``world`` (4×4, mm), on the same scanner grid.

    Voxel ``u`` shows what was at ``world⁻¹ · affine · u`` before the motion. The brain mask
    moves with it (nearest neighbour).
    """
    matrix = np.linalg.inv(head.affine) @ np.linalg.inv(world) @ head.affine
    args = dict(matrix=matrix[:3, :3], offset=matrix[:3, 3], output_shape=head.data.shape)
    data = ndi.affine_transform(head.data, order=1, cval=0.0, **args)
    brain = ndi.affine_transform(head.brain.astype(np.uint8), order=0, cval=0, **args) > 0
    return Head(data.astype(np.float32), head.affine.copy(), brain)
