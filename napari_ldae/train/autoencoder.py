"""Stage 1: the compression autoencoder (MONAI ``AutoencoderKL``).

Loss of the generator: L1 + ``kl_weight``·KL + ``adversarial_weight``·LSGAN patch loss (after
``adversarial_warmup_steps``) + ``perceptual_weight``·LPIPS when local weights are given. The
patch discriminator (LSGAN, weighted by ``adversarial_weight`` too) has its own Adam; both step
once per optimizer step (manual optimisation, with gradient accumulation and clipping done
here). ``trainer.global_step`` counts generator steps. Validation: 3D SSIM of the mean-latent
reconstruction; the best checkpoint by it becomes ``OUT/autoencoder/autoencoder.safetensors``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn
from torchmetrics import MeanMetric

from napari_ldae.core.autoencoder import build_autoencoder
from napari_ldae.errors import TrainingError
from napari_ldae.evaluate.metrics import ssim
from napari_ldae.evaluate.perceptual import perceptual_loss
from napari_ldae.train import common
from napari_ldae.train.config import model_config
from napari_ldae.train.data import CohortData

WEIGHTS = "autoencoder.safetensors"


class AutoencoderModule(pl.LightningModule):
    """AutoencoderKL + PatchDiscriminator trained adversarially (manual optimisation).

    One backward pass per batch serves both networks (DDP needs exactly one): the generator's
    adversarial term sees the discriminator through detached weights, and the discriminator's
    loss sees a detached reconstruction, so each network only gets its own loss's gradient.
    The discriminator trains from the first step; the generator's adversarial term starts
    after ``adversarial_warmup_steps``.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        from monai.losses import PatchAdversarialLoss
        from monai.networks.nets import PatchDiscriminator

        self.automatic_optimization = False
        self.hp = dict(config["autoencoder"])
        self.autoencoder = build_autoencoder(model_config(config)["autoencoder"])
        self.discriminator = None
        if self.hp["adversarial_weight"] > 0:
            self.discriminator = PatchDiscriminator(
                spatial_dims=3, in_channels=1, out_channels=1, **self.hp["discriminator"])
        self.adversarial = PatchAdversarialLoss(criterion="least_squares")
        self.perceptual = perceptual_loss(self.hp["perceptual_weights"])
        self.val_ssim, self.val_l1 = MeanMetric(), MeanMetric()
        self._micro = 0  # batches accumulated since the last optimizer step

    def configure_optimizers(self):
        opts = [torch.optim.Adam(self.autoencoder.parameters(), lr=self.hp["lr"])]
        if self.discriminator is not None:
            opts.append(torch.optim.Adam(self.discriminator.parameters(),
                                         lr=self.hp["lr_discriminator"]))
        return opts

    def _logits(self, x: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """Patch logits; ``frozen``: no gradient reaches the discriminator's weights."""
        x = x.contiguous().float()
        if not frozen:
            return self.discriminator(x)[-1]
        weights = {n: p.detach() for n, p in self.discriminator.named_parameters()}
        return torch.func.functional_call(self.discriminator, weights, (x,))[-1]

    def generator_loss(self, x: torch.Tensor, recon: torch.Tensor, mu: torch.Tensor,
                       sigma: torch.Tensor) -> dict[str, torch.Tensor]:
        l1 = F.l1_loss(recon.float(), x.float())
        kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2)) - 1).sum(
            dim=list(range(1, mu.dim()))).mean()
        parts = {"l1": l1, "kl": kl, "loss": l1 + self.hp["kl_weight"] * kl}
        if self.perceptual is not None:
            parts["perceptual"] = self.perceptual(recon.float(), x.float())
            parts["loss"] = parts["loss"] + self.hp["perceptual_weight"] * parts["perceptual"]
        if self.discriminator is not None and \
                self.global_step >= self.hp["adversarial_warmup_steps"]:
            parts["g_adv"] = self.adversarial(self._logits(recon, frozen=True),
                                              target_is_real=True, for_discriminator=False)
            parts["loss"] = parts["loss"] + self.hp["adversarial_weight"] * parts["g_adv"]
        return parts

    def discriminator_loss(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        fake = self.adversarial(self._logits(recon.detach()), target_is_real=False,
                                for_discriminator=True)
        real = self.adversarial(self._logits(x), target_is_real=True, for_discriminator=True)
        return self.hp["adversarial_weight"] * 0.5 * (fake + real)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        x = random_crop(batch["image"], self.hp["crop_size"])
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        k = self.hp["accumulate_grad_batches"]
        recon, mu, sigma = self.autoencoder(x)
        parts = self.generator_loss(x, recon, mu, sigma)
        total = parts["loss"]
        if self.discriminator is not None:
            parts["d"] = self.discriminator_loss(x, recon)
            total = total + parts["d"]
        self._micro += 1
        stepping = self._micro == k
        with contextlib.nullcontext() if stepping else _no_sync(self.trainer.model):
            self.manual_backward(total / k)
        if stepping:
            self._micro = 0
            opts[0].step()  # the generator: advances trainer.global_step
            for opt in opts[1:]:
                _step_uncounted(opt)
            for opt in opts:
                opt.zero_grad(set_to_none=True)
        self.log_dict({f"train/{n}": v.detach() for n, v in parts.items()},
                      batch_size=x.shape[0])
        self.log("l1", parts["l1"].detach(), prog_bar=True, logger=False)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip here: gradients are already unscaled under 16-bit mixed precision."""
        if self.hp["gradient_clip_val"]:
            self.clip_gradients(optimizer, gradient_clip_val=self.hp["gradient_clip_val"],
                                gradient_clip_algorithm="norm")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        x = batch["image"]
        recon = self.autoencoder.reconstruct(x).float().clamp(0.0, 1.0)
        self.val_ssim.update(ssim(recon, x, self.hp["ssim_kernel_size"]))
        self.val_l1.update((recon - x).abs().flatten(1).mean(1))
        self.log("val/ssim", self.val_ssim, prog_bar=True)
        self.log("val/l1", self.val_l1)


def random_crop(x: torch.Tensor, size: Sequence[int] | None) -> torch.Tensor:
    """One random ``size`` window of each ``(C, *spatial)`` volume in the batch (``None``: all).

    The autoencoder is fully convolutional, so windows train it like whole volumes for a
    fraction of the cost per step; offsets come from torch's generator (seeded per step).
    """
    if size is None:
        return x
    spatial = x.shape[2:]
    if len(size) != len(spatial) or any(s > n for s, n in zip(size, spatial, strict=True)):
        raise TrainingError(f"autoencoder.crop_size {list(size)} does not fit volumes of "
                            f"shape {list(spatial)}")
    windows = []
    for volume in x:
        starts = [int(torch.randint(0, n - s + 1, ())) for s, n in zip(size, spatial,
                                                                       strict=True)]
        windows.append(volume[(slice(None), *(slice(a, a + s) for a, s in zip(
            starts, size, strict=True)))])
    return torch.stack(windows)


def _step_uncounted(optimizer) -> None:
    """Step a LightningOptimizer without advancing ``trainer.global_step``.

    In manual optimisation Lightning counts every optimizer's steps (Lightning issue #17958);
    the discriminator's must not count, so that ``max_steps`` and checkpoints mean generator
    steps.
    """
    saved = optimizer._on_before_step, optimizer._on_after_step
    optimizer._on_before_step = optimizer._on_after_step = _nothing
    try:
        optimizer.step()
    finally:
        optimizer._on_before_step, optimizer._on_after_step = saved


def _nothing() -> None:
    return None


def _no_sync(model: nn.Module):
    """Skip DDP's gradient all-reduce for a micro-batch that does not step."""
    return model.no_sync() if hasattr(model, "no_sync") else contextlib.nullcontext()




# ----------------------------------------------------------------------------- stage
def run(config: Mapping[str, Any], out: Path, resume: bool = False,
        callbacks: Sequence[Callback] = ()) -> Path:
    """Train stage 1; returns ``OUT/autoencoder/autoencoder.safetensors``."""
    stage_dir = out / "autoencoder"
    data = CohortData(config, "autoencoder", common.cache_dir(config, out))
    pl.seed_everything(config["seed"], workers=True, verbose=False)
    module = AutoencoderModule(config)
    trainer, ckpt = common.make_trainer(config, "autoencoder", stage_dir, list(callbacks),
                                        monitor="val/ssim", manual_optimization=True)
    common.fit(trainer, module, data, ckpt, resume)

    def write() -> None:
        step = common.load_best(module, ckpt)
        common.save_safetensors(stage_dir / WEIGHTS, module.autoencoder.state_dict())
        common.write_json(stage_dir / "autoencoder.json", {
            "stage": "autoencoder", "global_step": trainer.global_step, "weights_step": step,
            "best_val_ssim": ckpt.best_score, "autoencoder": model_config(config)["autoencoder"],
        })

    common.handoff(trainer, write)
    return stage_dir / WEIGHTS
