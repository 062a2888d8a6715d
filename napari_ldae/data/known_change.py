"""A known ventricle enlargement: a smooth field that pushes tissue away from a ventricle mask,
the test change of ``benchmarks.transfer`` and of ``evaluate``'s
``manipulation.ventricle_known_change`` (how much of it survives the autoencoder).

The field is the gradient of the Gaussian-smoothed mask, scaled so that its largest displacement
is ``largest_mm``; pulling an image back through it (:func:`pulled_back`) enlarges the
ventricles. Grids are given by their affines (voxel → world mm), which may differ between the
field and the image.
"""

from __future__ import annotations

import numpy as np

#: Largest displacement (mm) and smoothing of the mask (mm) of the default enlargement.
ENLARGEMENT_MM, ENLARGEMENT_SIGMA_MM = 2.0, 4.0


def enlargement(mask: np.ndarray, affine: np.ndarray, largest_mm: float = ENLARGEMENT_MM,
                sigma_mm: float = ENLARGEMENT_SIGMA_MM) -> np.ndarray:
    """The field (3, X, Y, Z; world mm) on ``mask``'s grid pointing into the ventricles."""
    from scipy import ndimage as ndi

    matrix = np.asarray(affine, np.float64)[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    smooth = ndi.gaussian_filter(np.asarray(mask, np.float64), sigma_mm / spacing)
    # the gradient in world mm: d/dworld = inv(A)ᵀ · d/dindex
    field = np.einsum("ji,j...->i...", np.linalg.inv(matrix), np.stack(np.gradient(smooth)))
    return field * (largest_mm / np.sqrt((field**2).sum(0)).max())


def ventricle_enlargement(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """:func:`enlargement` of the template's lateral ventricles on a grid in MNI position."""
    from napari_ldae.data.tbm import template_region

    return enlargement(template_region("lateral_ventricles", affine, shape), affine)


def pulled_back(volume: np.ndarray, affine: np.ndarray, field: np.ndarray,
                field_affine: np.ndarray, order: int = 1) -> np.ndarray:
    """``volume(x + field(x))`` on the volume's own grid (float32)."""
    from scipy import ndimage as ndi

    affine, field_affine = (np.asarray(a, np.float64) for a in (affine, field_affine))
    index = np.indices(volume.shape, dtype=np.float64)
    world = np.einsum("ij,j...->i...", affine[:3, :3], index) + affine[:3, 3].reshape(3, 1, 1, 1)
    at = np.linalg.solve(field_affine[:3, :3], (world - field_affine[:3, 3].reshape(3, 1, 1, 1))
                         .reshape(3, -1)).reshape(world.shape)
    moved = world + np.stack([ndi.map_coordinates(c, at, order=1) for c in field])
    source = np.linalg.solve(affine[:3, :3], (moved - affine[:3, 3].reshape(3, 1, 1, 1))
                             .reshape(3, -1)).reshape(world.shape)
    return ndi.map_coordinates(volume, source, order=order, mode="nearest").astype(np.float32)
