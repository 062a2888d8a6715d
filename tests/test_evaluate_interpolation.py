"""The interpolation section of `napari-ldae evaluate` on a tiny random bundle and a tiny
synthetic cohort with three visits per subject: the decode, the change carried onto the nearest
visit, the copy and linear baselines, against the AE reconstruction and the true ventricles."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from napari_ldae.evaluate import interpolation as interp

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """2 subjects (CN, AD) with 3 visits each at 6 mm, with their true ventricle volumes."""
    from napari_ldae.data.synthetic import make_cohort

    return make_cohort(tmp_path_factory.mktemp("three_visits") / "bids", subjects=2, seed=4,
                       spacing=6.0, visits=(3, 3))


@pytest.fixture(scope="module")
def report(bundle, cohort, tmp_path_factory, evaluate_one_section) -> tuple[dict, str]:
    return evaluate_one_section(bundle, cohort, tmp_path_factory.mktemp("interpolation-out"),
                                "interpolation")


def test_every_key_is_a_number(report):
    section = report[0]["interpolation"]
    assert section["n_triplets"] == 2 and section["n_subjects"] == 2
    for key in (*interp.KEYS, "carried_mse_mean", "ventricle_abs_error_ml_mean",
                "linear_ventricle_abs_error_ml_mean", "carried_ventricle_bias_ml"):
        assert isinstance(section[key], float) and math.isfinite(section[key]), key
    assert 0.0 <= section["carried_beats_copy_fraction"] <= 1.0


def test_carried_and_baselines_are_what_they_say(bundle, cohort):
    """Recompute one triplet: carried = the nearest visit's AE reconstruction + decode(α) −
    decode at that visit's end; its ventricles the nearest real scan's plus the decoded change."""
    from napari_ldae.core.bundle import load_bundle
    from napari_ldae.data.cohort import read_cohort
    from napari_ldae.data.preprocess import PreprocessContract
    from napari_ldae.evaluate import image_metrics as im
    from napari_ldae.evaluate.context import Context, load_scans, measured_ventricles
    from napari_ldae.evaluate.options import EvaluateOptions

    loaded = load_bundle(bundle)
    model = loaded.load_model("cpu", "fp32")
    contract = PreprocessContract.from_dict(loaded.config["preprocessing"])
    records = next(iter(read_cohort(cohort).by_subject().values()))
    x, affines = load_scans(records, contract)
    ae = model.autoencode(x)
    codes = model.encode(x, 2)
    ctx = Context(model, contract, EvaluateOptions(steps=(2,)), None, None, ("ventricle",), {})
    vent = measured_ventricles(ctx, records, x, ae, affines)
    gen = interp.iter_subject(ctx, records, codes, ae, vent, "s")
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            rows = stop.value
            break
    (row,) = rows
    months = [r.months for r in records]
    alpha = (months[1] - months[0]) / (months[2] - months[0])
    near = 0 if months[1] - months[0] <= months[2] - months[1] else 2
    ends = model.decode(model.interpolate_codes(codes[0], codes[2], [0.0, alpha, 1.0]), 2)
    moved = ae[near:near + 1] + ends[1:2] - ends[[0 if near == 0 else 2]]
    assert row["alpha"] == pytest.approx(alpha)
    assert row["carried_ssim"] == pytest.approx(im.ssim(moved, ae[1:2])[0], abs=1e-5)
    assert row["copy_ssim"] == pytest.approx(im.ssim(ae[near:near + 1], ae[1:2])[0], abs=1e-6)
    truth = vent.truth[1]
    change = vent.measure(ends[1], near) - vent.measure(ends[0 if near == 0 else 2], near)
    assert row["carried_ventricle_error_ml"] == pytest.approx(
        vent.real[near] + change - truth, abs=0.05)
    assert row["copy_ventricle_error_ml"] == pytest.approx(vent.real[near] - truth)
    assert row["linear_ventricle_error_ml"] == pytest.approx(
        vent.real[0] + alpha * (vent.real[2] - vent.real[0]) - truth)
    assert torch.isfinite(torch.as_tensor(row["ventricle_error_ml"]))


def test_markdown_has_the_ventricle_table(report):
    md = report[1]
    assert "|  | SSIM | MSE | carried SSIM | carried MSE | copy SSIM | copy MSE | n |" in md
    assert "| decode | carried | copy | linear |" in md
