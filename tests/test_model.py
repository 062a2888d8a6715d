"""LDAEModel semantics on a tiny random model: determinism, identities, batching."""

from __future__ import annotations

import pytest
import torch

from napari_ldae.core.model import Codes
from napari_ldae.core.presets import random_model
from napari_ldae.core.progress import Progress

STEPS = 3
# Batched and one-by-one convolutions sum in different orders: float32 noise (measured
# 6e-6 at most on voxels in [0, 1]).
BATCH_ATOL = 2e-5


@pytest.fixture(scope="module")
def model():
    """A random tiny model without the x̂0 clamp: with random weights the clamp makes DDIM
    chaotic (x_T grows to ~80 and float noise is amplified 100×), which would hide the
    identities tested here. The clamp itself is tested against the reference fixtures."""
    m = random_model("tiny", seed=1)[0]
    m.clamp = False
    return m


@pytest.fixture(scope="module")
def volumes(model):
    g = torch.Generator().manual_seed(0)
    return torch.rand((2, 1, *model.input_shape), generator=g)


@pytest.fixture(scope="module")
def codes(model, volumes):
    return model.encode(volumes, STEPS)


def test_codes_shapes(model, codes):
    assert codes.y.shape == (2, model.semantic_dim)
    assert codes.x_T.shape == (2, *model.latent_shape)
    assert codes.steps == STEPS


def test_encode_decode_deterministic(model, volumes, codes):
    again = model.encode(volumes, STEPS)
    torch.testing.assert_close(again.y, codes.y, atol=0, rtol=0)
    torch.testing.assert_close(again.x_T, codes.x_T, atol=0, rtol=0)
    a, b = model.decode(codes, STEPS), model.decode(codes, STEPS)
    assert a.shape == volumes.shape
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0


def test_encode_accepts_unbatched_and_rejects_wrong_shape(model, volumes):
    single = model.encode(volumes[0, 0], STEPS)
    assert len(single) == 1
    with pytest.raises(ValueError, match="preprocessing contract"):
        model.encode(torch.rand(1, 1, 8, 8, 8), STEPS)


def test_manipulate_zero_strength_equals_reconstruction(model, codes):
    rec = model.decode(codes, STEPS)
    zero = model.manipulate(codes, "AD", 0.0, STEPS)
    torch.testing.assert_close(zero, rec, atol=1e-5, rtol=0)


def test_manipulation_moves_y_by_strength_sqrt_d(model, codes):
    edited = model.edit_codes(codes[0], "AD", [0.0, 2.0])
    std_y = (edited.y - model.semantic_mean) / model.semantic_std
    moved = (std_y[1] - std_y[0]).norm().item()
    assert moved == pytest.approx(2.0 * model.semantic_dim**0.5, rel=1e-4)
    torch.testing.assert_close(edited.x_T[0], edited.x_T[1])


def test_batched_manipulation_equals_one_by_one(model, codes):
    strengths = [-1.0, 0.5, 2.0]
    batched = model.manipulate(codes, "AD", strengths, STEPS)
    assert batched.shape[0] == len(codes) * len(strengths)
    for i in range(len(codes)):
        for j, s in enumerate(strengths):
            one = model.manipulate(codes[i], "AD", s, STEPS)
            torch.testing.assert_close(batched[i * len(strengths) + j], one[0],
                                       atol=BATCH_ATOL, rtol=0)


def test_max_batch_chunking_is_invisible(model, codes):
    before = model.max_batch
    try:
        model.max_batch = 1
        chunked = model.manipulate(codes, "AD", [0.0, 1.0], STEPS)
    finally:
        model.max_batch = before
    torch.testing.assert_close(chunked, model.manipulate(codes, "AD", [0.0, 1.0], STEPS),
                               atol=BATCH_ATOL, rtol=0)


def test_interpolation_endpoints(model, codes):
    a, b = codes[0], codes[1]
    out = model.interpolate(a, b, [0.0, 0.5, 1.0], STEPS)
    rec = model.decode(codes, STEPS)
    torch.testing.assert_close(out[0], rec[0], atol=BATCH_ATOL, rtol=0)
    torch.testing.assert_close(out[2], rec[1], atol=BATCH_ATOL, rtol=0)
    mid = model.interpolate(a, b, 0.5, STEPS)
    torch.testing.assert_close(mid[0], out[1], atol=BATCH_ATOL, rtol=0)
    ends = model.interpolate_codes(a, b, [0.0, 1.0])
    torch.testing.assert_close(ends.y, codes.y, atol=1e-6, rtol=0)
    torch.testing.assert_close(ends.x_T, codes.x_T, atol=1e-5, rtol=0)


def test_sample_is_seeded(model, codes):
    a = model.sample(codes.y[:1], seed=3, steps=STEPS)
    b = model.sample(codes.y[:1], seed=3, steps=STEPS)
    c = model.sample(codes.y[:1], seed=4, steps=STEPS)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.equal(a, c)
    assert model.sample(codes.y[:1], seed=0, n=2, steps=STEPS).shape[0] == 2


def test_unknown_direction_names_the_known_ones(model, codes):
    with pytest.raises(KeyError, match=r"AD \(toward AD\)"):
        model.manipulate(codes, "nope", 1.0, STEPS)


def test_progress_counts_every_network_call(model, volumes):
    model.max_batch = 1
    try:
        gen = model.iter_encode(volumes, STEPS)
        seen = []
        while True:
            try:
                seen.append(next(gen))
            except StopIteration as stop:
                codes = stop.value
                break
    finally:
        model.max_batch = 8
    assert seen[-1] == Progress(2 * STEPS, 2 * STEPS, "encoding")
    assert [p.step for p in seen] == list(range(1, 2 * STEPS + 1))
    assert isinstance(codes, Codes)


def test_frozen_parts_stay_in_eval(model):
    model.unet.train()
    model.autoencoder.train()
    assert not model.autoencoder.net.training
    assert not model.unet.input_blocks.training


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this torch")
def test_onednn_convolutions_match_stock_ones_and_keep_the_weights(model):
    from torch import nn

    from napari_ldae.core.device import OneDNNConv3d, use_onednn_convolutions

    assert any(isinstance(m, OneDNNConv3d) for m in model.unet.modules())
    assert any(isinstance(m, OneDNNConv3d) for m in model.autoencoder.modules())
    conv = nn.Conv3d(8, 16, 3, padding=1)
    x = torch.randn(1, 8, 6, 10, 8)  # one small volume: PyTorch would take slow_conv3d
    keys = list(conv.state_dict())
    with torch.no_grad():
        stock = conv(x)
        fast = use_onednn_convolutions(conv)(x)
    assert type(conv) is OneDNNConv3d and list(conv.state_dict()) == keys
    torch.testing.assert_close(fast, stock, rtol=1e-5, atol=1e-5)
    x.requires_grad_()
    conv(x).sum().backward()  # with gradients: the stock path, training is unchanged
    assert x.grad is not None
    assert type(use_onednn_convolutions(conv, False)) is nn.Conv3d
