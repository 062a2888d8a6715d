"""`--onto`, `--transfer`, `--jacobian` and `--volumes` of manipulate, interpolate and predict,
with the shipped demo bundle on a synthetic subject's two visits at 2 mm (the model grid is
3 mm): visit A stored LPS, visit B RAS, in a BIDS-like tree."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_ldae.cli import main
from napari_ldae.data.io import read_scan
from napari_ldae.data.regions import CHANGE_BY_DEFORMATION, REGIONS, read_volumes_tsv
from napari_ldae.operations_transfer import brain_mask

STEPS = ["--steps", "2", "--prepare", "no"]

pytestmark = pytest.mark.usefixtures("cli_environment")


@pytest.fixture(scope="module")
def visits(tmp_path_factory) -> tuple[Path, Path]:
    from napari_ldae.data.synthetic import make_subject

    root = tmp_path_factory.mktemp("bids")
    out = []
    for i, visit in enumerate(make_subject(7, spacing=2.0, n_visits=2, diagnosis="AD").visits):
        data, affine = visit.data, visit.affine.copy()
        if i == 0:  # LPS on disk: the first two voxel axes reversed
            flip = np.diag([-1.0, -1.0, 1.0, 1.0])
            flip[:2, 3] = np.asarray(data.shape[:2]) - 1
            data, affine = data[::-1, ::-1].copy(), affine @ flip
        anat = root / "sub-01" / f"ses-M{visit.months:02d}" / "anat"
        anat.mkdir(parents=True)
        path = anat / f"sub-01_ses-M{visit.months:02d}_T1w.nii.gz"
        nib.save(nib.Nifti1Image(data.astype(np.float32), affine), path)
        out.append(path)
    return out[0], out[1]


def run(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def voxels(path: Path) -> np.ndarray:
    return nib.load(path).get_fdata(dtype=np.float32)


def provenance(path: Path) -> dict:
    return json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())


def test_manipulate_carries_the_edit_onto_the_scan(capsys, visits, tmp_path):
    table = tmp_path / "volumes.tsv"
    rc, err = run(capsys, "manipulate", visits[0], "-o", tmp_path, *STEPS, "--direction", "AD",
                  "--strength", "0", "2", "--difference", "--jacobian", "--volumes", table)
    assert rc == 0, err
    assert "warp onto the scan" in err and "region volumes" in err  # progress bars
    stem = "sub-01_ses-M00_T1w_AD"
    assert sorted(p.name for p in tmp_path.glob("*.nii.gz")) == sorted(
        f"{stem}{s}{k}.nii.gz" for s in ("+0.0", "+2.0") for k in ("", "_diff", "_logjac"))
    scan = read_scan(visits[0])
    brain = brain_mask(scan)
    assert np.array_equal(voxels(tmp_path / f"{stem}+0.0.nii.gz"), scan.data)  # bit for bit
    assert not voxels(tmp_path / f"{stem}+0.0_diff.nii.gz").any()
    edited = voxels(tmp_path / f"{stem}+2.0.nii.gz")
    np.testing.assert_array_equal(nib.load(tmp_path / f"{stem}+2.0.nii.gz").affine, scan.affine)
    assert np.array_equal(edited[~brain], scan.data[~brain])
    assert (edited[brain] != scan.data[brain]).mean() > 0.1
    diff = voxels(tmp_path / f"{stem}+2.0_diff.nii.gz")
    assert np.array_equal(diff, edited - scan.data)
    log_jacobian = voxels(tmp_path / f"{stem}+2.0_logjac.nii.gz")
    assert np.isfinite(log_jacobian).all() and log_jacobian[brain].any()
    assert not log_jacobian[~brain].any()
    meta = provenance(tmp_path / f"{stem}+2.0_logjac.nii.gz")
    assert meta["source"] == str(visits[0].resolve())
    prov = meta["provenance"]
    assert (prov["onto"], prov["transfer"], prov["kind"]) == ("scan", "warp", "log_jacobian")
    rows = read_volumes_tsv(table)
    assert list(rows) == ["sub-01_ses-M00_T1w", f"{stem}+0.0", f"{stem}+2.0"]
    columns = {*REGIONS, *CHANGE_BY_DEFORMATION}
    assert all(set(row) == columns for row in rows.values())
    assert {k: rows[f"{stem}+0.0"][k] for k in REGIONS} == \
        {k: rows["sub-01_ses-M00_T1w"][k] for k in REGIONS}
    assert all(math.isnan(rows["sub-01_ses-M00_T1w"][k]) for k in CHANGE_BY_DEFORMATION)
    assert all(rows[f"{stem}+0.0"][k] == 0.0 for k in CHANGE_BY_DEFORMATION)
    assert all(math.isfinite(rows[f"{stem}+2.0"][k]) for k in CHANGE_BY_DEFORMATION)
    assert set(json.loads(table.with_suffix(".json").read_text())) == {"output", *columns}
    rc, err = run(capsys, "manipulate", visits[0], "-o", tmp_path / "again", *STEPS,
                  "--direction", "AD", "--strength", "1", "--volumes", table)
    assert rc == 2 and "volumes.tsv already exists; pass --overwrite" in err
    assert not (tmp_path / "again").exists()


def test_onto_model_writes_the_models_volume(capsys, visits, tmp_path):
    """--onto model is the decoded edit, as exported before the transfer existed."""
    from napari_ldae.core.progress import drain
    from napari_ldae.operations import export, iter_edit
    from napari_ldae.session import Session

    rc, err = run(capsys, "manipulate", visits[0], "-o", tmp_path, *STEPS, "--direction", "AD",
                  "--strength", "2", "--onto", "model", "-q")
    assert rc == 0, err
    out = tmp_path / "sub-01_ses-M00_T1w_AD+2.0.nii.gz"
    result = drain(iter_edit(Session(device="cpu"), read_scan(visits[0]), "AD", [2.0], 2, 2,
                             reference=False))
    expected = export(tmp_path / "expected.nii.gz", result.item(0))
    assert np.array_equal(voxels(out), voxels(expected))
    prov = provenance(out)["provenance"]
    assert prov["onto"] == "model" and prov["transfer"] is None


def test_interpolate_ends_are_the_visits(capsys, visits, tmp_path):
    """α ≤ 0.5 lies on A, α > 0.5 on B (B's grid and header): α 0 and 1 are the visits."""
    rc, err = run(capsys, "interpolate", *visits, "-o", tmp_path, *STEPS, "--alpha", "0",
                  "0.75", "1", "--transfer", "intensity", "--jacobian")
    assert rc == 2 and "--jacobian needs --onto scan --transfer warp" in err
    rc, err = run(capsys, "interpolate", *visits, "-o", tmp_path, *STEPS, "--alpha", "0",
                  "0.75", "1", "--transfer", "intensity", "-q")
    assert rc == 0, err
    a, b = (read_scan(v) for v in visits)
    outs = [tmp_path / f"sub-01_ses-M00_T1w_interp-a{t}.nii.gz" for t in ("0", "0.75", "1")]
    assert np.array_equal(voxels(outs[0]), a.data)
    assert np.array_equal(voxels(outs[2]), b.data)
    np.testing.assert_array_equal(nib.load(outs[0]).affine, a.affine)
    for out in outs[1:]:
        np.testing.assert_array_equal(nib.load(out).affine, b.affine)
        assert provenance(out)["source"] == str(visits[1].resolve())
    between = voxels(outs[1])
    brain = brain_mask(b)
    assert np.array_equal(between[~brain], b.data[~brain])
    assert (between[brain] != b.data[brain]).any()
    prov = provenance(outs[1])["provenance"]
    assert (prov["onto"], prov["transfer"], prov["alpha"]) == ("scan", "intensity", 0.75)


def test_predict_onto_the_latest_visit(capsys, visits, tmp_path):
    b = read_scan(visits[1])
    months = int(visits[1].parent.parent.name.removeprefix("ses-M")) + 12
    rc, err = run(capsys, "predict", *visits, "--months", months, "-o", tmp_path, *STEPS,
                  "--jacobian", "-q")
    assert rc == 0, err
    out = tmp_path / f"{visits[1].name.removesuffix('.nii.gz')}_predict-M{months}.nii.gz"
    predicted = voxels(out)
    brain = brain_mask(b)
    assert predicted.shape == b.shape and np.array_equal(predicted[~brain], b.data[~brain])
    assert np.isfinite(voxels(out.with_name(out.name.replace(".nii.gz", "_logjac.nii.gz")))).all()
    prov = provenance(out)["provenance"]
    assert (prov["onto"], prov["transfer"], prov["prediction"]) == ("scan", "warp", True)


@pytest.mark.parametrize("args, message", [
    (["--onto", "model", "--jacobian"], "--jacobian needs --onto scan --transfer warp"),
    (["--volumes", "volumes.csv"], "must end in .tsv"),
])
def test_option_errors_come_before_any_work(capsys, visits, tmp_path, args, message):
    rc, err = run(capsys, "manipulate", visits[0], "-o", tmp_path / "out", "--direction", "AD",
                  "--strength", "1", *args)
    assert rc == 2 and message in err
    assert not (tmp_path / "out").exists()
