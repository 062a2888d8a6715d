"""The compression autoencoder (MONAI ``AutoencoderKL``) and the latent normalisation.

:class:`LatentAutoencoder` is the only place where latents are normalised for diffusion.
``encode`` returns ``(μ(x) − m) / σ`` and ``decode`` inverts it, with one of two rules
(``latent_norm`` in the bundle config):

- ``scale`` (the reference): m = 0, σ = 1/s with one global scale factor ``s``. The reference
  hard-codes s (:data:`napari_ldae.core.REFERENCE_SCALE_FACTOR`); napari-ldae computes
  ``s = 1 / std(latents)`` at training time.
- ``template_residual``: m the per-element mean latent of the training split, σ one standard
  deviation per latent channel of the residual. Registered brains share one template, which
  is most of a latent's variance; diffusing the residual leaves the UNet the part that differs
  between brains (docs/method.md). m and σ travel in ``autoencoder.safetensors`` under
  :data:`NORM_KEYS`.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from napari_ldae.errors import BundleError

#: The paper's autoencoder (MONAI names): 1→1 channel, ×8 down-sampling, 3 latent channels.
PAPER_AUTOENCODER: dict[str, Any] = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 1,
    "channels": [64, 128, 128, 128],
    "latent_channels": 3,
    "num_res_blocks": 2,
    "norm_num_groups": 32,
    "attention_levels": [False, False, False, False],
    "with_encoder_nonlocal_attn": False,
    "with_decoder_nonlocal_attn": False,
}

#: Latent normalisation rules and the keys of the ``template_residual`` statistics.
LATENT_NORMS = ("scale", "template_residual")
NORM_KEYS = ("latent_norm.mean", "latent_norm.std")
#: The weights that make a latent mean (what ``encode`` reads) and those that decode one.
ENCODER_PREFIXES = ("encoder.", "quant_conv_mu.")
DECODER_PREFIXES = ("decoder.", "post_quant_conv.")

_RENAMED = {"num_channels": "channels"}  # GenerativeModels name -> MONAI core name


def autoencoder_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Normalise an autoencoder config (GenerativeModels or MONAI names) to MONAI names."""
    out = {_RENAMED.get(k, k): (list(v) if isinstance(v, tuple) else v) for k, v in config.items()}
    out.setdefault("spatial_dims", 3)
    return out


def build_autoencoder(config: Mapping[str, Any]) -> nn.Module:
    """A MONAI ``AutoencoderKL`` from a config dict."""
    from monai.networks.nets import AutoencoderKL

    return AutoencoderKL(**autoencoder_config(config))


def downsampling_factor(config: Mapping[str, Any]) -> int:
    """Spatial down-sampling of the autoencoder: 2^(levels − 1)."""
    return 2 ** (len(autoencoder_config(config)["channels"]) - 1)


def latent_shape(config: Mapping[str, Any], input_shape) -> tuple[int, ...]:
    """Shape (C, x, y, z) of one latent of an ``input_shape`` (X, Y, Z) volume."""
    f = downsampling_factor(config)
    return (int(autoencoder_config(config)["latent_channels"]),
            *(int(s) // f for s in input_shape))


class LatentAutoencoder(nn.Module):
    """A frozen ``AutoencoderKL`` with the latent normalisation applied on the way in and out.

    With ``latent_mean`` (C, x, y, z) and ``latent_std`` (C,) given, latents are
    ``(μ(x) − mean) / std`` (template residual); otherwise ``s · μ(x)``.
    """

    def __init__(self, config: Mapping[str, Any], scale_factor: float = 1.0,
                 latent_mean: torch.Tensor | None = None,
                 latent_std: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = autoencoder_config(config)
        self.net = build_autoencoder(self.config)
        self.scale_factor = float(scale_factor)
        self.residual = latent_mean is not None
        if self.residual != (latent_std is not None):
            raise BundleError("the template-residual latent needs both its mean and its std")
        if self.residual:
            c = self.config["latent_channels"]
            if latent_mean.dim() != 4 or latent_mean.shape[0] != c or latent_std.numel() != c:
                raise BundleError(f"template-residual statistics of shape "
                                  f"{tuple(latent_mean.shape)} / {tuple(latent_std.shape)} do "
                                  f"not fit an autoencoder with {c} latent channels")
            if not bool((latent_std > 0).all()):
                raise BundleError("template-residual std must be positive")
        self.register_buffer("latent_mean", latent_mean.float() if self.residual else None)
        self.register_buffer("latent_std",
                             latent_std.float().reshape(-1, 1, 1, 1) if self.residual else None)
        self.net.requires_grad_(False)
        self.net.eval()

    def train(self, mode: bool = True) -> LatentAutoencoder:
        """The autoencoder is frozen: it stays in eval mode whatever the caller asks."""
        super().train(mode)
        self.net.eval()
        return self

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        """Diffusion's latent from the autoencoder's latent mean."""
        if self.residual:
            return (z - self.latent_mean.to(z)) / self.latent_std.to(z)
        return z * self.scale_factor

    def denormalise(self, z: torch.Tensor) -> torch.Tensor:
        if self.residual:
            return z * self.latent_std.to(z) + self.latent_mean.to(z)
        return z / self.scale_factor

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised latent mean of volumes ``(B, 1, X, Y, Z)`` in [0, 1]."""
        return self.normalise(self.net.quant_conv_mu(self.net.encoder(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Volumes from normalised latents."""
        return self.net.decode(self.denormalise(z))

    def norm_state(self) -> dict[str, torch.Tensor]:
        """The template-residual statistics as stored in a bundle (empty for ``scale``)."""
        if not self.residual:
            return {}
        return {NORM_KEYS[0]: self.latent_mean, NORM_KEYS[1]: self.latent_std.reshape(-1)}


    def load_generative_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load weights saved by MONAI GenerativeModels (the official LDAE autoencoder).

        MONAI's converter keeps the current (random) value of any key it cannot find and
        ignores keys it does not know; here both are errors.
        """
        expected = self.net.state_dict()
        if set(state_dict) <= set(expected):
            self.net.load_state_dict(dict(state_dict), strict=True)
            return
        old = dict(state_dict)
        with contextlib.redirect_stdout(io.StringIO()):
            self.net.load_old_state_dict(old, verbose=False)  # pops what it converts
        if old:
            raise BundleError(f"autoencoder weights have {len(old)} unknown keys, e.g. "
                              f"{sorted(old)[:3]}: is this an AutoencoderKL with this config?")
        if len(state_dict) < len(expected):
            raise BundleError(f"autoencoder weights have {len(state_dict)} tensors, the "
                              f"configured AutoencoderKL needs {len(expected)}")


def residual_stats(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element mean (C, x, y, z) and per-channel std (C,) of the residual of latent means
    ``(N, C, x, y, z)``, computed in float64."""
    z = latents.double()
    mean = z.mean(0)
    std = (z - mean).transpose(0, 1).reshape(z.shape[1], -1).std(1)
    if not bool((std > 0).all()):
        raise BundleError("the training latents have a channel with zero spread around the "
                          "template; the autoencoder is broken")
    return mean.float(), std.float()


def split_norm_state(state: Mapping[str, torch.Tensor],
                     ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``autoencoder.safetensors`` → (network weights, template-residual statistics)."""
    nets = {k: v for k, v in state.items() if k not in NORM_KEYS}
    return nets, {k: v for k, v in state.items() if k in NORM_KEYS}
