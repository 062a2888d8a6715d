"""The synthetic longitudinal cohort: tree, ground truth, determinism, CLI (small, at 6 mm)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nilearn")

from napari_ldae.cli import main
from napari_ldae.data import synthetic as S
from napari_ldae.errors import CohortError, LDAEError

SPACING = 6.0  # 32×40×32: fast; the production default (3 mm) is checked once below
SESSION_COLUMNS = ["session_id", "months", "age", "ventricle_ml", "hippocampus_ml", "atrophy"]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _tree_bytes(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cohort") / "synth"
    calls: list[tuple[int, int]] = []
    S.make_cohort(out, subjects=6, seed=7, spacing=SPACING, visits=(3, 4),
                  progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 6) for i in range(7)]
    return out


def test_grid_shapes() -> None:
    assert S.template_grid(3.0).shape == (64, 80, 64)
    assert S.template_grid(2.0).shape == (96, 120, 96)
    assert S.template_grid(1.5).shape == (128, 160, 128)
    grid = S.template_grid(3.0)
    np.testing.assert_allclose(np.diag(grid.affine), [3, 3, 3, 1])
    centre = grid.affine @ np.r_[(np.asarray(grid.shape) - 1) / 2, 1]
    np.testing.assert_allclose(centre[:3], S.FOV_CENTER_MM)


def test_make_subject_shapes_and_truth() -> None:
    subj = S.make_subject(seed=3, spacing=SPACING, n_visits=4, diagnosis="AD", age=70.0)
    assert subj.diagnosis == "AD" and subj.age == 70.0 and subj.subject == "sub-s3"
    months = [v.months for v in subj.visits]
    assert months[0] == 0 and months == sorted(months) and len(set(months)) == 4
    for v in subj.visits:
        assert v.data.shape == (32, 40, 32) and v.data.dtype == np.float32
        assert np.isfinite(v.data).all() and v.data.min() >= 0 and v.data.max() < 1.6
        assert 0.1 < (v.data > 0).mean() < 0.6  # a skull-stripped brain in a zero background
        np.testing.assert_array_equal(v.affine, S.template_grid(SPACING).affine)
        assert v.session == f"ses-M{v.months:02d}"
        assert set(v.truth) == {"age", "months", "ventricle_ml", "hippocampus_ml", "atrophy"}
        assert v.truth["age"] == pytest.approx(70.0 + v.months / 12)
    vent = [v.truth["ventricle_ml"] for v in subj.visits]
    hipp = [v.truth["hippocampus_ml"] for v in subj.visits]
    assert np.all(np.diff(vent) > 0) and np.all(np.diff(hipp) < 0)


def test_make_subject_deterministic_and_seeded() -> None:
    a, b = (S.make_subject(seed=11, spacing=SPACING, n_visits=2) for _ in range(2))
    c = S.make_subject(seed=12, spacing=SPACING, n_visits=2)
    for va, vb in zip(a.visits, b.visits, strict=True):
        np.testing.assert_array_equal(va.data, vb.data)
        assert va.truth == vb.truth
    assert not np.array_equal(a.visits[0].data, c.visits[0].data)


def test_make_subject_rejects_bad_input() -> None:
    with pytest.raises(LDAEError, match="diagnosis"):
        S.make_subject(diagnosis="FTD", spacing=SPACING)
    with pytest.raises(LDAEError, match="spacing"):
        S.make_subject(spacing=0.1)


def test_atrophy_model_monotone_and_faster_under_ad() -> None:
    months = np.arange(0, 121, 6.0)
    cn = S.atrophy(72.0, "CN", months)
    ad = S.atrophy(72.0, "AD", months, disease_years=5.0)
    mci = S.atrophy(72.0, "MCI", months, disease_years=5.0)
    assert np.all(np.diff(cn) > 0) and np.all(np.diff(ad) > 0)
    assert np.all(ad > mci) and np.all(mci > cn)
    assert (ad[2] - ad[0]) > 3 * (cn[2] - cn[0])  # AD several times faster per year


def test_visit_months_are_adni_like() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 3, 6, S.MAX_VISITS):
        for _ in range(50):
            months = S.visit_months(rng, n)
            assert len(months) == n and months[0] == 0 and months == sorted(set(months))
            assert all(m == 6 or m % 12 == 0 for m in months)


def test_truth_masks_are_plausible() -> None:
    mask, affine = S.ventricle_mask_mni()
    assert 12 < mask.sum() * abs(np.linalg.det(affine[:3, :3])) / 1000 < 16
    ml = S.template_grid(SPACING).voxel_ml
    assert 10 < S.ventricle_mask_template(SPACING).sum() * ml < 20  # ICBM152 lateral ventricles
    assert 4 < S.hippocampus_mask_template(SPACING).sum() * ml < 8  # both hippocampal regions


def test_cohort_tree_and_columns(cohort: Path) -> None:
    import nibabel as nib

    participants = _rows(cohort / "participants.tsv")
    assert list(participants[0]) == ["participant_id", "diagnosis", "age", "sex", "seed"]
    assert [p["participant_id"] for p in participants] == [f"sub-{i:03d}" for i in range(1, 7)]
    assert {p["diagnosis"] for p in participants} == {"CN", "AD"}
    assert all(55 <= float(p["age"]) <= 90 and p["sex"] in {"F", "M"} for p in participants)
    desc = json.loads((cohort / "dataset_description.json").read_text())
    assert desc["GeneratedBy"][0]["Name"] == "napari-ldae" and "--seed 7" in desc["Command"]
    assert desc["GeneratorVersion"] == S.GENERATOR_VERSION
    for p in participants:
        sub = p["participant_id"]
        sessions = _rows(cohort / sub / f"{sub}_sessions.tsv")
        assert list(sessions[0]) == SESSION_COLUMNS and 3 <= len(sessions) <= 4
        for row in sessions:
            ses = row["session_id"]
            img = nib.load(cohort / sub / ses / "anat" / f"{sub}_{ses}_T1w.nii.gz")
            assert img.shape == (32, 40, 32) and img.get_data_dtype() == np.int16
            np.testing.assert_allclose(img.affine, S.template_grid(SPACING).affine)
    # a scan on disk is make_subject(seed from participants.tsv) up to int16 quantisation
    first = participants[0]
    n = len(_rows(cohort / "sub-001" / "sub-001_sessions.tsv"))
    subj = S.make_subject(int(first["seed"]), SPACING, n, first["diagnosis"])
    v = subj.visits[-1]
    img = nib.load(cohort / "sub-001" / v.session / "anat" / f"sub-001_{v.session}_T1w.nii.gz")
    np.testing.assert_allclose(img.get_fdata(), v.data, atol=S.INTENSITY_SLOPE)


def test_cohort_ventricles_grow_faster_under_ad(cohort: Path) -> None:
    rates: dict[str, list[float]] = {"CN": [], "AD": []}
    for p in _rows(cohort / "participants.tsv"):
        sessions = _rows(cohort / p["participant_id"] / f"{p['participant_id']}_sessions.tsv")
        vent = np.array([float(r["ventricle_ml"]) for r in sessions])
        hipp = np.array([float(r["hippocampus_ml"]) for r in sessions])
        months = np.array([float(r["months"]) for r in sessions])
        assert np.all(np.diff(vent) > 0) and np.all(np.diff(hipp) < 0)
        assert np.all(np.diff([float(r["atrophy"]) for r in sessions]) > 0)
        rates[p["diagnosis"]].append((vent[-1] - vent[0]) / (months[-1] / 12))
    assert np.mean(rates["AD"]) > 1.5 * np.mean(rates["CN"])


def test_cohort_reads_as_a_cohort(cohort: Path) -> None:
    from napari_ldae.data.cohort import read_cohort

    table = read_cohort(cohort)
    assert len(table.subjects()) == 6
    assert all("ventricle_ml" in r.extra for r in table)


def test_same_seed_same_bytes_other_seed_differs(cohort: Path, tmp_path: Path) -> None:
    again = S.make_cohort(tmp_path / "again", subjects=6, seed=7, spacing=SPACING, visits=(3, 4))
    assert _tree_bytes(again) == _tree_bytes(cohort)
    other = S.make_cohort(tmp_path / "other", subjects=2, seed=8, spacing=SPACING, visits=(3, 4))
    scan = "sub-001/ses-M00/anat/sub-001_ses-M00_T1w.nii.gz"
    assert (other / scan).read_bytes() != (cohort / scan).read_bytes()


def test_workers_give_the_same_bytes(tmp_path: Path) -> None:
    one = S.make_cohort(tmp_path / "one", subjects=3, seed=5, spacing=SPACING, visits=(2, 3))
    two = S.make_cohort(tmp_path / "two", subjects=3, seed=5, spacing=SPACING, visits=(2, 3),
                        workers=2)
    assert _tree_bytes(one) == _tree_bytes(two)


def test_mci_option(tmp_path: Path) -> None:
    out = S.make_cohort(tmp_path / "mci", subjects=3, seed=1, spacing=SPACING, visits=(2, 2),
                        mci=True)
    assert {p["diagnosis"] for p in _rows(out / "participants.tsv")} == {"CN", "MCI", "AD"}


def test_refuses_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CohortError, match="not empty"):
        S.make_cohort(tmp_path, subjects=1, seed=0, spacing=SPACING)
    with pytest.raises(CohortError, match="refusing"):
        S.make_cohort(tmp_path, subjects=1, seed=0, spacing=SPACING, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_cli_make_cohort(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    args = ["make-cohort", "--out", str(out), "--subjects", "2", "--seed", "4",
            "--spacing", str(SPACING), "--visits", "2", "3"]
    assert main(args) == 0
    assert len(_rows(out / "participants.tsv")) == 2
    assert "wrote synthetic cohort" in capsys.readouterr().out
    assert main(args) == 2
    assert "not empty" in capsys.readouterr().err
    (out / "sub-002" / "stale.txt").write_text("old")
    assert main([*args[:4], "1", *args[5:], "--overwrite"]) == 0
    assert not (out / "sub-002").exists() and len(_rows(out / "participants.tsv")) == 1


@pytest.mark.slow
def test_default_resolution_subject() -> None:
    subj = S.make_subject(seed=0, n_visits=2)
    assert subj.visits[0].data.shape == (64, 80, 64)
    np.testing.assert_allclose(np.diag(subj.visits[0].affine), [3, 3, 3, 1])
