"""The latent ε-prediction UNet (stage 2) and its gradient-estimator branch (stage 3).

`LatentUNet` is a guided-diffusion-style UNet (scale-shift GroupNorm res blocks, res-block
up/down-sampling, legacy-order QKV attention; the blocks are in
:mod:`napari_ldae.core.unet_blocks`). `ShiftUNet` adds PDAE's gradient estimator: a new
middle block and a mirror of the output blocks, conditioned on the semantic code ``y`` by a second,
outer AdaGN, fed by the frozen encoder half. Module and parameter names follow the reference code
exactly, so official state dicts load as they are.

In 3D, down/up-sampling acts on the last two axes only (stride (1, 2, 2)), as in the reference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from napari_ldae.core.unet_blocks import (
    NORM_GROUPS,
    AttentionBlock,
    Blocks,
    ResBlock,
    conv_nd,
    normalization,
    timestep_embedding,
    zero_module,
)
from napari_ldae.errors import BundleError

__all__ = ["LatentUNet", "ShiftUNet", "UNetConfig"]

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
        blocks = nn.ModuleList([Blocks(conv_nd(cfg.dims, cfg.in_channels, ch, 3))])
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
        out_conv = zero_module(conv_nd(cfg.dims, ch, cfg.in_channels, 3))
        return nn.Sequential(normalization(ch), nn.SiLU(), out_conv)

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
