"""The compression autoencoder (MONAI ``AutoencoderKL``) and the latent scale factor.

:class:`LatentAutoencoder` is the only place where the scale factor ``s`` is applied:
``encode`` returns ``s · mean(q(z|x))`` (what diffusion sees) and ``decode`` divides by ``s``.
The reference code hard-codes s = 0.8730; napari-ldae computes it from data at training time
(``s = 1 / std(latents)``) and stores it in the bundle.
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


class LatentAutoencoder(nn.Module):
    """A frozen ``AutoencoderKL`` with the latent scale factor applied on the way in and out."""

    def __init__(self, config: Mapping[str, Any], scale_factor: float = 1.0) -> None:
        super().__init__()
        self.config = autoencoder_config(config)
        self.net = build_autoencoder(self.config)
        self.scale_factor = float(scale_factor)
        self.net.requires_grad_(False)
        self.net.eval()

    def train(self, mode: bool = True) -> LatentAutoencoder:
        """The autoencoder is frozen: it stays in eval mode whatever the caller asks."""
        super().train(mode)
        self.net.eval()
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled latent mean ``s · μ(x)`` of volumes ``(B, 1, X, Y, Z)`` in [0, 1]."""
        h = self.net.encoder(x)
        return self.net.quant_conv_mu(h) * self.scale_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Volumes from scaled latents: ``AE.decode(z / s)``."""
        return self.net.decode(z / self.scale_factor)

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
