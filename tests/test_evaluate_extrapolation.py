"""The extrapolation section of `napari-ldae evaluate` on a tiny random bundle and a tiny synthetic
cohort with four visits per subject: held-out visits, baselines, horizons and the Markdown."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from napari_ldae.cli import main
from napari_ldae.core.model import Codes
from napari_ldae.evaluate import SECTIONS
from napari_ldae.evaluate import extrapolation as ex

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """2 subjects (CN, AD) with 4 visits each at 6 mm, with their true ventricle volumes."""
    from napari_ldae.data.synthetic import make_cohort

    return make_cohort(tmp_path_factory.mktemp("four_visits") / "bids", subjects=2, seed=2,
                       spacing=6.0, visits=(4, 4))


@pytest.fixture(scope="module")
def report(bundle, cohort, tmp_path_factory, evaluate_one_section) -> tuple[dict, str]:
    return evaluate_one_section(bundle, cohort, tmp_path_factory.mktemp("extrapolation-out"),
                                "extrapolation")


def test_every_held_out_visit_is_predicted(report, cohort):
    from napari_ldae.data.cohort import read_cohort

    section = report[0]["extrapolation"]
    visits = read_cohort(cohort).by_subject()
    # last visit from the first three, last two from the first two: 1 + 2 rows per subject
    assert section["n_predictions"] == 6 and section["n_subjects"] == 2
    rows = section["predictions"]
    for row in rows:
        months = [r.months for r in visits[row["subject"]]]
        n = row["n_inputs"]
        assert n == 4 - row["held_out"]
        assert row["months"] in months[n:]
        assert row["horizon"] == row["months"] - months[n - 1]
        truth = float(visits[row["subject"]][months.index(row["months"])].extra["ventricle_ml"])
        assert row["truth_ml"] == pytest.approx(truth)
    assert sum(g["n"] for g in section["by_horizon"].values()) == 6
    assert section["y_rules"] == ["anchored", "line"] and section["default_y_rule"] == "anchored"
    assert section["x_T_rule"] == "hold" and "x_T_rules" not in section
    assert "anchored_change_ventricle_abs_error_ml_mean" in ex.KEYS
    for key in (*ex.KEYS, "line_ssim_mean", "copy_mse_mean", "true_change_ml_mean",
                "ceiling_ventricle_abs_error_ml_mean", "line_change_ventricle_abs_error_ml_mean"):
        assert isinstance(section[key], float) and math.isfinite(section[key]), key
    assert not any(k.startswith(("hold_", "slerp_")) for k in section)


def test_baselines_are_what_they_say(report, cohort):
    """The copy baseline scores the last earlier visit's AE reconstruction and measures the
    last earlier real scan; the linear baseline is a line through the measured volumes."""
    from napari_ldae.core.bundle import load_bundle
    from napari_ldae.data.cohort import read_cohort
    from napari_ldae.data.regions import lateral_ventricles_ml as ventricle_ml
    from napari_ldae.evaluate import image_metrics as im
    from napari_ldae.evaluate.context import load_scans

    loaded = load_bundle(report[0]["meta"]["bundle"]["path"])
    model = loaded.load_model("cpu", "fp32")
    from napari_ldae.data.preprocess import PreprocessContract

    contract = PreprocessContract.from_dict(loaded.config["preprocessing"])
    visits = read_cohort(cohort).by_subject()
    row = next(r for r in report[0]["extrapolation"]["predictions"] if r["held_out"] == 2)
    records = visits[row["subject"]]
    x, affines = load_scans(records, contract)
    ae = model.autoencode(x)
    n, j = row["n_inputs"], [r.months for r in records].index(row["months"])
    assert row["copy_ssim"] == pytest.approx(im.ssim(ae[n - 1:n], ae[j:j + 1])[0], abs=1e-6)
    measured = [ventricle_ml(x[v, 0].numpy(), affines[v]) for v in range(n)]
    assert row["copy_ventricle_error_ml"] == pytest.approx(measured[-1] - row["truth_ml"])
    line = np.polyfit([r.months for r in records[:n]], measured, 1)
    assert row["linear_ventricle_error_ml"] == pytest.approx(
        np.polyval(line, row["months"]) - row["truth_ml"])


def test_change_starts_at_the_models_own_decode_of_the_last_visit(report, cohort):
    """"Change" is prediction − the same rule's decode at the last earlier visit's date (for
    "anchored": that visit's own codes decoded), added to its measured volume."""
    from napari_ldae.core.bundle import load_bundle
    from napari_ldae.core.trajectory import fit_trajectory
    from napari_ldae.data.cohort import read_cohort
    from napari_ldae.data.preprocess import PreprocessContract
    from napari_ldae.data.regions import lateral_ventricles_ml as ventricle_ml
    from napari_ldae.evaluate.context import load_scans

    loaded = load_bundle(report[0]["meta"]["bundle"]["path"])
    model = loaded.load_model("cpu", "fp32")
    contract = PreprocessContract.from_dict(loaded.config["preprocessing"])
    row = next(r for r in report[0]["extrapolation"]["predictions"] if r["held_out"] == 1)
    records = read_cohort(cohort).by_subject()[row["subject"]]
    x, affines = load_scans(records, contract)
    months = [r.months for r in records]
    n = row["n_inputs"]
    codes = model.encode(x, 2)[:n]  # as the section: all visits encoded together
    fits = [fit_trajectory(codes, months[:n], y_rule=rule) for rule in ex.RULES]
    start = fits[0].codes_at([months[n - 1]])
    assert start.y.equal(codes.y[n - 1:n]) and start.x_T.equal(codes.x_T[n - 1:n])
    decoded = model.decode(Codes.cat([f.codes_at([months[n - 1], row["months"]]) for f in fits]),
                           2).reshape(len(fits), 2, *x.shape[1:])
    real = ventricle_ml(x[n - 1, 0].numpy(), affines[n - 1])
    for i, rule in enumerate(ex.RULES):
        predicted, began = (ventricle_ml(decoded[i, k, 0].numpy(), affines[n - 1])
                            for k in (1, 0))
        assert row[f"{rule}_ventricle_error_ml"] == pytest.approx(
            predicted - row["truth_ml"], abs=0.05)
        assert row[f"{rule}_change_ventricle_error_ml"] == pytest.approx(
            real + predicted - began - row["truth_ml"], abs=0.05)


def test_markdown_has_the_section(report):
    md = report[1]
    assert "## Extrapolation: later visits predicted from earlier ones" in md
    assert "| horizon (months) | n | true change | anchored | line | anchored_change |" in md
    assert "| horizon (months) | n | SSIM anchored | SSIM line | SSIM copy |" in md
    assert "y rules anchored, line (default anchored; x_T rule hold)" in md


def test_groups_and_means():
    assert ex.held_out_counts(2) == [] and ex.held_out_counts(3) == [1]
    assert ex.held_out_counts(6) == [1, 2]
    assert [ex.horizon_group(h) for h in (3, 6, 7, 12, 18, 24, 60)] == [
        "6", "6", "12", "12", "13-23", "24+", "24+"]
    rows = [{"horizon": 6.0, "anchored_ventricle_error_ml": -2.0, "anchored_ssim": 0.5},
            {"horizon": 12.0, "anchored_ventricle_error_ml": 1.0, "anchored_ssim": 0.7}]
    out = ex.means(rows)
    assert out["anchored_ventricle_abs_error_ml_mean"] == pytest.approx(1.5)
    assert out["anchored_ventricle_bias_ml"] == pytest.approx(-0.5)
    assert out["anchored_ssim_mean"] == pytest.approx(0.6) and out["n"] == 2


def test_skipped_section_explains_itself(bundle, cohort, tmp_path):
    rc = main(["evaluate", "--bundle", str(bundle), "--cohort", str(cohort), "--out",
               str(tmp_path / "r.json"), "--split", "all", "--steps", "1", "--max-subjects", "1",
               "--skip", *SECTIONS, "-q"])
    assert rc == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["extrapolation"]["skipped"] == "skipped (--skip extrapolation)"
    assert report["notes"]["extrapolation.copy_ssim_mean"] == "skipped (--skip extrapolation)"
