"""The headless CLI (encode, reconstruct, manipulate, interpolate, info) on a tiny random bundle.

Inputs are LPS, oblique 20×24×20 scans at 2 mm in a BIDS-like tree, so every output goes through
the inverse of the preprocessing back onto the input's own grid. Encodings are cached on disk
(one cache for the module), so each scan is encoded once.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nifti_factory import blob, make_affine, rotation, save

from napari_ldae.cli import build_parser, main

STEPS = ["--steps", "2", "--prepare", "no"]  # blobs stand in for prepared brains
AFFINE = make_affine((2.0, 2.0, 2.0), flips=(-1, -1, 1), rot=rotation(8, -6, 10),
                     origin=(20.0, 24.0, -20.0))
SHAPE = (20, 24, 20)


pytestmark = pytest.mark.usefixtures("cli_environment")


@pytest.fixture(scope="module")
def visits(tmp_path_factory) -> tuple[Path, Path]:
    """Two visits of one subject, 24 months apart: sub-01/ses-M00 and ses-M24."""
    root = tmp_path_factory.mktemp("bids")
    out = []
    for seed, ses in enumerate(("M00", "M24")):
        anat = root / "sub-01" / f"ses-{ses}" / "anat"
        anat.mkdir(parents=True)
        out.append(save(anat / f"sub-01_ses-{ses}_T1w.nii.gz", blob(SHAPE, seed), AFFINE))
    return out[0], out[1]


def run(capsys, *args) -> tuple[int, str]:
    """``napari-ldae ARGS``: exit code and stderr."""
    capsys.readouterr()
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def model_run(capsys, bundle, *args) -> str:
    rc, err = run(capsys, *args, "--bundle", bundle, *STEPS, "--quiet")
    assert rc == 0, err
    return err


def assert_in_scan_space(path: Path, like: Path) -> dict:
    """The output has the input's grid; returns its sidecar."""
    img, ref = nib.load(path), nib.load(like)
    assert img.shape == ref.shape == SHAPE
    np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)
    sidecar = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
    assert sidecar["space"] == "scan"
    assert sidecar["source"] == str(like.resolve())
    return sidecar


def unit(path: Path, like: Path) -> np.ndarray:
    """Voxels of an output in the [0, 1] units of the input's intensity range."""
    ref = nib.load(like).get_fdata()
    return np.asarray(nib.load(path).get_fdata()) / (ref.max() - ref.min())


@pytest.fixture(scope="module")
def recon(bundle, visits, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("recon")
    assert main(["reconstruct", str(visits[0]), "-o", str(out), "--bundle", str(bundle),
                 *STEPS, "--quiet"]) == 0
    return out / "sub-01_ses-M00_T1w_recon.nii.gz"


# ----------------------------------------------------------------------------- commands
def test_encode_writes_codes(capsys, bundle, visits, tmp_path):
    from safetensors import safe_open

    from napari_ldae.core.bundle import load_bundle

    model_run(capsys, bundle, "encode", *visits, "-o", tmp_path)
    for visit in visits:
        path = tmp_path / visit.name.replace(".nii.gz", "_codes.safetensors")
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
            assert f.get_tensor("y").shape == (1, 16)
            assert f.get_tensor("x_T").shape == (1, 3, 8, 8, 8)
        assert meta["steps"] == "2"
        assert meta["bundle_sha256"] == load_bundle(bundle).sha256
        assert meta["source"] == str(visit.resolve())


def test_reconstruct_in_scan_space(recon, visits):
    prov = assert_in_scan_space(recon, visits[0])["provenance"]
    assert prov["operation"] == "reconstruct" and prov["steps"] == 2
    assert prov["kind"] == "image" and len(prov["bundle_sha256"]) == 64
    assert np.ptp(nib.load(recon).get_fdata()) > 0


def test_manipulate_strengths_and_difference(capsys, bundle, visits, recon, tmp_path):
    capsys.readouterr()
    rc = main([str(a) for a in ("manipulate", visits[0], "-o", tmp_path, "--bundle", bundle,
                                *STEPS, "--direction", "AD", "--strength", "0", "1",
                                "--difference", "--onto", "model")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "AD ×2" in err  # a progress bar per input and operation
    assert "AD +1.0: no calibration in years in this bundle" in out  # the random bundle's
    stem = "sub-01_ses-M00_T1w_AD"
    assert sorted(p.name for p in tmp_path.glob("*.nii.gz")) == [
        f"{stem}+0.0.nii.gz", f"{stem}+0.0_diff.nii.gz", f"{stem}+1.0.nii.gz",
        f"{stem}+1.0_diff.nii.gz"]
    for s in ("+0.0", "+1.0"):
        prov = assert_in_scan_space(tmp_path / f"{stem}{s}.nii.gz", visits[0])["provenance"]
        assert (prov["direction"], prov["strength"], prov["steps"]) == ("AD", float(s), 2)
        assert "years" in prov and prov["years"] is None
        diff = assert_in_scan_space(tmp_path / f"{stem}{s}_diff.nii.gz", visits[0])
        assert diff["provenance"]["kind"] == "difference"
    zero = unit(tmp_path / f"{stem}+0.0.nii.gz", visits[0])
    np.testing.assert_allclose(zero, unit(recon, visits[0]), atol=1e-4)
    assert np.abs(unit(tmp_path / f"{stem}+0.0_diff.nii.gz", visits[0])).max() < 1e-4
    moved = unit(tmp_path / f"{stem}+1.0.nii.gz", visits[0]) - zero
    np.testing.assert_allclose(unit(tmp_path / f"{stem}+1.0_diff.nii.gz", visits[0]), moved,
                               atol=1e-4)


def test_interpolate_months_from_bids_names(capsys, bundle, visits, tmp_path):
    model_run(capsys, bundle, "interpolate", *visits, "-o", tmp_path, "--months", "6", "12")
    for months, alpha in ((6, 0.25), (12, 0.5)):
        out = tmp_path / f"sub-01_ses-M00_T1w_interp-M{months}.nii.gz"
        prov = assert_in_scan_space(out, visits[0])["provenance"]
        assert prov["alpha"] == pytest.approx(alpha) and prov["months"] == months
        assert (prov["months_a"], prov["months_b"]) == (0.0, 24.0)


def test_interpolate_without_dates(capsys, bundle, visits, tmp_path):
    a, b = tmp_path / "first.nii.gz", tmp_path / "second.nii.gz"
    shutil.copy(visits[0], a)
    shutil.copy(visits[1], b)
    rc, err = run(capsys, "interpolate", a, b, "-o", tmp_path, "--months", "6")
    assert rc == 2 and "cannot tell the date of first.nii.gz" in err and "--months-a" in err
    model_run(capsys, bundle, "interpolate", a, b, "-o", tmp_path, "--months", "6",
              "--months-a", "0", "--months-b", "12")
    sidecar = json.loads((tmp_path / "first_interp-M6.json").read_text())
    assert sidecar["provenance"]["alpha"] == pytest.approx(0.5)


def test_alpha_range_and_extrapolate(capsys, bundle, visits, tmp_path):
    rc, err = run(capsys, "interpolate", *visits, "-o", tmp_path, "--alpha", "0.5", "1.5")
    assert rc == 2 and "outside [0, 1]" in err and "--extrapolate" in err
    rc, err = run(capsys, "interpolate", *visits, "-o", tmp_path, "--months", "30")
    assert rc == 2 and "dates outside the visits'" in err
    assert not list(tmp_path.iterdir())
    model_run(capsys, bundle, "interpolate", *visits, "-o", tmp_path, "--alpha", "1.5",
              "--extrapolate")
    assert (tmp_path / "sub-01_ses-M00_T1w_interp-a1.5.nii.gz").is_file()


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("case", ["missing", "not_nifti", "same_name", "direction", "bundle"])
def test_bad_input_exits_2(capsys, bundle, visits, tmp_path, case):
    args = ["manipulate", visits[0], "-o", tmp_path / "out", "--bundle", bundle,
            "--direction", "AD", "--strength", "1"]
    expected = {
        "missing": "no such file",
        "not_nifti": "not a NIfTI file",
        "same_name": "several inputs are named 'sub-01_ses-M00_T1w'",
        "direction": "unknown direction 'XX'; this bundle has: AD (toward AD), age (older)",
        "bundle": "no model bundle at",
    }[case]
    if case == "missing":
        args[1] = tmp_path / "nope.nii.gz"
    elif case == "not_nifti":
        args[1] = tmp_path / "scan.mgz"
        args[1].write_bytes(b"\0" * 64)
    elif case == "same_name":
        (tmp_path / "b").mkdir()
        args.insert(2, shutil.copy(visits[0], tmp_path / "b" / visits[0].name))
    elif case == "direction":
        args[args.index("AD")] = "XX"
    elif case == "bundle":
        args[args.index(bundle)] = tmp_path / "no-bundle"
    rc, err = run(capsys, *args)
    assert rc == 2
    assert err.startswith("napari-ldae manipulate: error: ") and err.count("\n") == 1
    assert expected in err


def test_never_overwrites_silently(capsys, bundle, visits, tmp_path):
    out = tmp_path / "sub-01_ses-M00_T1w_recon.nii.gz"
    out.write_bytes(b"precious")
    rc, err = run(capsys, "reconstruct", visits[0], "-o", tmp_path, "--bundle", bundle)
    assert rc == 2 and "already exists; pass --overwrite" in err
    assert out.read_bytes() == b"precious"
    out.unlink()
    (tmp_path / "sub-01_ses-M00_T1w_recon.json").write_text("{}")  # a sidecar counts too
    rc, err = run(capsys, "reconstruct", visits[0], "-o", tmp_path, "--bundle", bundle)
    assert rc == 2 and "recon.json already exists" in err
    model_run(capsys, bundle, "reconstruct", visits[0], "-o", tmp_path, "--overwrite",
              "--save-codes")
    assert_in_scan_space(out, visits[0])
    assert (tmp_path / "sub-01_ses-M00_T1w_codes.safetensors").is_file()


def test_out_nifti_name_is_the_file_or_an_error(capsys, bundle, visits, tmp_path):
    """``-o out.nii.gz`` with one NIfTI output writes that file; with more, -o is a folder."""
    out = tmp_path / "mine.nii.gz"
    model_run(capsys, bundle, "reconstruct", visits[0], "-o", out)
    assert out.is_file() and (tmp_path / "mine.json").is_file()
    assert_in_scan_space(out, visits[0])
    rc, err = run(capsys, "reconstruct", *visits, "-o", tmp_path / "two.nii.gz", "--bundle",
                  bundle)
    assert rc == 2 and "-o is an output folder" in err
    assert not (tmp_path / "two.nii.gz").exists()


def test_argument_errors_exit_2(capsys, visits, tmp_path):
    for args in (["interpolate", *visits, "-o", tmp_path, "--alpha", "0.5", "--months", "6"],
                 ["manipulate", visits[0], "-o", tmp_path, "--strength", "1"],
                 ["reconstruct", visits[0], "-o", tmp_path, "--steps", "0"]):
        with pytest.raises(SystemExit) as exit_:
            main([str(a) for a in args])
        assert exit_.value.code == 2


# ----------------------------------------------------------------------------- info, docs
def test_info(capsys, bundle):
    from napari_ldae.core.bundle import load_bundle

    assert main(["info", "--bundle", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert load_bundle(bundle).sha256 in out
    assert "32×32×32 voxels at 6.0×6.0×6.0 mm, RAS" in out
    assert re.search(r"AD\s+toward AD", out) and re.search(r"age\s+older", out)
    assert "NO (random weights)" in out
    assert main(["info", "--bundle", str(bundle), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"]["autoencoder"]["latent_shape"] == [3, 8, 8, 8]
    assert info["preprocessing"]["shape"] == [32, 32, 32]
    assert info["directions"]["AD"]["meaning"] == "toward AD"


def test_docs_cover_every_command_and_option():
    """docs/cli.md documents every sub-command and option (regenerate its usage blocks with
    `python docs/make_cli_reference.py`)."""
    doc = (Path(__file__).parent.parent / "docs" / "cli.md").read_text()
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, parser in sub.choices.items():
        assert parser.format_help()  # --help works
        assert f"## `napari-ldae {name}`" in doc, f"docs/cli.md lacks a section for {name}"
        section = doc.split(f"## `napari-ldae {name}`")[1].split("\n## ")[0]
        for action in parser._actions:
            for option in action.option_strings:
                assert option in section, f"docs/cli.md: {name} does not mention {option}"


def test_results_on_the_scan_decode_with_the_bundles_carry_steps(visits, tmp_path):
    from napari_ldae.core.presets import save_random_bundle

    bundle = save_random_bundle(tmp_path / "carry", "tiny", 0,
                                steps={"encode": 2, "decode": 2, "preview": 1, "carry": 1})
    common = ["manipulate", str(visits[0]), "--bundle", str(bundle), "--prepare", "no",
              "--direction", "AD", "--strength", "1"]
    for onto, steps in (("scan", 1), ("model", 2)):
        out = tmp_path / onto
        assert main([*common, "-o", str(out), "--onto", onto]) == 0
        prov = assert_in_scan_space(out / "sub-01_ses-M00_T1w_AD+1.0.nii.gz",
                                    visits[0])["provenance"]
        assert prov["steps"] == steps and prov["encode_steps"] == 2
    assert main([*common, "-o", str(tmp_path / "given"), "--steps", "3"]) == 0  # --steps wins
    prov = assert_in_scan_space(tmp_path / "given" / "sub-01_ses-M00_T1w_AD+1.0.nii.gz",
                                visits[0])["provenance"]
    assert prov["steps"] == 3
