"""The trainer's configuration and pieces that need no training run: config files and
overrides, learning-rate warm-down, EMA, crops, the perceptual loss, the variance hinge."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from napari_ldae.errors import TrainingError
from napari_ldae.train import representation
from napari_ldae.train.run import resolve

TINY = Path(__file__).resolve().parents[1] / "resources" / "configs" / "tiny.yaml"


def test_ema_update_and_swap():
    from napari_ldae.train.common import EMA

    layer = torch.nn.Linear(2, 1)
    ema = EMA(layer.named_parameters(), decay=0.75)
    start = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight.add_(1.0)
    ema.update()
    expected = 0.75 * start + 0.25 * (start + 1.0)
    with ema.swapped():
        torch.testing.assert_close(layer.weight.detach(), expected)
    torch.testing.assert_close(layer.weight.detach(), start + 1.0)
    assert int(ema.num_updates) == 1


def test_ema_warmup_follows_a_short_run():
    from napari_ldae.train.common import EMA

    layer = torch.nn.Linear(2, 1)
    start = layer.weight.detach().clone()
    plain = EMA(layer.named_parameters(), decay=0.999)
    warm = EMA(layer.named_parameters(), decay=0.999, warmup=True)
    with torch.no_grad():
        layer.weight.add_(1.0)
    for ema in (plain, warm):
        ema.update(), ema.update()
    # plain: 0.999² of the start is left; warm-up: decays 1/10, then 2/11
    torch.testing.assert_close(plain.averages()[0], start + 1 - 0.999 ** 2)
    torch.testing.assert_close(warm.averages()[0], start + 1 - 0.1 * 2 / 11)


def test_perceptual_loss_needs_local_weights(tmp_path):
    from napari_ldae.train.autoencoder import perceptual_loss

    assert perceptual_loss(None) is None
    with pytest.raises(TrainingError, match="no file"):
        perceptual_loss(str(tmp_path / "missing.safetensors"))
    weights = tmp_path / "lpips.safetensors"
    save_file({"x": torch.zeros(1)}, weights)
    with pytest.raises(TrainingError, match="perceptual"):
        perceptual_loss(str(weights))  # no lpips here, or weights that do not fit


def test_config_rejects_unknown_keys_and_applies_overrides(tiny_cohort):
    with pytest.raises(TrainingError, match="did you mean 'max_steps'"):
        resolve(TINY, tiny_cohort, ["latent.max_step=3"])
    config = resolve(TINY, tiny_cohort, ["latent.lr=0.5", "model.unet.dropout=0.2",
                                         "representation.lr=2e-3"],
                     devices=3, max_steps=7, stages=("latent",))
    assert config["latent"]["lr"] == 0.5 and config["latent"]["max_steps"] == 7
    assert config["representation"]["lr"] == 0.002  # a float, not PyYAML 1.1's string "2e-3"
    assert config["autoencoder"]["max_steps"] == 4 and config["trainer"]["devices"] == 3
    from napari_ldae.train.config import model_config, stage_precision

    assert model_config(config)["unet"]["dropout"] == 0.2
    config["trainer"]["precision"] = "bf16-mixed"
    assert stage_precision(config, "latent", "cpu") == "32"
    with pytest.raises(TrainingError, match="divisible"):
        resolve(TINY, tiny_cohort, ["data.preprocessing={shape: [30, 32, 32]}"])


def test_learning_rate_warm_down_is_a_function_of_the_step(tiny_cohort):
    from napari_ldae.train.common import WarmDown, warmdown_factor

    assert [warmdown_factor(s, 10, 4) for s in (0, 6, 7, 9, 10)] == [1.0, 1.0, 0.75, 0.25, 0.0]
    assert warmdown_factor(9, 10, 0) == 1.0
    gen = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    disc = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    # stage 3: the encoder's group at lr · encoder_lr_scale, the branch's at lr
    rep = torch.optim.Adam([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 5.0},
                            {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1.0}])
    trainer = type("T", (), {"optimizers": [gen, disc, rep], "global_step": 8})()
    warmdown = WarmDown(10, 4)
    warmdown.on_fit_start(trainer)
    for group in rep.param_groups:  # a restored checkpoint's rates, mid warm-down
        group["lr"] = 0.1
    for step in (8, 9):  # each step from the configured rates, not from the last step's
        trainer.global_step = step
        warmdown.on_train_batch_start(trainer)
    assert gen.param_groups[0]["lr"] == 0.25 and disc.param_groups[0]["lr"] == 0.5
    assert [g["lr"] for g in rep.param_groups] == [1.25, 0.25]
    with pytest.raises(TrainingError, match="lr_warmdown_steps"):
        resolve(TINY, tiny_cohort, ["latent.lr_warmdown_steps=-1"])


def test_a_config_extends_another(tiny_cohort, tmp_path):
    demo, gpu = resolve("demo", tiny_cohort), resolve("demo-gpu", tiny_cohort)
    assert gpu["model"] == demo["model"] and gpu["probe"] == demo["probe"]
    assert (gpu["representation"]["batch_size"], demo["representation"]["batch_size"]) == (32, 4)
    assert gpu["latent"]["ema_warmup"] and not demo["latent"]["ema_warmup"]
    (tmp_path / "base.yaml").write_text("extends: mine.yaml\nlatent: {lr: 3.0e-4}\n")
    (tmp_path / "mine.yaml").write_text("extends: base.yaml\n")
    with pytest.raises(TrainingError, match="circle"):
        resolve(tmp_path / "mine.yaml", tiny_cohort)
    (tmp_path / "base.yaml").write_text("extends: tiny\nlatent: {lr: 3.0e-4}\n")
    (tmp_path / "mine.yaml").write_text("extends: base.yaml\nlatent: {max_steps: 7}\n")
    mine = resolve(tmp_path / "mine.yaml", tiny_cohort)
    assert (mine["latent"]["lr"], mine["latent"]["max_steps"]) == (3.0e-4, 7)
    assert mine["preset"] == resolve(TINY, tiny_cohort)["preset"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_a_gpu_config_without_cuda_says_how_to_train_on_the_cpu(tiny_cohort):
    from napari_ldae.train.config import resolve_accelerator

    config = resolve("demo-gpu", tiny_cohort)
    with pytest.raises(TrainingError, match="--accelerator cpu"):
        resolve_accelerator(config["trainer"]["accelerator"])
    assert resolve("demo-gpu", tiny_cohort, accelerator="cpu")["trainer"]["accelerator"] == "cpu"


def test_matmul_precision_is_checked(tiny_cohort):
    assert resolve(TINY, tiny_cohort, ["trainer.matmul_precision=high"])["trainer"][
        "matmul_precision"] == "high"
    with pytest.raises(TrainingError, match="matmul_precision"):
        resolve(TINY, tiny_cohort, ["trainer.matmul_precision=tf32"])


def test_autoencoder_crops_are_windows_of_each_volume(tiny_cohort):
    from napari_ldae.train.autoencoder import random_crop

    x = torch.arange(2 * 8 * 12 * 8, dtype=torch.float32).reshape(2, 1, 8, 12, 8)
    assert random_crop(x, None) is x
    torch.manual_seed(0)
    crops = random_crop(x, [4, 8, 4])
    assert crops.shape == (2, 1, 4, 8, 4)
    for volume, crop in zip(x, crops, strict=True):
        # a window keeps unit strides: its first voxel locates it in the volume
        i, j, k = (int(v) for v in torch.nonzero(volume[0] == crop[0, 0, 0, 0])[0])
        torch.testing.assert_close(crop, volume[:, i:i + 4, j:j + 8, k:k + 4])
    with pytest.raises(TrainingError, match="does not fit"):
        random_crop(x, [16, 8, 4])
    assert resolve(TINY, tiny_cohort, ["autoencoder.crop_size=[16, 16, 16]"])[
        "autoencoder"]["crop_size"] == [16, 16, 16]
    for bad in ("[15, 16, 16]", "[16, 16]", "[64, 16, 16]"):
        with pytest.raises(TrainingError, match="crop_size"):
            resolve(TINY, tiny_cohort, [f"autoencoder.crop_size={bad}"])


def test_code_variance_penalty_is_the_hinge_on_the_batch_spread_of_y(tiny_cohort):
    penalty = representation.RepresentationModule.code_variance_penalty
    assert float(penalty(torch.ones(2, 8))) == pytest.approx(1.0)  # every brain the same code
    assert float(penalty(torch.tensor([[3.0] * 8, [-3.0] * 8]))) == 0.0  # std ≥ 1: no penalty
    close = torch.tensor([[1.1] * 8, [0.9] * 8], requires_grad=True)
    value = penalty(close)
    value.backward()
    assert float(value.detach()) == pytest.approx(1.0 - 0.2 / 2**0.5)
    assert close.grad[0, 0] < 0 < close.grad[1, 0]  # gradient descent pushes the codes apart
    on = ["representation.code_variance_weight=1", "model.encoder.dropout=0.0"]
    assert resolve(TINY, tiny_cohort, [*on, "representation.batch_size=2"])
    with pytest.raises(TrainingError, match="batch_size ≥ 2"):
        resolve(TINY, tiny_cohort, [*on, "representation.batch_size=1"])
    with pytest.raises(TrainingError, match="dropout noise would pass for spread"):
        resolve(TINY, tiny_cohort, ["representation.code_variance_weight=1",
                                    "model.encoder.dropout=0.1", "representation.batch_size=2"])
