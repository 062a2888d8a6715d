"""Results carried onto the user's scan (napari_ldae.operations_transfer) with the shipped demo
bundle: a synthetic AD subject at 2 mm (the model grid is 3 mm), used as it is or moved off
the MNI position and prepared; the exactness gates, the brain mask, the geometry of both
transfers, export and the region volumes."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_ldae.core.progress import drain
from napari_ldae.data.io import Scan
from napari_ldae.data.preprocess import to_scan_space
from napari_ldae.data.regions import CHANGE_BY_DEFORMATION, REGIONS
from napari_ldae.errors import LDAEError
from napari_ldae.operations import export, iter_edit, iter_interpolate
from napari_ldae.operations_transfer import (
    _MEASURED,
    OnScan,
    brain_mask,
    iter_onto_scan,
    iter_region_volumes,
)
from napari_ldae.session import DEMO_BUNDLE, Session

STEPS = 2
STRENGTHS = [0.0, 3.0]
ALPHAS = [0.0, 0.25, 0.75, 1.0]


@pytest.fixture(scope="module")
def session(one_torch_thread, tmp_path_factory) -> Session:
    return Session(DEMO_BUNDLE, device="cpu", cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def subject():
    from napari_ldae.data.synthetic import make_subject

    return make_subject(7, spacing=2.0, n_visits=2, diagnosis="AD")


@pytest.fixture(scope="module")
def visits(subject) -> tuple[Scan, Scan]:
    return tuple(Scan.from_array(v.data, v.affine, path=f"sub-07_{v.session}_T1w.nii.gz")
                 for v in subject.visits)


@pytest.fixture(scope="module")
def edit(session, visits):
    return drain(iter_edit(session, visits[0], "AD", STRENGTHS, STEPS, STEPS))


@pytest.fixture(scope="module")
def both(edit) -> dict[str, OnScan]:
    return {method: drain(iter_onto_scan(edit, method)) for method in ("warp", "intensity")}


@pytest.fixture(params=["warp", "intensity"])
def carried(request, both) -> OnScan:
    return both[request.param]


def test_strength_zero_gives_the_input_bit_for_bit(carried, visits):
    assert carried.volumes[0].dtype == np.float32
    assert np.array_equal(carried.volumes[0], visits[0].data)
    assert carried.scans[0] is visits[0] and carried.inputs == (0, 0)
    if carried.method == "warp":
        assert not carried.log_jacobians[0].any()
    else:
        assert carried.log_jacobians is None


def test_only_the_brain_changes(carried, visits):
    scan, out = visits[0].data, carried.volumes[1]
    brain = brain_mask(visits[0])
    assert brain.mean() < 0.5 and np.array_equal(out[~brain], scan[~brain])
    assert (out[brain] != scan[brain]).mean() > 0.1  # the edit reaches the scan


def test_warp_jacobian_is_finite_and_positive_in_the_brain(both, visits):
    log_jacobian = both["warp"].log_jacobians[1]
    brain = brain_mask(visits[0])
    assert np.isfinite(log_jacobian).all() and np.abs(log_jacobian[brain]).max() > 0.01
    assert np.exp(log_jacobian[brain]).min() > 0.0
    assert not log_jacobian[~brain].any()


def test_intensity_adds_the_model_change_at_each_voxel(edit, both, visits):
    """Independent of SimpleITK: the model-grid change resampled by the preprocessing's own
    inverse (scipy), times the scan's intensity range."""
    out = both["intensity"].volumes[1]
    scan = visits[0]
    lo, hi = scan.intensity_range
    change = to_scan_space(edit.volumes[1] - edit.references[0], scan, edit.contract) * (hi - lo)
    brain = brain_mask(scan)
    np.testing.assert_allclose((out - scan.data)[brain], change[brain], atol=2e-4 * (hi - lo))


def test_interpolation_ends_are_the_visits(session, visits):
    """α = 0 is visit A and α = 1 visit B, bit for bit: α ≤ 0.5 is carried onto A, α > 0.5
    onto B, each against its own reconstruction."""
    result = drain(iter_interpolate(session, *visits, ALPHAS, STEPS, STEPS))
    carried = drain(iter_onto_scan(result, "warp"))
    assert carried.inputs == (0, 0, 1, 1)
    assert np.array_equal(carried.volumes[0], visits[0].data)
    assert np.array_equal(carried.volumes[3], visits[1].data)
    for j, visit in ((1, visits[0]), (2, visits[1])):
        brain = brain_mask(visit)
        assert (carried.volumes[j][brain] != visit.data[brain]).any()
        assert np.array_equal(carried.volumes[j][~brain], visit.data[~brain])
    assert carried.item(2).scans == (visits[1],)
    with pytest.raises(LDAEError, match="different scans"):
        carried.on_scan("image")


@pytest.fixture(scope="module")
def prepared_edit(session, visits):
    """Visit A moved 12 mm and 10° off the MNI position, then prepared (registered back)."""
    from napari_ldae.data.synthetic_head import motion

    scan = visits[0]
    moved = Scan.from_array(scan.data, motion((10.0, 0.0, -6.0), (12.0, -8.0, 5.0)) @ scan.affine,
                            path="moved.nii.gz")
    return moved, drain(iter_edit(session, moved, "AD", STRENGTHS, STEPS, STEPS, prepare="yes"))


def test_a_prepared_scan_is_changed_on_its_own_voxels(prepared_edit):
    moved, result = prepared_edit
    prepared = result.prepared
    assert prepared is not None and prepared.scan is moved
    lo, hi = result.scan.intensity_range
    intensity = drain(iter_onto_scan(result, "intensity"))
    expected = prepared.restore((result.volumes[1] - result.references[0]) * (hi - lo),
                                outside=0.0)
    mask = prepared.mask
    assert np.array_equal(intensity.volumes[0], moved.data)
    np.testing.assert_allclose((intensity.volumes[1] - moved.data)[mask], expected[mask],
                               atol=2e-4 * (hi - lo))
    warp = drain(iter_onto_scan(result, "warp"))
    assert np.array_equal(warp.volumes[0], moved.data)
    assert np.array_equal(warp.volumes[1][~mask], moved.data[~mask])
    # the scan's own detail is moved, not a resampled copy of it: far sharper than the model's
    model = export_volume(result)
    assert sharpness(warp.volumes[1], mask) > 0.9 * sharpness(moved.data, mask)
    assert sharpness(model, mask) < 0.7 * sharpness(moved.data, mask)


def export_volume(result):
    from napari_ldae.operations_prepare import to_input_space

    return to_input_space(result.volumes[1], result.scan, result.prepared)


def sharpness(volume: np.ndarray, where: np.ndarray) -> float:
    """Laplacian energy inside ``where`` minus its rim."""
    inner = ndi.binary_erosion(where, iterations=3)
    return float((ndi.laplace(volume)[inner] ** 2).mean())


def test_export_writes_the_scan_the_difference_and_the_log_jacobian(edit, both, visits,
                                                                    tmp_path):
    carried = both["warp"].item(1)
    paths = {kind: export(tmp_path / f"{kind}.nii.gz", carried, kind)
             for kind in ("image", "difference", "log_jacobian")}
    scan = visits[0]
    image = nib.load(paths["image"])
    np.testing.assert_array_equal(image.affine, scan.affine)
    assert np.array_equal(image.get_fdata(dtype=np.float32), carried.volumes[0])
    diff = nib.load(paths["difference"]).get_fdata(dtype=np.float32)
    assert np.array_equal(diff, carried.volumes[0] - scan.data)
    jac = nib.load(paths["log_jacobian"]).get_fdata(dtype=np.float32)
    assert np.array_equal(jac, carried.log_jacobians[0])
    meta = json.loads(paths["difference"].with_suffix("").with_suffix(".json").read_text())
    prov = meta["provenance"]
    assert (prov["onto"], prov["transfer"], prov["kind"]) == ("scan", "warp", "difference")
    assert prov["strength"] == 3.0 and prov["reference"] == "input scan"
    with pytest.raises(LDAEError, match="no log-Jacobian"):
        export(tmp_path / "x.nii.gz", both["intensity"].item(1), "log_jacobian")
    with pytest.raises(LDAEError, match="no log-Jacobian"):
        export(tmp_path / "y.nii.gz", edit.item(1), "log_jacobian")


def test_without_a_reference_nothing_is_carried(session, visits):
    result = drain(iter_edit(session, visits[0], "AD", [1.0], STEPS, STEPS, reference=False))
    with pytest.raises(LDAEError, match="without its reconstruction"):
        drain(iter_onto_scan(result))
    with pytest.raises(LDAEError, match="unknown transfer"):
        drain(iter_onto_scan(result, "morph"))


def test_region_volumes_of_the_input_and_each_result(edit, both, subject):
    """The input is measured once: strength 0 is the input itself, remembered by content."""
    carried = both["warp"]
    before = len(_MEASURED)
    rows = drain(iter_region_volumes(carried, ["AD+0", "AD+3"]))
    assert list(rows) == ["sub-07_ses-M00_T1w", "AD+0", "AD+3"]
    assert len(_MEASURED) == before + 2
    changes = set(CHANGE_BY_DEFORMATION)
    assert set(rows["AD+0"]) == set(REGIONS) | changes
    assert {k: rows["AD+0"][k] for k in REGIONS} == rows["sub-07_ses-M00_T1w"]
    assert all(rows["AD+0"][k] == 0.0 for k in changes)  # strength 0: the reconstruction
    assert set(rows["AD+3"]) == set(REGIONS) | changes and rows["AD+3"] != rows["AD+0"]
    model = drain(iter_region_volumes(edit, ["model AD+3"], [1], inputs=False))["model AD+3"]
    assert {k: rows["AD+3"][k] for k in changes} == {k: model[k] for k in changes}  # one grid
    truth = subject.visits[0].truth
    assert rows["AD+0"]["lateral_ventricles"] == pytest.approx(truth["ventricle_ml"], rel=0.25)
    assert rows["AD+0"]["hippocampal_region"] == pytest.approx(truth["hippocampus_ml"], rel=0.25)
    assert 1000 < model["whole_brain"] < 2500
