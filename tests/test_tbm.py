"""The change of a structure read from the deformation between two volumes of one brain
(napari_ldae.data.tbm), on synthetic subjects whose true volumes are known at every visit."""

from __future__ import annotations

import numpy as np
import pytest

from napari_ldae.data.tbm import STRUCTURES, structure_changes, template_region


@pytest.fixture(scope="module")
def visit_pairs():
    """First and last visits (2–4 years apart) of eight AD subjects, registered, at 3 mm."""
    from napari_ldae.data.synthetic import make_subject

    pairs = []
    for seed in range(200, 208):
        subject = make_subject(seed, spacing=3.0, n_visits=4, diagnosis="AD",
                               variety="registered")
        first, last = subject.visits[0], subject.visits[-1]
        top = float(first.data.max())
        pairs.append((first.data / top, last.data / top, first.affine,
                      {k: last.truth[k] - first.truth[k]
                       for k in ("ventricle_ml", "hippocampus_ml")}))
    return pairs


def test_real_visits_change_the_way_the_truth_does(visit_pairs):
    """Ventricles grow in every AD subject, and hippocampi shrink in most, as their true volumes
    do; both changes are seen in proportion to the truth, and in part (a demons field
    regularised at 3 mm; ≈ 0.3–1 of the ventricle change, ≈ 0.6 of the hippocampal one)."""
    truth, seen = [], []
    for before, after, affine, true in visit_pairs:
        change = structure_changes(before, after, affine)
        assert true["ventricle_ml"] > 0 and true["hippocampus_ml"] < 0
        grown = change["lateral_ventricles"]
        assert 0.2 * true["ventricle_ml"] < grown < 1.5 * true["ventricle_ml"]
        truth.append([true["ventricle_ml"], true["hippocampus_ml"]])
        seen.append([change["lateral_ventricles"], change["hippocampal_region"]])
    truth_arr, seen_arr = np.asarray(truth), np.asarray(seen)
    assert (seen_arr[:, 1] < 0).sum() >= 6 and seen_arr[:, 1].mean() < 0
    for j in range(2):
        assert np.corrcoef(truth_arr[:, j], seen_arr[:, j])[0, 1] > 0.5


def test_no_change_and_the_reverse(visit_pairs):
    before, after, affine, _ = visit_pairs[0]
    assert structure_changes(before, before, affine) == dict.fromkeys(STRUCTURES, 0.0)
    forward = structure_changes(before, after, affine)["lateral_ventricles"]
    backward = structure_changes(after, before, affine)["lateral_ventricles"]
    assert backward < 0 < forward


def test_bad_input_is_refused(visit_pairs):
    before, after, affine, _ = visit_pairs[0]
    with pytest.raises(ValueError, match="two 3D volumes on one grid"):
        structure_changes(before, after[:-1], affine)
    with pytest.raises(ValueError, match="unknown structure 'cortex'"):
        structure_changes(before, after, affine, ("cortex",))
    far = affine.copy()
    far[:3, 3] += 500.0  # a grid nowhere near the template's brain
    with pytest.raises(ValueError, match="does not cover the template's lateral ventricles"):
        template_region("lateral_ventricles", far, before.shape)
