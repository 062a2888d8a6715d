"""Stage 3: representation learning, the LDAE proper.

The stage-2 EMA UNet is loaded into the frozen part of a ``ShiftUNet`` (refusing to start
without it: the reference silently trained on random weights). The semantic encoder and the
gradient-estimator branch learn

    L = mean( λ_t · (ε − (ε_θ(z_t, t) + k_t · G(z_t, t, y)))² ),   y = Enc(x),

with k_t = ``Schedule.shift_coef`` (times √ᾱ_t with ``model.schedule.shift: x0``) and λ_t =
``Schedule.snr_weight(γ)``, plus ``x0_weight`` · (1 − ᾱ_t)² / ᾱ_t (0 in the paper): that term is
the x̂₀ error of the same residual weighted by the noise variance 1 − ᾱ_t, which gives the
high-noise steps, where only y can tell which brain it is, a say. EMA on both. Validation
is the paper's: 3D SSIM between the semantic-only decode (EMA networks, random x_T, DDIM) and the
autoencoder's decode of the true latent; the best checkpoint by it gives
``OUT/representation/{encoder_ema,unet_ema}.safetensors``.

With ``representation.oracle`` (ground-truth columns of the cohort, e.g. ``[atrophy,
ventricle_ml, age]``) the encoder is replaced by a linear map of the scans' standardised true
parameters: a diagnostic run that tells whether the branch can use a perfect code at all (if
not, the branch is the problem, not the encoder). Its weights are not for a bundle.

Two more validation numbers say whether the code is used at all: ``val/y_spread`` (std of y
across scans over its mean size) and ``val/y_use``, the relative rise of the weighted loss when
each scan is given another scan's code (0: the gradient estimator ignores y). A third says
whether encoding and decoding still close: ``val/round_trip``, the latent MSE of a DDIM inversion
and decode with the scan's own y, over the latents' variance (the frozen UNet alone gives 0.10 at
10 steps on the demo model; a shift that is wrong where the loss gives it no weight, thousands).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torchmetrics import MeanMetric

from napari_ldae.core.autoencoder import LatentAutoencoder
from napari_ldae.core.diffusion import Schedule, ddim_invert, ddim_sample, gather, q_sample
from napari_ldae.core.encoder import build_encoder
from napari_ldae.core.unet import FROZEN_MODULES, ShiftUNet, UNetConfig
from napari_ldae.errors import BundleError, TrainingError
from napari_ldae.evaluate.metrics import semantic_spread, ssim
from napari_ldae.train import common
from napari_ldae.train import latent as stage2
from napari_ldae.train.config import model_config
from napari_ldae.train.data import CohortData
from napari_ldae.train.decoder import autoencoder_weights

ENCODER = "encoder_ema.safetensors"
UNET = "unet_ema.safetensors"
#: Keys left out of checkpoints: they never change and come back from the stage 1/2 files.
FROZEN_PREFIXES = ("autoencoder.", *(f"unet.{m}." for m in FROZEN_MODULES))


def stage2_unet(out: Path) -> dict[str, torch.Tensor]:
    """The stage-2 EMA UNet weights, or a :class:`TrainingError` saying how to get them."""
    path = out / "latent" / stage2.WEIGHTS
    if not path.is_file():
        raise TrainingError(
            f"representation learning needs the stage-2 EMA UNet, but {path} does not exist. "
            "Train it first (`napari-ldae train latent ...` with the same --out); training the "
            "gradient estimator on a random UNet would be meaningless.")
    return common.load_safetensors(path, "stage-2 UNet")


class RepresentationModule(pl.LightningModule):
    """Semantic encoder + gradient-estimator branch over a frozen latent UNet."""

    def __init__(self, config: Mapping[str, Any], unet_state: Mapping[str, torch.Tensor],
                 autoencoder_state: Mapping[str, torch.Tensor], scale_factor: float,
                 latent_stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        super().__init__()
        model = model_config(config)
        self.hp = dict(config["representation"])
        self.clamp = bool(model["clamp_x0"])
        self.unet = ShiftUNet(UNetConfig.from_dict(model["unet"]))
        try:
            self.unet.load_unet_state_dict(unet_state)
        except BundleError as err:
            raise TrainingError(f"the stage-2 UNet does not fit this configuration: {err}") \
                from err
        self.encoder = build_encoder(model)
        columns = self.hp["oracle"] or []
        self.oracle = torch.nn.Linear(len(columns), model["encoder"]["emb_dim"]) \
            if columns else None
        self.autoencoder = LatentAutoencoder(model["autoencoder"], scale_factor,
                                             *(latent_stats or (None, None)))
        self.autoencoder.net.load_state_dict(dict(autoencoder_state))
        self.schedule = Schedule.from_dict(model["schedule"])
        ac = self.schedule.alphas_cumprod
        self.loss_weight = (self.schedule.snr_weight(self.hp["snr_gamma"])
                            + self.hp["x0_weight"] * (1.0 - ac) ** 2 / ac)
        trainable = [(f"encoder.{n}", p) for n, p in self.code_net.named_parameters()]
        trainable += [(f"unet.{n}", p) for n, p in self.unet.named_parameters()
                      if p.requires_grad]
        self.ema = common.EMA(trainable, self.hp["ema_decay"], self.hp["ema_warmup"])
        self.strict_loading = False  # checkpoints leave out FROZEN_PREFIXES
        self.val_ssim = MeanMetric()
        self.val_y_use = MeanMetric()
        self.val_round_trip = MeanMetric()
        self._val_codes: list[torch.Tensor] = []

    def configure_optimizers(self):
        lr = self.hp["lr"]
        return torch.optim.Adam([
            {"params": list(self.code_net.parameters()), "lr": lr * self.hp["encoder_lr_scale"]},
            {"params": list(self.unet.branch_parameters()), "lr": lr}])

    @property
    def code_net(self) -> torch.nn.Module:
        """What makes y: the semantic encoder, or the oracle's map of true parameters."""
        return self.oracle if self.oracle is not None else self.encoder

    def codes(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.oracle is not None:
            return self.oracle(batch["truth"])
        return self.encoder.code(batch.get("image"), batch["latent"])

    def guided(self, z_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor):
        """(ε, shift) at z_t: the frozen UNet's output turned into ε per the schedule."""
        out, shift = self.unet(z_t, t, y)
        return self.schedule.to_eps(out.float(), z_t, t), self.schedule.scale_shift(shift, t)

    def shift_loss(self, noise: torch.Tensor, eps: torch.Tensor, shift: torch.Tensor,
                   t: torch.Tensor) -> torch.Tensor:
        """The weighted stage-3 loss of the network outputs, one value per sample."""
        k = gather(self.schedule.shift_coef, t, noise)
        weight = gather(self.loss_weight, t, noise)
        return (weight * (noise - (eps.float() + k * shift.float())) ** 2).flatten(1).mean(1)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        z0 = batch["latent"]
        t = torch.randint(0, self.schedule.num_steps, (z0.shape[0],), device=z0.device)
        noise = torch.randn_like(z0)
        y = self.codes(batch)
        eps, shift = self.guided(q_sample(z0, t, noise, self.schedule), t, y)
        loss = self.shift_loss(noise, eps, shift, t).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=z0.shape[0])
        if self.hp["code_variance_weight"] > 0:
            penalty = self.code_variance_penalty(y)
            self.log("train/code_penalty", penalty, batch_size=z0.shape[0])
            loss = loss + self.hp["code_variance_weight"] * penalty
        return loss

    @staticmethod
    def code_variance_penalty(y: torch.Tensor) -> torch.Tensor:
        """VICReg's variance hinge: mean over dimensions of relu(1 − std of y across the
        batch). Only scans of the same batch count: codes kept from earlier steps would let the
        encoder's drift pass for spread between brains (measured: it did, while every brain
        got the same code in eval mode)."""
        return torch.relu(1.0 - y.float().std(dim=0)).mean()

    @torch.no_grad()
    def semantic_decode(self, y: torch.Tensor, x_T: torch.Tensor) -> torch.Tensor:
        """Volumes decoded from semantic codes alone (x_T given, DDIM)."""
        z = ddim_sample(self.unet, x_T, y, self.hp["val_ddim_steps"], self.schedule, self.clamp)
        return self.autoencoder.decode(z).float().clamp(0.0, 1.0)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        z0 = batch["latent"]
        gen = torch.Generator(device=z0.device).manual_seed(int(batch["index"][0]))
        x_T = torch.randn(z0.shape, device=z0.device, generator=gen)
        with self.ema.swapped():
            y = self.codes(batch)
            pred = self.semantic_decode(y, x_T)
            # another scan's code: the next in the batch, else the previous batch's first
            other = y.roll(1, 0) if len(y) > 1 else None
            if other is None and self._val_codes:
                other = self._val_codes[-1][:1].to(y)
            if other is not None:
                self.val_y_use.update(self.code_use(z0, y, other, gen))
                self.log("val/y_use", self.val_y_use)
            self.val_round_trip.update(self.round_trip(z0, y))
            self.log("val/round_trip", self.val_round_trip)
        target = self.autoencoder.decode(z0).float().clamp(0.0, 1.0)
        self.val_ssim.update(ssim(pred, target, self.hp["ssim_kernel_size"]))
        self.log("val/ssim", self.val_ssim, prog_bar=True)
        self._val_codes.append(y.detach().float().cpu())

    @torch.no_grad()
    def round_trip(self, z0: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Latent MSE of DDIM inversion then decoding with the own code, over z0's variance."""
        steps = self.hp["val_ddim_steps"]
        x_T = ddim_invert(self.unet, z0, y, steps, self.schedule, self.clamp)
        z = ddim_sample(self.unet, x_T, y, steps, self.schedule, self.clamp)
        return (z.float() - z0.float()).pow(2).mean() / z0.float().var().clamp_min(1e-12)

    @torch.no_grad()
    def code_use(self, z0: torch.Tensor, y: torch.Tensor, other: torch.Tensor,
                 gen: torch.Generator) -> torch.Tensor:
        """Relative rise of the loss when the scans get ``other`` codes instead (same t, ε)."""
        t = torch.randint(0, self.schedule.num_steps, (len(z0),), device=z0.device,
                          generator=gen)
        noise = torch.randn(z0.shape, device=z0.device, generator=gen)
        z_t = q_sample(z0, t, noise, self.schedule)
        h, skips, emb = self.unet.encode(z_t, t)
        # the frozen part runs once for both codes
        eps = self.schedule.to_eps(self.unet.decode(h, skips, emb).float(), z_t, t)
        own, swapped = (self.shift_loss(noise, eps, self.schedule.scale_shift(
            self.unet.shift(h, skips, emb, code), t), t) for code in (y, other))
        return (swapped - own).mean() / own.mean()

    def on_validation_epoch_end(self) -> None:
        """Log ``val/y_spread``: near 0 means the encoder gives every brain the same code."""
        codes, self._val_codes = self._val_codes, []
        if sum(len(c) for c in codes) > 1:
            spread = semantic_spread(torch.cat(codes))
            self.log("val/y_spread", spread)
            if (warning := collapse_warning(float(spread))) and self.trainer.is_global_zero:
                print(f"\nWARNING at step {self.global_step}: {warning}")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(FROZEN_PREFIXES)]:
            del state[key]


def run(config: Mapping[str, Any], out: Path, resume: bool = False,
        callbacks: Sequence[Callback] = ()) -> tuple[Path, Path]:
    """Train stage 3; returns the EMA encoder and ShiftUNet weight files."""
    stage_dir = out / "representation"
    unet_state = stage2_unet(out)
    readiness = stage2.readiness(out, config["representation"]["max_x0_vs_mean"])
    scale, stats = stage2.read_scale_factor(out), stage2.read_latent_stats(out)
    ae_path = autoencoder_weights(out)
    ae_state = common.load_safetensors(ae_path, "representation stage: the autoencoder")
    # an encoder on the latent never reads the volumes, so they are not loaded
    images = model_config(config)["encoder"].get("input", "slices") != "latent"
    data = CohortData(config, "representation", common.cache_dir(config, out), images=images,
                      latents=True, autoencoder_path=ae_path, scale=scale, stats=stats,
                      truth=config["representation"]["oracle"])
    pl.seed_everything(config["seed"], workers=True, verbose=False)
    module = RepresentationModule(config, unet_state, ae_state, scale, stats)
    callbacks = [common.EMAUpdate(), *callbacks]
    if config["representation"]["early_stop_patience"]:
        from lightning.pytorch.callbacks import EarlyStopping

        callbacks.append(EarlyStopping("val/ssim", mode="max",
                                       patience=config["representation"]["early_stop_patience"]))
    trainer, ckpt = common.make_trainer(config, "representation", stage_dir, callbacks,
                                        monitor="val/ssim")
    common.fit(trainer, module, data, ckpt, resume)

    def write() -> None:
        step = common.load_best(module, ckpt, config["representation"]["weights"] == "last")
        with module.ema.swapped():
            encoder = {k: v.clone() for k, v in module.encoder.canonical_state_dict().items()}
            unet = {k: v.clone() for k, v in module.unet.state_dict().items()}
        common.save_safetensors(stage_dir / ENCODER, encoder)
        common.save_safetensors(stage_dir / UNET, unet)
        common.write_json(stage_dir / "representation.json", {
            "stage": "representation", "global_step": trainer.global_step,
            "weights_step": step, "weights": config["representation"]["weights"],
            "best_val_ssim": ckpt.best_score,
            "val_ddim_steps": config["representation"]["val_ddim_steps"],
            "ema_updates": int(module.ema.num_updates), "scale_factor": scale,
            "stage2_x0_vs_mean": readiness, **code_use_summary(trainer.callback_metrics),
            "oracle": config["representation"]["oracle"],
        })

    common.handoff(trainer, write)
    return stage_dir / ENCODER, stage_dir / UNET


#: |val/y_use| below this is round-off: the gradient estimator ignores the code.
Y_USE_ROUND_OFF = 1e-4
#: val/round_trip above this: encoding then decoding a scan is further from it than the latents'
#: spread (the DDIM discretisation alone gives 0.10 at 10 steps on the demo model).
ROUND_TRIP_BROKEN = 1.0
#: val/y_spread below this: the encoder gives every brain nearly the same code (a healthy demo
#: run is at 0.25-1.1; one that collapsed at its first steps stayed at 0.0007).
Y_SPREAD_COLLAPSED = 0.01


def collapse_warning(spread: float) -> str | None:
    """The warning for a collapsed encoder, or None."""
    if spread >= Y_SPREAD_COLLAPSED:
        return None
    return (f"val/y_spread is {spread:.2g}: the semantic encoder gives every brain the same "
            "code. Stop and train stage 3 again with another seed (seed=N data.split_seed=OLD "
            "keeps the splits; docs/training.md)")


def code_use_summary(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The ``code_use`` entry of ``representation.json``: the last ``val/y_use``,
    ``val/y_spread`` and ``val/round_trip``, with warnings (printed and kept) when the decoder
    ignores the code or the round trip does not close."""
    out = {k.split("/")[1]: float(metrics[k])
           for k in ("val/y_use", "val/y_spread", "val/round_trip") if k in metrics}
    if "y_use" in out and abs(out["y_use"]) < Y_USE_ROUND_OFF:
        out["warning"] = (f"val/y_use is {out['y_use']:.2g}, at round-off: the decoder ignores "
                          "the semantic code, so edits and interpolation of y will do nothing "
                          "(docs/training.md)")
    if out.get("round_trip", 0.0) > ROUND_TRIP_BROKEN:
        out["round_trip_warning"] = (
            f"val/round_trip is {out['round_trip']:.3g}: encoding then decoding a scan does not "
            "return it, so reconstructions, edits and interpolations start from a wrong brain "
            "(docs/training.md)")
    if "y_spread" in out and (collapsed := collapse_warning(out["y_spread"])):
        out["collapse_warning"] = collapsed
    for key in ("warning", "round_trip_warning", "collapse_warning"):
        if key in out:
            print(f"WARNING: {out[key]}")
    return {"code_use": out}
