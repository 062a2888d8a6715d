"""Bundles: save/load round trip, one clear error per broken bundle, official import."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from napari_ldae import BUNDLE_FORMAT_VERSION
from napari_ldae.core.bundle import load_bundle, model_weights, save_bundle
from napari_ldae.core.presets import preset, random_model, save_random_bundle
from napari_ldae.core.reference import import_official
from napari_ldae.errors import BundleError

FIXTURES = Path(__file__).parent / "fixtures"
STEPS = 2


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    return save_random_bundle(tmp_path_factory.mktemp("b") / "tiny", seed=2)


def _volume(model):
    return torch.rand((1, 1, *model.input_shape), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("suffix", ["", ".ldae"])
def test_save_load_round_trip(tmp_path, suffix):
    model, config = random_model("tiny", seed=3)
    path = save_bundle(tmp_path / f"m{suffix}", config, model_weights(model))
    loaded = load_bundle(path).load_model()
    x = _volume(model)
    a = model.reconstruct(x, STEPS)
    b = loaded.reconstruct(x, STEPS)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert set(loaded.directions) == {"AD", "age"}
    assert loaded.directions["AD"].meaning == "toward AD"
    assert loaded.input_shape == tuple(config["preprocessing"]["shape"])


def test_bundle_hash_is_stable_and_content_based(tmp_path, tiny_bundle):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_bundle, copy)
    assert load_bundle(copy).sha256 == load_bundle(tiny_bundle).sha256
    other = save_random_bundle(tmp_path / "other", seed=9)
    assert load_bundle(other).sha256 != load_bundle(tiny_bundle).sha256


def test_never_overwrites_silently(tiny_bundle):
    model, config = random_model("tiny")
    with pytest.raises(FileExistsError, match="overwrite"):
        save_bundle(tiny_bundle, config, model_weights(model))


def _broken(tmp_path, tiny_bundle, edit) -> Path:
    path = tmp_path / "broken"
    shutil.copytree(tiny_bundle, path)
    edit(path)
    return path


def _edit_config(**changes):
    def edit(path):
        config = json.loads((path / "config.json").read_text())
        config.update(changes)
        (path / "config.json").write_text(json.dumps(config))
    return edit


@pytest.mark.parametrize(("edit", "message"), [
    (lambda p: (p / "unet.safetensors").unlink(), "unet.safetensors is missing"),
    (lambda p: (p / "config.json").unlink(), "no config.json"),
    (lambda p: (p / "config.json").write_text("{oops"), "not valid JSON"),
    (_edit_config(format_version=BUNDLE_FORMAT_VERSION + 1), "upgrade napari-ldae"),
    (_edit_config(format_version=0), "not supported"),
    (_edit_config(format="something"), "not a napari-ldae bundle config"),
    (_edit_config(scale_factor=-1), "scale_factor"),
    (_edit_config(steps={"encode": 2, "decode": 0, "preview": 1}), "positive integer step"),
    (_edit_config(steps={"encode": 2, "decode": 2}), "positive integer step"),
    (_edit_config(steps={"encode": 2, "decode": 2, "preview": 1, "fast": 1}), "optionally carry"),
    (lambda p: torch.save({"w": torch.zeros(2)}, p / "encoder.safetensors"), "pickled"),
    (lambda p: (p / "encoder.safetensors").write_bytes(b"\x00" * 64), "corrupt"),
])
def test_each_broken_bundle_has_its_own_message(tmp_path, tiny_bundle, edit, message):
    path = _broken(tmp_path, tiny_bundle, edit)
    with pytest.raises(BundleError, match=message):
        load_bundle(path).load_model()


def test_shape_mismatch_is_named(tmp_path, tiny_bundle):
    def edit(path):
        config = json.loads((path / "config.json").read_text())
        config["unet"]["base_channels"] = 64
        (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match=r"unet\.safetensors.*shape"):
        load_bundle(_broken(tmp_path, tiny_bundle, edit)).load_model()


def test_missing_direction_vector(tmp_path, tiny_bundle):
    path = _broken(tmp_path, tiny_bundle, _edit_config(
        directions={"MCI": {"meaning": "toward MCI"}}))
    with pytest.raises(BundleError, match="MCI"):
        load_bundle(path).load_model()


def test_pickled_file_handed_in_as_bundle(tmp_path):
    path = tmp_path / "decoder.pth"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(BundleError, match="import-official"):
        load_bundle(path)
    with pytest.raises(BundleError, match="no model bundle"):
        load_bundle(tmp_path / "absent")


# ------------------------------------------------------------------------ official import
def _official_files(tmp_path) -> tuple[dict, dict]:
    """Files in the official release format (pickled state dicts) for a tiny architecture."""
    from napari_ldae.core.reference import load_semantic_encoder, load_shift_unet

    unet_cfg = json.loads((FIXTURES / "shift_unet_tiny_config.json").read_text())["shift_unet"]
    unet = load_shift_unet(unet_cfg, load_file(FIXTURES / "shift_unet_tiny.safetensors"))
    enc_cfg = json.loads((FIXTURES / "semantic_encoder_tiny_config.json").read_text())
    encoder = load_semantic_encoder(
        enc_cfg, load_file(FIXTURES / "semantic_encoder_tiny.safetensors"))
    ae_keys = json.loads((FIXTURES / "aekl_generative_keys.json").read_text())
    d = encoder.config.emb_dim
    config = preset("tiny")
    config["unet"] = unet.config.to_dict() | {"latent_dim": d}
    config["encoder"] = encoder.config.to_dict()
    config["autoencoder"] = ae_keys["config_tiny"]
    config["preprocessing"]["shape"] = [32, 40, enc_cfg["seq_len"]]
    # The fixtures' UNet was built for 16-d codes: give it a branch for the encoder's width.
    from napari_ldae.core.unet import ShiftUNet, UNetConfig

    torch.manual_seed(0)
    full = ShiftUNet(UNetConfig.from_dict(config["unet"]))
    full.load_unet_state_dict({k: v for k, v in unet.state_dict().items()
                               if k not in unet.branch_keys()})
    files = {
        "unet": tmp_path / "decoder.pth", "encoder": tmp_path / "encoder.pth",
        "autoencoder": tmp_path / "autoencoder.pth",
        "semantic_mean": tmp_path / "semantic_mean.pt",
        "semantic_std": tmp_path / "semantic_std.pt",
        "classifier": tmp_path / "disease_classifier.ckpt",
    }
    torch.save(full.state_dict(), files["unet"])
    torch.save(encoder.state_dict(), files["encoder"])
    torch.save(load_file(FIXTURES / "aekl_generative_tiny.safetensors"), files["autoencoder"])
    torch.save(torch.zeros(d), files["semantic_mean"])
    torch.save(torch.ones(d), files["semantic_std"])
    w = torch.randn(1, d)
    torch.save({"weight": w, "bias": torch.zeros(1)}, files["classifier"])
    return files, {"config": config, "w": w, "unet": full, "encoder": encoder}


def test_import_official(tmp_path):
    files, ref = _official_files(tmp_path)
    path = import_official(**files, out=tmp_path / "official", config=ref["config"])
    bundle = load_bundle(path)
    model = bundle.load_model()
    for key, value in ref["unet"].state_dict().items():
        torch.testing.assert_close(model.unet.state_dict()[key], value, atol=0, rtol=0)
    direction = model.directions["AD"]
    assert direction.meaning == "toward AD"
    # the official probe's positive class is CN: "toward AD" is its negated weight
    torch.testing.assert_close(direction.vector, -ref["w"].reshape(-1))
    assert bundle.config["scale_factor"] == pytest.approx(0.8730)
    codes = model.encode(torch.rand(1, 1, *model.input_shape), STEPS)
    assert codes.y.shape == (1, ref["encoder"].config.emb_dim)


def test_import_official_refuses_wrong_architecture(tmp_path):
    files, ref = _official_files(tmp_path)
    config = ref["config"]
    config["unet"]["base_channels"] = 64
    with pytest.raises(BundleError, match="unet"):
        import_official(**files, out=tmp_path / "x", config=config)


def test_import_official_cli(tmp_path):
    from napari_ldae.cli import main

    files, ref = _official_files(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(ref["config"]))
    args = ["import-official", "--unet", str(files["unet"]), "--encoder", str(files["encoder"]),
            "--autoencoder", str(files["autoencoder"]),
            "--semantic-mean", str(files["semantic_mean"]),
            "--semantic-std", str(files["semantic_std"]),
            "--classifier", str(files["classifier"]), "--config", str(tmp_path / "config.json"),
            "-o", str(tmp_path / "cli.ldae")]
    assert main(args) == 0
    assert load_bundle(tmp_path / "cli.ldae").config["directions"]["AD"]["meaning"] == "toward AD"
    assert main(args) == 2  # exists: refuses without --overwrite
    assert main([*args, "--overwrite"]) == 0


def test_import_refuses_non_tensor_pickles(tmp_path):
    files, ref = _official_files(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"state_dict": Evil()}, files["encoder"])
    with pytest.raises(BundleError, match="weights_only"):
        import_official(**files, out=tmp_path / "x", config=ref["config"])


def test_float16_storage_halves_the_file_and_loads_as_float32(tmp_path):
    model, config = random_model("tiny", seed=3)
    full = save_bundle(tmp_path / "f32", config, model_weights(model))
    half = save_bundle(tmp_path / "f16", config, model_weights(model), storage_dtype="float16")
    size = (full / "unet.safetensors").stat().st_size
    assert (half / "unet.safetensors").stat().st_size < 0.55 * size
    loaded = load_bundle(half).load_model()
    assert all(p.dtype == torch.float32 for p in loaded.unet.parameters())
    w = model.unet.input_blocks[0][0].weight
    torch.testing.assert_close(loaded.unet.input_blocks[0][0].weight, w.half().float())
    assert loaded.semantic_std.dtype == torch.float32
    torch.testing.assert_close(loaded.semantic_std, model.semantic_std, atol=0, rtol=0)
