"""The shared file helpers: NIfTI stems and atomic writes."""

from __future__ import annotations

import pytest

from napari_ldae._files import atomic_write, nifti_stem
from napari_ldae.core.device import is_out_of_memory


@pytest.mark.parametrize(("name", "stem"), [
    ("scan.nii.gz", "scan"), ("dir/Scan.NII.GZ", "Scan"), ("scan.nii", "scan"),
    ("sub-01_ses-M06_T1w.nii.gz", "sub-01_ses-M06_T1w"), ("codes.safetensors", "codes"),
])
def test_nifti_stem(name, stem):
    assert nifti_stem(name) == stem


def test_atomic_write_bytes_text_and_writer(tmp_path):
    target = tmp_path / "new" / "a.nii.gz"
    assert atomic_write(target, b"\x00\x01") == target
    assert target.read_bytes() == b"\x00\x01"
    atomic_write(target, "text")
    assert target.read_text() == "text"
    seen = []
    atomic_write(target, lambda tmp: (seen.append(tmp.name), tmp.write_text("ok")))
    assert target.read_text() == "ok" and seen[0].endswith(".nii.gz")
    assert target.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.nii.gz"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")

    def fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_is_out_of_memory():
    import torch

    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory"))
    assert not is_out_of_memory(RuntimeError("boom"))
