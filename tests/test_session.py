"""Session: bundle defaults, caches, decoding, export in the source scan's space, date helpers."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from ldae_factory import STEPS, shared_tiny_bundle, tiny_scan

from napari_ldae import session as session_mod
from napari_ldae.core.progress import drain
from napari_ldae.data.io import read_scan, write_scan
from napari_ldae.data.visit_months import months_from_bids
from napari_ldae.errors import BundleError, LDAEError
from napari_ldae.session import (
    Session,
    alpha_from_months,
    default_bundle_path,
    default_cache_dir,
    describe_error,
)


@pytest.fixture(scope="module")
def bundle():
    return shared_tiny_bundle()


@pytest.fixture(scope="module")
def session(bundle, tmp_path_factory):
    return Session(bundle, device="cpu", cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def scan():
    return tiny_scan()


@pytest.fixture(scope="module")
def codes(session, scan):
    return session.encode(scan)


def _count(gen):
    n = 0
    while True:
        try:
            next(gen)
            n += 1
        except StopIteration as stop:
            return n, stop.value


# ----------------------------------------------------------------------------- defaults
def test_default_bundle_env_and_missing_demo(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_LDAE_BUNDLE", str(tmp_path / "b"))
    assert default_bundle_path() == tmp_path / "b"
    monkeypatch.delenv("NAPARI_LDAE_BUNDLE")
    monkeypatch.setattr(session_mod, "DEMO_BUNDLE", tmp_path / "missing")
    with pytest.raises(BundleError, match="--bundle"):
        default_bundle_path()


def test_cache_dir_env_and_unwritable_fallback(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_LDAE_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("NAPARI_LDAE_CACHE", str(blocker / "sub"))
    with pytest.warns(UserWarning, match="not writable"):
        fallback = default_cache_dir()
    assert fallback.is_dir() and fallback != blocker / "sub"


def test_bad_device_and_precision(bundle, tmp_path):
    with pytest.raises(LDAEError, match="not available"):
        Session(bundle, device="cuda:7", cache_dir=tmp_path)
    with pytest.raises(LDAEError, match="not supported"):
        Session(bundle, device="cpu", precision="fp16", cache_dir=tmp_path)


def test_info_and_unload(session):
    info = session.info()
    assert info["input_shape"] == [32, 32, 32] and info["spacing"] == [6.0, 6.0, 6.0]
    assert info["directions"]["AD"]["meaning"] == "toward AD"
    assert info["device"] == "cpu" and info["parameters"] > 0
    assert info["bundle_sha256"] == session.bundle.sha256 and info["trained"] is False
    assert session.steps == {**STEPS, "carry": STEPS["decode"]}  # carry: the decode's
    session.unload()
    assert not session.loaded and session.info()["parameters"] is None
    assert session.model is not None and session.loaded  # reloads on demand


# ----------------------------------------------------------------------------- encode
def test_prepare_shape(session, scan):
    x = session.prepare(scan)
    assert x.shape == (1, 1, 32, 32, 32) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def test_encode_cache_hit_memory_and_disk(bundle, scan, tmp_path):
    first = Session(bundle, device="cpu", cache_dir=tmp_path)
    n, codes = _count(first.iter_encode(scan))
    assert n == STEPS["encode"]
    n_again, again = _count(first.iter_encode(scan))
    assert n_again == 0 and again is codes
    assert list((tmp_path / "codes").rglob("*.safetensors"))
    fresh = Session(bundle, device="cpu", cache_dir=tmp_path)  # empty memory: disk hit
    n_disk, from_disk = _count(fresh.iter_encode(scan))
    assert n_disk == 0
    torch.testing.assert_close(from_disk.y, codes.y)
    torch.testing.assert_close(from_disk.x_T, codes.x_T)
    n_other, _ = _count(first.iter_encode(scan, steps=1))  # other steps: another key
    assert n_other == 1


# ----------------------------------------------------------------------------- decode
def test_decode_manipulate_interpolate_shapes(session, codes):
    vol = drain(session.iter_decode(codes))
    assert vol.shape == (1, 32, 32, 32) and vol.dtype == np.float32
    edits = drain(session.iter_manipulate(codes, "AD", [-1.0, 0.0, 2.0]))
    assert edits.shape == (3, 32, 32, 32)
    assert edits.min() >= 0.0 and edits.max() <= 1.0
    mids = drain(session.iter_interpolate(codes, codes, [0.0, 0.5]))
    assert mids.shape == (2, 32, 32, 32)


def test_reconstruction_cached_and_equal_to_strength_zero(session, codes):
    n, recon = _count(session.iter_reconstruction(codes))
    assert n == STEPS["decode"] and recon.shape == (32, 32, 32)
    n_again, again = _count(session.iter_reconstruction(codes))
    assert n_again == 0 and again is recon
    zero = drain(session.iter_manipulate(codes, "AD", [0.0]))[0]
    np.testing.assert_allclose(zero, recon, atol=1e-4)


# ----------------------------------------------------------------------------- export
def test_export_overlays_source_file(session, scan, codes, tmp_path):
    src = write_scan(tmp_path / "src.nii.gz", scan.data, like=scan)
    source = read_scan(src)
    vol = drain(session.iter_manipulate(codes, "AD", [1.5]))[0]
    out = session.export(tmp_path / "edit.nii.gz", vol, source,
                         {"direction": "AD", "strength": 1.5, "steps": 2})
    img, ref = nib.load(out), nib.load(src)
    assert img.shape == ref.shape
    np.testing.assert_allclose(img.affine, ref.affine)
    side = json.loads(out.with_name("edit.json").read_text())["provenance"]
    assert side["bundle_sha256"] == session.bundle.sha256 and side["strength"] == 1.5
    assert side["direction"] == "AD" and "napari_ldae_version" in side and "seed" in side
    lo, hi = source.intensity_range
    data = np.asarray(img.dataobj)
    assert data.min() >= lo - 1e-3 and data.max() <= hi + 1e-3  # the scan's intensity units
    with pytest.raises(FileExistsError):
        session.export(out, vol, source, {})
    assert session.export(out, vol, source, {}, overwrite=True) == out


def test_export_sweep_is_4d_volumes_last(session, scan, tmp_path):
    vols = np.zeros((3, 32, 32, 32), np.float32)
    out = session.export(tmp_path / "sweep.nii", vols, scan, {"strength": [0, 1, 2]},
                         difference=True)
    assert nib.load(out).shape == (*scan.shape, 3)


# ----------------------------------------------------------------------------- dates
def test_alpha_from_months():
    assert alpha_from_months(6, 18, 12) == 0.5
    assert alpha_from_months(0, 12, 0) == 0.0
    with pytest.raises(ValueError):
        alpha_from_months(6, 6, 6)


def test_months_from_bids(tmp_path):
    assert months_from_bids("sub-01_ses-M06_T1w.nii.gz") == 6
    assert months_from_bids("/d/sub-01/ses-bl/anat/sub-01_ses-bl_T1w.nii.gz") == 0
    assert months_from_bids("scan.nii.gz") is None
    anat = tmp_path / "sub-01" / "ses-V2" / "anat"
    anat.mkdir(parents=True)
    (tmp_path / "sub-01" / "sub-01_sessions.tsv").write_text(
        "session_id\tmonths\nses-V1\t0\nses-V2\t13.5\n")
    assert months_from_bids(anat / "sub-01_ses-V2_T1w.nii.gz") == 13.5


def test_describe_error():
    assert describe_error(torch.OutOfMemoryError("CUDA out of memory")) == session_mod.OOM_HINT
    assert "bad" in describe_error(LDAEError("bad"))
