"""The trainer on CPU with the `tiny` config: all four stages, the bundle, resuming, DDP, EMA.

One `napari-ldae train all` run (module fixture) feeds most tests; the others train only the
cheap latent stage, reusing that run's autoencoder and caches.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file, save_file

from napari_ldae.cli import main
from napari_ldae.core.bundle import load_bundle
from napari_ldae.errors import TrainingError
from napari_ldae.train import latent, representation
from napari_ldae.train.decoder import autoencoder_weights
from napari_ldae.train.run import resolve, train

TINY = Path(__file__).resolve().parents[1] / "resources" / "configs" / "tiny.yaml"
STEPS = 1  # DDIM steps when using the trained bundle
# Resumed and uninterrupted runs execute the same float32 CPU kernels in the same order; they
# agree to round-off (measured: bit-identical).
RESUME_ATOL = 1e-6


@pytest.fixture(scope="module")
def run_all(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory):
    """`napari-ldae train all --config tiny` once: (OUT, wall seconds, printed text)."""
    out = tmp_path_factory.mktemp("train") / "run"
    text = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(text):
        rc = main(["train", "all", "--config", str(TINY), "--data", str(tiny_cohort),
                   "--out", str(out)])
    seconds = time.perf_counter() - start
    print(text.getvalue())
    print(f"train all (tiny): {seconds:.1f} s")
    assert rc == 0
    return out, seconds, text.getvalue()


def _latent_out(run_all, path: Path) -> Path:
    """A fresh OUT holding only the trained autoencoder (the latent stage's input)."""
    src = run_all[0] / "autoencoder" / "autoencoder.safetensors"
    (path / "autoencoder").mkdir(parents=True)
    shutil.copy(src, path / "autoencoder" / src.name)
    return path


def _latent_config(run_all, cohort: Path, *overrides: str, **kw) -> dict:
    cache = f"data.cache_dir={run_all[0] / 'cache'}"
    return resolve(TINY, cohort, [cache, *overrides], stages=("latent",), **kw)


# ----------------------------------------------------------------------------- train all
def test_train_all_writes_a_bundle_that_works(run_all):
    out, _, printed = run_all
    assert "probe AD:" in printed and "probe age:" in printed
    model = load_bundle(out / "bundle").load_model()
    assert model.directions["AD"].meaning == "toward AD"
    assert model.directions["age"].meaning == "older"
    cache = out / "cache" / "volumes"
    volumes = torch.stack([torch.from_numpy(np.load(p)) for p in sorted(cache.glob("*.npy"))[:2]])
    codes = model.encode(volumes[:, None], STEPS)
    recon = model.decode(codes, STEPS)
    assert recon.shape == (2, 1, 32, 32, 32) and torch.isfinite(recon).all()
    edited = model.manipulate(codes[0], "AD", [0.0, 3.0], STEPS)
    assert edited.shape == (2, 1, 32, 32, 32) and not torch.equal(edited[0], edited[1])
    between = model.interpolate(codes[0], codes[1], [0.0, 0.5, 1.0], STEPS)
    assert between.shape == (3, 1, 32, 32, 32) and torch.isfinite(between).all()


def test_bundle_records_how_it_was_trained(run_all, tiny_cohort):
    out = run_all[0]
    config = load_bundle(out / "bundle").config
    scale = json.loads((out / "latent" / "scale_factor.json").read_text())["scale_factor"]
    assert config["scale_factor"] == pytest.approx(scale) and scale != pytest.approx(0.8730)
    assert config["preprocessing"]["shape"] == [32, 32, 32]
    prov = config["provenance"]
    assert prov["trained"] and prov["seed"] == 0 and prov["cohort"] == str(tiny_cohort)
    assert prov["steps"] == {"autoencoder": 4, "decoder": 2, "latent": 4, "representation": 4}
    assert prov["config"]["preset"] == "tiny"
    ad = config["directions"]["AD"]["metrics"]
    assert set(ad) >= {"accuracy", "precision", "recall", "f1", "mcc", "roc_auc"}
    assert set(config["directions"]["age"]["metrics"]) >= {"mae", "rmse"}
    # the strength-in-years calibration comes from the training subjects' visits
    assert config["directions"]["AD"]["calibration"]["group"] == "AD"
    assert config["directions"]["age"]["calibration"]["group"] == "all"
    splits = json.loads((out / "splits.json").read_text())
    assert not set(splits["train"]) & set(splits["test"])


def test_stage_files_and_checkpoints_are_pickle_free(run_all):
    out = run_all[0]
    for f in ("autoencoder/autoencoder.safetensors", "latent/unet_ema.safetensors",
              "representation/encoder_ema.safetensors", "representation/unet_ema.safetensors"):
        assert load_file(out / f)
    for stage in ("autoencoder", "latent", "representation"):
        state = torch.load(out / stage / "checkpoints" / "last.ckpt", weights_only=True)
        assert state["global_step"] == 4
        assert (out / stage / "logs" / "csv" / "version_0" / "metrics.csv").is_file()
        assert any((out / stage / "logs" / "tensorboard").glob("events.*"))
    # global_step counts generator steps: 4 batches for 4 steps, though the discriminator
    # stepped on each of them too
    state = torch.load(out / "autoencoder" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["ready"] == 4
    csv = (out / "autoencoder" / "logs" / "csv" / "version_0" / "metrics.csv").read_text()
    assert "train/d" in csv.splitlines()[0] and "train/g_adv" in csv.splitlines()[0]
    csv = (out / "representation" / "logs" / "csv" / "version_0" / "metrics.csv").read_text()
    logged = set(csv.splitlines()[0].split(","))
    assert {"val/ssim", "val/y_spread", "val/y_use", "val/round_trip"} <= logged
    csv = (out / "latent" / "logs" / "csv" / "version_0" / "metrics.csv").read_text()
    assert {f"val/x0_vs_mean_t{t}" for t in latent.HIGH_NOISE_STEPS} <= set(
        csv.splitlines()[0].split(","))
    # stage 3 checkpoints leave out the frozen autoencoder and UNet half
    state = torch.load(out / "representation" / "checkpoints" / "best.ckpt", weights_only=True)
    assert not any(k.startswith(representation.FROZEN_PREFIXES) for k in state["state_dict"])


def test_scale_factor_is_one_over_std_of_the_training_latents(run_all, tiny_cohort):
    from napari_ldae.data.preprocess import PreprocessContract
    from napari_ldae.train.data import latent_folder, load_splits, volume_keys

    out = run_all[0]
    config = resolve(TINY, tiny_cohort)
    train_split = load_splits(config)["train"]
    keys = volume_keys(train_split.records, PreprocessContract(spacing=6.0, shape=(32, 32, 32)),
                       out / "cache")
    folder = latent_folder(out / "cache", autoencoder_weights(out))
    z = np.stack([np.load(folder / f"{k}.npy") for k in keys]).astype(np.float64)
    assert latent.read_scale_factor(out) == pytest.approx(1.0 / z.std(), rel=1e-6)


# ----------------------------------------------------------------------------- stage 3 guard
def test_representation_refuses_to_start_without_stage2(tiny_cohort, tmp_path, capsys):
    rc = main(["train", "representation", "--config", str(TINY), "--data", str(tiny_cohort),
               "--out", str(tmp_path / "out")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "needs the stage-2 EMA UNet" in err and "unet_ema.safetensors" in err


def test_representation_refuses_a_wrong_stage2_unet(run_all, tiny_cohort, tmp_path):
    out = _latent_out(run_all, tmp_path)
    (out / "latent").mkdir()
    save_file({"time_embed.0.weight": torch.zeros(4, 4)}, out / "latent" / "unet_ema.safetensors")
    shutil.copy(run_all[0] / "latent" / "scale_factor.json", out / "latent")
    config = resolve(TINY, tiny_cohort, [f"data.cache_dir={run_all[0] / 'cache'}"])
    with pytest.raises(TrainingError, match="stage-2 UNet does not fit"):
        representation.run(config, out)


# ----------------------------------------------------------------------------- resume
class _SigtermAt(Callback):
    """Send SIGTERM to this process once training reaches ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *_) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    state = torch.load(out / "latent" / "checkpoints" / "last.ckpt", weights_only=True)
    return {**state["state_dict"], **{f"ema_file.{k}": v for k, v in
                                      load_file(out / "latent" / "unet_ema.safetensors").items()}}


def test_resume_continues_at_the_same_step_with_the_same_weights(run_all, tiny_cohort,
                                                                  tmp_path):
    """SIGTERM after step 1, resume to k (max_steps), resume to 2k: as one 2k run."""
    k = 2
    full = _latent_out(run_all, tmp_path / "full")
    train("latent", _latent_config(run_all, tiny_cohort, max_steps=2 * k), full)
    out = _latent_out(run_all, tmp_path / "interrupted")
    with pytest.raises(SystemExit):
        train("latent", _latent_config(run_all, tiny_cohort, max_steps=2 * k), out,
              callbacks=[_SigtermAt(1)])
    last = out / "latent" / "checkpoints" / "last.ckpt"
    at_step_1 = torch.load(last, weights_only=True)
    assert at_step_1["global_step"] == 1
    train("latent", _latent_config(run_all, tiny_cohort, max_steps=k), out, resume=True)
    assert json.loads((out / "latent" / "latent.json").read_text())["global_step"] == k
    train("latent", _latent_config(run_all, tiny_cohort, max_steps=2 * k), out, resume=True)
    info = json.loads((out / "latent" / "latent.json").read_text())
    assert info["global_step"] == 2 * k and info["ema_updates"] == 2 * k
    reference = _weights(full)
    for key, value in _weights(out).items():
        torch.testing.assert_close(value, reference[key], atol=RESUME_ATOL, rtol=0, msg=key)
    moved = [k for k, v in at_step_1["state_dict"].items() if not torch.equal(v, reference[k])]
    assert len(moved) > len(reference) // 4  # training did change the weights after step 1
    logs = sorted((out / "latent" / "logs" / "csv").glob("version_*/metrics.csv"))
    assert len(logs) == 3  # one CSV per invocation, none erased


def test_a_stage_with_a_run_needs_resume(run_all, tiny_cohort):
    with pytest.raises(TrainingError, match="--resume"):
        train("latent", resolve(TINY, tiny_cohort), run_all[0])


# ----------------------------------------------------------------------------- EMA
class _CountBatches(Callback):
    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_end(self, *_) -> None:
        self.batches += 1


def test_ema_updates_once_per_optimizer_step_under_accumulation(run_all, tiny_cohort,
                                                                tmp_path):
    out = _latent_out(run_all, tmp_path)
    counter = _CountBatches()
    config = _latent_config(run_all, tiny_cohort, "latent.accumulate_grad_batches=2",
                            max_steps=2)
    train("latent", config, out, callbacks=[counter])
    info = json.loads((out / "latent" / "latent.json").read_text())
    assert counter.batches == 4
    assert info["global_step"] == 2 and info["ema_updates"] == 2


# ----------------------------------------------------------------------------- DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_processes(run_all, tiny_cohort, tmp_path):
    """Lightning re-executes the CLI for rank 1; gloo on CPU; one set of files."""
    out = _latent_out(run_all, tmp_path / "ddp")
    cmd = [sys.executable, "-m", "napari_ldae.cli", "train", "latent", "--config", str(TINY),
           "--data", str(tiny_cohort), "--out", str(out), "--devices", "2",
           "--accelerator", "cpu", "--max-steps", "2", f"data.cache_dir={run_all[0] / 'cache'}"]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "distributed_backend=gloo" in proc.stdout + proc.stderr
    ckpts = sorted(p.name for p in (out / "latent" / "checkpoints").iterdir())
    assert ckpts == ["last.ckpt"]
    assert torch.load(out / "latent" / "checkpoints" / "last.ckpt",
                      weights_only=True)["global_step"] == 2
    info = json.loads((out / "latent" / "latent.json").read_text())
    assert info["global_step"] == 2 and info["ema_updates"] == 2
    assert load_file(out / "latent" / "unet_ema.safetensors")


# ----------------------------------------------------------------------------- pieces
class _FunctionNet(torch.nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.fn(z_t, t)


def test_x0_vs_mean_is_zero_for_a_perfect_unet_and_one_for_the_mean(tiny_cohort):
    module = latent.LatentModule(resolve(TINY, tiny_cohort))
    z0 = torch.randn(3, 3, 4, 4, 4)
    module.mean_latent = torch.randn(3, 4, 4, 4)
    gen, t = torch.Generator().manual_seed(0), 850
    ac = float(module.schedule.alphas_cumprod[t])
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(0))
    module.unet = _FunctionNet(lambda z_t, tt: noise)  # knows the noise: x̂0 = z0
    torch.testing.assert_close(module.x0_vs_mean(z0, t, gen), torch.zeros(3), atol=1e-3, rtol=0)
    # predicts the mean latent whatever the input
    module.unet = _FunctionNet(lambda z_t, tt: (z_t - ac**0.5 * module.mean_latent)
                               / (1 - ac) ** 0.5)
    torch.testing.assert_close(module.x0_vs_mean(z0, t, gen), torch.ones(3))


def test_code_use_measures_whether_the_shift_depends_on_y(run_all, tiny_cohort):
    from napari_ldae.train.common import load_safetensors

    out = run_all[0]
    module = representation.RepresentationModule(
        resolve(TINY, tiny_cohort), load_safetensors(out / "latent" / "unet_ema.safetensors", ""),
        load_safetensors(out / "autoencoder" / "autoencoder.safetensors", ""), 1.0)
    z0 = module.autoencoder.encode(torch.rand(2, 1, 32, 32, 32))
    y = torch.randn(2, module.encoder.config.emb_dim)
    def use(codes: torch.Tensor, other: torch.Tensor) -> float:
        return float(module.code_use(z0, codes, other, torch.Generator().manual_seed(0)))

    assert use(y, y.roll(1, 0)) == 0.0  # G ≡ 0 at initialisation
    with torch.no_grad():  # un-zero the branch's zero-initialised output convolutions
        for param in module.unet.branch_parameters():
            if not param.any():
                torch.nn.init.normal_(param, std=0.05)
    assert use(y, y) == 0.0
    assert abs(use(y, y.roll(1, 0))) > 1e-4


def test_embed_reads_axial_slices_in_batches():
    from napari_ldae.core.presets import random_model

    model = random_model("tiny", seed=0)[0]
    model.max_batch = 2
    x = torch.rand(3, 1, *model.input_shape)
    with torch.no_grad():
        expected = model.encoder(x.permute(0, 1, 4, 2, 3))  # (B, 1, Z, X, Y): Z slices
    torch.testing.assert_close(model.embed(x), expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_train_all_on_gpu_in_mixed_precision(tiny_cohort, tmp_path):
    config = resolve(TINY, tiny_cohort, ["trainer.precision=bf16-mixed"], accelerator="gpu")
    bundle = train("all", config, tmp_path / "gpu")
    assert load_bundle(bundle).load_model(device="cuda").directions
