"""Strength in years: the calibration from a cohort's visits, and how sessions report it."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from ldae_factory import shared_tiny_bundle

from napari_ldae.data.cohort import ScanRecord
from napari_ldae.session import Session
from napari_ldae.train.calibration import mean_change_per_year, projection_per_year

D = 16


def _records_and_codes(rate_ad: float, rate_cn: float, noise: float = 0.0, seed: int = 0):
    """Four AD and four CN subjects, three visits a year apart, moving along axis 0."""
    g = torch.Generator().manual_seed(seed)
    records, codes = [], []
    for i in range(8):
        diagnosis, rate = ("AD", rate_ad) if i < 4 else ("CN", rate_cn)
        start = torch.randn(D, generator=g)
        for visit in range(3):
            records.append(ScanRecord(Path(f"s{i}-{visit}.nii.gz"), f"sub-{i}", f"ses-{visit}",
                                      12.0 * visit, diagnosis))
            z = start.clone()
            z[0] += rate * visit + noise * torch.randn((), generator=g)
            codes.append(z)
    return records, torch.stack(codes)


def test_known_linear_motion_gives_its_rate_and_years():
    records, z = _records_and_codes(rate_ad=0.5, rate_cn=0.1, noise=0.01)
    direction = torch.zeros(D)
    direction[0] = 3.0  # any norm
    ad = projection_per_year(z, records, direction, "AD")
    assert ad["subjects"] == 4 and ad["group"] == "AD"
    assert ad["projection_per_year"] == pytest.approx(0.5, abs=0.02)
    # one strength unit moves the projection by sqrt(d) = 4: eight years at 0.5 a year
    assert ad["years_per_unit"] == pytest.approx(math.sqrt(D) / ad["projection_per_year"])
    everyone = projection_per_year(z, records, direction)
    assert everyone["subjects"] == 8 and everyone["projection_per_year"] == pytest.approx(
        0.3, abs=0.02)
    json.dumps(ad)  # stored in config.json as it is


def test_codes_that_do_not_move_get_no_years():
    records, z = _records_and_codes(rate_ad=0.0, rate_cn=0.0, noise=0.3)
    direction = torch.zeros(D)
    direction[0] = 1.0
    result = projection_per_year(z, records, direction, "AD")
    assert result["years_per_unit"] is None and result["stderr"] > 0
    records, z = _records_and_codes(rate_ad=-0.5, rate_cn=0.0, noise=0.01)
    backwards = projection_per_year(z, records, direction, "AD")
    assert backwards["years_per_unit"] is None  # moving away from AD is not AD-like change


def test_mean_change_per_year_is_each_groups_own_motion():
    records, z = _records_and_codes(rate_ad=0.5, rate_cn=0.1, noise=0.01)
    expected = torch.zeros(D)
    expected[0] = 0.5
    torch.testing.assert_close(mean_change_per_year(z, records, "AD"), expected, atol=0.02,
                               rtol=0)
    assert mean_change_per_year(z, records, "CN")[0] == pytest.approx(0.1, abs=0.02)
    with pytest.raises(ValueError, match=r"2 AD subjects .* needs 3"):
        mean_change_per_year(z[:6], records[:6], "AD")


def test_mismatched_codes_are_refused():
    records, z = _records_and_codes(0.5, 0.1)
    with pytest.raises(ValueError, match="codes for"):
        projection_per_year(z[:-1], records, torch.ones(D))


def _bundle_with(tmp_path: Path, calibration: dict | None) -> Path:
    path = tmp_path / "calibrated"
    shutil.copytree(shared_tiny_bundle(), path)
    config = json.loads((path / "config.json").read_text())
    for info in config["directions"].values():
        info.pop("calibration", None)
        if calibration is not None:
            info["calibration"] = calibration
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_session_reports_years_or_why_not(tmp_path):
    calibrated = Session(_bundle_with(tmp_path / "a", {"years_per_unit": 2.5}), device="cpu",
                         cache_dir=tmp_path / "cache")
    assert calibrated.years("AD", 2.0) == pytest.approx(5.0)
    assert calibrated.years_text("AD", -1.0) == "≈ -2.5 years of AD-like change"
    flat = Session(_bundle_with(tmp_path / "b", {"years_per_unit": None}), device="cpu",
                   cache_dir=tmp_path / "cache")
    assert flat.years("AD", 2.0) is None and "do not move" in flat.years_text("AD", 2.0)
    bare = Session(_bundle_with(tmp_path / "c", None), device="cpu", cache_dir=tmp_path / "cache")
    assert bare.years_text("AD", 1.0) == "no calibration in years in this bundle"


def test_manipulate_widget_shows_the_strength_in_years(make_napari_viewer, tmp_path):
    from napari_ldae.gui._state import get_state
    from napari_ldae.gui.manipulate_widget import ManipulateWidget

    viewer = make_napari_viewer()
    widget = ManipulateWidget(viewer)
    assert widget.in_years.text() == ""  # no model yet
    get_state(viewer).set_session(Session(_bundle_with(tmp_path, {"years_per_unit": 2.0}),
                                          device="cpu", cache_dir=tmp_path / "cache"))
    widget.direction.setCurrentIndex(widget.direction.findData("AD"))
    widget.slider.setValue(1.5)
    assert widget.in_years.text() == "≈ +3.0 years of AD-like change"
    widget.slider.setValue(0.0)
    assert widget.in_years.text() == "≈ +0.0 years of AD-like change"
