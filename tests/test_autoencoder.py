"""The GenerativeModels autoencoder fixture through MONAI core, and the scale factor."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from napari_ldae.core.autoencoder import (
    PAPER_AUTOENCODER,
    LatentAutoencoder,
    build_autoencoder,
    downsampling_factor,
)

FIXTURES = Path(__file__).parent / "fixtures"
KEYS = json.loads((FIXTURES / "aekl_generative_keys.json").read_text())


def _tiny() -> LatentAutoencoder:
    ae = LatentAutoencoder(KEYS["config_tiny"], scale_factor=1.0)
    ae.load_generative_state_dict(load_file(FIXTURES / "aekl_generative_tiny.safetensors"))
    return ae


def test_generative_fixture_outputs_match():
    ae = _tiny()
    io = load_file(FIXTURES / "aekl_generative_tiny_io.safetensors")
    with torch.inference_mode():
        z_mu, z_sigma = ae.net.encode(io["x"])
        torch.testing.assert_close(z_mu, io["z_mu"], atol=1e-5, rtol=0)
        torch.testing.assert_close(z_sigma, io["z_sigma"], atol=1e-5, rtol=0)
        torch.testing.assert_close(ae.encode(io["x"]), io["z_mu"], atol=1e-5, rtol=0)
        torch.testing.assert_close(ae.decode(io["z_mu"]), io["decoded_from_mu"],
                                   atol=1e-5, rtol=0)


def test_scale_factor_applied_once_each_way():
    ae = _tiny()
    io = load_file(FIXTURES / "aekl_generative_tiny_io.safetensors")
    scaled = LatentAutoencoder(KEYS["config_tiny"], scale_factor=0.5)
    scaled.net.load_state_dict(ae.net.state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(scaled.encode(io["x"]), 0.5 * io["z_mu"], atol=1e-5, rtol=0)
        torch.testing.assert_close(scaled.decode(0.5 * io["z_mu"]), io["decoded_from_mu"],
                                   atol=1e-5, rtol=0)


def test_frozen_autoencoder_stays_in_eval_mode():
    ae = _tiny().train()
    assert not ae.net.training
    assert not any(p.requires_grad for p in ae.parameters())


def test_paper_config_matches_official_keys():
    with torch.device("meta"):
        net = build_autoencoder(PAPER_AUTOENCODER)
    # The official file uses GenerativeModels names; MONAI's converter maps them. Build the
    # mapped key set the same way load_old_state_dict does and compare shapes.
    old = {k: torch.empty(v, device="meta") for k, v in KEYS["state_dict_paper"].items()}
    ours = net.state_dict()
    net.load_old_state_dict(old, verbose=False)  # raises on any missing/unexpected key
    assert len(ours) > 0
    assert downsampling_factor(PAPER_AUTOENCODER) == 8


def test_incomplete_generative_weights_are_refused():
    import pytest

    from napari_ldae.errors import BundleError

    sd = load_file(FIXTURES / "aekl_generative_tiny.safetensors")
    ae = LatentAutoencoder(KEYS["config_tiny"])
    broken = dict(sd)
    broken.pop(next(k for k in broken if "postconv" not in k and k.startswith("decoder")))
    broken["encoder.bogus.weight"] = torch.zeros(1)
    with pytest.raises(BundleError, match="unknown keys"):
        ae.load_generative_state_dict(broken)
    missing = {k: v for k, v in sd.items() if not k.startswith("decoder.blocks.0")}
    with pytest.raises(BundleError, match="tensors"):
        ae.load_generative_state_dict(missing)
