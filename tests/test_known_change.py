"""The known ventricle enlargement (napari_ldae.data.known_change) on a spherical "ventricle"."""

from __future__ import annotations

import numpy as np
import pytest

from napari_ldae.data.known_change import enlargement, pulled_back

SPACING, SHAPE, RADIUS_MM = 2.0, (40, 40, 40), 12.0


def _grid(flip_x: bool) -> tuple[np.ndarray, np.ndarray]:
    """(affine, sphere mask) of a 2 mm grid centred on 0, RAS or with x reversed (LAS)."""
    affine = np.diag([-SPACING if flip_x else SPACING, SPACING, SPACING, 1.0])
    affine[:3, 3] = -affine.diagonal()[:3] * (np.asarray(SHAPE) - 1) / 2
    index = np.indices(SHAPE, dtype=np.float64)
    world = np.einsum("ij,j...->i...", affine[:3, :3], index) + affine[:3, 3].reshape(3, 1, 1, 1)
    return affine, (np.sqrt((world**2).sum(0)) < RADIUS_MM).astype(np.float32)


def test_the_enlargement_grows_the_ventricle_by_its_displacement():
    affine, sphere = _grid(flip_x=False)
    field = enlargement(sphere, affine, largest_mm=2.0)
    assert np.sqrt((field**2).sum(0)).max() == pytest.approx(2.0)
    image = 1.0 - sphere  # a dark ventricle in bright tissue
    grown = pulled_back(image, affine, field, affine)
    dark = [float((v < 0.5).sum()) * SPACING**3 for v in (image, grown)]
    assert dark[1] > dark[0] * 1.1  # a sphere of 12 mm pushed outward by up to 2 mm
    assert dark[1] < (4 / 3) * np.pi * (RADIUS_MM + 2.0) ** 3 * 1.2


def test_the_field_is_in_world_millimetres_on_any_axis_order():
    """The same world field on a RAS grid and on one whose x axis runs the other way."""
    (ras, sphere), (las, flipped) = _grid(False), _grid(True)
    on_ras, on_las = enlargement(sphere, ras), enlargement(flipped, las)
    assert np.allclose(on_ras, on_las[:, ::-1], atol=1e-6)
    image = 1.0 - sphere
    grown_ras = pulled_back(image, ras, on_ras, ras)
    grown_las = pulled_back(image[::-1].copy(), las, on_las, las)
    assert np.allclose(grown_ras, grown_las[::-1], atol=1e-5)
