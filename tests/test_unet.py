"""Latent UNet and gradient-estimator branch: reference parity, key layout, freezing, configs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from napari_ldae.core.reference import load_shift_unet
from napari_ldae.core.unet import LatentUNet, ShiftUNet, UNetConfig
from napari_ldae.core.unet_blocks import AttentionBlock
from napari_ldae.errors import BundleError

FIXTURES = Path(__file__).parent / "fixtures"
# The fixture itself carries float32 rounding error: a float64 evaluation of the same network
# differs from it by up to 1.4e-5 (this implementation in float32: 1.3e-5), so 1e-5 absolute is
# below the fixture's noise floor. A wrong layer gives errors of order 1e-2 or more.
PARITY_ATOL = 2e-5


@pytest.fixture(scope="module")
def tiny_config() -> dict:
    return json.loads((FIXTURES / "shift_unet_tiny_config.json").read_text())


@pytest.fixture(scope="module")
def tiny_io() -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / "shift_unet_tiny_io.safetensors")


@pytest.fixture(scope="module")
def tiny_model(tiny_config) -> ShiftUNet:
    return load_shift_unet(tiny_config, load_file(FIXTURES / "shift_unet_tiny.safetensors"))


@pytest.fixture()
def fresh(tiny_config) -> ShiftUNet:
    torch.manual_seed(0)
    return ShiftUNet(UNetConfig.from_reference(tiny_config["shift_unet"]))


def test_parity_with_reference(tiny_model, tiny_io):
    assert not tiny_model.training
    with torch.no_grad():
        eps, shift = tiny_model(tiny_io["x_t"], tiny_io["t"], tiny_io["y"])
    torch.testing.assert_close(eps, tiny_io["eps"], atol=PARITY_ATOL, rtol=0)
    torch.testing.assert_close(shift, tiny_io["grad"], atol=PARITY_ATOL, rtol=0)


def test_encoder_half_runs_once(tiny_model, tiny_io):
    calls = []
    handle = tiny_model.input_blocks[0].register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        tiny_model(tiny_io["x_t"], tiny_io["t"], tiny_io["y"])
    handle.remove()
    assert len(calls) == 1


def test_paper_size_keys_and_parameter_count():
    ref = json.loads((FIXTURES / "shift_unet_paper_keys.json").read_text())
    assert UNetConfig.from_reference(ref["config"]) == UNetConfig.paper()
    with torch.device("meta"):
        model = ShiftUNet(UNetConfig.paper())
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == ref["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == 865_339_142


def test_branch_keys(tiny_config, fresh):
    assert fresh.branch_keys() == tiny_config["unet_missing_keys_when_loading_shift_sd"]
    unet_keys = set(LatentUNet(fresh.config).state_dict())
    shift_keys = set(fresh.state_dict())
    assert unet_keys < shift_keys
    assert shift_keys - unet_keys == set(fresh.branch_keys())
    branch = {id(p) for p in fresh.branch_parameters()}
    assert branch == {id(p) for p in fresh.parameters() if p.requires_grad}


def test_fresh_shift_is_zero(fresh, tiny_io):
    with torch.no_grad():
        _, shift = fresh(tiny_io["x_t"], tiny_io["t"], tiny_io["y"])
    assert torch.count_nonzero(shift) == 0


def test_frozen_part_stays_eval_and_without_grad(fresh):
    fresh.train()
    fresh.requires_grad_(True)
    for name in ("time_embed", "input_blocks", "middle_block", "output_blocks", "out"):
        module = getattr(fresh, name)
        assert not any(m.training for m in module.modules()), name
        assert not any(p.requires_grad for p in module.parameters()), name
    for name in ("label_emb", "shift_middle_block", "shift_output_blocks", "shift_out"):
        assert all(m.training for m in getattr(fresh, name).modules()), name
    fresh.eval()
    assert not any(m.training for m in fresh.modules())


def test_gradients_reach_only_branch_and_code(fresh):
    x = torch.randn(1, 3, 4, 4, 4)
    y = torch.randn(1, fresh.config.latent_dim, requires_grad=True)
    for p in fresh.branch_parameters():  # zero-initialised convs would block the gradient to y
        torch.nn.init.normal_(p, std=0.05)
    eps, shift = fresh(x, torch.tensor([3]), y)
    assert not eps.requires_grad
    shift.square().sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert all(p.grad is None for p in fresh.time_embed.parameters())


def test_load_unet_state_dict(fresh):
    torch.manual_seed(1)
    unet = LatentUNet(fresh.config)
    for p in unet.parameters():
        torch.nn.init.normal_(p, std=0.01)
    fresh.load_unet_state_dict(unet.state_dict())
    torch.testing.assert_close(fresh.out[2].weight, unet.out[2].weight, rtol=0, atol=0)

    missing = dict(unet.state_dict())
    del missing["middle_block.1.qkv.weight"]
    with pytest.raises(BundleError, match=r"middle_block\.1\.qkv\.weight"):
        fresh.load_unet_state_dict(missing)
    with pytest.raises(BundleError, match=r"label_emb\.weight"):
        fresh.load_unet_state_dict(fresh.state_dict())


def test_reference_loader_rejects_mismatch(tiny_config, fresh):
    state = dict(fresh.state_dict())
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(BundleError, match=r"extra\.weight"):
        load_shift_unet(tiny_config, state)


def test_config_round_trip_and_errors(tiny_config):
    config = UNetConfig.from_reference(tiny_config["shift_unet"])
    assert config.channel_mult == (1, 2) and config.latent_dim == 16
    data = json.loads(json.dumps(config.to_dict()))
    assert UNetConfig.from_dict(data) == config
    assert UNetConfig.from_dict(UNetConfig.paper().to_dict()) == UNetConfig.paper()
    with pytest.raises(BundleError, match="colour"):
        UNetConfig.from_dict({**data, "colour": "blue"})
    with pytest.raises(BundleError, match="use_new_attention_order"):
        UNetConfig.from_reference({**tiny_config["shift_unet"], "use_new_attention_order": True})


def _legacy_attention(block: AttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """Guided-diffusion's legacy QKV attention, written out with einsum."""
    b, c, *spatial = x.shape
    x = x.reshape(b, c, -1)
    qkv = block.qkv(block.norm(x))
    ch = c // block.num_heads
    q, k, v = qkv.reshape(b * block.num_heads, 3 * ch, -1).split(ch, dim=1)
    weight = torch.einsum("bct,bcs->bts", q, k).div(math.sqrt(ch)).softmax(dim=-1)
    a = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, -1)
    return (x + block.proj_out(a)).reshape(b, c, *spatial)


def test_attention_matches_legacy_order():
    torch.manual_seed(2)
    block = AttentionBlock(64, num_heads=2)
    torch.nn.init.normal_(block.proj_out.weight, std=0.1)
    x = torch.randn(2, 64, 3, 4, 5)
    with torch.no_grad():
        torch.testing.assert_close(block(x), _legacy_attention(block, x), atol=1e-5, rtol=0)


def test_2d_unet_shape():
    config = UNetConfig(base_channels=32, channel_mult=(1, 2), num_res_blocks=1, dims=2)
    with torch.no_grad():
        eps = LatentUNet(config)(torch.randn(1, 3, 8, 8), torch.tensor([5]))
    assert eps.shape == (1, 3, 8, 8)
