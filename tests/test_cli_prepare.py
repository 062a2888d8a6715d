"""`napari-ldae prepare`, and `--prepare` of the model commands (tiny random bundle): a raw head
goes through skull stripping, registration, the model and back; a prepared scan is taken as it
is, also without the `prepare` extra; two visits are prepared together. No network."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from napari_ldae.cli import main
from napari_ldae.data.mni import template


def _write(path, data, affine) -> str:
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), path)
    return str(path)


def test_prepare_writes_every_file_and_refuses_to_overwrite(tmp_path, capsys) -> None:
    t1, _, affine = template(2.0)
    scan = _write(tmp_path / "brain.nii.gz", t1 * 800.0, affine)
    out = tmp_path / "out"
    assert main(["prepare", scan, "-o", str(out), "-q"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["brain_brainmask.nii.gz", "brain_prepared.json", "brain_prepared.nii.gz",
                     "brain_qc.json", "brain_qc.png", "brain_transform.json"]
    qc = json.loads((out / "brain_qc.json").read_text())
    assert qc["steps"]["skull_strip"].startswith("skipped") and qc["dice_template"] > 0.9
    back = nib.load(out / "brain_brainmask.nii.gz")
    assert back.shape == t1.shape and np.allclose(back.affine, affine)
    assert main(["prepare", scan, "-o", str(out), "-q"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_prepare_reports_a_bad_scan_and_writes_nothing_for_it(tmp_path, capsys) -> None:
    t1, mask, affine = template(2.0)
    inverted = _write(tmp_path / "t2like.nii.gz", np.where(mask, 1.1 - t1, 0.0) * 800, affine)
    out = tmp_path / "out"
    assert main(["prepare", inverted, "-o", str(out), "-q"]) == 2
    assert "T1" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


# ----------------------------------------------------------------------------- --prepare
HIDDEN = {"deepbet", "SimpleITK", "nilearn"}  # the `prepare` extra's modules


def _head_file(tmp_path):
    """A 3 mm head with skull, moved off the MNI position, as the scanner wrote it."""
    from napari_ldae.data.synthetic_head import make_head, motion, move_head

    head = move_head(make_head(3.0), motion((8.0, -5.0, 6.0), (10.0, -12.0, 8.0)))
    img = nib.Nifti1Image(head.data, head.affine)
    img.set_qform(head.affine, 1)  # scanner coordinates, as a scanner's file says
    img.set_sform(head.affine, 1)
    nib.save(img, tmp_path / "head.nii.gz")
    return str(tmp_path / "head.nii.gz"), head


def _sidecar(path) -> dict:
    return json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())


@pytest.mark.slow
@pytest.mark.usefixtures("cli_environment")
def test_manipulate_a_raw_head_changes_nothing_outside_the_brain(tmp_path, bundle, capsys):
    """Skull stripping, registration, the model and the way back, as `manipulate` runs them."""
    scan, head = _head_file(tmp_path)
    out = tmp_path / "out"
    assert main(["manipulate", scan, "-o", str(out), "--bundle", str(bundle), "--steps", "2",
                 "--direction", "AD", "--strength", "2", "--difference", "--prepare", "yes",
                 "--onto", "model", "-q"]) == 0
    assert "head.nii.gz: prepared (prepare yes): deepbet" in capsys.readouterr().err
    mask = np.asarray(nib.load(out / "head_brainmask.nii.gz").dataobj) > 0
    assert 2 * (mask & head.brain).sum() / (mask.sum() + head.brain.sum()) >= 0.9
    src, edit = nib.load(scan), nib.load(out / "head_AD+2.0.nii.gz")
    before, after = src.get_fdata(dtype=np.float32), edit.get_fdata(dtype=np.float32)
    assert np.array_equal(after[~mask], before[~mask])  # skull, neck, background: untouched
    assert (after[mask] != before[mask]).mean() > 0.5  # the brain is the model's
    for key in ("dim", "pixdim", "qform_code", "sform_code", "xyzt_units"):
        np.testing.assert_array_equal(edit.header[key], src.header[key])
    np.testing.assert_array_equal(edit.affine, src.affine)
    assert edit.get_data_dtype() == src.get_data_dtype()
    diff = nib.load(out / "head_AD+2.0_diff.nii.gz").get_fdata()
    assert np.all(diff[~mask] == 0) and np.abs(diff[mask]).max() > 0
    record = _sidecar(out / "head_AD+2.0.nii.gz")["provenance"]["prepare"]
    assert record["choice"] == "yes" and record["prepared"] and not record["warnings"]
    assert record["transform"]["format"] == "napari-ldae-transform"
    assert (out / "head_qc.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.usefixtures("cli_environment")
def test_auto_takes_a_prepared_scan_as_it_is_without_the_prepare_extra(tmp_path, bundle, capsys,
                                                                      monkeypatch):
    import importlib.util

    t1, _, affine = template(3.0)
    brain = _write(tmp_path / "brain.nii.gz", t1 * 800.0, affine)
    head, _ = _head_file(tmp_path)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in HIDDEN else find_spec(name, *a))
    args = ["-o", str(tmp_path / "out"), "--bundle", str(bundle), "--steps", "2", "-q"]
    assert main(["reconstruct", brain, *args]) == 0
    assert "brain.nii.gz: used as it is (auto: skull-stripped and in MNI position" in \
        capsys.readouterr().err
    record = _sidecar(tmp_path / "out" / "brain_recon.nii.gz")["provenance"]["prepare"]
    assert record["choice"] == "auto" and not record["prepared"]
    assert not (tmp_path / "out" / "brain_brainmask.nii.gz").exists()
    for scan, choice, message in ((brain, "yes", "--prepare yes needs"),
                                  (head, "auto", "head.nii.gz does not look prepared (not "
                                                 "skull-stripped")):
        assert main(["reconstruct", scan, *args, "--overwrite", "--prepare", choice]) == 2
        err = capsys.readouterr().err
        assert message in err and "deepbet, simpleitk, nilearn" in err
        assert "pip install 'napari-ldae[prepare]'" in err


@pytest.mark.slow
@pytest.mark.usefixtures("cli_environment")
def test_two_visits_are_prepared_together(tmp_path, bundle, capsys) -> None:
    """B (A moved by 6 mm in the scanner) is registered to A and shares A's affine."""
    from scipy import ndimage as ndi

    from napari_ldae.data.synthetic_head import motion

    t1, _, affine = template(3.0)
    world = motion((6.0, 0.0, -5.0), (4.0, -6.0, 3.0))
    m = np.linalg.inv(affine) @ np.linalg.inv(world) @ affine
    moved = ndi.affine_transform(t1, m[:3, :3], m[:3, 3], output_shape=t1.shape, order=1)
    shifted = affine.copy()
    shifted[:3, 3] += (6.0, 0.0, 0.0)
    a = _write(tmp_path / "sub-01_ses-M00_T1w.nii.gz", moved * 800.0, affine)
    b = _write(tmp_path / "sub-01_ses-M12_T1w.nii.gz", moved * 800.0, shifted)
    out = tmp_path / "out"
    assert main(["interpolate", a, b, "--alpha", "0.5", "-o", str(out), "--bundle",
                 str(bundle), "--steps", "2", "-q"]) == 0
    err = capsys.readouterr().err
    assert err.count("prepared (auto: the brain") == 2
    result = out / "sub-01_ses-M00_T1w_interp-a0.5.nii.gz"
    first, second = _sidecar(result)["provenance"]["prepare"]
    assert second["transform"]["steps"]["reference"] == "sub-01_ses-M00_T1w.nii.gz"
    lin = [np.asarray(r["transform"]["template_to_input"]) for r in (first, second)]
    np.testing.assert_allclose(lin[1][:3, :3], lin[0][:3, :3], atol=2e-3)
    np.testing.assert_allclose(lin[1][:3, 3] - lin[0][:3, 3], (6.0, 0.0, 0.0), atol=0.3)
    mask = np.asarray(nib.load(out / "sub-01_ses-M00_T1w_brainmask.nii.gz").dataobj) > 0
    src, back = (nib.load(p).get_fdata(dtype=np.float32) for p in (a, result))
    assert back.shape == src.shape and np.array_equal(back[~mask], src[~mask])
