"""The optional decoder stage: whole-volume refinement with the encoder frozen."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from napari_ldae.cli import main
from napari_ldae.core.autoencoder import DECODER_PREFIXES, NORM_KEYS
from napari_ldae.core.bundle import PARTS, load_bundle
from napari_ldae.errors import TrainingError
from napari_ldae.train.data import latent_folder
from napari_ldae.train.decoder import autoencoder_weights
from napari_ldae.train.run import resolve, train

TINY = Path(__file__).resolve().parents[1] / "resources" / "configs" / "tiny.yaml"


def _run(*args: str) -> tuple[int, str]:
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        rc = main(["train", *args])
    return rc, text.getvalue()


@pytest.fixture(scope="module")
def refined(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run's autoencoder, then its decoder stage (tiny.yaml: 2 steps)."""
    out = tmp_path_factory.mktemp("decoder") / "run"
    for stage in ("autoencoder", "decoder"):
        rc, _ = _run(stage, "--config", str(TINY), "--data", str(tiny_cohort), "--out", str(out))
        assert rc == 0
    return out


def _split(state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    decoder = {k: v for k, v in state.items() if k.startswith(DECODER_PREFIXES)}
    return decoder, {k: v for k, v in state.items() if k not in decoder and k not in NORM_KEYS}


def test_the_encoder_stays_bit_identical_and_the_decoder_moves(refined):
    before = load_file(refined / "autoencoder" / "autoencoder.safetensors")
    after = load_file(refined / "decoder" / "autoencoder.safetensors")
    assert set(before) == set(after)
    (dec_before, enc_before), (dec_after, enc_after) = _split(before), _split(after)
    assert enc_before and all(torch.equal(enc_before[k], enc_after[k]) for k in enc_before)
    assert any(not torch.equal(dec_before[k], dec_after[k]) for k in dec_before)
    info = json.loads((refined / "decoder" / "decoder.json").read_text())
    assert info["global_step"] == 2 and info["from"] == "run"
    assert info["from_path"] == "autoencoder/autoencoder.safetensors"
    csv = (refined / "decoder" / "logs" / "csv" / "version_0" / "metrics.csv").read_text()
    assert {"val/ssim", "val/l1", "train/ssim_loss"} <= set(csv.splitlines()[0].split(","))


def test_later_stages_read_the_refined_autoencoder(refined, tmp_path):
    assert autoencoder_weights(refined) == refined / "decoder" / "autoencoder.safetensors"
    assert autoencoder_weights(tmp_path) == tmp_path / "autoencoder" / "autoencoder.safetensors"
    stale = tmp_path / "run"
    shutil.copytree(refined, stale, ignore=shutil.ignore_patterns("cache", "checkpoints"))
    state = load_file(stale / "autoencoder" / "autoencoder.safetensors")
    from safetensors.torch import save_file
    save_file({k: v + 1 for k, v in state.items()},
              str(stale / "autoencoder" / "autoencoder.safetensors"))
    with pytest.raises(TrainingError, match="refines another stage-1 autoencoder"):
        autoencoder_weights(stale)
    # the refined autoencoder makes the same latents: it shares stage 1's latent cache
    stage1 = refined / "autoencoder" / "autoencoder.safetensors"
    assert latent_folder(tmp_path, autoencoder_weights(refined)) == latent_folder(tmp_path, stage1)
    assert latent_folder(tmp_path, stale / "autoencoder" / "autoencoder.safetensors") != \
        latent_folder(tmp_path, stage1)


def test_a_bundle_comes_back_with_only_its_decoder_changed(bundle, tiny_cohort, tmp_path,
                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = Path("source")
    shutil.copytree(bundle, local)
    rc, printed = _run("decoder", "--config", str(TINY), "--data", str(tiny_cohort),
                       "--out", "out", "--bundle", str(local))
    assert rc == 0 and "bundle: " in printed
    source, result = load_bundle(local), load_bundle(Path("out") / "bundle")
    for part in PARTS:
        if part != "autoencoder":
            old, new = source.read(part), result.read(part)
            assert set(old) == set(new) and all(torch.equal(old[k], new[k]) for k in old)
    (dec_before, enc_before) = _split(source.read("autoencoder"))
    (dec_after, enc_after) = _split(result.read("autoencoder"))
    assert all(torch.equal(enc_before[k], enc_after[k]) for k in enc_before)
    assert any(not torch.equal(dec_before[k], dec_after[k]) for k in dec_before)
    prov = result.config["provenance"]["decoder"]
    assert prov["from"] == "bundle" and prov["from_path"] == "source"
    assert prov["from_sha256"] == source.sha256 and prov["config"]["max_steps"] == 2
    assert result.config["metrics"]["autoencoder_val_ssim"] == prov["best_val_ssim"]
    assert str(tmp_path) not in (Path("out") / "bundle" / "config.json").read_text()
    model = result.load_model()
    assert model.decode(model.encode(torch.rand(1, 1, 32, 32, 32), 1), 1).shape == \
        (1, 1, 32, 32, 32)


def test_a_bundle_of_another_architecture_is_refused(bundle, tiny_cohort, tmp_path):
    config = resolve(TINY, tiny_cohort, [f"decoder.bundle={bundle}",
                                         "model.autoencoder.channels=[8, 16, 32]"])
    with pytest.raises(TrainingError, match="its autoencoder differs from the config's"):
        train("decoder", config, tmp_path / "out")


def test_the_stage_is_off_unless_asked(bundle, tiny_cohort, tmp_path):
    for name in ("paper", "demo"):  # the reference recipe, and the CPU demo recipe
        assert resolve(name, tiny_cohort)["decoder"]["max_steps"] == 0
    assert resolve("demo-gpu", tiny_cohort)["decoder"]["max_steps"] == 600
    off = resolve(TINY, tiny_cohort, ["decoder.max_steps=0"], max_steps=3,
                  stages=("autoencoder", "decoder"))
    assert off["decoder"]["max_steps"] == 0 and off["autoencoder"]["max_steps"] == 3
    with pytest.raises(TrainingError, match=r"decoder\.max_steps is 0"):
        train("decoder", off, tmp_path / "out")
    with pytest.raises(TrainingError, match="use it with `train decoder` only"):
        train("all", resolve(TINY, tiny_cohort, [f"decoder.bundle={bundle}"]), tmp_path / "o")
