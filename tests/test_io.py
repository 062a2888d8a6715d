"""NIfTI reading and writing: real-world kinds of files, their round trips and bad inputs."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path
from nifti_factory import KINDS, blob, make_affine, make_kind, rotation, save

from napari_ldae.data.display_geometry import DisplayGeometry
from napari_ldae.data.io import Scan, read_scan, sidecar_path, write_scan
from napari_ldae.data.layer_metadata import scan_from_metadata, scan_metadata
from napari_ldae.errors import ScanError

NIBABEL_DATA = Path(data_path)


def _assert_same_space(a: Scan, b: Scan) -> None:
    assert a.shape == b.shape
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-5)
    np.testing.assert_allclose(a.zooms, b.zooms, atol=1e-6)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_read_write_round_trip(tmp_path, kind):
    path, truth = make_kind(tmp_path, kind)
    scan = read_scan(path)
    assert scan.data.dtype == np.float32 and scan.shape == truth.shape
    np.testing.assert_allclose(scan.data, truth, atol=1e-4)  # scl_slope/scl_inter applied
    np.testing.assert_allclose(scan.affine, KINDS[kind][0], atol=1e-5)

    out = write_scan(tmp_path / "out" / "copy.nii.gz", scan.data, scan, provenance={"k": 1})
    back = read_scan(out)
    _assert_same_space(scan, back)
    np.testing.assert_array_equal(back.data, scan.data)
    hdr = nib.load(out).header
    assert hdr.get_data_dtype() == np.float32
    assert hdr.get_slope_inter() in ((None, None), (1.0, 0.0))
    assert int(hdr["sform_code"]) == 2 and int(hdr["qform_code"]) == 1  # codes kept
    assert hdr.get_xyzt_units() == ("mm", "sec")
    side = json.loads(sidecar_path(out).read_text())
    assert side["space"] == "scan" and side["provenance"] == {"k": 1}
    assert side["source"] == str(path)


def test_nibabel_real_t1_round_trip(tmp_path):
    """nibabel's test anatomy: big-endian int16, LAS, 2 mm."""
    scan = read_scan(NIBABEL_DATA / "anatomical.nii")
    assert scan.shape == (33, 41, 25) and scan.zooms == (2.0, 2.0, 2.0)
    assert nib.aff2axcodes(scan.affine) == ("L", "A", "S")
    out = write_scan(tmp_path / "anat.nii", scan.data, scan)
    back = read_scan(out)
    _assert_same_space(scan, back)
    np.testing.assert_array_equal(back.data, scan.data)


def test_nifti2_and_single_volume_4d(tmp_path):
    aff = make_affine((1.0, 1.0, 1.5), flips=(-1, 1, 1))
    path = save(tmp_path / "n2.nii.gz", blob()[..., None], aff, nifti2=True)
    scan = read_scan(path)
    assert scan.shape == (40, 48, 36)  # (X, Y, Z, 1) squeezed
    out = write_scan(tmp_path / "n2_copy.nii.gz", scan.data, scan)
    assert isinstance(nib.load(out), nib.Nifti2Image)
    _assert_same_space(scan, read_scan(out))


def test_write_model_space_and_4d(tmp_path):
    path, _ = make_kind(tmp_path, "float32_lps")
    scan = read_scan(path)
    model_aff = np.diag([1.5, 1.5, 1.5, 1.0])
    out = write_scan(tmp_path / "m.nii.gz", np.zeros((8, 10, 8)) + 0.5, scan,
                     affine=model_aff, space="model")
    img = nib.load(out)
    assert img.shape == (8, 10, 8)
    np.testing.assert_allclose(img.affine, model_aff)
    assert json.loads((tmp_path / "m.json").read_text())["space"] == "model"
    sweep = np.stack([scan.data, 2 * scan.data], axis=-1)
    out4 = write_scan(tmp_path / "sweep.nii.gz", sweep, scan)
    assert nib.load(out4).shape == (*scan.shape, 2)
    with pytest.raises(ScanError, match="needs its affine"):
        write_scan(tmp_path / "x.nii.gz", np.zeros((8, 10, 8)), scan, space="model")
    with pytest.raises(ScanError, match="to_scan_space"):
        write_scan(tmp_path / "x.nii.gz", np.zeros((8, 10, 8)), scan)


def test_write_refuses_to_overwrite(tmp_path):
    path, _ = make_kind(tmp_path, "float32_lps")
    scan = read_scan(path)
    out = write_scan(tmp_path / "edit.nii.gz", scan.data, scan)
    with pytest.raises(FileExistsError, match=r"edit\.nii\.gz.*overwrite=True"):
        write_scan(out, scan.data, scan)
    write_scan(out, 2 * scan.data, scan, overwrite=True)
    np.testing.assert_allclose(read_scan(out).data, 2 * scan.data)
    (tmp_path / "other.nii.gz").unlink(missing_ok=True)
    (tmp_path / "other.json").write_text("{}")  # a sidecar alone also blocks
    with pytest.raises(FileExistsError, match=r"other\.json"):
        write_scan(tmp_path / "other.nii.gz", scan.data, scan)


def test_write_is_atomic(tmp_path, monkeypatch):
    path, _ = make_kind(tmp_path, "float32_lps")
    scan = read_scan(path)
    before = sorted(p.name for p in tmp_path.iterdir())

    def broken_save(img, filename):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_scan(tmp_path / "edit.nii.gz", scan.data, scan)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no partial or temp file


def test_display_geometry_places_voxels_where_the_affine_says():
    rng = np.random.default_rng(0)
    for kind in ("int16_slope_ras", "float32_lps", "uint8_head_permuted"):
        affine = KINDS[kind][0]
        geom = DisplayGeometry.from_affine(affine, (40, 48, 36))
        assert geom.oblique_deg < 1e-6
        marker = np.zeros((40, 48, 36), dtype=np.float32)
        for ijk in rng.integers(0, (40, 48, 36), size=(5, 3)):
            marker[:] = 0
            marker[tuple(ijk)] = 1
            shown = np.argwhere(geom.to_display(marker))[0]
            world = np.asarray(geom.scale) * shown + geom.translate
            np.testing.assert_allclose(world, (affine @ [*ijk, 1])[:3], atol=1e-6)
        assert np.all(np.diag(geom.affine)[:3] > 0)
        np.testing.assert_array_equal(geom.from_display(geom.to_display(marker)), marker)


def test_oblique_display_is_exact_at_the_centre():
    affine = make_affine((1.0, 1.0, 1.0), rot=rotation(0, 0, 12))
    geom = DisplayGeometry.from_affine(affine, (41, 41, 41))
    assert geom.oblique_deg == pytest.approx(12, abs=1e-6)
    np.testing.assert_allclose(np.asarray(geom.scale) * 20 + geom.translate,
                               (affine @ [20, 20, 20, 1])[:3], atol=1e-6)


def test_metadata_round_trip(tmp_path):
    path, _ = make_kind(tmp_path, "uint8_head_permuted")
    scan = read_scan(path)
    meta = scan_metadata(scan)
    json.dumps({k: v for k, v in meta.items() if k != "header"})  # all but the header is JSON
    again = scan_from_metadata(scan.display_data, meta)
    _assert_same_space(scan, again)
    np.testing.assert_array_equal(again.data, scan.data)
    assert again.header["sform_code"] == scan.header["sform_code"]
    with pytest.raises(ScanError, match="does not match"):
        scan_from_metadata(np.zeros((3, 3, 3)), meta)


# ----------------------------------------------------------------------------- bad input
def _bad(tmp_path, name, data, affine=None) -> Path:
    img = nib.Nifti1Image(np.asarray(data), make_affine() if affine is None else affine)
    nib.save(img, tmp_path / name)
    return tmp_path / name


def test_not_nifti(tmp_path):
    (tmp_path / "scan.mgz").write_bytes(b"\x00" * 400)
    with pytest.raises(ScanError, match=r"scan\.mgz: not a NIfTI file.*mri_convert"):
        read_scan(tmp_path / "scan.mgz")
    (tmp_path / "fake.nii").write_text("hello, I am not an image")
    with pytest.raises(ScanError, match=r"fake\.nii: not a readable NIfTI file"):
        read_scan(tmp_path / "fake.nii")
    with pytest.raises(ScanError, match="no such file"):
        read_scan(tmp_path / "missing.nii.gz")


def test_truncated_files(tmp_path):
    path = save(tmp_path / "t.nii.gz", blob(), make_affine())
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ScanError, match=r"t\.nii\.gz: the file is truncated or corrupt"):
        read_scan(path)
    plain = save(tmp_path / "u.nii", blob(), make_affine())
    plain.write_bytes(plain.read_bytes()[:5000])
    with pytest.raises(ScanError, match="truncated"):
        read_scan(plain)
    (tmp_path / "g.nii.gz").write_bytes(gzip.compress(b"x" * 100)[:30])
    with pytest.raises(ScanError, match="truncated"):
        read_scan(tmp_path / "g.nii.gz")


def test_2d_and_4d(tmp_path):
    with pytest.raises(ScanError, match=r"2D \(shape \(32, 32\)\)"):
        read_scan(_bad(tmp_path, "slice.nii", np.ones((32, 32), np.float32)))
    with pytest.raises(ScanError, match="2D"):
        read_scan(_bad(tmp_path, "slab.nii", np.ones((32, 32, 1), np.float32)))
    with pytest.raises(ScanError, match=r"holds 3 volumes.*fslroi fmri.nii.gz fmri_vol0.nii.gz "
                                        r"0 1.*slicer"):
        read_scan(_bad(tmp_path, "fmri.nii.gz", np.ones((16, 16, 16, 3), np.float32)))
    with pytest.raises(ScanError, match="holds 2 volumes"):
        read_scan(NIBABEL_DATA / "example4d.nii.gz")


def test_nan_inf(tmp_path):
    data = blob()
    data[0, 0, :3] = np.nan
    data[1, 1, :2] = np.inf
    path = _bad(tmp_path, "nan.nii.gz", data)
    with pytest.raises(ScanError, match=r"5 voxels are NaN or infinite.*nan_policy=\"zero\""):
        read_scan(path)
    scan = read_scan(path, nan_policy="zero")
    assert np.isfinite(scan.data).all() and scan.data[0, 0, 0] == 0


def test_complex_voxels(tmp_path):
    with pytest.raises(ScanError, match="not a scalar intensity image"):
        read_scan(_bad(tmp_path, "c.nii.gz", blob().astype(np.complex64)))


def test_constant_image(tmp_path):
    with pytest.raises(ScanError, match=r"constant \(every voxel is 7\)"):
        read_scan(_bad(tmp_path, "flat.nii.gz", np.full((16, 16, 16), 7, np.int16)))


def test_absurd_sizes(tmp_path):
    with pytest.raises(ScanError, match=r"implausible size \(4, 64, 64\)"):
        read_scan(_bad(tmp_path, "thin.nii.gz", np.ones((4, 64, 64), np.float32)))
    # A 2000-voxel dimension: only the header is written, the data is never read.
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((2000, 16, 16))
    hdr.set_data_dtype(np.uint8)
    hdr.set_sform(np.eye(4), 2)
    hdr["vox_offset"] = 352
    (tmp_path / "huge.nii").write_bytes(hdr.binaryblock + b"\x00" * 4)
    with pytest.raises(ScanError, match=r"implausible size \(2000, 16, 16\)"):
        read_scan(tmp_path / "huge.nii")
    with pytest.raises(ScanError, match=r"implausible voxel size \(25, 1, 1\)"):
        read_scan(_bad(tmp_path, "big.nii.gz", blob(), make_affine((25.0, 1.0, 1.0))))
    zero = save(tmp_path / "zero.nii", blob(), make_affine())
    hdr = nib.load(zero).header.copy()  # patch the sform on disk to a zero-length voxel axis
    hdr["srow_x"] = [0.0, 0.0, 0.0, -40.0]
    hdr["qform_code"] = 0
    zero.write_bytes(hdr.binaryblock + zero.read_bytes()[348:])
    with pytest.raises(ScanError, match=r"implausible voxel size \(0, 1, 1\)"):
        read_scan(zero)


def test_from_array_checks_like_a_file():
    with pytest.raises(ScanError, match="constant"):
        Scan.from_array(np.zeros((16, 16, 16)), np.eye(4))
    scan = Scan.from_array(blob(), make_affine(flips=(-1, 1, 1)))
    assert scan.path is None and int(scan.header["sform_code"]) == 1
