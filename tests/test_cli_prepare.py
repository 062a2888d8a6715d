"""`napari-ldae prepare` on a skull-stripped scan (no network, no skull stripping needed)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

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
