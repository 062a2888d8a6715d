"""`napari-ldae evaluate` on a tiny random bundle and a tiny synthetic cohort, and the ventricle
measurement against the synthetic ground truth (at 6 mm and 3 mm).

DDIM step counts are 1 and 2 to stay fast: the paper's T = 10 and 50 are then ``null`` with the
reason in ``notes``, which the tests check too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_ldae.cli import main
from napari_ldae.core.bundle import load_bundle
from napari_ldae.evaluate import image_metrics as im
from napari_ldae.evaluate.report import (
    REQUIRED_KEYS,
    EvaluateOptions,
    evaluate,
    lookup,
    make_plan,
    triplets,
)

#: Required keys that may be null in the fast run, each with its reason.
NULL_IN_FAST_RUN = {"reconstruction.ssim.T10", "reconstruction.ssim.T50"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: the CI machine's two cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from napari_ldae.core.presets import save_random_bundle

    return save_random_bundle(tmp_path_factory.mktemp("evaluate") / "bundle", "tiny")


@pytest.fixture(scope="module")
def run(bundle, longitudinal_cohort, tmp_path_factory) -> tuple[dict, Path, Path]:
    """The CLI on the whole cohort: (report, JSON path, Markdown path)."""
    out = tmp_path_factory.mktemp("evaluate-out")
    report, md = out / "report.json", out / "report.md"
    rc = main(["evaluate", "--bundle", str(bundle), "--cohort", str(longitudinal_cohort),
               "--out", str(report), "--markdown", str(md), "--split", "all",
               "--steps", "1", "2", "--task-steps", "1", "--seed", "3", "--probe-steps", "300",
               "-q"])
    assert rc == 0
    return json.loads(report.read_text()), report, md


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def test_every_required_key(run):
    report, _, _ = run
    for key in REQUIRED_KEYS:
        value = lookup(report, key)
        if key in NULL_IN_FAST_RUN:
            assert value is None and "--steps" in report["notes"][key], key
        else:
            assert _is_number(value), f"{key} = {value!r} ({report['notes'].get(key)})"
    for key in ("reconstruction.ssim.T1", "reconstruction.ssim.T2", "reconstruction.mse.T2",
                "reconstruction.seconds_per_scan.T1", "autoencoder.mse", "semantic_only.mse",
                "probe.ad_vs_cn.f1", "probe.age.rmse", "interpolation.mse_mean",
                "interpolation.copy_baseline_mse_mean"):
        assert _is_number(lookup(report, key)), key


def test_report_details(run, bundle, longitudinal_cohort):
    report, _, _ = run
    meta = report["meta"]
    assert meta["bundle"]["sha256"] == load_bundle(bundle).sha256
    assert meta["cohort"]["path"] == str(longitudinal_cohort.resolve())
    assert meta["command"].startswith("napari-ldae evaluate --bundle")
    assert meta["evaluated"] == {"split": "all", "n_subjects": 4, "n_scans": 12,
                                 "subjects": ["sub-001", "sub-002", "sub-003", "sub-004"]}
    assert report["autoencoder"]["n_scans"] == 12
    assert "LPIPS" in report["notes"]["reconstruction.lpips"]
    interp = report["interpolation"]
    assert interp["n_triplets"] == 4 and interp["n_subjects"] == 4
    assert sum(v["n"] for v in interp["by_time_gap"].values()) == 4
    assert sum(v["n"] for v in interp["by_prediction_gap"].values()) == 4
    probe = report["probe"]
    assert "2-fold" in probe["protocol"] and probe["ad_vs_cn"]["n_test_scans"] == 12
    assert set(probe["bundle_directions"]) == {"AD", "age"}
    assert 0.0 < probe["semantic_spread"] < 10.0
    man = report["manipulation"]
    assert man["direction"] == "AD" and len(man["per_subject"]) == 4
    assert all(len(v) == 4 for v in man["per_subject"].values())
    validation = man["segmentation_validation"]["scans"]
    assert validation["pearson_r"] > 0.9 and validation["mean_relative_error"] < 0.2


def test_markdown(run):
    _, _, md = run
    text = md.read_text()
    for heading in ("## Reconstruction", "## Linear probes", "## Interpolation",
                    "## Manipulation", "## Notes"):
        assert heading in text
    assert "Spread of y between scans" in text
    assert "0.962" in text and "0.8948" in text  # the paper's numbers beside ours


def test_existing_report_is_not_overwritten(run, bundle, longitudinal_cohort, capsys):
    _, report, _ = run
    rc = main(["evaluate", "--bundle", str(bundle), "--cohort", str(longitudinal_cohort),
               "--out", str(report), "-q"])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err


def test_nulls_are_explained(bundle, tiny_cohort, tmp_path):
    """Two visits (no triplets), no ventricle_ml column, a one-subject (one-class) test split."""
    from napari_ldae.data.cohort import read_cohort

    rows = ["path,subject,session,months,diagnosis,age"]
    rows += [f"{r.path},{r.subject},{r.session},{r.months},{r.diagnosis},{r.age}"
             for r in read_cohort(tiny_cohort)]
    table = tmp_path / "cohort.csv"
    table.write_text("\n".join(rows) + "\n")
    options = EvaluateOptions(steps=(1,), skip=("reconstruction", "semantic_only"),
                              max_subjects=2, probe_steps=300)
    report = evaluate(bundle, table, options)
    notes = report["notes"]
    for key in REQUIRED_KEYS:
        value = lookup(report, key)
        assert _is_number(value) or (value is None and notes.get(key)), key
    assert "triplets" in notes["interpolation.ssim_mean"]
    assert "ventricle_ml" in notes["manipulation.ventricle_monotonic_fraction"]
    assert "skipped" in notes["reconstruction.ssim.T10"]
    assert "one class" in notes["probe.ad_vs_cn.roc_auc"]


def test_plan_folds_are_subject_grouped_and_stratified(longitudinal_cohort):
    from napari_ldae.data.cohort import read_cohort

    plan = make_plan(read_cohort(longitudinal_cohort), EvaluateOptions(split="all"))
    assert len(plan.folds) == 2
    for fold in plan.folds:
        train = {r.subject for r in fold["train"]}
        test = {r.subject for r in fold["test"]}
        assert not train & test
        assert {r.diagnosis for r in fold["test"]} == {"AD", "CN"}
    test_plan = make_plan(read_cohort(longitudinal_cohort), EvaluateOptions(max_subjects=1))
    assert len(test_plan.evaluated) == 1


def test_triplets():
    assert triplets([0, 6, 12, 24]) == {(0, 2): [1], (0, 3): [1, 2], (1, 3): [2]}
    assert triplets([0, 12, 12]) == {}
    assert triplets([0, 12]) == {}


def test_image_metrics():
    x = torch.rand((2, 1, 12, 12, 12), generator=torch.Generator().manual_seed(0))
    assert im.ssim(x, x) == pytest.approx([1.0, 1.0], abs=1e-5)
    assert im.mse(x, x) == [0.0, 0.0]
    assert im.mse(x, torch.zeros_like(x))[0] == pytest.approx(float((x[0] ** 2).mean()))
    assert im.summary([1.0, None, float("nan"), 3.0]) == {"mean": 2.0, "std": 1.0, "n": 2}
    metric, reason = im.lpips_metric(None)
    assert metric is None and "LPIPS" in reason


@pytest.mark.parametrize(("spacing", "shape", "subjects"), [
    (6.0, (32, 32, 32), 8),  # the tiny preset's grid
    (3.0, (64, 80, 64), 5),  # the demo preset's grid
])
def test_ventricle_measurement_tracks_truth(spacing, shape, subjects):
    """Measured on the model grid after preprocessing, against the true volumes of subjects the
    synthetic generator makes (various ages, diagnoses and constitutional ventricle sizes)."""
    from napari_ldae.data.io import Scan
    from napari_ldae.data.preprocess import PreprocessContract, model_affine, preprocess
    from napari_ldae.data.synthetic import make_subject
    from napari_ldae.evaluate.ventricles import segment_ventricles

    contract = PreprocessContract(spacing=(spacing,) * 3, shape=shape)
    truth, measured = [], []
    for seed in range(100, 100 + subjects):
        visit = make_subject(seed, spacing=spacing, n_visits=1).visits[0]
        scan = Scan.from_array(visit.data, visit.affine)
        seg = segment_ventricles(preprocess(scan, contract), model_affine(scan, contract))
        assert seg.fraction.shape == shape and 0 <= seg.fraction.min() <= seg.fraction.max() <= 1
        truth.append(visit.truth["ventricle_ml"])
        measured.append(seg.ml)
    truth_arr, measured_arr = np.asarray(truth), np.asarray(measured)
    relative = np.abs(measured_arr - truth_arr) / truth_arr
    assert np.corrcoef(truth_arr, measured_arr)[0, 1] > 0.9
    assert relative.mean() < 0.15 and relative.max() < 0.3


def test_split_defaults_follow_the_bundle():
    from napari_ldae.evaluate.report import resolve_split

    config = {"provenance": {"seed": 1, "split_seed": 5,
                             "config": {"data": {"test_fraction": 0.2}}}}
    resolved = resolve_split(EvaluateOptions(), config)
    assert (resolved.seed, resolved.val_fraction, resolved.test_fraction) == (5, 0.1, 0.2)
    mine = resolve_split(EvaluateOptions(seed=2, test_fraction=0.3), config)
    assert (mine.seed, mine.test_fraction) == (2, 0.3)
    assert resolve_split(EvaluateOptions()).seed == 0
