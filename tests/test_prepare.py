"""Scan preparation: skull stripping, registration to MNI, the way back (docs/preparation.md).

Heads with skull are generated around the ICBM152 brain at 2 mm (napari_ldae.data.
synthetic_head) and moved by known motions; the model grid is the demo's (3 mm, 64×80×64).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_ldae.data.io import Scan
from napari_ldae.data.mni import template
from napari_ldae.data.prepare import prepare, prepare_visits
from napari_ldae.data.prepare_qc import output_paths, write_outputs
from napari_ldae.data.preprocess import PreprocessContract
from napari_ldae.data.synthetic_head import make_head, motion, move_head
from napari_ldae.data.transform import BrainTransform
from napari_ldae.errors import ScanError

CONTRACT = PreprocessContract(spacing=(3.0, 3.0, 3.0), shape=(64, 80, 64))
MOTIONS = [  # (rotation °, shift mm, scale): up to 20°, 30 mm and ±10 %
    ((20.0, 0.0, 0.0), (30.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    ((0.0, -12.0, 15.0), (-20.0, 25.0, -10.0), (1.1, 1.1, 1.1)),
    ((-8.0, 10.0, -12.0), (10.0, -30.0, 20.0), (0.9, 0.95, 0.9)),
]


def brain_error_mm(matrix: np.ndarray, truth: np.ndarray) -> float:
    """Mean distance (mm) over the template's brain voxels between two template → scan maps."""
    _, mask, affine = template(2.0)
    pts = affine[:3, :3] @ np.argwhere(mask).T + affine[:3, 3:]
    pts = np.vstack([pts, np.ones(pts.shape[1])])
    return float(np.linalg.norm((matrix @ pts - truth @ pts)[:3], axis=0).mean())


@pytest.fixture(scope="module")
def head():
    return make_head(2.0)


@pytest.fixture(scope="module")
def moved(head):
    world = motion((12.0, -8.0, 10.0), (15.0, -25.0, 10.0), (1.05, 0.95, 1.0))
    return world, move_head(head, world)


@pytest.fixture(scope="module")
def prepared(moved):
    _, m = moved
    return prepare(Scan.from_array(m.data, m.affine), CONTRACT)


@pytest.mark.slow
def test_head_with_skull_is_stripped_and_registered(moved, prepared) -> None:
    world, m = moved
    dice = 2 * (prepared.mask & m.brain).sum() / (prepared.mask.sum() + m.brain.sum())
    assert dice >= 0.90
    assert prepared.transform.steps["skull_strip"].startswith("deepbet")
    assert brain_error_mm(prepared.transform.template_to_input, world) <= 2.0
    assert prepared.data.shape == CONTRACT.shape
    assert prepared.qc["dice_template"] >= 0.85 and not prepared.warnings


@pytest.mark.slow
def test_restore_keeps_every_voxel_outside_the_brain(prepared) -> None:
    edited = prepared.data * 1.5 + 7.0  # any edit of the brain on the model grid
    back = prepared.restore(edited)
    scan = prepared.scan
    assert back.dtype == np.float32 and back.shape == scan.shape
    assert np.array_equal(back[~prepared.mask], scan.data[~prepared.mask])
    assert not np.allclose(back[prepared.mask], scan.data[prepared.mask])
    diff = prepared.restore(edited - prepared.data, outside=0.0)
    assert np.all(diff[~prepared.mask] == 0) and diff[prepared.mask].mean() > 5.0
    # the unedited brain comes back close to the input (up to the model grid's resolution)
    same = prepared.restore(prepared.data)
    inside = prepared.mask & (scan.data < prepared.transform.intensity_max)
    rel = np.abs(same[inside] - scan.data[inside]).mean() / prepared.transform.intensity_max
    assert rel < 0.1


@pytest.mark.parametrize(("rotation", "shift", "scale"), MOTIONS)
def test_known_motions_are_recovered(head, rotation, shift, scale) -> None:
    world = motion(rotation, shift, scale)
    m = move_head(head, world)
    prep = prepare(Scan.from_array(m.data, m.affine), CONTRACT, mask=m.brain)
    assert brain_error_mm(prep.transform.template_to_input, world) <= 2.0


def test_two_visits_differing_by_a_shift_give_the_same_brain(moved) -> None:
    _, m = moved
    shifted = m.affine.copy()
    shifted[:3, 3] += (6.0, -4.0, 9.0)  # the subject moved; the anatomy did not change
    a = Scan.from_array(m.data, m.affine, path="a.nii.gz")
    b = Scan.from_array(m.data, shifted, path="b.nii.gz")
    pa, pb = prepare_visits([a, b], CONTRACT, mask=m.brain)
    assert pb.transform.steps["reference"] == "a.nii.gz"
    lin_a, lin_b = pa.transform.template_to_input, pb.transform.template_to_input
    np.testing.assert_allclose(lin_b[:3, :3], lin_a[:3, :3], atol=2e-3)
    np.testing.assert_allclose(lin_b[:3, 3] - lin_a[:3, 3], (6.0, -4.0, 9.0), atol=0.2)
    imax = pa.transform.intensity_max
    assert np.abs(pa.data - pb.data).mean() < 0.002 * imax
    assert np.abs(pa.data - pb.data).max() < 0.1 * imax


def _template_scan(values=None) -> Scan:
    t1, mask, affine = template(2.0)
    data = (t1 if values is None else values(t1, mask)) * 1000.0
    return Scan.from_array(data.astype(np.float32), affine)


def test_a_skull_stripped_scan_skips_stripping() -> None:
    prep = prepare(_template_scan(), CONTRACT)
    assert prep.transform.steps["skull_strip"].startswith("skipped")
    assert brain_error_mm(prep.transform.template_to_input, np.eye(4)) < 1.0
    assert prep.qc["correlation_template"] > 0.9


def test_a_contrast_unlike_t1_is_refused() -> None:
    inverted = _template_scan(lambda t1, mask: np.where(mask, 1.1 - t1, 0.0))
    with pytest.raises(ScanError, match="T1"):
        prepare(inverted, CONTRACT)


def test_a_brain_cut_by_the_field_of_view_is_refused(head) -> None:
    top = head.data.shape[2] - 45  # cuts through the top of the brain
    scan = Scan.from_array(head.data[:, :, :top], head.affine)
    with pytest.raises(ScanError, match="partial field of view"):
        prepare(scan, CONTRACT, mask=head.brain[:, :, :top])


def test_strip_no_refuses_a_head() -> None:
    h = make_head(4.0)
    with pytest.raises(ScanError, match="skull-stripped"):
        prepare(Scan.from_array(h.data, h.affine), CONTRACT, strip="no")


def test_outputs_are_written_whole_or_not_at_all(tmp_path) -> None:
    prep = prepare(_template_scan(), CONTRACT)
    paths = write_outputs(prep, tmp_path, "t1")
    assert all(p.is_file() for p in paths.values())
    t = BrainTransform.load(paths["transform"])
    np.testing.assert_allclose(t.template_to_input, prep.transform.template_to_input)
    assert json.loads(paths["qc"].read_text())["dice_template"] == prep.qc["dice_template"]
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileExistsError):
        write_outputs(prep, tmp_path, "t1")
    # a failure while writing leaves none of this call's files behind
    blocked = output_paths(tmp_path / "b", "t1")
    blocked["prepared"].mkdir(parents=True)  # a folder where the image should go
    with pytest.raises(OSError):
        write_outputs(prep, tmp_path / "b", "t1", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["t1_prepared.nii.gz"]


def test_transform_file_rejects_other_json(tmp_path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ScanError, match="not a napari-ldae transform"):
        BrainTransform.load(bad)
