"""The synthetic longitudinal cohort: tree, ground truth, determinism, CLI (small, at 6 mm)."""

from __future__ import annotations

import csv
import gzip
import hashlib
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
V1_COLUMNS = ["participant_id", "diagnosis", "age", "sex", "seed"]
ANATOMY = ["brain_scale", "brain_ml", "ventricle_step", "hippocampus_step", "cortex_step",
           "asymmetry"]
# make_cohort(subjects=2, seed=3, spacing=6, visits=(2, 3)) written by generator v1, before the
# realistic variety existed: every file but dataset_description.json, .nii.gz decompressed
# (see _content_hash). The floating-point results depend on these versions.
#: The v1 cohort's content, as written with V1_VERSIONS on the machine kinds it was recorded on:
#: the same library versions write other bytes on an AMD EPYC with AVX-512 (the libraries'
#: floating-point paths depend on the CPU), so reproducibility is per machine kind.
V1_HASHES = {"55e31e4c070759b8414f4715bb447dc17470513f5a885d037bbc37130155323b",
             "0ba08c524f75db1851d60ac1c9427773497099576eb6091f081be095b23e97ea"}
V1_VERSIONS = {"numpy": "2.4.6", "scipy": "1.17.1", "nibabel": "5.4.2", "nilearn": "0.14.1"}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _tree_bytes(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def _content_hash(root: Path) -> str:
    """sha256 of every file but dataset_description.json, .nii.gz decompressed (zlib-proof)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "dataset_description.json":
            data = p.read_bytes()
            if p.name.endswith(".gz"):
                data = gzip.decompress(data)
            h.update(str(p.relative_to(root)).encode() + b"\0" + data)
    return h.hexdigest()


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
    assert list(participants[0]) == V1_COLUMNS + ANATOMY  # the default: realistic variety
    assert [p["participant_id"] for p in participants] == [f"sub-{i:03d}" for i in range(1, 7)]
    assert {p["diagnosis"] for p in participants} == {"CN", "AD"}
    assert all(55 <= float(p["age"]) <= 90 and p["sex"] in {"F", "M"} for p in participants)
    desc = json.loads((cohort / "dataset_description.json").read_text())
    assert desc["GeneratedBy"][0]["Name"] == "napari-ldae" and "--seed 7" in desc["Command"]
    assert desc["GeneratorVersion"] == S.GENERATOR_VERSION == "2"
    assert desc["Parameters"]["variety"] == "realistic" and "--variety realistic" in desc["Command"]
    for p in participants:
        sub = p["participant_id"]
        sessions = _rows(cohort / sub / f"{sub}_sessions.tsv")
        assert list(sessions[0]) == SESSION_COLUMNS and 3 <= len(sessions) <= 4
        for row in sessions:
            ses = row["session_id"]
            img = nib.load(cohort / sub / ses / "anat" / f"{sub}_{ses}_T1w.nii.gz")
            assert img.shape == (32, 40, 32) and img.get_data_dtype() == np.int16
            assert img.header["descrip"].tobytes().startswith(b"napari-ldae synthetic v2")
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


# --------------------------------------------------------------------------- variety


def test_template_variety_reproduces_generator_v1(tmp_path: Path) -> None:
    import nibabel
    import nilearn
    import scipy

    out = S.make_cohort(tmp_path / "v1", subjects=2, seed=3, spacing=SPACING, visits=(2, 3),
                        variety="template")
    assert list(_rows(out / "participants.tsv")[0]) == V1_COLUMNS
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["GeneratorVersion"] == S.GENERATOR_VERSIONS["template"] == "1"
    assert desc["Parameters"]["variety"] == "template" and "--variety template" in desc["Command"]
    scan = next(out.rglob("*.nii.gz"))
    assert gzip.decompress(scan.read_bytes())[148:172] == b"napari-ldae synthetic v1"
    versions = {m.__name__: m.__version__ for m in (np, scipy, nibabel, nilearn)}
    if versions != V1_VERSIONS:
        pytest.skip(f"v1 hash recorded with {V1_VERSIONS}, running {versions}")
    assert _content_hash(out) in V1_HASHES


def test_varieties_share_everything_but_the_anatomy(tmp_path: Path) -> None:
    real = S.make_subject(seed=21, spacing=SPACING, n_visits=3)
    tmpl = S.make_subject(seed=21, spacing=SPACING, n_visits=3, variety="template")
    assert (real.variety, tmpl.variety) == ("realistic", "template")
    assert (real.diagnosis, real.age, real.sex) == (tmpl.diagnosis, tmpl.age, tmpl.sex)
    assert [v.months for v in real.visits] == [v.months for v in tmpl.visits]
    assert [v.truth["atrophy"] for v in real.visits] == [v.truth["atrophy"] for v in tmpl.visits]
    assert tmpl.anatomy == {} and list(real.anatomy) == ANATOMY
    assert not np.array_equal(real.visits[0].data, tmpl.visits[0].data)
    with pytest.raises(LDAEError, match="variety"):
        S.make_subject(seed=0, spacing=SPACING, variety="ADNI")
    with pytest.raises(LDAEError, match="variety"):
        S.make_cohort(tmp_path / "never", subjects=1, seed=0, variety="ADNI")
    assert not (tmp_path / "never").exists()


def test_anatomy_draws_sex_differences_and_ranges() -> None:
    from napari_ldae.data.synthetic_subject import _Constitution

    draws = {sex: [_Constitution.draw(seed, sex) for seed in range(400)] for sex in "FM"}
    volume = {sex: np.array([d.brain_scale for d in ds]) ** 3 for sex, ds in draws.items()}
    vent = {sex: np.array([d.ventricle_step for d in ds]) for sex, ds in draws.items()}
    assert 1.08 < volume["M"].mean() / volume["F"].mean() < 1.18  # men: larger heads
    assert 0.06 < volume["F"].std() / volume["F"].mean() < 0.11  # within sex, ≈ 8.5 %
    assert vent["M"].mean() > vent["F"].mean()  # and slightly larger ventricles
    every = [d for ds in draws.values() for d in ds]
    steps = np.array([d.ventricle_step for d in every])
    assert steps.min() >= -4 and steps.max() <= 10 and np.median(steps) < steps.mean()  # skewed
    for name, bound in (("hippocampus_step", 0.9), ("cortex_step", 0.9), ("asymmetry", 1.2)):
        values = np.array([getattr(d, name) for d in every])
        assert np.abs(values).max() <= bound and values.std() > bound / 5
    assert np.mean([d.asymmetry for d in every]) > 0  # left ventricles usually larger


def test_realistic_subjects_differ_far_more_than_the_template() -> None:
    """Same diagnosis and age: the spread is anatomy. The template variety gives a ventricle
    ratio ≈ 1.4 (CV 0.10), hippocampal CV 0.04 and brain CV 0.05 on these seeds."""
    subjects = [S.make_subject(seed, SPACING, 1, "CN", age=70.0) for seed in range(12)]
    vent = np.array([s.visits[0].truth["ventricle_ml"] for s in subjects])
    hipp = np.array([s.visits[0].truth["hippocampus_ml"] for s in subjects])
    brain = np.array([s.anatomy["brain_ml"] for s in subjects])
    assert vent.max() / vent.min() > 1.8 and vent.std() / vent.mean() > 0.18
    assert hipp.std() / hipp.mean() > 0.06
    assert 0.04 < brain.std() / brain.mean() < 0.2 and 1200 < brain.min() < brain.max() < 2800
    for s in subjects:
        a = s.anatomy
        assert 0.9 <= a["brain_scale"] <= 1.1 and -4 <= a["ventricle_step"] <= 10
        assert abs(a["hippocampus_step"]) <= 0.9 and abs(a["cortex_step"]) <= 0.9
        assert abs(a["asymmetry"]) <= 1.2


def test_constitution_is_invertible_and_asymmetric() -> None:
    from scipy import ndimage as ndi

    from napari_ldae.data.synthetic_subject import _constitute, _Constitution
    from napari_ldae.data.synthetic_template import _template

    tpl = _template(SPACING)
    extremes = (_Constitution(1.0, 10.0, 0.9, 0.9, 1.2), _Constitution(1.0, -4.0, -0.9, -0.9, -1.2))
    for body in extremes:
        q = _constitute(tpl, tpl.world, body.weights())
        jac = np.stack([np.stack(np.gradient(q[i], SPACING)) for i in range(3)])
        assert np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1))).min() > 0  # no folding

    def left_right(asymmetry: float, channel: int) -> tuple[float, float]:
        q = _constitute(tpl, tpl.world, _Constitution(1.0, 0.0, 0.0, 0.0, asymmetry).weights())
        mask = ndi.map_coordinates(tpl.masks[channel], tpl.work.to_voxel(q), order=1)
        return float((mask * (q[0] < 0)).sum()), float((mask * (q[0] >= 0)).sum())

    left, right = left_right(1.0, 0)
    assert left > 1.3 * right  # ventricles: left larger
    left, right = left_right(1.0, 1)
    assert right > 1.1 * left  # hippocampi: the other way
    left, right = left_right(0.0, 0)
    assert left == pytest.approx(right, rel=0.05)


def test_realistic_cohort_anatomy_matches_make_subject(cohort: Path) -> None:
    first = _rows(cohort / "participants.tsv")[0]
    n = len(_rows(cohort / "sub-001" / "sub-001_sessions.tsv"))
    subj = S.make_subject(int(first["seed"]), SPACING, n, first["diagnosis"])
    for key, fmt in S.ANATOMY_COLUMNS.items():
        assert first[key] == fmt.format(subj.anatomy[key])
    brains = [float(p["brain_ml"]) for p in _rows(cohort / "participants.tsv")]
    assert len(set(brains)) == len(brains)


def test_cli_make_cohort_variety(tmp_path: Path) -> None:
    args = ["make-cohort", "--subjects", "1", "--seed", "4", "--spacing", str(SPACING),
            "--visits", "1", "1"]
    assert main([*args, "--out", str(tmp_path / "t"), "--variety", "template"]) == 0
    assert list(_rows(tmp_path / "t" / "participants.tsv")[0]) == V1_COLUMNS
    assert main([*args, "--out", str(tmp_path / "r")]) == 0
    assert list(_rows(tmp_path / "r" / "participants.tsv")[0]) == V1_COLUMNS + ANATOMY
    with pytest.raises(SystemExit):
        main([*args, "--out", str(tmp_path / "x"), "--variety", "adni"])


def test_registered_variety_takes_out_the_size_and_keeps_the_rest(tmp_path: Path) -> None:
    """The registered variety is the realistic subject after an affine registration to MNI:
    the same anatomy and truth, its brain at template size, brain_scale kept as the factor."""
    seeds = range(6)
    real = [S.make_subject(seed, SPACING, 2) for seed in seeds]
    reg = [S.make_subject(seed, SPACING, 2, variety="registered") for seed in seeds]
    for r, g in zip(real, reg, strict=True):
        assert g.variety == "registered" and list(g.anatomy) == ANATOMY
        assert {k: v for k, v in g.anatomy.items() if k != "brain_ml"} == \
            {k: v for k, v in r.anatomy.items() if k != "brain_ml"}
        assert [v.truth["atrophy"] for v in g.visits] == [v.truth["atrophy"] for v in r.visits]
        s3 = r.anatomy["brain_scale"] ** 3  # volumes scale with s³
        assert g.anatomy["brain_ml"] == pytest.approx(r.anatomy["brain_ml"] / s3, rel=0.03)
        assert g.visits[0].truth["ventricle_ml"] == \
            pytest.approx(r.visits[0].truth["ventricle_ml"] / s3, rel=0.08)
    brains = np.array([g.anatomy["brain_ml"] for g in reg])
    # what is left: the residual affine (2 % per axis) and the anatomy; realistic: ≈ 9 %
    assert brains.std() / brains.mean() < 0.05
    out = S.make_cohort(tmp_path / "g", subjects=1, seed=0, spacing=SPACING, visits=(1, 1),
                        variety="registered")
    assert list(_rows(out / "participants.tsv")[0]) == V1_COLUMNS + ANATOMY
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["GeneratorVersion"] == "2" and "--variety registered" in desc["Command"]
