"""Recipe switches for edits that mean something: the cosine schedule, v-prediction, the
x0-scaled shift and stage 3's x̂₀ loss term, the encoder on the latent, the template-residual
latent, stage 2's readiness gate, stage 3's code-use warning and the oracle.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from napari_ldae.cli import main
from napari_ldae.core.autoencoder import NORM_KEYS, LatentAutoencoder, residual_stats
from napari_ldae.core.bundle import load_bundle, model_weights, save_bundle
from napari_ldae.core.diffusion import Schedule, ddim_sample, q_sample
from napari_ldae.core.encoder import EncoderConfig, LatentEncoder, build_encoder
from napari_ldae.core.presets import random_model
from napari_ldae.errors import BundleError, TrainingError
from napari_ldae.train import calibration
from napari_ldae.train.data import load_splits
from napari_ldae.train.representation import (
    ROUND_TRIP_BROKEN,
    Y_USE_ROUND_OFF,
    code_use_summary,
)
from napari_ldae.train.run import resolve, train

TINY = Path(__file__).resolve().parents[1] / "resources" / "configs" / "tiny.yaml"
AE = {"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "channels": [8, 8],
      "latent_channels": 3, "num_res_blocks": 1, "norm_num_groups": 8,
      "attention_levels": [False, False], "with_encoder_nonlocal_attn": False,
      "with_decoder_nonlocal_attn": False}


# ------------------------------------------------------------------------------ schedules
def test_cosine_schedule_is_improved_ddpms():
    s = Schedule(type="cosine")
    f = np.cos((np.array([0, 500, 1000]) / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2
    assert s.alphas_cumprod[499] == pytest.approx(f[1] / f[0], rel=1e-9)
    assert np.all(np.diff(s.alphas_cumprod) < 0) and s.betas.max() <= 0.999
    # far less signal destroyed at mid noise than the linear schedule
    assert s.alphas_cumprod[500] > 3 * Schedule().alphas_cumprod[500]
    assert Schedule.from_dict(s.to_dict()) == s
    assert Schedule.from_dict(Schedule().to_dict()) == Schedule()


def test_unknown_schedule_or_prediction_is_refused():
    with pytest.raises(ValueError, match="noise schedule"):
        Schedule.from_dict({"type": "sigmoid"})
    with pytest.raises(ValueError, match="prediction"):
        Schedule.from_dict({"type": "cosine", "prediction": "x0"})
    with pytest.raises(ValueError, match="shift"):
        Schedule.from_dict({"shift": "v"})


def test_x0_shift_is_scaled_by_sqrt_alpha_bar():
    s = Schedule(prediction="v", shift="x0")
    assert s.to_dict()["shift"] == "x0" and "shift" not in Schedule().to_dict()
    assert Schedule.from_dict(s.to_dict()) == s
    t, g = torch.tensor([0, 500, 999]), torch.ones(3, 2)
    expected = torch.as_tensor(np.sqrt(s.alphas_cumprod[[0, 500, 999]]), dtype=torch.float32)
    torch.testing.assert_close(s.scale_shift(g, t), expected[:, None].expand(3, 2))
    assert Schedule().scale_shift(g, t) is g
    # the x̂₀ change of a shifted DDIM step is (1 − ᾱ)·G: bounded where √ᾱ → 0
    assert (1 - s.alphas_cumprod[999]) / np.sqrt(s.alphas_cumprod[999]) > 100


def test_an_x0_shift_net_samples_as_its_prescaled_eps_twin():
    s, ref = Schedule(shift="x0"), Schedule()
    ac = torch.as_tensor(s.alphas_cumprod, dtype=torch.float32)

    def net(x, t, y):
        return 0.3 * x, 0.2 * x + y.reshape(-1, 1, 1, 1, 1)

    def twin(x, t, y):
        eps, shift = net(x, t, y)
        return eps, ac[t].sqrt().reshape(-1, 1, 1, 1, 1) * shift

    x_T, y = torch.randn(2, 3, 4, 4, 4), torch.tensor([0.5, -0.5])
    out = ddim_sample(net, x_T, y, 5, s, clamp=False)
    torch.testing.assert_close(out, ddim_sample(twin, x_T, y, 5, ref, clamp=False))
    assert not torch.allclose(out, ddim_sample(net, x_T, y, 5, ref, clamp=False))


def test_v_target_turns_back_into_the_noise():
    s = Schedule(type="cosine", prediction="v")
    gen = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(3, 2, 4, 4, 4, generator=gen), torch.randn(3, 2, 4, 4, 4, generator=gen)
    t = torch.tensor([0, 500, 999])
    v = s.target(z0, noise, t)
    torch.testing.assert_close(s.to_eps(v, q_sample(z0, t, noise, s), t), noise,
                               atol=1e-5, rtol=1e-5)
    eps = Schedule()
    assert eps.target(z0, noise, t) is noise and eps.to_eps(v, z0, t) is v


def test_a_v_network_samples_as_its_eps_twin():
    """DDIM with a v-predicting net equals DDIM with the ε-net it encodes (the shift included)."""
    eps_s, v_s = Schedule(type="cosine"), Schedule(type="cosine", prediction="v")
    ac = torch.as_tensor(eps_s.alphas_cumprod, dtype=torch.float32)

    def eps_net(x, t, y):
        return 0.3 * x + y.reshape(-1, 1, 1, 1, 1), 0.1 * x

    def v_net(x, t, y):
        eps, shift = eps_net(x, t, y)
        a = ac[t].reshape(-1, 1, 1, 1, 1)
        return (eps - (1 - a).sqrt() * x) / a.sqrt(), shift

    x_T, y = torch.randn(2, 3, 4, 4, 4), torch.tensor([0.5, -0.5])
    torch.testing.assert_close(ddim_sample(v_net, x_T, y, 5, v_s, clamp=False),
                               ddim_sample(eps_net, x_T, y, 5, eps_s, clamp=False),
                               atol=1e-4, rtol=1e-4)


def test_the_latent_encoder_reads_the_normalised_latent():
    config = EncoderConfig(input="latent", emb_dim=8, num_heads=2, num_slices=4)
    model = {"encoder": config.to_dict(), "autoencoder": AE, "preprocessing": {"shape": [4, 6, 4]}}
    encoder = build_encoder(model)  # AE halves once: latent (3, 2, 3, 2)
    assert isinstance(encoder, LatentEncoder) and encoder.needs_latent
    z = torch.randn(4, 3, 2, 3, 2)
    y = encoder.code(None, z)
    assert y.shape == (4, 8)
    torch.testing.assert_close(y, z.flatten(1) @ encoder.projection.weight.T
                               + encoder.projection.bias)
    slices = EncoderConfig(emb_dim=8, num_heads=2)
    assert not build_encoder({**model, "encoder": slices.to_dict()}).needs_latent
    assert EncoderConfig.from_dict(config.to_dict()) == config
    with pytest.raises(BundleError, match="input must be one of"):
        EncoderConfig(input="image")


# -------------------------------------------------------------------- template residual
def test_residual_stats_are_the_mean_latent_and_per_channel_residual_std():
    gen = torch.Generator().manual_seed(1)
    template = torch.randn(3, 4, 5, 4, generator=gen) * 5
    spread = torch.tensor([0.1, 1.0, 3.0]).reshape(1, 3, 1, 1, 1)
    z = template + spread * torch.randn(400, 3, 4, 5, 4, generator=gen)
    mean, std = residual_stats(z)
    torch.testing.assert_close(mean, z.mean(0))
    assert std.tolist() == pytest.approx([0.1, 1.0, 3.0], rel=0.03)
    with pytest.raises(BundleError, match="zero spread"):
        residual_stats(template.expand(4, -1, -1, -1, -1))


def test_residual_latent_is_normalised_both_ways():
    mean, std = torch.randn(3, 2, 2, 2), torch.tensor([0.5, 1.0, 2.0])
    ae = LatentAutoencoder(AE, 1.0, mean, std)
    z = torch.randn(2, 3, 2, 2, 2)
    torch.testing.assert_close(ae.normalise(mean.expand(2, -1, -1, -1, -1)), torch.zeros_like(z))
    torch.testing.assert_close(ae.denormalise(ae.normalise(z)), z)
    x = torch.rand(1, 1, 4, 4, 4)
    expected = (ae.net.quant_conv_mu(ae.net.encoder(x)) - mean) / std.reshape(-1, 1, 1, 1)
    torch.testing.assert_close(ae.encode(x), expected)
    with pytest.raises(BundleError, match="latent channels"):
        LatentAutoencoder(AE, 1.0, torch.zeros(2, 2, 2, 2), torch.ones(2))
    with pytest.raises(BundleError, match="both"):
        LatentAutoencoder(AE, 1.0, mean, None)


def _residual_bundle(tmp_path: Path) -> tuple[Path, object]:
    model, config = random_model("tiny")
    shape = model.latent_shape
    model.autoencoder = LatentAutoencoder(config["autoencoder"], 1.0, torch.randn(shape),
                                          torch.rand(shape[0]) + 0.5)
    model.autoencoder.net.load_state_dict(model.autoencoder.net.state_dict())
    config |= {"latent_norm": "template_residual",
               "schedule": {"type": "cosine", "num_steps": 1000, "prediction": "v"}}
    return save_bundle(tmp_path / "b", config, model_weights(model)), model


def test_a_residual_v_bundle_round_trips(tmp_path):
    path, model = _residual_bundle(tmp_path)
    bundle = load_bundle(path)
    assert bundle.config["latent_norm"] == "template_residual"
    assert bundle.read("autoencoder")[NORM_KEYS[0]].dtype == torch.float32
    loaded = bundle.load_model()
    assert loaded.schedule == Schedule(type="cosine", prediction="v")
    torch.testing.assert_close(loaded.autoencoder.latent_mean, model.autoencoder.latent_mean)
    x = torch.rand(1, 1, *loaded.input_shape)
    assert torch.isfinite(loaded.reconstruct(x, steps=2)).all()


def test_bundle_norm_and_statistics_must_agree(tmp_path):
    path, _ = _residual_bundle(tmp_path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(config | {"latent_norm": "scale"}))
    with pytest.raises(BundleError, match="latent_norm is 'scale'"):
        load_bundle(path).load_model()
    model, cfg = random_model("tiny")
    plain = save_bundle(tmp_path / "plain", cfg | {"latent_norm": "template_residual"},
                        model_weights(model))
    with pytest.raises(BundleError, match="lacks"):
        load_bundle(plain).load_model()
    with pytest.raises(BundleError, match="latent_norm must be"):
        save_bundle(tmp_path / "x", cfg | {"latent_norm": "pca"}, model_weights(model))


# ------------------------------------------------------------------------- the trainer
RECIPE = ["model.latent_norm=template_residual",
          "model.schedule={type: cosine, num_steps: 1000, prediction: v, shift: x0}"]


def _stage3_out(residual_run: Path, out: Path) -> list[str]:
    """A copy of the run's stages 1-2 in ``out``; returns the overrides that continue it."""
    shutil.copytree(residual_run, out, ignore=shutil.ignore_patterns("representation",
                                                                      "probe", "bundle"))
    return [f"data.cache_dir={residual_run / 'cache'}", *RECIPE]


@pytest.fixture(scope="module")
def residual_run(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`train all --config tiny` with the template-residual latent, cosine schedule, v."""
    out = tmp_path_factory.mktemp("recipe") / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        rc = main(["train", "all", "--config", str(TINY), "--data", str(tiny_cohort),
                   "--out", str(out), *RECIPE, "representation.encoder_lr_scale=3.0",
                   "representation.x0_weight=0.1", "model.encoder.input=latent",
                   "representation.weights=last"])
    assert rc == 0
    return out


def test_trainer_fits_and_ships_the_template_residual(residual_run):
    bundle = load_bundle(residual_run / "bundle")
    assert bundle.config["latent_norm"] == "template_residual"
    assert bundle.config["schedule"]["prediction"] == "v"
    assert bundle.config["schedule"]["shift"] == "x0"
    assert bundle.config["encoder"]["input"] == "latent"
    hp = bundle.config["provenance"]["config"]["representation"]
    assert hp["encoder_lr_scale"] == 3.0 and hp["x0_weight"] == 0.1
    stats = bundle.read("autoencoder")
    fitted = load_file(residual_run / "latent" / "latent_norm.safetensors")
    assert fitted[NORM_KEYS[0]].dim() == 4 and fitted[NORM_KEYS[1]].shape == (3,)
    assert (fitted[NORM_KEYS[1]] > 0).all()
    torch.testing.assert_close(stats[NORM_KEYS[0]], fitted[NORM_KEYS[0]])
    model = bundle.load_model()
    assert model.autoencoder.residual and isinstance(model.encoder, LatentEncoder)
    x = torch.rand(2, 1, *model.input_shape)
    torch.testing.assert_close(model.embed(x), model.encoder(model.autoencoder.encode(x)))
    assert torch.isfinite(model.reconstruct(torch.rand(1, 1, *model.input_shape), 1)).all()
    latent = json.loads((residual_run / "latent" / "latent.json").read_text())
    assert set(latent["x0_vs_mean"]) == {"700", "850", "950"}
    assert bundle.config["metrics"]["stage2_x0_vs_mean"] == latent["x0_vs_mean"]
    assert "y_use" in bundle.config["metrics"]["code_use"]
    rep = json.loads((residual_run / "representation" / "representation.json").read_text())
    assert rep["weights"] == "last" and rep["weights_step"] == rep["global_step"]


def test_stage3_refuses_an_unready_stage2_unless_told(residual_run, tiny_cohort, tmp_path):
    out = tmp_path / "run"
    overrides = [*_stage3_out(residual_run, out), "representation.max_x0_vs_mean=1.0e-9"]
    config = resolve(TINY, tiny_cohort, overrides, stages=("representation",))
    with pytest.raises(TrainingError, match=r"not ready.*max_x0_vs_mean=null"):
        train("representation", config, out)
    assert not (out / "representation").exists()


def test_longitudinal_directions_are_the_groups_change_per_year(residual_run, tiny_cohort,
                                                                tmp_path, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(residual_run, out, ignore=shutil.ignore_patterns("probe", "bundle"))
    overrides = [f"data.cache_dir={residual_run / 'cache'}", *RECIPE,
                 "model.encoder.input=latent", "probe.direction=longitudinal"]
    config = resolve(TINY, tiny_cohort, overrides, stages=("probe",))
    with pytest.raises(TrainingError, match=r"longitudinal, direction AD: .* needs 3"):
        train("probe", config, out)  # the tiny cohort's training split has too few visits
    monkeypatch.setattr(calibration, "MIN_SUBJECTS", 1)
    with contextlib.redirect_stdout(io.StringIO()):
        train("probe", config, out)
    bundle = load_bundle(out / "bundle")
    y = load_file(out / "probe" / "embeddings.safetensors")["train.y"]
    z = (y - y.mean(0)) / y.std(0).clamp_min(1e-6)
    records = list(load_splits(config)["train"].records)
    semantic = bundle.read("semantic")
    for name, group in (("AD", "AD"), ("age", "CN")):
        expected = F.normalize(calibration.mean_change_per_year(z, records, group), dim=0)
        torch.testing.assert_close(semantic[f"direction.{name}"], expected, atol=1e-3, rtol=0)
        info = bundle.config["directions"][name]
        assert "longitudinal" in info["source"] and info["calibration"]["group"] == group
    with pytest.raises(TrainingError, match=r"probe\.direction must be one of"):
        resolve(TINY, tiny_cohort, ["probe.direction=pca"])


def test_unknown_weights_choice_is_refused(tiny_cohort):
    with pytest.raises(TrainingError, match="'best' or 'last'"):
        resolve(TINY, tiny_cohort, ["representation.weights=median"])
    with pytest.raises(TrainingError, match="x0_weight must be ≥ 0"):
        resolve(TINY, tiny_cohort, ["representation.x0_weight=-1"])


def test_code_use_at_round_off_is_a_warning(capsys):
    quiet = code_use_summary({"val/y_use": torch.tensor(Y_USE_ROUND_OFF / 10),
                            "val/y_spread": torch.tensor(0.001)})
    assert "ignores the semantic code" in quiet["code_use"]["warning"]
    assert "another seed" in quiet["code_use"]["collapse_warning"]  # y_spread 0.001
    assert "WARNING" in capsys.readouterr().out
    used = code_use_summary({"val/y_use": torch.tensor(0.05), "val/y_spread": torch.tensor(0.3)})
    assert used == {"code_use": {"y_use": pytest.approx(0.05), "y_spread": pytest.approx(0.3)}}


def test_a_round_trip_that_does_not_close_is_a_warning(capsys):
    broken = code_use_summary({"val/y_use": torch.tensor(0.05),
                             "val/round_trip": torch.tensor(ROUND_TRIP_BROKEN * 10)})
    assert "does not return it" in broken["code_use"]["round_trip_warning"]
    assert "val/round_trip is 1" in capsys.readouterr().out
    closed = code_use_summary({"val/round_trip": torch.tensor(ROUND_TRIP_BROKEN / 10)})
    assert closed == {"code_use": {"round_trip": pytest.approx(ROUND_TRIP_BROKEN / 10)}}


def test_oracle_run_trains_on_ground_truth_and_makes_no_bundle(residual_run, tiny_cohort,
                                                               tmp_path):
    out = tmp_path / "oracle"
    overrides = [*_stage3_out(residual_run, out),
                 "representation.oracle=[atrophy, ventricle_ml, age]"]
    config = resolve(TINY, tiny_cohort, overrides, stages=("representation", "probe"))
    with contextlib.redirect_stdout(io.StringIO()):
        train("representation", config, out)
    info = json.loads((out / "representation" / "representation.json").read_text())
    assert info["oracle"] == ["atrophy", "ventricle_ml", "age"] and "y_use" in info["code_use"]
    with pytest.raises(TrainingError, match="oracle"):
        train("probe", config, out)
    shutil.rmtree(out / "representation")
    bad = resolve(TINY, tiny_cohort, [*overrides[:-1], "representation.oracle=[shoe_size]"],
                  stages=("representation",))
    with pytest.raises(TrainingError, match="shoe_size"):
        train("representation", bad, out)
