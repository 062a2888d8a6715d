"""Cohort tables from BIDS-like folders and CSV files, and subject-grouped splits."""

from __future__ import annotations

from pathlib import Path

import pytest

from napari_ldae.data.cohort import Cohort, ScanRecord, read_cohort
from napari_ldae.data.subject_splits import split_subjects
from napari_ldae.errors import CohortError


def _tsv(path: Path, rows: list[list[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(str(c) for c in row) + "\n" for row in rows))


def _bids(root: Path, subjects=None, sessions_tsv: bool = True) -> Path:
    """A small tree: sub-01 (CN, 3 visits), sub-02 (AD, 2 visits, age per session)."""
    subjects = subjects or {"sub-01": ("CN", 70.0, [0, 6, 12]), "sub-02": ("AD", 80.0, [0, 24])}
    _tsv(root / "participants.tsv", [["participant_id", "diagnosis", "age", "sex"]] + [
        [s, dx, age, "F"] for s, (dx, age, _) in subjects.items()])
    for s, (_, age, months) in subjects.items():
        rows = [["session_id", "months", "ventricle_ml"]]
        for m in months:
            ses = f"ses-M{m:02d}"
            anat = root / s / ses / "anat"
            anat.mkdir(parents=True)
            (anat / f"{s}_{ses}_T1w.nii.gz").write_bytes(b"")
            rows.append([ses, m, 30 + m])
        if s == "sub-02":
            rows[0].append("age")
            for r, m in zip(rows[1:], months, strict=True):
                r.append(age + m / 12 + 0.5)
        if sessions_tsv:
            _tsv(root / s / f"{s}_sessions.tsv", rows)
    return root


def test_read_bids(tmp_path):
    cohort = read_cohort(_bids(tmp_path))
    assert len(cohort) == 5 and cohort.subjects() == ["sub-01", "sub-02"]
    visits = cohort.visits("sub-01")
    assert [v.months for v in visits] == [0.0, 6.0, 12.0]
    assert [v.session for v in visits] == ["ses-M00", "ses-M06", "ses-M12"]
    v = visits[1]
    assert v.diagnosis == "CN" and v.age == pytest.approx(70.5)  # baseline age + months
    assert v.extra == {"sex": "F", "ventricle_ml": 36}
    assert v.path == tmp_path / "sub-01" / "ses-M06" / "anat" / "sub-01_ses-M06_T1w.nii.gz"
    assert cohort.visits("sub-02")[1].age == pytest.approx(82.5)  # sessions.tsv age wins
    assert list(cohort.by_subject()) == ["sub-01", "sub-02"]
    with pytest.raises(CohortError, match=r"no subject 'sub-09'"):
        cohort.visits("sub-09")


def test_bids_months_from_session_names(tmp_path):
    cohort = read_cohort(_bids(tmp_path, sessions_tsv=False))
    assert [v.months for v in cohort.visits("sub-02")] == [0.0, 24.0]


def test_bids_errors(tmp_path):
    with pytest.raises(CohortError, match=r"no participants.tsv"):
        read_cohort(tmp_path)
    root = _bids(tmp_path / "a")
    (root / "sub-01" / "ses-M06" / "anat" / "sub-01_ses-M06_T1w.nii.gz").unlink()
    with pytest.raises(CohortError, match=r"ses-M06: no anat/\*_T1w.nii.gz"):
        read_cohort(root)
    root = _bids(tmp_path / "b")
    (root / "sub-01" / "ses-M06" / "anat" / "sub-01_ses-M06_run-2_T1w.nii.gz").write_bytes(b"")
    with pytest.raises(CohortError, match=r"2 T1w files"):
        read_cohort(root)
    root = _bids(tmp_path / "c")
    with (root / "participants.tsv").open("a") as fh:
        fh.write("sub-01\tCN\t70\tF\n")
    with pytest.raises(CohortError, match=r"line 4: duplicated participant sub-01"):
        read_cohort(root)
    root = _bids(tmp_path / "d")
    _tsv(root / "participants.tsv", [["participant", "diagnosis"], ["sub-01", "CN"]])
    with pytest.raises(CohortError, match=r"missing column.*'participant_id'.*did you mean"):
        read_cohort(root)
    root = _bids(tmp_path / "e")
    _tsv(root / "participants.tsv", [["participant_id", "diagnosis"], ["sub-01", "CN"]])
    with pytest.raises(CohortError, match=r"sub-02 has no row in participants.tsv"):
        read_cohort(root)
    root = _bids(tmp_path / "f")
    with (root / "sub-01" / "sub-01_sessions.tsv").open("a") as fh:
        fh.write("ses-M06\t6\t40\n")
    with pytest.raises(CohortError, match=r"duplicated session ses-M06"):
        read_cohort(root)
    root = _bids(tmp_path / "g", {"sub-01": ("CN", 70, [0, 6])}, sessions_tsv=False)
    (root / "sub-01" / "ses-M06").rename(root / "sub-01" / "ses-late")
    with pytest.raises(CohortError, match=r"months from baseline are unknown"):
        read_cohort(root)


def _csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_read_csv_and_round_trip(tmp_path):
    (tmp_path / "scans").mkdir()
    for name in ("a0", "a1", "b0"):
        (tmp_path / "scans" / f"{name}.nii.gz").write_bytes(b"")
    path = _csv(tmp_path / "cohort.csv", "path,subject,session,months,diagnosis,age,site", [
        "scans/a1.nii.gz,A,ses-M12,12,AD,71.0,x",
        "scans/a0.nii.gz,A,ses-M00,0,AD,70.0,x",
        f"{tmp_path / 'scans' / 'b0.nii.gz'},B,ses-M00,0,n/a,,3",
    ])
    cohort = read_cohort(path)
    assert [r.session for r in cohort.visits("A")] == ["ses-M00", "ses-M12"]
    b = cohort.visits("B")[0]
    assert b.diagnosis is None and b.age is None and b.extra == {"site": 3}
    assert cohort.visits("A")[0].path == (tmp_path / "scans" / "a0.nii.gz").resolve()
    out = cohort.to_csv(tmp_path / "copy" / "cohort.csv")
    assert "../scans/a0.nii.gz" in out.read_text()  # portable relative paths
    assert read_cohort(out).records == cohort.records


def test_csv_errors(tmp_path):
    (tmp_path / "a.nii").write_bytes(b"")
    with pytest.raises(CohortError, match=r"missing column.*'subject'.*'subj'.*did you mean"):
        read_cohort(_csv(tmp_path / "c1.csv", "path,subj", ["a.nii,A"]))
    with pytest.raises(CohortError, match=r"line 3: duplicated row.*line 2"):
        read_cohort(_csv(tmp_path / "c2.csv", "path,subject,session,months",
                         ["a.nii,A,ses-1,0", "a.nii,A,ses-1,0"]))
    with pytest.raises(CohortError, match=r"listed twice"):
        read_cohort(_csv(tmp_path / "c3.csv", "path,subject,session,months",
                         ["a.nii,A,ses-1,0", "a.nii,A,ses-2,6"]))
    with pytest.raises(CohortError, match=r"line 2: scan .*missing.nii does not exist"):
        read_cohort(_csv(tmp_path / "c4.csv", "path,subject", ["missing.nii,A"]))
    assert len(read_cohort(tmp_path / "c4.csv", check_files=False)) == 1
    with pytest.raises(CohortError, match=r"months 'six' is not a number"):
        read_cohort(_csv(tmp_path / "c5.csv", "path,subject,months", ["a.nii,A,six"]))
    with pytest.raises(CohortError, match=r"no rows"):
        read_cohort(_csv(tmp_path / "c6.csv", "path,subject", []))
    with pytest.raises(CohortError, match=r"no such folder or CSV"):
        read_cohort(tmp_path / "nope.csv")


def _synthetic_cohort(n_cn: int, n_ad: int, visits: int = 3) -> Cohort:
    records = [
        ScanRecord(Path(f"/data/{dx}{i}_{v}.nii.gz"), f"sub-{dx}{i:03d}", f"ses-{v}",
                   6.0 * v, dx, 70.0)
        for dx, n in (("CN", n_cn), ("AD", n_ad)) for i in range(n) for v in range(visits)
    ]
    return Cohort(records)


def test_splits_are_subject_grouped_stratified_and_deterministic():
    cohort = _synthetic_cohort(20, 10)
    splits = split_subjects(cohort, val_fraction=0.1, test_fraction=0.2, seed=7)
    subjects = {k: set(c.subjects()) for k, c in splits.items()}
    assert not (subjects["train"] & subjects["val"] or subjects["train"] & subjects["test"]
                or subjects["val"] & subjects["test"])
    assert set().union(*subjects.values()) == set(cohort.subjects())
    assert sum(len(c) for c in splits.values()) == len(cohort)  # every visit, once
    for c in splits.values():
        for s in c.subjects():
            assert len(c.visits(s)) == 3  # all visits of a subject together
    assert len(subjects["test"]) == 6 and len(subjects["val"]) == 3
    test_dx = [splits["test"].visits(s)[0].diagnosis for s in subjects["test"]]
    assert test_dx.count("CN") == 4 and test_dx.count("AD") == 2  # stratified
    again = split_subjects(Cohort(reversed(cohort.records)), 0.1, 0.2, seed=7)
    assert {k: c.subjects() for k, c in again.items()} == {k: c.subjects()
                                                            for k, c in splits.items()}
    other = split_subjects(cohort, 0.1, 0.2, seed=8)
    assert other["test"].subjects() != splits["test"].subjects()


def test_split_edge_cases():
    small = _synthetic_cohort(2, 1)
    splits = split_subjects(small, 0.05, 0.05, seed=0)  # non-zero fractions get one subject
    assert [len(splits[k].subjects()) for k in ("train", "val", "test")] == [1, 1, 1]
    assert len(split_subjects(small, 0.0, 0.0)["train"].subjects()) == 3
    with pytest.raises(CohortError, match=r"cannot split 2 subject"):
        split_subjects(_synthetic_cohort(1, 1), 0.3, 0.3)
    with pytest.raises(CohortError, match=r"test_fraction must be in"):
        split_subjects(small, 0.1, 1.0)


def test_synthetic_cohort_anatomy_reaches_extra(tmp_path):
    """The realistic synthetic cohort's per-subject anatomy arrives in every visit's extra,
    numeric; the template variety has none of it. Both write the same bytes whatever workers."""
    pytest.importorskip("nilearn")
    from napari_ldae.data.synthetic import ANATOMY_COLUMNS, make_cohort

    kw = dict(subjects=2, seed=2, spacing=6.0, visits=(2, 2))
    real = read_cohort(make_cohort(tmp_path / "real", **kw, workers=2))
    assert len(real) == 4
    for r in real:
        assert set(ANATOMY_COLUMNS) <= set(r.extra) and isinstance(r.extra["brain_ml"], float)
        assert 0.9 <= r.extra["brain_scale"] <= 1.1 and r.extra["ventricle_ml"] > 0
    first, second = (real.visits(s)[0].extra["brain_ml"] for s in real.subjects())
    assert first != second
    plain = read_cohort(make_cohort(tmp_path / "plain", **kw, variety="template"))
    assert not set(ANATOMY_COLUMNS) & {k for r in plain for k in r.extra}
    again = make_cohort(tmp_path / "again", **kw, variety="template", workers=2)
    files = sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((again / f).read_bytes() == (tmp_path / "plain" / f).read_bytes() for f in files)


def test_session_labels_have_one_meaning():
    """Training's cohort reader and the GUI/CLI's BIDS names agree on every label."""
    from napari_ldae.data.cohort import _months
    from napari_ldae.data.visit_months import months_from_bids, session_months

    for label, months in (("ses-screening", 0.0), ("ses-sc", 0.0), ("ses-bl", 0.0),
                          ("baseline", 0.0), ("ses-M06", 6.0), ("m18", 18.0), ("ses-x", None)):
        assert session_months(label) == months
        assert months_from_bids(f"sub-01_{label}_T1w.nii.gz") == (
            months if label.startswith("ses-") else None)
        if months is not None:
            assert _months("", label, 2, "here") == months
