"""Tiny bundles and scans for the session and GUI tests (32³ model grid, 2 DDIM steps)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from nifti_factory import blob, make_affine

from napari_ldae.data.io import Scan

STEPS = {"encode": 2, "decode": 2, "preview": 1}


def tiny_bundle(out: Path, seed: int = 0) -> Path:
    """A random tiny bundle (32³ at 6 mm, 2-step defaults) whose decodes depend on y.

    ``presets.random_model`` keeps the zero-initialised output layers of the UNet's residual
    blocks, so the semantic code cannot change its decodes; they get small random weights here
    so that a manipulation visibly changes the volume.
    """
    import torch

    from napari_ldae.core.bundle import model_weights, save_bundle
    from napari_ldae.core.presets import random_model

    model, config = random_model("tiny", seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.unet.parameters():
            if p.dim() > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    config["steps"] = dict(STEPS)
    config["provenance"] = {"trained": False, "preset": "tiny", "seed": seed}
    return save_bundle(out, config, model_weights(model))


def tiny_scan(seed: int = 0, flips=(-1, 1, 1), shape=(30, 34, 28)) -> Scan:
    """A smooth blob at 6 mm in a non-RAS voxel order, near the model grid's size."""
    affine = make_affine((6.0, 6.0, 6.0), flips=flips, origin=(80.0, -90.0, -70.0))
    return Scan.from_array(blob(shape, seed=seed), affine)


def blank_cache(tmp_path: Path) -> Path:
    d = tmp_path / "cache"
    d.mkdir(exist_ok=True)
    return d


def volume_like(shape, value: float = 0.5) -> np.ndarray:
    return np.full(shape, value, dtype=np.float32)
