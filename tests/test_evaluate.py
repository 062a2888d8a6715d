"""`napari-ldae evaluate` on a tiny random bundle and a tiny synthetic cohort, and the identity,
code-use and probe-ceiling measures on constructed inputs (the ventricle and hippocampal
measurements against the synthetic ground truth: tests/test_regions.py).

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
from napari_ldae.errors import LDAEError
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
#: Required keys that may be null in the fast run when the random model's edits do not look like
#: a brain to the hippocampal measurement (it then says so).
UNMEASURABLE_EDITS = {"manipulation.hippocampus_monotonic_fraction",
                      "manipulation.hippocampus_change_ml_per_unit"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
        elif key in UNMEASURABLE_EDITS and value is None:
            assert "measurement failed on the edits" in report["notes"][key], key
        else:
            assert _is_number(value), f"{key} = {value!r} ({report['notes'].get(key)})"
    for key in ("reconstruction.ssim.T1", "reconstruction.ssim.T2", "reconstruction.mse.T2",
                "reconstruction.seconds_per_scan.T1", "autoencoder.mse", "semantic_only.mse",
                "probe.ad_vs_cn.f1", "probe.age.rmse", "interpolation.mse_mean",
                "interpolation.copy_baseline_mse_mean", "probe.ceiling.ad_vs_cn.accuracy",
                "probe.ceiling.age.rmse", "manipulation.hippocampus_validation.scans.mae_ml",
                "code_use.swap_fraction_min"):
        assert _is_number(lookup(report, key)), key
    assert 0.0 <= report["manipulation"]["identity_kept_fraction"] <= 1.0
    assert report["code_use"]["swap_fraction_mean"] >= 0.0


def test_report_details(run, bundle, longitudinal_cohort):
    report, _, _ = run
    meta = report["meta"]
    assert meta["bundle"]["sha256"] == load_bundle(bundle).sha256
    assert meta["cohort"]["path"] == str(longitudinal_cohort.resolve())
    assert meta["command"].startswith("napari-ldae evaluate --bundle")
    assert meta["evaluated"] == {"split": "all", "n_subjects": 4, "n_scans": 12,
                                 "subjects": ["sub-001", "sub-002", "sub-003", "sub-004"]}
    assert report["autoencoder"]["n_scans"] == 12
    # the head-only SSIM is reported beside the whole volume's, for the ceiling and each T
    assert 0.0 < report["autoencoder"]["ssim_head"] <= 1.0
    assert set(report["reconstruction"]["ssim_head"]) == {"T1", "T2"}
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
    # at 6 mm the generator's truth reads about 20 % below the same brain's at finer grids
    # (docs/synthetic-cohort.md), which the structure network reads: 1.25 × truth
    validation = man["segmentation_validation"]["scans"]
    assert validation["pearson_r"] > 0.9 and 0.1 < validation["mean_relative_error"] < 0.35
    on_files = man["segmentation_validation"]  # the cohort's files on their own 6 mm grid
    assert on_files["cohort_spacing_mm"] == [6.0] and on_files["cohort_grid"]["n"] == 12
    assert 0.1 < on_files["cohort_grid"]["mean_relative_error"] < 0.35
    hippocampus = man["hippocampus_validation"]
    assert hippocampus["n_scans"] == 12 and hippocampus["scans"]["n"] == 12
    assert hippocampus["scans"]["mean_relative_error"] < 0.3  # 4 subjects at 6 mm: r is noisy
    assert man["identity_strength"] == 3.0 and man["identity_n_subjects"] == 4
    for name in ("ventricle", "hippocampus"):  # the change by deformation
        check = man[f"{name}_deformation_validation"]
        assert check["n"] == 4 and 0.0 <= check["same_sign_fraction"] <= 1.0
        assert "mean_relative_error" not in check  # relative to a change near 0: meaningless
        curves = man[f"{name}_deformation_per_subject"]
        assert len(curves) == 4 and all(c[0] == 0.0 and len(c) == 4 for c in curves.values())
    known = man["ventricle_known_change"]  # up to 2 mm outward: a third of a 6 mm voxel
    assert known["n"] == 4 and known["scan_change_ml_mean"] > 1.0
    assert known["autoencoder_kept_min"] <= known["autoencoder_kept_fraction"] \
        <= known["autoencoder_kept_max"]
    code_use = report["code_use"]
    assert code_use["n_pairs"] == 4 and len(code_use["per_pair"]) == 4
    assert "sub-004→sub-001" in code_use["per_pair"]
    features = probe["ceiling"]["features"]
    assert {"ventricle_ml", "hippocampus_ml"} <= set(features)
    assert not {"age", "diagnosis", "seed", "months"} & set(features)
    assert probe["ceiling"]["ad_vs_cn"]["n_test_scans"] == 12
    latent = probe["latent"]  # the same probes on the latent's principal components
    assert "principal components" in latent["features"]
    assert latent["ad_vs_cn"]["n_test_scans"] == 12 and latent["age"]["n_test_scans"] == 12
    assert _is_number(latent["age"]["mae"])


def test_markdown(run):
    _, _, md = run
    text = md.read_text()
    for heading in ("## Reconstruction", "## Linear probes", "## Interpolation",
                    "## Manipulation", "## Notes"):
        assert heading in text
    assert "Spread of y between scans" in text
    for words in ("## Code use", "Identity kept at strength 3", "ceiling (true measures)",
                  "latent read", "principal components of the normalised latent",
                  "`hippocampus_ml`", "mean measured hippocampi (ml)", "| cohort_grid |",
                  "at their own resolution (6 mm)", "Change by deformation",
                  "from the strength-0 decode to each edit", "the autoencoder keeps",
                  "| SSIM in the head |"):
        assert words in text, words
    assert "0.962" in text and "0.8948" in text  # the paper's numbers beside ours


def test_existing_report_is_not_overwritten(run, bundle, longitudinal_cohort, capsys):
    _, report, _ = run
    rc = main(["evaluate", "--bundle", str(bundle), "--cohort", str(longitudinal_cohort),
               "--out", str(report), "-q"])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err


def test_nulls_are_explained(bundle, tiny_cohort, tmp_path):
    """Two visits (no triplets), no ground-truth columns, a one-subject (one-class) test split."""
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
    assert "hippocampus_ml" in notes["manipulation.hippocampus_change_ml_per_unit"]
    assert "two" in notes["manipulation.identity_kept_fraction"]
    assert "two" in notes["code_use.swap_fraction_mean"]
    assert "ground-truth" in notes["probe.ceiling.age.mae"]
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


def test_identity_kept_fraction():
    from napari_ldae.evaluate.manipulation import identity_kept_fraction, pairwise_mse

    gen = torch.Generator().manual_seed(0)
    recons = [torch.rand((1, 8, 8, 8), generator=gen) for _ in range(4)]
    close = [r + 0.01 * torch.randn(r.shape, generator=gen) for r in recons]
    assert identity_kept_fraction(reconstructions=recons, edits=close) == 1.0
    swapped = close[1:] + close[:1]  # each edit is the next subject's brain
    assert identity_kept_fraction(reconstructions=recons, edits=swapped) == 0.0
    half = [close[0], close[1], close[3], close[2]]
    assert identity_kept_fraction(reconstructions=recons, edits=half) == 0.5
    distances = pairwise_mse(recons, [r.half() for r in close])  # float16 as kept in a run
    assert distances.shape == (4, 4) and identity_kept_fraction(distances) == 1.0
    assert identity_kept_fraction(np.array([[1.0, 1.0], [0.0, 2.0]])) == 0.0  # a tie is lost
    with pytest.raises(ValueError):
        identity_kept_fraction(np.zeros((1, 1)))


def test_swap_fraction():
    from napari_ldae.evaluate.code_use import pairs, swap_fraction

    a, b = torch.zeros((1, 6, 6, 6)), torch.ones((1, 6, 6, 6))
    assert swap_fraction(a, b, a) == 0.0  # y ignored: swapping it changes nothing
    assert swap_fraction(a, b, b) == pytest.approx(1.0)  # y carries the whole difference
    assert swap_fraction(a, b, 0.25 * b) == pytest.approx(0.25)
    assert swap_fraction(a, b, a - 0.5 * b) == pytest.approx(0.5)  # a norm: direction-free
    assert math.isnan(swap_fraction(a, a, b))
    with pytest.raises(ValueError):
        swap_fraction(a, b, torch.zeros((1, 5, 5, 5)))
    assert pairs(3) == [(0, 1), (1, 2), (2, 0)] and pairs(2) == [(0, 1), (1, 0)]
    assert pairs(1) == []


def test_structure_change_follows_the_expected_direction():
    from napari_ldae.evaluate.manipulation import structure_change

    notes: dict[str, str] = {}
    falling = {"s1": [5.0, 4.8, 4.5, 4.4], "s2": [4.0, 4.1, 3.9, 3.8]}
    out = structure_change("hippocampus", falling, [0, 1, 2, 3], notes, "")
    assert out["hippocampus_monotonic_fraction"] == 0.5
    assert out["hippocampus_change_ml_per_unit"] < 0
    assert out["hippocampus_per_subject"]["s1"] == [5.0, 4.8, 4.5, 4.4]
    assert structure_change("ventricle", falling, [0, 1, 2, 3], notes,
                            "")["ventricle_monotonic_fraction"] == 0.0
    out = structure_change("hippocampus", {"s1": [math.nan] * 4}, [0, 1, 2, 3], notes, "")
    assert out["hippocampus_monotonic_fraction"] is None
    assert "failed on the edits" in notes["manipulation.hippocampus_monotonic_fraction"]


def test_ceiling_never_uses_a_target():
    from napari_ldae.data.cohort import ScanRecord
    from napari_ldae.evaluate.probe_report import truth_columns

    extra = {"ventricle_ml": 20.0, "hippocampus_ml": 5.0, "atrophy": 3.0, "AGE": 71.0,
             "age_bl": 70.0, "baseline_age": 70.0, "DX_bl": 1, "diagnosis_code": 2,
             "group": 0, "seed": 1234, "participant_id": 3, "sex": "F", "missing": None,
             "flag": True, "inf": math.inf, "average_thickness": 2.5}
    records = [ScanRecord(Path(f"s{i}.nii.gz"), f"s{i}", "", 0.0, "AD", 70.0 + i, dict(extra))
               for i in range(3)]
    assert truth_columns(records) == ["atrophy", "average_thickness", "hippocampus_ml",
                                      "ventricle_ml"]
    records[0].extra.pop("atrophy")  # a column missing in one scan is not used
    assert "atrophy" not in truth_columns(records)
    assert truth_columns([]) == []


def test_principal_components_come_from_the_training_scans():
    from napari_ldae.evaluate.probe_report import principal_components

    gen = torch.Generator().manual_seed(0)
    plane = torch.randn(2, 30, generator=gen)  # the training scans span a plane
    train = torch.randn(40, 2, generator=gen) @ plane + 5.0
    test = torch.randn(6, 30, generator=gen)  # off the plane: only its shadow on it is kept
    out = principal_components({"train": train, "test": test}, dim=8)
    assert out["train"].shape == (40, 2) and out["test"].shape == (6, 2)  # the plane's rank
    assert torch.allclose(out["train"].mean(0), torch.zeros(2), atol=1e-4)
    # distances within the plane are kept; a change off the plane is not seen
    exact = "donot_use_mm_for_euclid_dist"
    assert torch.cdist(out["train"], out["train"], compute_mode=exact) == pytest.approx(
        torch.cdist(train, train, compute_mode=exact), abs=1e-3)
    unseen = torch.linalg.svd(plane).Vh[-1] * 10.0  # orthogonal to the plane
    moved = principal_components({"train": train, "test": test + unseen}, dim=8)["test"]
    assert torch.allclose(moved, out["test"], atol=1e-4)
    few = principal_components({"train": train[:2], "test": test}, dim=8)
    assert few["train"].shape == (2, 1)  # at most n − 1 components
    assert principal_components({"train": train, "test": test}, dim=1)["test"].shape == (6, 1)


def test_latent_read_finds_what_the_latent_holds():
    """A latent whose one direction carries the diagnosis and age reads them almost perfectly;
    the same latent with that direction removed reads at chance."""
    from napari_ldae.data.cohort import ScanRecord
    from napari_ldae.evaluate.probe_report import latent_read

    gen = torch.Generator().manual_seed(1)
    records, latents, flat = [], {}, {}
    signal, _ = torch.linalg.qr(torch.randn(64, 2, generator=gen))  # AD, age: orthonormal
    for i in range(80):
        ad, age = i % 2 == 0, 60.0 + (i * 7) % 30
        record = ScanRecord(Path(f"s{i}.nii.gz"), f"s{i}", "", 0.0, "AD" if ad else "CN", age, {})
        noise = torch.randn(64, generator=gen) * 0.3
        records.append(record)
        carried = signal @ torch.tensor([3.0 * ad, 0.2 * (age - 75.0)])
        latents[str(record.path)] = noise + carried
        flat[str(record.path)] = noise - signal @ (signal.T @ noise)
    folds = [{"train": records[:60], "test": records[60:]}]
    options = EvaluateOptions(probe_fit="regularised", seed=0)
    notes: dict[str, str] = {}
    held = latent_read(folds, latents, 8, options, notes)
    assert held["ad_vs_cn"]["roc_auc"] > 0.95 and held["ad_vs_cn"]["n_test_scans"] == 20
    lost = latent_read(folds, flat, 8, options, notes)
    assert lost["ad_vs_cn"]["roc_auc"] < 0.8 and lost["age"]["mae"] > 2 * held["age"]["mae"]


def test_embed_with_latent_matches_embed(bundle):
    model = load_bundle(bundle).load_model("cpu")
    x = torch.rand(2, 1, *model.input_shape)
    y, z = model.embed_with_latent(x)
    assert torch.allclose(y, model.embed(x), atol=1e-5)
    assert z.shape == (2, *model.latent_shape)
    assert torch.allclose(model.decode_latent(z), model.autoencode(x), atol=1e-5)


def test_probe_volumes_that_cannot_be_measured_say_why(bundle, longitudinal_cohort,
                                                       monkeypatch):
    """A scan the structure network cannot measure leaves the volumes out, with the reason,
    and every other probe as it was."""
    from napari_ldae.data import regions
    from napari_ldae.evaluate.markdown import render

    def unmeasurable(*_args, **_kwargs):
        raise ValueError("the volume is not placed in MNI")

    monkeypatch.setattr(regions, "structure_volumes", unmeasurable)
    skip = ("reconstruction", "semantic_only", "interpolation", "extrapolation", "manipulation",
            "code_use")
    options = EvaluateOptions(steps=(1,), split="all", seed=3, probe_steps=300, skip=skip,
                              probe_volumes=True)
    report = evaluate(bundle, longitudinal_cohort, options)
    probe = report["probe"]
    assert "not placed in MNI" in probe["volumes"]["skipped"]
    assert "not placed in MNI" in report["notes"]["probe.volumes"]
    assert _is_number(probe["age"]["mae"]) and _is_number(probe["latent"]["age"]["mae"])
    assert "volumes: _volume measurement impossible" in render(report, {})


def test_split_defaults_follow_the_bundle():
    from napari_ldae.evaluate.report import resolve_split

    config = {"provenance": {"seed": 1, "split_seed": 5,
                             "config": {"data": {"test_fraction": 0.2}}}}
    resolved = resolve_split(EvaluateOptions(), config)
    assert (resolved.seed, resolved.val_fraction, resolved.test_fraction) == (5, 0.1, 0.2)
    mine = resolve_split(EvaluateOptions(seed=2, test_fraction=0.3), config)
    assert (mine.seed, mine.test_fraction) == (2, 0.3)
    assert resolve_split(EvaluateOptions()).seed == 0


def test_probes_alone_need_no_inversion(run, bundle, longitudinal_cohort, monkeypatch):
    """With every section that needs x_T skipped, the codes come from the encoder alone (no
    DDIM inversion) and the probes read the same as in the full run."""
    from napari_ldae.core.model import LDAEModel

    def no_inversion(*_args, **_kwargs):
        raise AssertionError("the probes alone must not run the DDIM inversion")

    monkeypatch.setattr(LDAEModel, "iter_encode", no_inversion)
    skip = ("reconstruction", "semantic_only", "interpolation", "extrapolation", "manipulation",
            "code_use")
    options = EvaluateOptions(steps=(1, 2), task_steps=1, split="all", seed=3, probe_steps=300,
                              skip=skip)
    alone = evaluate(bundle, longitudinal_cohort, options)["probe"]
    full = run[0]["probe"]
    assert alone["semantic_spread"] == pytest.approx(full["semantic_spread"], rel=1e-5)
    for section, metric in (("ad_vs_cn", "roc_auc"), ("ad_vs_cn", "accuracy"), ("age", "mae"),
                            ("age", "rmse")):
        assert alone[section][metric] == pytest.approx(full[section][metric], rel=1e-4), metric


def test_regularised_probes_from_the_command_line(bundle, longitudinal_cohort, tmp_path):
    """`--probe-fit regularised`: L2 probes on y and on the truth (the ceiling), a penalty from
    the grid in every fold (the fallback where a fold has too few subjects), in the Markdown."""
    from napari_ldae.evaluate.probes import FALLBACK_PENALTY, PENALTIES

    report, md = tmp_path / "r.json", tmp_path / "r.md"
    skip = ["reconstruction", "semantic_only", "interpolation", "extrapolation", "manipulation",
            "code_use"]
    assert main(["evaluate", "--bundle", str(bundle), "--cohort", str(longitudinal_cohort),
                 "--out", str(report), "--markdown", str(md), "--split", "all", "--seed", "3",
                 "--probe-fit", "regularised", "--probe-volumes", "--skip", *skip, "-q"]) == 0
    written = json.loads(report.read_text())
    probe = written["probe"]
    assert probe["hyperparameters"]["fit"] == "regularised"
    for key in ("ad_vs_cn", "age"):
        folds = probe[key]["folds"]
        assert folds and all(f["penalty"] in (*PENALTIES, FALLBACK_PENALTY) for f in folds)
        assert _is_number(probe["ceiling"][key]["roc_auc" if key == "ad_vs_cn" else "mae"])
    # --probe-volumes: the probes on the two structure volumes of the scans and their
    # autoencoder reconstructions, fitted on the same folds
    volumes = probe["volumes"]
    assert volumes["features"] == ["lateral_ventricles", "hippocampal_region"]
    for source in ("scan", "autoencoder"):
        assert volumes[source]["ad_vs_cn"]["n_test_scans"] == probe["ad_vs_cn"]["n_test_scans"]
        assert _is_number(volumes[source]["age"]["mae"])
    assert "--probe-volumes" in written["meta"]["command"]
    text = md.read_text()
    assert "Fits: L2 logistic regression" in text and "--probe-fit regularised" in text
    assert "on their autoencoder reconstructions: ROC-AUC" in text
    with pytest.raises(LDAEError, match="--probe-fit must be one of paper, regularised"):
        EvaluateOptions(probe_fit="ridge")
    with pytest.raises(LDAEError, match="--probe-steps sets the paper's probes"):
        EvaluateOptions(probe_fit="regularised", probe_steps=300)


def test_probes_trained_on_another_cohort(bundle, longitudinal_cohort, tiny_cohort, tmp_path):
    """`--probe-train`: one fit on every scan of another cohort, scored on every evaluated scan
    (no cross-validation), recorded in the report; a cohort sharing scans is refused."""
    from napari_ldae.data.cohort import read_cohort

    report = tmp_path / "r.json"
    skip = ["reconstruction", "semantic_only", "interpolation", "extrapolation", "manipulation",
            "code_use"]
    assert main(["evaluate", "--bundle", str(bundle), "--cohort", str(longitudinal_cohort),
                 "--out", str(report), "--split", "all", "--probe-train", str(tiny_cohort),
                 "--skip", *skip, "-q"]) == 0
    data = json.loads(report.read_text())
    probe, meta = data["probe"], data["meta"]
    n_scans = len(read_cohort(longitudinal_cohort))
    assert "--probe-train cohort (6 subjects" in probe["protocol"]
    assert probe["ad_vs_cn"]["n_folds"] == probe["age"]["n_folds"] == 1
    assert probe["ad_vs_cn"]["n_test_scans"] == n_scans
    assert _is_number(probe["ceiling"]["ad_vs_cn"]["roc_auc"])
    assert meta["probe_train"]["n_subjects"] == 6
    assert "--probe-train" in meta["command"]
    cohort = read_cohort(longitudinal_cohort)
    with pytest.raises(LDAEError, match="--probe-train shares 12 scan"):
        make_plan(cohort, EvaluateOptions(split="all"), cohort)


def test_a_single_regularised_fit_reports_its_penalty():
    """One fold (`--split test` or `--probe-train`): the chosen penalty still reaches the report."""
    from napari_ldae.evaluate.probe_report import _fold_mean

    one = _fold_mean([{"mae": 5.0, "n": 10, "penalty": 100.0}], "probe.age", {}, ("mae",))
    assert one["folds"] == [{"mae": 5.0, "n": 10, "penalty": 100.0}] and one["mae"] == 5.0
    assert "folds" not in _fold_mean([{"mae": 5.0, "n": 10}], "probe.age", {}, ("mae",))
