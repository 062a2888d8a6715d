"""`napari-ldae predict` on a tiny random bundle: three visits of one subject in a BIDS-like tree
(LPS, oblique, 2 mm), dates from names, sessions.tsv or --dates, bad input, nothing half
written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nifti_factory import blob, make_affine, rotation, save

from napari_ldae.cli import main

STEPS = ["--steps", "2", "--prepare", "no"]  # blobs stand in for prepared brains
AFFINE = make_affine((2.0, 2.0, 2.0), flips=(-1, -1, 1), rot=rotation(8, -6, 10),
                     origin=(20.0, 24.0, -20.0))
SHAPE = (20, 24, 20)


pytestmark = pytest.mark.usefixtures("cli_environment")


@pytest.fixture(scope="module")
def visits(tmp_path_factory) -> list[Path]:
    """sub-01 at ses-M00, ses-M12 and ses-M24 (the last one's space is the output's)."""
    root = tmp_path_factory.mktemp("bids")
    out = []
    for seed, ses in enumerate(("M00", "M12", "M24")):
        anat = root / "sub-01" / f"ses-{ses}" / "anat"
        anat.mkdir(parents=True)
        out.append(save(anat / f"sub-01_ses-{ses}_T1w.nii.gz", blob(SHAPE, seed), AFFINE))
    return out


def run(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def predict(capsys, bundle, *args, quiet: bool = True) -> str:
    rc, err = run(capsys, "predict", *args, "--bundle", bundle, *STEPS,
                  *(["--quiet"] if quiet else []))
    assert rc == 0, err
    return err


def sidecar(path: Path) -> dict:
    return json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())


def test_predict_from_bids_names(capsys, bundle, visits, tmp_path):
    err = predict(capsys, bundle, visits[2], visits[0], visits[1], "--months", "36", "6",
                  "-o", tmp_path, quiet=False)
    assert "predict ×2 from 3 visits" in err  # the progress bar
    assert "warning" not in err
    for months, prediction in ((36, True), (6, False)):
        out = tmp_path / f"sub-01_ses-M24_T1w_predict-M{months}.nii.gz"
        img = nib.load(out)
        assert img.shape == SHAPE
        np.testing.assert_allclose(img.affine, AFFINE, atol=1e-5)
        meta = sidecar(out)
        assert meta["source"] == str(visits[2].resolve()) and meta["space"] == "scan"
        prov = meta["provenance"]
        assert prov["operation"] == "predict" and prov["months"] == months
        assert prov["prediction"] is prediction
        assert prov["visits"] == [str(v.resolve()) for v in visits]
        assert prov["visit_months"] == [0.0, 12.0, 24.0]
        assert prov["horizon_months"] == months - 24 and prov["fit_residual"] >= 0.0
        assert prov["x_T_rule"] == "hold" and prov["steps"] == 2
        assert prov["y_rule"] == "anchored"


def test_dates_from_the_command_line(capsys, bundle, visits, tmp_path):
    a, b = tmp_path / "first.nii.gz", tmp_path / "second.nii.gz"
    shutil.copy(visits[0], a)
    shutil.copy(visits[1], b)
    out = tmp_path / "out"
    rc, err = run(capsys, "predict", a, b, "--months", "30", "-o", out)
    assert rc == 2 and "cannot tell the date of first.nii.gz" in err and "--dates" in err
    rc, err = run(capsys, "predict", a, b, "--months", "30", "--dates", "0", "-o", out)
    assert rc == 2 and "--dates gives 1 date(s) for 2 visit(s)" in err
    assert not out.exists()
    predict(capsys, bundle, a, b, "--months", "30", "--dates", "0", "18", "-o", out,
            "--difference", "--save-codes", "--x-t-rule", "latest", "--y-rule", "line")
    assert sorted(p.name for p in out.iterdir()) == [
        "first_codes.safetensors", "second_codes.safetensors", "second_predict-M30.json",
        "second_predict-M30.nii.gz", "second_predict-M30_diff.json",
        "second_predict-M30_diff.nii.gz"]
    prov = sidecar(out / "second_predict-M30.nii.gz")["provenance"]
    assert prov["visit_months"] == [0.0, 18.0] and prov["x_T_rule"] == "latest"
    assert prov["y_rule"] == "line"
    assert sidecar(out / "second_predict-M30_diff.nii.gz")["provenance"]["kind"] == "difference"


@pytest.mark.parametrize("case, message", [
    ("single", "two or more visits"),
    ("duplicate", "are both dated month 12"),
])
def test_bad_input_exits_2_and_writes_nothing(capsys, visits, tmp_path, case, message):
    args = {"single": [visits[0], "--months", "12"],
            "duplicate": [visits[0], visits[1], "--dates", "12", "12", "--months", "30"]}[case]
    rc, err = run(capsys, "predict", *args, "-o", tmp_path / "out")
    assert rc == 2 and message in err
    assert not (tmp_path / "out").exists()


def test_doubtful_input_is_warned_about(capsys, bundle, visits, tmp_path):
    other = tmp_path / "sub-02" / "ses-M12" / "anat" / "sub-02_ses-M12_T1w.nii.gz"
    other.parent.mkdir(parents=True)
    shutil.copy(visits[1], other)
    err = predict(capsys, bundle, visits[0], other, "--months", "40", "-o", tmp_path / "o")
    assert "warning: the visits name different subjects (sub-01, sub-02)" in err
    assert "warning: month(s) 40 lie further from the visits than the visits span" in err
    prov = sidecar(tmp_path / "o" / "sub-02_ses-M12_T1w_predict-M40.nii.gz")["provenance"]
    assert len(prov["warnings"]) == 2


def test_unknown_y_rule_is_refused(capsys, visits, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        run(capsys, "predict", *visits, "--months", "30", "--y-rule", "flat", "-o", tmp_path)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'flat'" in err and "anchored" in err
    assert not list(tmp_path.iterdir())


def test_existing_output_refused_before_any_work(capsys, visits, tmp_path):
    (tmp_path / "sub-01_ses-M24_T1w_predict-M36.nii.gz").write_text("keep")
    rc, err = run(capsys, "predict", *visits, "--months", "30", "36", "-o", tmp_path)
    assert rc == 2 and "already exists" in err and "--overwrite" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub-01_ses-M24_T1w_predict-M36.nii.gz"]


def test_a_failed_write_leaves_nothing(capsys, bundle, visits, tmp_path, monkeypatch):
    from napari_ldae import operations

    real, calls = operations.export, []

    def export_then_fail(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(operations, "export", export_then_fail)
    with pytest.raises(OSError, match="disk full"):
        main(["predict", *map(str, visits), "--months", "30", "36", "-o", str(tmp_path),
              "--bundle", str(bundle), *STEPS, "--quiet"])
    assert len(calls) == 2 and not list(tmp_path.iterdir())
