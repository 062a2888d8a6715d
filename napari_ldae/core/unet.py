"""The latent ε-prediction UNet (stage 2) and its gradient-estimator branch (stage 3).

`LatentUNet` is a guided-diffusion-style UNet (scale-shift GroupNorm res blocks, res-block
up/down-sampling, legacy-order QKV attention). `ShiftUNet` adds PDAE's gradient estimator: a new
middle block and a mirror of the output blocks, conditioned on the semantic code ``y`` by a second,
outer AdaGN, fed by the frozen encoder half. Module and parameter names follow the reference code
exactly, so official state dicts load as they are.

In 3D, down/up-sampling acts on the last two axes only (stride (1, 2, 2)), as in the reference.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from napari_ldae.errors import BundleError

__all__ = [
    "LatentUNet",
    "ShiftUNet",
    "UNetConfig",
    "timestep_embedding",
]

#: Groups of every GroupNorm (guided-diffusion's ``normalization``).
NORM_GROUPS = 32
#: Top-level modules of `ShiftUNet` that form the gradient-estimator branch.
BRANCH_MODULES = ("label_emb", "shift_middle_block", "shift_output_blocks", "shift_out")
#: Top-level modules shared with `LatentUNet` (frozen in `ShiftUNet`).
FROZEN_MODULES = ("time_embed", "input_blocks", "middle_block", "output_blocks", "out")


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass
class UNetConfig:
    """Architecture of the latent UNet; the defaults are the paper's."""

    in_channels: int = 3
    base_channels: int = 256
    channel_mult: tuple[int, ...] = (1, 2, 3)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (2, 4)
    num_heads: int = 1
    head_channels: int = -1
    dropout: float = 0.1
    dims: int = 3
    latent_dim: int = 768

    def __post_init__(self) -> None:
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.attention_resolutions = tuple(int(r) for r in self.attention_resolutions)
        if self.dims not in (1, 2, 3):
            raise ValueError(f"dims must be 1, 2 or 3, got {self.dims}")
        if not self.channel_mult or self.num_res_blocks < 1:
            raise ValueError("channel_mult must be non-empty and num_res_blocks >= 1")
        for width in (self.base_channels * m for m in self.channel_mult):
            if width % NORM_GROUPS:
                raise ValueError(f"every level width must be a multiple of {NORM_GROUPS}: {width}")
            heads = self.num_heads if self.head_channels == -1 else self.head_channels
            if width % heads:
                raise ValueError(f"width {width} is not divisible by {heads} (attention heads)")

    @property
    def time_embed_dim(self) -> int:
        """Width of the time (and semantic) embedding: 4 × base."""
        return 4 * self.base_channels

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UNetConfig:
        """Inverse of `to_dict`; unknown keys or bad values raise `BundleError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise BundleError(
                f"Unknown UNet config keys {unknown}; expected a subset of {sorted(names)}."
            )
        try:
            return cls(**data)
        except (TypeError, ValueError) as err:
            raise BundleError(f"Invalid UNet config {dict(data)}: {err}") from err

    @classmethod
    def paper(cls) -> UNetConfig:
        """The paper's configuration (the defaults): 486,927,363 parameters in the UNet,
        865,339,142 with the shift branch."""
        return cls()

    @classmethod
    def from_reference(cls, ref: Mapping[str, Any]) -> UNetConfig:
        """Map the reference constructor arguments (``unet_args`` of the LDAE configs).

        ``latent_dim`` may be absent (the reference passes the encoder's ``emb_chans``, 768)."""
        args = dict(ref)
        if args.pop("use_new_attention_order", False):
            raise BundleError("use_new_attention_order=True is not supported (legacy order only).")
        if args.pop("learn_sigma", False):
            raise BundleError("learn_sigma=True is not supported (ε-prediction only).")
        unknown = sorted(set(args) - set(_REFERENCE_NAMES))
        if unknown:
            raise BundleError(f"Unknown reference UNet arguments {unknown}.")
        mapped = {_REFERENCE_NAMES[k]: v for k, v in args.items()}
        mapped.setdefault("dims", 2)  # the reference constructor's default
        return cls.from_dict(mapped)


_REFERENCE_NAMES = {
    "input_channel": "in_channels",
    "base_channel": "base_channels",
    "channel_multiplier": "channel_mult",
    "num_residual_blocks_of_a_block": "num_res_blocks",
    "attention_resolutions": "attention_resolutions",
    "num_heads": "num_heads",
    "head_channel": "head_channels",
    "dropout": "dropout",
    "dims": "dims",
    "latent_dim": "latent_dim",
}


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``[cos(t·f), sin(t·f)]`` of original timesteps: float32 ``(B, dim)``.

    Guided-diffusion's ``timestep_embedding``, computed the same way (float32) for parity."""
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=t.device) / half
    freqs = torch.exp(-math.log(max_period) * exponent)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype (autocast-safe)."""

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def _norm(channels: int) -> GroupNorm32:
    return GroupNorm32(NORM_GROUPS, channels)


def _conv(dims: int, c_in: int, c_out: int, kernel: int) -> nn.Module:
    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
    return conv(c_in, c_out, kernel, padding=kernel // 2)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _downsample(x: Tensor, dims: int) -> Tensor:
    """2× average pooling of the last ``min(dims, 2)`` axes."""
    kernel = (2,) if dims == 1 else (1,) * (dims - 2) + (2, 2)
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[dims - 1]
    return pool(x, kernel, kernel)


def _upsample(x: Tensor, dims: int) -> Tensor:
    """2× nearest upsampling of the last ``min(dims, 2)`` axes."""
    k = min(dims, 2)
    size = (*x.shape[2:-k], *(2 * s for s in x.shape[-k:]))
    return F.interpolate(x, size=size, mode="nearest")


class ResBlock(nn.Module):
    """Res block with scale-shift AdaGN on the time embedding; optionally a second, outer AdaGN on
    the semantic embedding (``emb_z_layers``: ``(1 + z_scale)·(GN(h)(1 + s) + b) + z_shift``) and
    optionally 2× down/up-sampling (``resample`` = ``"down"`` / ``"up"``)."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        dims: int,
        out_channels: int | None = None,
        resample: str | None = None,
        z_cond: bool = False,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.dims, self.resample, self.z_cond = dims, resample, z_cond
        self.in_layers = nn.Sequential(
            _norm(channels), nn.SiLU(), _conv(dims, channels, out_channels, 3)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        if z_cond:
            self.emb_z_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        self.out_layers = nn.Sequential(
            _norm(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            _zero(_conv(dims, out_channels, out_channels, 3)),
        )
        same = out_channels == channels
        self.skip_connection = nn.Identity() if same else _conv(dims, channels, out_channels, 1)

    def _resample(self, x: Tensor) -> Tensor:
        if self.resample == "down":
            return _downsample(x, self.dims)
        return _upsample(x, self.dims) if self.resample == "up" else x

    def _scale_shift(self, layers: nn.Module, emb: Tensor) -> tuple[Tensor, Tensor]:
        out = layers(emb)
        return out.view(*out.shape, *(1,) * self.dims).chunk(2, dim=1)

    def forward(self, x: Tensor, emb: Tensor, emb_z: Tensor | None = None) -> Tensor:
        norm, act, conv = self.in_layers
        h = act(norm(x))
        if self.resample is not None:
            h, x = self._resample(h), self._resample(x)
        h = conv(h)
        scale, shift = self._scale_shift(self.emb_layers, emb)
        out_norm, out_act, drop, out_conv = self.out_layers
        h = out_norm(h) * (1.0 + scale) + shift
        if self.z_cond:
            z_scale, z_shift = self._scale_shift(self.emb_z_layers, emb_z)
            h = (1.0 + z_scale) * h + z_shift
        return self.skip_connection(x) + out_conv(drop(out_act(h)))


class AttentionBlock(nn.Module):
    """Self-attention over all spatial positions (legacy QKV order: heads split before q/k/v).

    ``qkv`` and ``proj_out`` are kernel-1 ``Conv1d`` (reference layout), applied as matmuls on the
    token layout so that `F.scaled_dot_product_attention` receives contiguous heads.
    """

    def __init__(self, channels: int, num_heads: int, head_channels: int = -1) -> None:
        super().__init__()
        self.num_heads = num_heads if head_channels == -1 else channels // head_channels
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        tokens = self.norm(x).transpose(1, 2)  # (B, T, C)
        qkv = F.linear(tokens, self.qkv.weight[..., 0], self.qkv.bias)  # (B, T, 3C)
        ch = c // self.num_heads
        q, k, v = qkv.view(b, -1, self.num_heads, 3, ch).permute(3, 0, 2, 1, 4)  # (B, H, T, ch)
        a = F.scaled_dot_product_attention(q, k, v)
        a = a.transpose(1, 2).reshape(b, -1, c)  # (B, T, C)
        h = F.linear(a, self.proj_out.weight[..., 0], self.proj_out.bias)
        return (x + h.transpose(1, 2)).reshape(b, c, *spatial)


class Blocks(nn.Sequential):
    """Sequential container passing ``(emb, emb_z)`` to its res blocks."""

    def forward(self, x: Tensor, emb: Tensor, emb_z: Tensor | None = None) -> Tensor:
        for layer in self:
            x = layer(x, emb, emb_z) if isinstance(layer, ResBlock) else layer(x)
        return x


# --------------------------------------------------------------------------------------------
# The networks
# --------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    """Channel bookkeeping shared by the decoder and its shift mirror."""

    skip_channels: list[int] = field(default_factory=list)
    ch: int = 0  # channels at the bottom of the encoder
    ds: int = 1  # downsampling factor at the bottom


class LatentUNet(nn.Module):
    """Stage-2 ε-prediction UNet: ``forward(x_t, t) -> eps`` with ``t`` the original timesteps."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        c, emb_dim = config.base_channels, config.time_embed_dim
        self.time_embed = nn.Sequential(
            nn.Linear(c, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.input_blocks, self._plan = self._build_encoder()
        self.middle_block = self._build_middle(z_cond=False)
        self.output_blocks = self._build_decoder(z_cond=False)
        self.out = self._build_out()

    # -- construction -------------------------------------------------------------------------

    def _res(self, c_in: int, c_out: int, z_cond: bool = False, resample: str | None = None):
        cfg = self.config
        return ResBlock(c_in, cfg.time_embed_dim, cfg.dropout, cfg.dims, c_out, resample, z_cond)

    def _attn(self, channels: int) -> AttentionBlock:
        return AttentionBlock(channels, self.config.num_heads, self.config.head_channels)

    def _build_encoder(self) -> tuple[nn.ModuleList, _Plan]:
        cfg = self.config
        ch = cfg.channel_mult[0] * cfg.base_channels
        blocks = nn.ModuleList([Blocks(_conv(cfg.dims, cfg.in_channels, ch, 3))])
        plan = _Plan(skip_channels=[ch])
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [self._res(ch, mult * cfg.base_channels)]
                ch = mult * cfg.base_channels
                if plan.ds in cfg.attention_resolutions:
                    layers.append(self._attn(ch))
                blocks.append(Blocks(*layers))
                plan.skip_channels.append(ch)
            if level != len(cfg.channel_mult) - 1:
                blocks.append(Blocks(self._res(ch, ch, resample="down")))
                plan.skip_channels.append(ch)
                plan.ds *= 2
        plan.ch = ch
        return blocks, plan

    def _build_middle(self, z_cond: bool) -> Blocks:
        ch = self._plan.ch
        return Blocks(self._res(ch, ch, z_cond), self._attn(ch), self._res(ch, ch, z_cond))

    def _build_decoder(self, z_cond: bool) -> nn.ModuleList:
        cfg = self.config
        skips, ch, ds = list(self._plan.skip_channels), self._plan.ch, self._plan.ds
        blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [self._res(ch + skips.pop(), mult * cfg.base_channels, z_cond)]
                ch = mult * cfg.base_channels
                if ds in cfg.attention_resolutions:
                    layers.append(self._attn(ch))
                if level and i == cfg.num_res_blocks:
                    layers.append(self._res(ch, ch, z_cond, resample="up"))
                    ds //= 2
                blocks.append(Blocks(*layers))
        return blocks

    def _build_out(self) -> nn.Sequential:
        cfg = self.config
        ch = cfg.channel_mult[0] * cfg.base_channels
        return nn.Sequential(_norm(ch), nn.SiLU(), _zero(_conv(cfg.dims, ch, cfg.in_channels, 3)))

    # -- forward ------------------------------------------------------------------------------

    def encode(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, list[Tensor], Tensor]:
        """Encoder half: returns the bottom features, the skip features and the time embedding."""
        t_emb = timestep_embedding(t, self.config.base_channels)
        emb = self.time_embed(t_emb.to(self.time_embed[0].weight.dtype))
        skips, h = [], x_t
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        return h, skips, emb

    @staticmethod
    def _decode(
        middle: Blocks,
        outputs: nn.ModuleList,
        out: nn.Module,
        h: Tensor,
        skips: Sequence[Tensor],
        emb: Tensor,
        emb_z: Tensor | None = None,
    ) -> Tensor:
        h = middle(h, emb, emb_z)
        for block, skip in zip(outputs, reversed(skips), strict=True):
            h = block(torch.cat([h, skip], dim=1), emb, emb_z)
        return out(h)

    def decode(self, h: Tensor, skips: Sequence[Tensor], emb: Tensor) -> Tensor:
        """Decoder half (middle block, output blocks, ``out``): returns ε."""
        return self._decode(self.middle_block, self.output_blocks, self.out, h, skips, emb)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        """Predict the noise ε of ``x_t`` at original timesteps ``t`` (long, ``(B,)``)."""
        return self.decode(*self.encode(x_t, t))


class ShiftUNet(LatentUNet):
    """Frozen `LatentUNet` plus PDAE's gradient-estimator branch.

    ``forward(x_t, t, y) -> (eps, shift)``: the frozen encoder half runs once and feeds both the
    frozen decoder (ε) and the branch (shift G, exactly 0 at initialisation). The frozen part never
    requires grad and stays in eval mode; `train` only switches the branch.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__(config)
        self.label_emb = nn.Linear(config.latent_dim, config.time_embed_dim)
        self.shift_middle_block = self._build_middle(z_cond=True)
        self.shift_output_blocks = self._build_decoder(z_cond=True)
        self.shift_out = self._build_out()
        for name in FROZEN_MODULES:
            getattr(self, name).requires_grad_(False)
        self.train(self.training)

    def _modules_of(self, names: Sequence[str]) -> Iterator[nn.Module]:
        return (getattr(self, n) for n in names)

    def train(self, mode: bool = True) -> ShiftUNet:
        """Set the branch's mode; the frozen part always stays in eval mode."""
        super().train(mode)
        for module in self._modules_of(FROZEN_MODULES):
            module.train(False)
        return self

    def requires_grad_(self, requires_grad: bool = True) -> ShiftUNet:
        """Change ``requires_grad`` of the branch only; the frozen part stays without grad."""
        for p in self.branch_parameters():
            p.requires_grad_(requires_grad)
        return self

    def branch_parameters(self) -> Iterator[nn.Parameter]:
        """The trainable parameters (the gradient-estimator branch)."""
        for module in self._modules_of(BRANCH_MODULES):
            yield from module.parameters()

    def branch_keys(self) -> list[str]:
        """Sorted state-dict keys of the branch (absent from a `LatentUNet` state dict)."""
        prefixes = tuple(f"{n}." for n in BRANCH_MODULES)
        return sorted(k for k in self.state_dict() if k.startswith(prefixes))

    def load_unet_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        """Load a stage-2 `LatentUNet` state dict into the frozen part (exact key match)."""
        expected = set(self.state_dict()) - set(self.branch_keys())
        _check_keys(state_dict, expected, "stage-2 UNet")
        _load(self, state_dict, strict=False)

    def shift(self, h: Tensor, skips: Sequence[Tensor], emb: Tensor, y: Tensor) -> Tensor:
        """The gradient-estimator branch on the outputs of `encode`: the shift G for ``y``."""
        return self._decode(self.shift_middle_block, self.shift_output_blocks, self.shift_out,
                            h, skips, emb, self.label_emb(y))

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(eps, shift)`` for ``x_t`` at original timesteps ``t``, semantic code ``y``."""
        h, skips, emb = self.encode(x_t, t)
        return self.decode(h, skips, emb), self.shift(h, skips, emb, y)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _check_keys(state_dict: Mapping[str, Tensor], expected: set[str], what: str) -> None:
    missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise BundleError(
            f"The {what} state dict does not match the architecture: "
            f"missing keys {missing[:20]}{' …' if len(missing) > 20 else ''}, "
            f"unexpected keys {unexpected[:20]}{' …' if len(unexpected) > 20 else ''}. "
            "Check that the weights and the configuration belong together."
        )


def _load(model: nn.Module, state_dict: Mapping[str, Tensor], strict: bool, assign: bool = False):
    try:
        model.load_state_dict(dict(state_dict), strict=strict, assign=assign)
    except RuntimeError as err:  # shape mismatches
        raise BundleError(f"Cannot load the UNet weights: {err}") from err
