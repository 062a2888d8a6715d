"""Tests of the 2.5D semantic encoder (``napari_ldae.core.encoder``) and its slice networks
(``napari_ldae.core.slice_backbones``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from napari_ldae.core.encoder import (
    EncoderConfig,
    SemanticEncoder,
    drop_aliases,
    infer_block_setting,
    sinusoidal_table,
)
from napari_ldae.core.reference import load_semantic_encoder
from napari_ldae.core.slice_backbones import (
    CONVNEXT_TINY,
    ConvNeXt,
    convnext_state_from_torchvision,
    rgb_stem_to_gray,
    stochastic_depth,
)
from napari_ldae.errors import BundleError

FIXTURES = Path(__file__).parent / "fixtures"


def _small_config(**kw) -> EncoderConfig:
    base = dict(
        backbone="small_cnn", small_cnn_channels=(4, 8), emb_dim=8, num_heads=2, num_slices=6
    )
    return EncoderConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def reference():
    config = json.loads((FIXTURES / "semantic_encoder_tiny_config.json").read_text())
    state = load_file(FIXTURES / "semantic_encoder_tiny.safetensors")
    io = load_file(FIXTURES / "semantic_encoder_tiny_io.safetensors")
    return config, state, io


def test_reference_parity(reference):
    config, state, io = reference
    model = load_semantic_encoder(config, state)
    assert not model.training
    with torch.no_grad():
        y = model(io["volume"])
    assert y.shape == io["y_sem"].shape
    torch.testing.assert_close(y, io["y_sem"], atol=1e-5, rtol=0)
    torch.testing.assert_close(model.positional_encoding.pe, state["positional_encoding.pe"])


def test_block_setting_from_state_dict(reference):
    _, state, _ = reference
    assert infer_block_setting(state) == [(16, 32, 2), (32, None, 1)]


def test_paper_size_matches_reference_keys():
    expected = json.loads((FIXTURES / "semantic_encoder_paper_keys.json").read_text())
    with torch.device("meta"):
        model = SemanticEncoder(EncoderConfig.paper())
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(shapes) == list(expected["state_dict"])
    assert shapes == expected["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == 53_588_065


def test_small_cnn_forward_and_chunking():
    torch.manual_seed(0)
    model = SemanticEncoder(_small_config()).eval()
    volume = torch.rand(2, 1, 6, 16, 20)
    with torch.no_grad():
        full = model(volume)
        model.max_chunk = 5
        chunked = model(volume)
    assert full.shape == (2, 8)
    torch.testing.assert_close(chunked, full, atol=1e-6, rtol=0)


def test_alias_free_state_dict_loads():
    torch.manual_seed(0)
    src = SemanticEncoder(_small_config()).eval()
    canonical = src.canonical_state_dict()
    assert list(canonical) == list(drop_aliases(src.state_dict()))
    assert not any(k.startswith("slice_distributed.") for k in canonical)
    dst = SemanticEncoder(_small_config()).eval()
    dst.load_state_dict(canonical, strict=True)
    volume = torch.rand(1, 1, 6, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(dst(volume), src(volume))


def test_rgb_stem_to_gray():
    rgb = torch.randn(4, 3, 4, 4)
    gray = rgb_stem_to_gray(rgb)
    assert gray.shape == (4, 1, 4, 4)
    image = torch.rand(1, 1, 8, 8)
    torch.testing.assert_close(F.conv2d(image, gray), F.conv2d(image.expand(1, 3, 8, 8), rgb))
    setting = [(4, None, 1)]
    tv = {k: v for k, v in ConvNeXt(setting, in_channels=3).state_dict().items()}
    tv["classifier.2.weight"], tv["classifier.2.bias"] = torch.zeros(10, 4), torch.zeros(10)
    ConvNeXt(setting).load_state_dict(convnext_state_from_torchvision(tv), strict=True)


def test_convnext_output_and_stochastic_depth():
    net = ConvNeXt([(8, 16, 1), (16, None, 2)], stochastic_depth_prob=0.5).eval()
    assert net(torch.rand(3, 1, 32, 32)).shape == (3, 16)
    assert [b.stochastic_depth.p for b in net.features[3]] == [0.25, 0.5]
    x = torch.ones(1000, 2)
    torch.testing.assert_close(stochastic_depth(x, 0.5, training=False), x)
    dropped = stochastic_depth(x, 0.5, training=True)
    assert set(dropped[:, 0].tolist()) <= {0.0, 2.0}
    assert torch.equal(dropped[:, 0], dropped[:, 1])


def test_sinusoidal_table():
    pe = sinusoidal_table(5, 6)
    assert pe.shape == (1, 5, 6)
    torch.testing.assert_close(pe[0, :, 1], torch.cos(torch.arange(5.0)))


def test_config_round_trip():
    for config in (
        EncoderConfig.paper(),
        _small_config(),
        EncoderConfig("convnext", CONVNEXT_TINY, (), 768, 8, 16),
    ):
        data = json.loads(json.dumps(config.to_dict()))
        assert EncoderConfig.from_dict(data) == config


def test_bad_config_errors():
    with pytest.raises(BundleError, match=r"Unknown encoder configuration keys \['heads'\]"):
        EncoderConfig.from_dict({**_small_config().to_dict(), "heads": 3})
    with pytest.raises(BundleError, match="multiple of num_heads"):
        _small_config(num_heads=3)
    with pytest.raises(BundleError, match="last ConvNeXt width 768"):
        EncoderConfig("convnext", CONVNEXT_TINY, (), 512, 8, 16)
    with pytest.raises(BundleError, match="backbone must be"):
        EncoderConfig.from_dict({"backbone": "resnet"})
