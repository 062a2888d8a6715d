"""Building blocks of the latent UNet, with guided-diffusion's module and parameter names.

Scale-shift GroupNorm res blocks (optionally with a second, outer AdaGN on the semantic code and
2× down/up-sampling of the last two axes), legacy-order QKV self-attention, the sinusoidal
timestep embedding, and the ``Blocks`` container that passes the embeddings to its res blocks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Groups of every GroupNorm (guided-diffusion's ``normalization``).
NORM_GROUPS = 32


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


def normalization(channels: int) -> GroupNorm32:
    """GroupNorm32 with :data:`NORM_GROUPS` groups (guided-diffusion's ``normalization``)."""
    return GroupNorm32(NORM_GROUPS, channels)


def conv_nd(dims: int, c_in: int, c_out: int, kernel: int) -> nn.Module:
    """A ``dims``-D convolution with "same" padding for an odd ``kernel``."""
    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
    return conv(c_in, c_out, kernel, padding=kernel // 2)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` (layers whose output starts at 0); returns it."""
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
            normalization(channels), nn.SiLU(), conv_nd(dims, channels, out_channels, 3)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        if z_cond:
            self.emb_z_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        self.out_layers = nn.Sequential(
            normalization(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_module(conv_nd(dims, out_channels, out_channels, 3)),
        )
        same = out_channels == channels
        self.skip_connection = nn.Identity() if same else conv_nd(dims, channels, out_channels, 1)

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
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

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
