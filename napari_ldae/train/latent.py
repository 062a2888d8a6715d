"""Stage 2: the latent DDPM (``LatentUNet``, ε- or v-prediction per the schedule).

The cohort is encoded once by the stage-1 autoencoder (latent means cached under
``OUT/cache/latents``) and normalised per the model's ``latent_norm``: the scale factor
s = 1/std of the *training* latents (the reference hard-codes 0.8730), or the template residual
(per-element mean latent, per-channel std of the residual, ``latent_norm.safetensors``).
Loss: unweighted MSE of the prediction target at t ~ U{0..T−1}. An EMA of the UNet is updated
once per optimizer step; its final value is the stage's output
``OUT/latent/unet_ema.safetensors`` with ``scale_factor.json``.

Validation also logs ``val/x0_vs_mean_t{700,850,950}``: the MSE of the EMA network's x̂₀ at
those noise levels divided by the MSE of the mean training latent. Below 1 the network knows
more about a scan than the cohort average; far above 1 stage 3 will spend its training
correcting the UNet instead of learning to use the semantic code (docs/training.md). The final
EMA network's values are kept in ``latent.json``, and stage 3 refuses to start when they are far
above 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torchmetrics import MeanMetric

from napari_ldae.core.autoencoder import NORM_KEYS
from napari_ldae.core.diffusion import Schedule, q_sample
from napari_ldae.core.unet import LatentUNet, UNetConfig
from napari_ldae.errors import TrainingError
from napari_ldae.train import common
from napari_ldae.train.config import model_config
from napari_ldae.train.data import CohortData
from napari_ldae.train.decoder import autoencoder_weights

WEIGHTS = "unet_ema.safetensors"
SCALE = "scale_factor.json"
NORM = "latent_norm.safetensors"
#: Noise levels of the ``val/x0_vs_mean_t*`` readiness check.
HIGH_NOISE_STEPS = (700, 850, 950)


class LatentModule(pl.LightningModule):
    """ε-prediction training of the latent UNet, with an EMA copy of its weights."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        model = model_config(config)
        self.hp = dict(config["latent"])
        self.unet = LatentUNet(UNetConfig.from_dict(model["unet"]))
        self.schedule = Schedule.from_dict(model["schedule"])
        self.ema = common.EMA(self.unet.named_parameters(), self.hp["ema_decay"],
                              self.hp["ema_warmup"])
        self.val_loss = MeanMetric()
        self.val_x0 = torch.nn.ModuleDict({str(t): MeanMetric() for t in HIGH_NOISE_STEPS})
        self.register_buffer("mean_latent", torch.zeros(0), persistent=False)

    def on_fit_start(self) -> None:
        latents = self.trainer.datamodule.datasets["train"].latents
        self.mean_latent = torch.as_tensor(latents.mean(0), device=self.device)

    def configure_optimizers(self):
        return torch.optim.Adam(self.unet.parameters(), lr=self.hp["lr"])

    def diffusion_loss(self, z0: torch.Tensor, generator: torch.Generator | None = None,
                       ) -> torch.Tensor:
        """Per-sample MSE of the prediction (ε or v) at uniformly drawn timesteps."""
        t = torch.randint(0, self.schedule.num_steps, (z0.shape[0],), device=z0.device,
                          generator=generator)
        noise = torch.randn(z0.shape, device=z0.device, generator=generator)
        out = self.unet(q_sample(z0, t, noise, self.schedule), t)
        target = self.schedule.target(z0, noise, t)
        return F.mse_loss(out.float(), target, reduction="none").flatten(1).mean(1)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.diffusion_loss(batch["latent"]).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["latent"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """EMA network, noise fixed per validation batch (comparable across validations)."""
        z0 = batch["latent"]
        gen = torch.Generator(device=z0.device).manual_seed(int(batch["index"][0]))
        with self.ema.swapped():
            self.val_loss.update(self.diffusion_loss(z0, gen))
            for t, metric in self.val_x0.items():
                metric.update(self.x0_vs_mean(z0, int(t), gen))
        self.log("val/loss", self.val_loss, prog_bar=True)
        for t, metric in self.val_x0.items():
            self.log(f"val/x0_vs_mean_t{t}", metric)

    @torch.no_grad()
    def final_readiness(self, data: CohortData, n: int = 16) -> dict[str, float]:
        """``x0_vs_mean`` of the final EMA network on up to ``n`` validation latents (the
        training split's if there is no validation split), fixed noise."""
        latents = data.datasets["val"].latents
        if not len(latents):
            latents = data.datasets["train"].latents
        z0 = torch.as_tensor(latents[:n], device=self.device)
        if not self.mean_latent.numel():  # a resumed run that had nothing left to train
            self.mean_latent = torch.as_tensor(data.datasets["train"].latents.mean(0),
                                               device=self.device)
        gen = torch.Generator(device=self.device).manual_seed(0)
        with self.ema.swapped():
            return {str(t): float(self.x0_vs_mean(z0, t, gen).mean()) for t in HIGH_NOISE_STEPS}

    def x0_vs_mean(self, z0: torch.Tensor, t: int, generator: torch.Generator) -> torch.Tensor:
        """Per-sample MSE of x̂₀ at step ``t`` over the MSE of the mean training latent."""
        tt = torch.full((z0.shape[0],), t, device=z0.device)
        noise = torch.randn(z0.shape, device=z0.device, generator=generator)
        ac = float(self.schedule.alphas_cumprod[t])
        z_t = q_sample(z0, tt, noise, self.schedule)
        eps = self.schedule.to_eps(self.unet(z_t, tt).float(), z_t, tt)
        x0 = (z_t - (1.0 - ac) ** 0.5 * eps) / ac**0.5
        err = (x0 - z0).pow(2).flatten(1).mean(1)
        return err / (self.mean_latent - z0).pow(2).flatten(1).mean(1).clamp_min(1e-12)


def run(config: Mapping[str, Any], out: Path, resume: bool = False,
        callbacks: Sequence[Callback] = ()) -> Path:
    """Train stage 2; returns ``OUT/latent/unet_ema.safetensors``."""
    stage_dir = out / "latent"
    ae_path = autoencoder_weights(out)
    common.load_safetensors(ae_path, "latent stage: the stage-1 autoencoder")  # fail early
    data = CohortData(config, "latent", common.cache_dir(config, out), images=False,
                      latents=True, autoencoder_path=ae_path)
    pl.seed_everything(config["seed"], workers=True, verbose=False)
    module = LatentModule(config)
    trainer, ckpt = common.make_trainer(config, "latent", stage_dir,
                                        [common.EMAUpdate(), *callbacks])
    common.fit(trainer, module, data, ckpt, resume)

    def write() -> None:
        common.save_safetensors(stage_dir / WEIGHTS, common.ema_state_dict(module.unet,
                                                                            module.ema))
        if data.residual:
            common.save_safetensors(stage_dir / NORM, dict(zip(
                NORM_KEYS, data.latent_stats, strict=True)))
        common.write_json(stage_dir / SCALE, {
            "scale_factor": data.scale_factor, "from": "1/std of the training latents",
            "n_train_scans": len(data.datasets["train"]), "autoencoder": str(ae_path),
        })
        common.write_json(stage_dir / "latent.json", {
            "stage": "latent", "global_step": trainer.global_step,
            "ema_updates": int(module.ema.num_updates), "scale_factor": data.scale_factor,
            "latent_norm": "template_residual" if data.residual else "scale",
            "x0_vs_mean": module.final_readiness(data),
        })

    common.handoff(trainer, write)
    return stage_dir / WEIGHTS


def read_scale_factor(out: Path) -> float:
    """The scale factor stage 2 computed (``OUT/latent/scale_factor.json``)."""
    return float(common.read_json(out / "latent" / SCALE, "latent scale factor")["scale_factor"])


def read_latent_stats(out: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The template-residual (mean, std) stage 2 fitted, or None for a scaled latent."""
    path = out / "latent" / NORM
    if not path.is_file():
        return None
    state = common.load_safetensors(path, "template-residual latent statistics")
    return state[NORM_KEYS[0]], state[NORM_KEYS[1]]


def readiness(out: Path, limit: float | None) -> dict[str, float]:
    """Stage 2's last ``x0_vs_mean`` values; a :class:`TrainingError` when one exceeds
    ``limit`` (None: report only)."""
    info = out / "latent" / "latent.json"  # absent for stage-2 weights from elsewhere
    ratios = common.read_json(info, "latent stage").get("x0_vs_mean", {}) \
        if info.is_file() else {}
    text = ", ".join(f"t={t}: {v:.3g}" for t, v in ratios.items()) or "not measured"
    print(f"stage-2 readiness, x̂₀ MSE over the mean latent's (≈1 or below is ready): {text}")
    worst = max(ratios.values(), default=0.0)
    if limit is not None and worst > limit:
        raise TrainingError(
            f"the stage-2 UNet is not ready for representation learning: its x̂₀ at high noise "
            f"is {worst:.3g}× worse than the mean latent ({text}; limit "
            f"representation.max_x0_vs_mean={limit}). Stage 3 would spend itself correcting "
            "the UNet and ignore the semantic code. Train stage 2 longer, or use the "
            "template-residual latent, the cosine schedule or v-prediction "
            "(docs/training.md); representation.max_x0_vs_mean=null continues anyway.")
    return ratios
