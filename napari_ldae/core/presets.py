"""Architecture presets: the paper's model, the CPU demo model and a seconds-fast tiny model.

A preset is a bundle config without weights. The trainer's YAML files name a preset and may
override any field; :func:`random_model` builds an untrained model from one (tests, benchmarks).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from napari_ldae.core import REFERENCE_SCALE_FACTOR
from napari_ldae.core.autoencoder import PAPER_AUTOENCODER

_SCHEDULE = {"type": "linear", "num_steps": 1000, "beta_start": 1e-4, "beta_end": 0.02}

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "name": "ldae-paper",
        "autoencoder": PAPER_AUTOENCODER,
        "scale_factor": REFERENCE_SCALE_FACTOR,
        "unet": {"in_channels": 3, "base_channels": 256, "channel_mult": [1, 2, 3],
                 "num_res_blocks": 2, "attention_resolutions": [2, 4], "num_heads": 1,
                 "head_channels": -1, "dropout": 0.1, "dims": 3, "latent_dim": 768},
        "encoder": {"backbone": "convnext",
                    "block_setting": [[96, 192, 3], [192, 384, 3], [384, 768, 27],
                                      [768, None, 3]],
                    "small_cnn_channels": [], "emb_dim": 768, "num_heads": 8,
                    "num_slices": 128, "dropout": 0.1},
        "preprocessing": {"orientation": "RAS", "spacing": [1.5, 1.5, 1.5],
                          "shape": [128, 160, 128], "intensity": "minmax"},
        "steps": {"encode": 50, "decode": 50, "preview": 10},
    },
    # Same field of view as the paper (192×240×192 mm) at 3 mm; latent 3×16×20×16 as the paper.
    # ~8 M parameters: 16 MB in a bundle stored in float16, fast enough for a CPU slider.
    "demo": {
        "name": "ldae-demo",
        "autoencoder": {"spatial_dims": 3, "in_channels": 1, "out_channels": 1,
                        "channels": [16, 32, 64], "latent_channels": 3, "num_res_blocks": 1,
                        "norm_num_groups": 16, "attention_levels": [False, False, False],
                        "with_encoder_nonlocal_attn": False,
                        "with_decoder_nonlocal_attn": False},
        "scale_factor": 1.0,
        "unet": {"in_channels": 3, "base_channels": 32, "channel_mult": [1, 2, 2],
                 "num_res_blocks": 1, "attention_resolutions": [4], "num_heads": 4,
                 "head_channels": -1, "dropout": 0.1, "dims": 3, "latent_dim": 128},
        "encoder": {"backbone": "small_cnn", "block_setting": None,
                    "small_cnn_channels": [32, 64, 128], "emb_dim": 128, "num_heads": 4,
                    "num_slices": 64, "dropout": 0.1},
        "preprocessing": {"orientation": "RAS", "spacing": [3.0, 3.0, 3.0],
                          "shape": [64, 80, 64], "intensity": "minmax"},
        "steps": {"encode": 50, "decode": 50, "preview": 10},
    },
    "tiny": {
        "name": "ldae-tiny",
        "autoencoder": {"spatial_dims": 3, "in_channels": 1, "out_channels": 1,
                        "channels": [8, 16, 16], "latent_channels": 3, "num_res_blocks": 1,
                        "norm_num_groups": 8, "attention_levels": [False, False, False],
                        "with_encoder_nonlocal_attn": False,
                        "with_decoder_nonlocal_attn": False},
        "scale_factor": 1.0,
        "unet": {"in_channels": 3, "base_channels": 32, "channel_mult": [1, 2],
                 "num_res_blocks": 1, "attention_resolutions": [2], "num_heads": 1,
                 "head_channels": -1, "dropout": 0.0, "dims": 3, "latent_dim": 16},
        "encoder": {"backbone": "small_cnn", "block_setting": None,
                    "small_cnn_channels": [8, 16], "emb_dim": 16, "num_heads": 2,
                    "num_slices": 32, "dropout": 0.0},
        "preprocessing": {"orientation": "RAS", "spacing": [6.0, 6.0, 6.0],
                          "shape": [32, 32, 32], "intensity": "minmax"},
        "steps": {"encode": 5, "decode": 5, "preview": 2},
    },
}


def preset(name: str) -> dict[str, Any]:
    """A deep copy of a preset config (``paper``, ``demo`` or ``tiny``)."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    config = copy.deepcopy(PRESETS[name])
    config.setdefault("schedule", dict(_SCHEDULE))
    config.setdefault("clamp_x0", True)
    config.setdefault("latent_norm", "scale")
    config.setdefault("directions", {})
    return config


def random_model(name_or_config: str | dict[str, Any] = "tiny", seed: int = 0,
                 directions: dict[str, str] | None = None, device: str = "cpu"):
    """An untrained :class:`LDAEModel` and its config. Layers that training would start at
    zero (output convolutions) get small random weights, so that decodes depend on y.

    ``directions`` maps names to meanings; each gets a random unit vector.
    """
    from napari_ldae.core.model import LDAEModel, build_networks

    config = preset(name_or_config) if isinstance(name_or_config, str) else name_or_config
    torch.manual_seed(seed)
    nets = build_networks(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # zero-initialised layers would make decodes independent of y
        for p in nets["unet"].parameters():
            if p.dim() > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    d = config["encoder"]["emb_dim"]
    semantic = {"mean": torch.randn(d) * 0.1, "std": torch.rand(d) + 0.5}
    directions = directions or {"AD": "toward AD", "age": "older"}
    for name, meaning in directions.items():
        semantic[f"direction.{name}"] = torch.nn.functional.normalize(torch.randn(d), dim=0)
        config["directions"][name] = {"meaning": meaning, "source": "random (untrained)"}
    model = LDAEModel.from_parts(config, nets, semantic, device=device)
    return model, config


def save_random_bundle(out, name: str = "tiny", seed: int = 0, overwrite: bool = False,
                       steps: dict[str, int] | None = None):
    """Write an untrained bundle (tests, benchmarks, GUI development)."""
    from napari_ldae.core.bundle import model_weights, save_bundle

    model, config = random_model(name, seed)
    config["provenance"] = {"trained": False, "preset": name, "seed": seed}
    if steps:
        config["steps"] = dict(steps)
    return save_bundle(out, config, model_weights(model), overwrite=overwrite)
