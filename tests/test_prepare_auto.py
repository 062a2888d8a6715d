"""``--prepare auto``'s test: does a scan already look skull-stripped and in MNI position?"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_ldae.data import prepare_auto
from napari_ldae.data.io import Scan
from napari_ldae.data.mni import template
from napari_ldae.data.prepare_auto import brain_placement, check_prepared
from napari_ldae.data.synthetic_head import make_head, motion


def _template_moved(world: np.ndarray, spacing: float = 2.0) -> Scan:
    """The skull-stripped template after the subject moved by ``world`` (4×4, mm)."""
    t1, _, affine = template(spacing)
    m = np.linalg.inv(affine) @ np.linalg.inv(world) @ affine
    data = ndi.affine_transform(t1, m[:3, :3], m[:3, 3], output_shape=t1.shape, order=1)
    return Scan.from_array(data * 1000.0, affine)


def test_the_constants_are_the_templates() -> None:
    _, mask, affine = template(2.0)
    found = brain_placement(mask, affine)
    np.testing.assert_allclose(found["centroid_mm"], prepare_auto.MNI_BRAIN_CENTROID_MM, atol=0.2)
    np.testing.assert_allclose(found["spread_mm"], prepare_auto.MNI_BRAIN_SPREAD_MM, atol=0.1)
    assert found["correlation_change"] < 0.01 and found["mirror_overlap"] == 1.0


@pytest.mark.parametrize("spacing", [1.0, 3.0])
def test_a_brain_in_mni_position_looks_prepared(spacing) -> None:
    check = check_prepared(_template_moved(np.eye(4), spacing))
    assert check.looks_prepared, check.reason
    assert check.reason.startswith("skull-stripped and in MNI position")


def test_a_synthetic_cohort_scan_looks_prepared() -> None:
    from napari_ldae.data.synthetic import make_subject

    visit = make_subject(seed=1, spacing=3.0, n_visits=1).visits[0]
    assert check_prepared(Scan.from_array(visit.data, visit.affine)).looks_prepared


@pytest.mark.parametrize(("world", "reason"), [
    (motion((10.0, 0.0, 0.0)), "tilted"),  # pitch
    (motion((0.0, 0.0, 10.0)), "tilted"),  # yaw
    (motion((0.0, 10.0, 0.0)), "not symmetric about the MNI midline"),  # roll
    (motion(shift_mm=(0.0, 8.0, 0.0)), "centre is 8.0 mm from"),
    (motion(scale=(0.9, 0.9, 0.9)), "size along"),
])
def test_a_moved_brain_does_not(world, reason) -> None:
    check = check_prepared(_template_moved(world))
    assert not check.looks_prepared and reason in check.reason


def test_a_head_with_skull_does_not() -> None:
    h = make_head(4.0)
    check = check_prepared(Scan.from_array(h.data, h.affine))
    assert not check.looks_prepared and check.reason.startswith("not skull-stripped")
