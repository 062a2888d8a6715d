"""napari reader, writer and sample data: geometry, round trips, the manifest, a real viewer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from nifti_factory import KINDS, blob, make_affine, make_kind

from napari_ldae import napari_io
from napari_ldae.data.io import read_scan, sidecar_path
from napari_ldae.data.layer_metadata import META_KEY, PROVENANCE_KEY
from napari_ldae.errors import ScanError


def _attributes(layer_data) -> dict:
    """What napari hands a writer for a layer made from this layer-data tuple."""
    _, kwargs, _ = layer_data
    ndim = len(kwargs["scale"])
    return {"name": kwargs["name"], "scale": list(kwargs["scale"]),
            "translate": list(kwargs["translate"]), "rotate": np.eye(ndim),
            "shear": [0.0] * (ndim * (ndim - 1) // 2), "affine": np.eye(ndim + 1),
            "metadata": kwargs["metadata"], "rgb": False}


def test_get_reader_claims_only_nifti():
    for path in ("a.tif", "a.gz", "a.nii.gz.bak", "folder", "a.mgz", ["a.nii", "b.tif"], []):
        assert napari_io.get_reader(path) is None
    for path in ("a.nii", "a.nii.gz", "A.NII.GZ", ["a.nii", Path("b.nii.gz")]):
        assert napari_io.get_reader(path) is napari_io.read_nifti


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_reader_places_layer_and_writer_restores_file(tmp_path, kind):
    path, _ = make_kind(tmp_path, kind)
    [layer_data] = napari_io.read_nifti(str(path))
    data, kwargs, layer_type = layer_data
    assert layer_type == "image" and kwargs["name"] == kind
    meta = kwargs["metadata"][META_KEY]
    assert set(meta) >= {"path", "affine", "header", "shape", "reorientation"}
    lo, hi = kwargs["contrast_limits"]
    assert data.min() <= lo < hi <= data.max()

    out = napari_io.write_nifti(str(tmp_path / "saved.nii.gz"), data, _attributes(layer_data))
    original, saved = read_scan(path), read_scan(out[0])
    assert saved.shape == original.shape and saved.zooms == pytest.approx(original.zooms)
    np.testing.assert_allclose(saved.affine, original.affine, atol=1e-5)
    np.testing.assert_array_equal(saved.data, original.data)
    side = json.loads(sidecar_path(out[0]).read_text())
    assert side["source"] == str(path) and side["provenance"]["napari_layer"] == kind


def test_writer_keeps_provenance_and_writes_sweeps(tmp_path):
    path, _ = make_kind(tmp_path, "float32_lps")
    data, kwargs, kind = napari_io.read_nifti(path)[0]
    kwargs["metadata"][PROVENANCE_KEY] = {"direction": "AD", "strength": 1.5}
    sweep = np.stack([data, 2 * data])  # a strength sweep: (N, X, Y, Z)
    attrs = _attributes((data, kwargs, kind))
    attrs["scale"], attrs["translate"] = [1.0, *attrs["scale"]], [0.0, *attrs["translate"]]
    out = napari_io.write_nifti(str(tmp_path / "sweep.nii"), sweep, attrs)[0]
    img = nib.load(out)
    assert img.shape == (*read_scan(path).shape, 2)
    np.testing.assert_allclose(img.affine, KINDS["float32_lps"][0], atol=1e-5)
    np.testing.assert_allclose(img.get_fdata()[..., 1], 2 * read_scan(path).data, rtol=1e-6)
    assert json.loads(sidecar_path(out).read_text())["provenance"]["direction"] == "AD"


def test_writer_for_foreign_layers_uses_the_layer_transform(tmp_path):
    data = blob((16, 20, 12))
    attrs = {"name": "foreign", "scale": [2.0, 2.0, 3.0], "translate": [-10.0, 5.0, 7.0],
             "rotate": np.eye(3), "shear": [0.0, 0.0, 0.0], "affine": np.eye(4), "metadata": {}}
    out = napari_io.write_nifti(str(tmp_path / "f.nii.gz"), data, attrs)[0]
    scan = read_scan(out)
    expected = np.diag([2.0, 2.0, 3.0, 1.0])
    expected[:3, 3] = [-10.0, 5.0, 7.0]
    np.testing.assert_allclose(scan.affine, expected, atol=1e-6)
    np.testing.assert_array_equal(scan.data, data)
    with pytest.raises(ScanError, match="3D"):
        napari_io.write_nifti(str(tmp_path / "g.nii.gz"), np.ones((8, 8)), {"name": "2d"})


def _fake_subject(seed=0, spacing=3.0, n_visits=4):
    aff = make_affine((spacing,) * 3, origin=(-30.0, -40.0, -20.0))
    visits = [SimpleNamespace(data=blob((20, 24, 18), seed=m) * (1 - m / 100), affine=aff,
                              months=m, session=f"ses-M{m:02d}", truth={"ventricle_ml": 30 + m})
              for m in (0, 6, 12, 24)[:n_visits]]
    return SimpleNamespace(subject="sub-s0", diagnosis="AD", visits=visits)


def test_sample_data_layers(monkeypatch):
    import napari_ldae.data.synthetic as synthetic

    monkeypatch.setattr(synthetic, "make_subject", _fake_subject, raising=False)
    layers = napari_io.synthetic_subject()
    assert [kw["name"] for _, kw, _ in layers] == [
        "sub-s0 ses-M00", "sub-s0 ses-M06", "sub-s0 ses-M12", "sub-s0 ses-M24"]
    assert len({tuple(kw["contrast_limits"]) for _, kw, _ in layers}) == 1
    visit = layers[1][1]["metadata"]["ldae_visit"]
    assert visit["months"] == 6 and visit["truth"] == {"ventricle_ml": 36}
    assert layers[1][1]["metadata"][META_KEY]["path"] is None


@pytest.mark.slow
def test_sample_data_with_the_real_generator():
    pytest.importorskip("nilearn")  # the synthetic generator's template (the `data` extra)
    layers = napari_io.synthetic_subject()
    assert len(layers) == 4
    months = [kw["metadata"]["ldae_visit"]["months"] for _, kw, _ in layers]
    assert months == sorted(months) and months[0] == 0
    assert all(d.ndim == 3 and d.dtype == np.float32 for d, _, _ in layers)


def test_manifest_validates():
    npe2 = Path(sys.executable).with_name("npe2")
    cmd = [str(npe2)] if npe2.exists() else [sys.executable, "-m", "npe2"]
    result = subprocess.run([*cmd, "validate", "--imports", "napari-ldae"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("kind", ["int16_slope_ras", "float32_lps"])
def test_viewer_open_places_voxels_at_affine_and_saves(make_napari_viewer, tmp_path, kind):
    path, _ = make_kind(tmp_path, kind)
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin="napari-ldae")
    affine = KINDS[kind][0]
    scan = read_scan(path)
    marker = np.zeros(scan.shape, np.float32)
    for ijk in [(0, 0, 0), (5, 7, 3), (39, 47, 35)]:
        marker[:] = 0
        marker[ijk] = 1
        shown = np.argwhere(scan.display.to_display(marker))[0]
        np.testing.assert_allclose(layer.data_to_world(shown), (affine @ [*ijk, 1])[:3],
                                   atol=1e-5)
    out = tmp_path / "saved.nii.gz"
    viewer.layers.selection = {layer}
    viewer.layers.save(str(out), selected=True, plugin="napari-ldae")
    saved = read_scan(out)
    np.testing.assert_allclose(saved.affine, scan.affine, atol=1e-5)
    np.testing.assert_array_equal(saved.data, scan.data)


def test_viewer_open_sample(make_napari_viewer, monkeypatch):
    import napari_ldae.data.synthetic as synthetic

    monkeypatch.setattr(synthetic, "make_subject", _fake_subject, raising=False)
    viewer = make_napari_viewer()
    viewer.open_sample("napari-ldae", "synthetic_subject")
    assert len(viewer.layers) == 4
