"""How a scan is shown in napari without a rotated affine.

The data is reoriented to the closest RAS axis order (a permutation and flips, never a
resampling) and placed with a diagonal ``scale``/``translate``; see :class:`DisplayGeometry`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel import orientations as ornt_mod


@dataclass(frozen=True, eq=False)
class DisplayGeometry:
    """How a scan is shown in napari: canonical (RAS) axis order and a diagonal transform.

    ``ornt`` is nibabel's orientation of the file axes (``io_orientation(affine)``): file axis
    ``i`` becomes display axis ``ornt[i, 0]``, flipped when ``ornt[i, 1] == -1``. For a scan
    that is not oblique, ``diag(scale) @ v + translate`` is exactly the world position (mm) of
    display voxel ``v``; for an oblique scan it is the closest axis-aligned placement, exact at
    the volume's centre (``oblique_deg`` says by how much it is rotated).
    """

    ornt: np.ndarray
    file_shape: tuple[int, int, int]
    scale: tuple[float, float, float]
    translate: tuple[float, float, float]
    oblique_deg: float

    @classmethod
    def from_affine(cls, affine: np.ndarray, shape: tuple[int, ...]) -> DisplayGeometry:
        """Geometry of a 3D grid of ``shape`` with voxel-to-world ``affine``."""
        shape3 = tuple(int(s) for s in shape[:3])
        ornt = ornt_mod.io_orientation(affine)
        reoriented = affine @ ornt_mod.inv_ornt_aff(ornt, shape3)
        rzs = reoriented[:3, :3]
        scale = np.linalg.norm(rzs, axis=0)
        centre = (np.array(_apply_shape(shape3, ornt)) - 1) / 2.0
        translate = rzs @ centre + reoriented[:3, 3] - scale * centre
        cosines = np.clip(np.diag(rzs) / scale, -1.0, 1.0)
        oblique = float(np.degrees(np.arccos(cosines.min())))
        return cls(ornt, shape3, tuple(map(float, scale)), tuple(map(float, translate)), oblique)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of the display (reoriented) volume."""
        return _apply_shape(self.file_shape, self.ornt)

    @property
    def affine(self) -> np.ndarray:
        """The diagonal 4×4 display affine (display voxel → world mm)."""
        aff = np.diag([*self.scale, 1.0])
        aff[:3, 3] = self.translate
        return aff

    @property
    def inverse_ornt(self) -> np.ndarray:
        """Orientation that takes display axes back to the file's axes."""
        inv = np.zeros_like(self.ornt)
        for i, (axis, flip) in enumerate(self.ornt):
            inv[int(axis)] = (i, flip)
        return inv

    def to_display(self, data: np.ndarray) -> np.ndarray:
        """File-ordered ``(X, Y, Z, ...)`` array → display order (trailing axes kept)."""
        return np.ascontiguousarray(ornt_mod.apply_orientation(data, self.ornt))

    def from_display(self, data: np.ndarray) -> np.ndarray:
        """Display-ordered array → the file's axis order (inverse of :meth:`to_display`)."""
        return np.ascontiguousarray(ornt_mod.apply_orientation(data, self.inverse_ornt))


def _apply_shape(shape: tuple[int, int, int], ornt: np.ndarray) -> tuple[int, int, int]:
    out = [0, 0, 0]
    for i, (axis, _) in enumerate(ornt):
        out[int(axis)] = int(shape[i])
    return (out[0], out[1], out[2])
