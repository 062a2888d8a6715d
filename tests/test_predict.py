"""operations.iter_predict on a tiny random bundle: a visit's own date gives its reconstruction,
between two visits it is the interpolation, provenance, bad input and warnings."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from ldae_factory import tiny_scan

from napari_ldae import operations, operations_predict
from napari_ldae.core.progress import drain
from napari_ldae.errors import LDAEError
from napari_ldae.operations_predict import PredictionWarning, check_visits, subject_label

ATOL = 5e-4  # batched decodes of the random tiny model differ by up to 2e-4


@pytest.fixture(scope="module")
def scans():
    return [tiny_scan(seed) for seed in (0, 1, 2)]


def predict(session, scans, months, targets, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PredictionWarning)
        return drain(operations.iter_predict(session, scans, months, targets, **kwargs))


def test_a_visits_own_date_gives_its_reconstruction(session, scans):
    """Two visits: the line passes through both, so each date decodes to that visit (one date
    per call: a batch of several sums convolutions in another order, float noise)."""
    for i, month in enumerate((0.0, 24.0)):
        result = predict(session, scans[:2], [0.0, 24.0], [month], y_rule="line")
        recon = drain(operations.iter_reconstruct(session, scans[i])).volumes
        np.testing.assert_allclose(result.volumes[0], recon, atol=1e-6)
        assert result.provenance["prediction"] is False
    np.testing.assert_allclose(result.references[0], result.volumes[0], atol=1e-6)
    assert result.provenance["fit_residual"] < 1e-6


def test_anchored_passes_through_three_visits(session, scans):
    """Three visits off a line: "anchored" (the default) decodes each visit's own date to its
    reconstruction, the latest's to the reference; the least-squares line does not."""
    months = [0.0, 12.0, 30.0]
    for i, month in enumerate(months):
        result = predict(session, scans, months, [month])
        recon = drain(operations.iter_reconstruct(session, scans[i])).volumes
        np.testing.assert_allclose(result.volumes[0], recon, atol=1e-6)
    assert result.provenance["y_rule"] == "anchored" and result.provenance["fit_residual"] > 0
    np.testing.assert_allclose(result.references[0], result.volumes[0], atol=1e-6)
    line = predict(session, scans, months, [30.0], y_rule="line")
    assert line.provenance["y_rule"] == "line"
    assert np.abs(line.volumes[0] - line.references[0]).max() > 1e-5


def test_between_two_visits_it_is_the_interpolation(session, scans):
    result = predict(session, scans[:2], [0.0, 24.0], [6.0, 12.0], x_T_rule="slerp")
    interp = drain(operations.iter_interpolate(session, scans[0], scans[1], [0.25, 0.5],
                                               references=False))
    np.testing.assert_allclose(result.volumes, interp.volumes, atol=ATOL)


def test_three_visits_in_any_order(session, scans):
    """Provenance of a fit over three visits given out of order; output on the latest's grid."""
    names = ["sub-01_ses-M12", "sub-01_ses-M00", "sub-01_ses-M30"]
    result = predict(session, [scans[1], scans[0], scans[2]], [12.0, 0.0, 30.0], [18.0, 42.0],
                     names=names, visit_a="ignored")
    prov = result.provenance
    assert result.scan is scans[2]
    assert prov["operation"] == "predict"
    assert prov["visits"] == ["sub-01_ses-M00", "sub-01_ses-M12", "sub-01_ses-M30"]
    assert prov["visit_months"] == [0.0, 12.0, 30.0]
    assert prov["prediction"] == [False, True] and prov["horizon_months"] == [-12.0, 12.0]
    assert prov["x_T_rule"] == "hold" and prov["fit_residual"] > 0.0
    assert prov["y_rule"] == "anchored"
    assert 0.0 < prov["fit_unexplained"] <= 1.0
    assert prov["visit_a"] == "ignored" and prov["warnings"] == []
    one = result.item(1)
    assert one.provenance["months"] == 42.0 and one.provenance["prediction"] is True
    assert result.volumes.shape == (2, *session.contract.shape)
    assert np.abs(result.volumes[1] - result.references[0]).max() > 1e-5  # it moved


def test_rules_past_the_last_visit(session, scans):
    """hold (the default) and latest keep the latest x_T there; slerp continues it."""
    hold = predict(session, scans[:2], [0.0, 12.0], [24.0], reference=False)
    latest = predict(session, scans[:2], [0.0, 12.0], [24.0], reference=False,
                     x_T_rule="latest")
    slerp = predict(session, scans[:2], [0.0, 12.0], [24.0], reference=False,
                    x_T_rule="slerp")
    assert hold.provenance["x_T_rule"] == "hold" and latest.references == ()
    np.testing.assert_array_equal(hold.volumes, latest.volumes)
    assert np.abs(slerp.volumes - hold.volumes).max() > 1e-5


def test_export_in_the_latest_visits_space(session, scans, tmp_path):
    from napari_ldae.data.io import write_scan

    paths = [write_scan(tmp_path / f"sub-01_ses-M{m:02d}_T1w.nii.gz", s.data, like=s)
             for m, s in zip((0, 12), scans[:2], strict=True)]
    from napari_ldae.data.io import read_scan

    visits = [read_scan(p) for p in paths]
    result = predict(session, visits, [0.0, 12.0], [24.0])
    out = operations.export(tmp_path / "pred.nii.gz", result)
    prov = json.loads(out.with_name("pred.json").read_text())["provenance"]
    assert prov["visits"] == [str(p) for p in paths] and prov["prediction"] is True
    assert prov["space"] == "the latest visit's (sub-01_ses-M12_T1w.nii.gz)"


@pytest.mark.parametrize("months, targets, message, rules", [
    ([0.0], [12.0], "two or more visits", {}),
    ([0.0, 0.0], [12.0], "both dated month 0", {}),
    ([0.0, 12.0, 24.0], [12.0], "one date per visit", {}),
    ([0.0, 12.0], [], "no target dates", {}),
    ([0.0, 12.0], [float("inf")], "finite", {}),
    ([0.0, 12.0], [24.0], "unknown y rule 'flat'; choose from anchored, line",
     {"y_rule": "flat"}),
    ([0.0, 12.0], [24.0], "unknown x_T rule 'flat'", {"x_T_rule": "flat"}),
])
def test_bad_input_fails_before_any_work(session, scans, months, targets, message, rules):
    gen = operations.iter_predict(session, scans[:len(months) if len(months) < 3 else 2],
                                  months, targets, **rules)
    with pytest.raises(LDAEError, match=message):
        next(gen)  # refused before the first encoding step


def test_warnings_for_doubtful_input(session, scans, monkeypatch):
    found = check_visits(["a/sub-01_ses-M00_T1w.nii.gz", "b/sub-02_ses-M12_T1w.nii.gz"],
                         [0.0, 12.0], [18.0, 40.0])
    assert "different subjects (sub-01, sub-02)" in found[0]
    assert "month(s) 40 lie further from the visits than the visits span" in found[1]
    assert check_visits(["sub-01_a", "sub-01_b"], [0.0, 12.0], [-12.0, 24.0]) == []
    assert subject_label("/data/sub-007/ses-M06/anat/x.nii.gz") == "sub-007"
    monkeypatch.setattr(operations_predict, "SUBJECT_DISTANCE", 0.0)
    with pytest.warns(PredictionWarning, match="semantic codes .* apart"):
        result = drain(operations.iter_predict(session, scans[:2], [0.0, 12.0], [18.0]))
    assert "are they the same subject?" in result.provenance["warnings"][0]
    monkeypatch.setattr(operations_predict, "SUBJECT_DISTANCE", 1e9)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PredictionWarning)
        drain(operations.iter_predict(session, scans[:2], [0.0, 12.0], [18.0]))
