"""Optional stage 1b: refine the autoencoder's decoder on whole volumes, its encoder frozen.

Stage 1 trains on windows (``autoencoder.crop_size``), but every GroupNorm of the decoder
normalises over the whole volume when it decodes one, so its statistics differ from those it
learnt. This stage decodes whole volumes and minimises L1 + ``ssim_weight``·(1 − SSIM) of the
reconstruction clipped to [0, 1] (MONAI's ``SSIMLoss``, the window of the validation SSIM).
The encoder, and with it every latent, stays bit-identical, so a latent DDPM, stage 3 and the
probes trained on it stay valid (as diffusers' fine-tuned VAE decoders keep Stable Diffusion's
latents). ``decoder.bundle`` refines a finished bundle's decoder and writes ``OUT/bundle``: the
same bundle with the new decoder, the stage recorded in its provenance.
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

from napari_ldae._resources import shown_path
from napari_ldae.core.autoencoder import DECODER_PREFIXES, build_autoencoder, split_norm_state
from napari_ldae.errors import TrainingError
from napari_ldae.evaluate.metrics import ssim
from napari_ldae.train import autoencoder as stage1
from napari_ldae.train import common
from napari_ldae.train.config import model_config
from napari_ldae.train.data import CohortData, file_sha256

WEIGHTS = stage1.WEIGHTS


class DecoderModule(pl.LightningModule):
    """The autoencoder with only its decoder trainable; whole-volume L1 + SSIM loss."""

    def __init__(self, config: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> None:
        from monai.losses import SSIMLoss

        super().__init__()
        self.hp = dict(config["decoder"])
        self.autoencoder = build_autoencoder(model_config(config)["autoencoder"])
        self.autoencoder.load_state_dict({k: v.float() for k, v in state.items()})
        for name, p in self.autoencoder.named_parameters():  # only the decoder trains
            p.requires_grad_(name.startswith(DECODER_PREFIXES))
        self.ssim_loss = SSIMLoss(spatial_dims=3, data_range=1.0,
                                  win_size=self.hp["ssim_kernel_size"])
        self.val_ssim, self.val_l1 = MeanMetric(), MeanMetric()

    def configure_optimizers(self):
        return torch.optim.Adam([p for p in self.autoencoder.parameters() if p.requires_grad],
                                lr=self.hp["lr"])

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            z = self.autoencoder.encode(x)[0]
        return self.autoencoder.decode(z).float()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x = batch["image"].float()
        recon = self._decode(x)
        parts = {"l1": F.l1_loss(recon, x),
                 "ssim_loss": self.ssim_loss(recon.clamp(0.0, 1.0), x)}
        parts["loss"] = parts["l1"] + self.hp["ssim_weight"] * parts["ssim_loss"]
        self.log_dict({f"train/{n}": v.detach() for n, v in parts.items()},
                      batch_size=x.shape[0])
        self.log("l1", parts["l1"].detach(), prog_bar=True, logger=False)
        return parts["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        x = batch["image"]
        recon = self._decode(x).clamp(0.0, 1.0)
        self.val_ssim.update(ssim(recon, x, self.hp["ssim_kernel_size"]))
        self.val_l1.update((recon - x).abs().flatten(1).mean(1))
        self.log("val/ssim", self.val_ssim, prog_bar=True)
        self.log("val/l1", self.val_l1)


def autoencoder_weights(out: Path) -> Path:
    """The autoencoder later stages use: the refined one when this stage ran, else stage 1's."""
    refined = out / "decoder" / WEIGHTS
    if not refined.is_file():
        return out / "autoencoder" / stage1.WEIGHTS
    info = common.read_json(out / "decoder" / "decoder.json", "decoder stage")
    source = out / "autoencoder" / stage1.WEIGHTS
    if info.get("from") == "run" and source.is_file() and \
            file_sha256(source) != info["from_sha256"]:
        raise TrainingError(f"{out / 'decoder'} refines another stage-1 autoencoder than "
                            f"{source}: train the decoder stage again (or remove that folder)")
    return refined


def _source(config: Mapping[str, Any], out: Path):
    """(weights, norm statistics, bundle or None, source file) that this stage starts from."""
    from napari_ldae.core.bundle import load_bundle

    given = config["decoder"]["bundle"]
    if not given:
        path = out / "autoencoder" / stage1.WEIGHTS
        state = common.load_safetensors(path, "decoder stage: the stage-1 autoencoder")
        return state, {}, None, path
    bundle = load_bundle(given)
    model = model_config(config)
    for key in ("autoencoder", "preprocessing"):
        if bundle.config.get(key) != model[key]:
            raise TrainingError(f"decoder.bundle {given}: its {key} differs from the config's "
                                "(pass the --config the bundle was trained with)")
    state, norm = split_norm_state(bundle.read("autoencoder"))
    return state, norm, bundle, Path(bundle.path)


def run(config: Mapping[str, Any], out: Path, resume: bool = False,
        callbacks: Sequence[Callback] = ()) -> Path:
    """Train stage 1b; returns ``OUT/bundle`` from a bundle, else ``OUT/decoder/…safetensors``."""
    if config["decoder"]["max_steps"] < 1:
        raise TrainingError("decoder.max_steps is 0 (the stage is off): set it, e.g. "
                            "decoder.max_steps=600")
    stage_dir = out / "decoder"
    state, norm, bundle, source = _source(config, out)
    data = CohortData(config, "decoder", common.cache_dir(config, out))
    pl.seed_everything(config["seed"], workers=True, verbose=False)
    module = DecoderModule(config, state)
    trainer, ckpt = common.make_trainer(config, "decoder", stage_dir, list(callbacks),
                                        monitor="val/ssim")
    common.fit(trainer, module, data, ckpt, resume)

    def write() -> None:
        step = common.load_best(module, ckpt)
        weights = module.autoencoder.state_dict()
        common.save_safetensors(stage_dir / WEIGHTS, weights)
        given = config["decoder"]["bundle"]
        info = {"stage": "decoder", "global_step": trainer.global_step, "weights_step": step,
                "best_val_ssim": ckpt.best_score,
                "from": "bundle" if bundle else "run",
                "from_path": shown_path(given) if given else f"autoencoder/{stage1.WEIGHTS}",
                "from_sha256": bundle.sha256 if bundle else file_sha256(source)}
        common.write_json(stage_dir / "decoder.json", info)
        if bundle is not None:
            _write_bundle(config, out, bundle, {**weights, **norm}, info)

    common.handoff(trainer, write)
    return out / "bundle" if bundle is not None else stage_dir / WEIGHTS


def _write_bundle(config: Mapping[str, Any], out: Path, bundle, autoencoder: dict,
                  info: Mapping[str, Any]) -> None:
    """``bundle`` with the refined autoencoder; the rest of it byte for byte in value."""
    from napari_ldae.core.bundle import PARTS, save_bundle

    cfg = dict(bundle.config)
    metrics = dict(cfg.get("metrics") or {})
    if "autoencoder_val_ssim" in metrics:  # stage 1's, kept through later refinements
        metrics.setdefault("autoencoder_val_ssim_stage1", metrics["autoencoder_val_ssim"])
    metrics["autoencoder_val_ssim"] = info["best_val_ssim"]
    provenance = dict(cfg.get("provenance") or {})
    provenance["decoder"] = {**info, "config": config["decoder"],
                             "cohort": shown_path(config["data"]["cohort"]),
                             "git_commit": common.git_commit()}
    cfg.update(metrics=metrics, provenance=provenance)
    weights = {p: bundle.read(p) for p in PARTS if p != "autoencoder"}
    weights["autoencoder"] = autoencoder
    path = save_bundle(out / "bundle", cfg, weights, overwrite=True,
                       storage_dtype=cfg.get("weights_dtype", "float32"))
    print(f"wrote bundle {path}")
