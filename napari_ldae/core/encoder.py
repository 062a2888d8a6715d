"""The 2.5D semantic encoder: a 2D CNN per axial slice, then attention pooling over slices.

``SemanticEncoder`` maps ``(B, 1, slices, H, W)`` to ``(B, emb)`` with the key names of the
reference ``AttentionSemanticEncoder``; ``EncoderConfig`` is its architecture. The slice
networks themselves (ConvNeXt, SmallCNN) are in :mod:`napari_ldae.core.slice_backbones`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor, nn

from napari_ldae.core.slice_backbones import CONVNEXT_SMALL, BlockSetting, ConvNeXt, SmallCNN
from napari_ldae.errors import BundleError

ALIAS_PREFIX = "slice_distributed.module."
BACKBONE_PREFIX = "backbone."


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


#: What the semantic encoder reads: the scan's axial slices (the paper's 2.5D encoder) or its
#: normalised latent (:class:`LatentEncoder`, not the paper's).
ENCODER_INPUTS = ("slices", "latent")


@dataclass
class EncoderConfig:
    """Architecture of the semantic encoder (JSON-safe through ``to_dict`` / ``from_dict``)."""

    backbone: str = "small_cnn"
    block_setting: BlockSetting | None = None
    small_cnn_channels: tuple[int, ...] = (32, 64, 128)
    emb_dim: int = 128
    num_heads: int = 4
    num_slices: int = 128
    dropout: float = 0.1
    attn_dropout: float = 0.0
    stochastic_depth: float = 0.0
    input: str = "slices"

    def __post_init__(self) -> None:
        if self.block_setting is not None:
            self.block_setting = [
                (int(a), None if b is None else int(b), int(n)) for a, b, n in self.block_setting
            ]
        self.small_cnn_channels = tuple(int(c) for c in self.small_cnn_channels)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`BundleError` saying what is inconsistent."""
        problems = []
        if self.input not in ENCODER_INPUTS:
            problems.append(f"input must be one of {ENCODER_INPUTS}, not {self.input!r}")
        if self.backbone not in ("convnext", "small_cnn"):
            problems.append(f"backbone must be 'convnext' or 'small_cnn', not {self.backbone!r}")
        if self.backbone == "convnext":
            if not self.block_setting:
                problems.append("backbone 'convnext' needs a block_setting")
            elif (last := _last_width(self.block_setting)) != self.emb_dim:
                problems.append(f"emb_dim {self.emb_dim} must equal the last ConvNeXt width {last}")
        if self.backbone == "small_cnn" and not self.small_cnn_channels:
            problems.append("backbone 'small_cnn' needs small_cnn_channels")
        if self.emb_dim <= 0 or self.num_heads <= 0 or self.emb_dim % self.num_heads:
            problems.append(
                f"emb_dim {self.emb_dim} must be a multiple of num_heads {self.num_heads}"
            )
        if self.num_slices <= 0:
            problems.append(f"num_slices must be positive, not {self.num_slices}")
        if problems:
            raise BundleError("Invalid encoder configuration: " + "; ".join(problems) + ".")

    @classmethod
    def paper(cls) -> EncoderConfig:
        """The paper's encoder: ConvNeXt-Small, 768-d, 8 heads, 128 slices."""
        return cls(
            backbone="convnext",
            block_setting=list(CONVNEXT_SMALL),
            small_cnn_channels=(),
            emb_dim=768,
            num_heads=8,
            num_slices=128,
        )

    def to_dict(self) -> dict:
        """JSON-safe dictionary (tuples become lists)."""
        d = asdict(self)
        if self.block_setting is not None:
            d["block_setting"] = [list(s) for s in self.block_setting]
        d["small_cnn_channels"] = list(self.small_cnn_channels)
        return d

    @classmethod
    def from_dict(cls, data: Mapping) -> EncoderConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`BundleError`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BundleError(
                f"Unknown encoder configuration keys {unknown}; expected some of "
                f"{sorted(known)}. The bundle may come from a newer napari-ldae."
            )
        try:
            return cls(**dict(data))
        except (TypeError, ValueError) as exc:
            raise BundleError(f"Invalid encoder configuration: {exc}.") from exc

    @classmethod
    def from_reference(cls, config: Mapping, state_dict: Mapping[str, Tensor]) -> EncoderConfig:
        """Config of a reference ``AttentionSemanticEncoder``; the ConvNeXt block setting is read
        from the state dict's shapes."""
        setting = infer_block_setting(state_dict)
        return cls(
            backbone="convnext",
            block_setting=setting,
            small_cnn_channels=(),
            emb_dim=int(config.get("emb_chans", _last_width(setting))),
            num_heads=int(config.get("num_heads", 8)),
            num_slices=int(config.get("seq_len", state_dict["positional_encoding.pe"].shape[1])),
            attn_dropout=float(config.get("attn_dropout", 0.0)),
        )


def _last_width(setting: BlockSetting) -> int:
    in_ch, out_ch, _ = setting[-1]
    return in_ch if out_ch is None else out_ch


def infer_block_setting(state_dict: Mapping[str, Tensor]) -> BlockSetting:
    """Read ``(in_ch, out_ch, num_blocks)`` per stage from ConvNeXt keys under ``backbone.``."""
    pattern = re.compile(r"^backbone\.backbone\.features\.(\d+)\.(\d+)\.layer_scale$")
    blocks: dict[int, dict[int, int]] = {}
    for key, value in state_dict.items():
        if m := pattern.match(key):
            blocks.setdefault(int(m[1]), {})[int(m[2])] = int(value.shape[0])
    if not blocks:
        raise BundleError("No ConvNeXt blocks found under 'backbone.backbone.features.*'.")
    setting: BlockSetting = []
    for idx in sorted(blocks):
        down = state_dict.get(f"backbone.backbone.features.{idx + 1}.1.weight")
        out_ch = None if down is None else int(down.shape[0])
        setting.append((blocks[idx][0], out_ch, len(blocks[idx])))
    return setting


# ----------------------------------------------------------------------------------------------
# Semantic encoder
# ----------------------------------------------------------------------------------------------


class SliceBackbone(nn.Module):
    """Wraps the 2D network as ``.backbone`` (the reference's extra nesting level)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x)


class SliceDistributed(nn.Module):
    """Applies a 2D module to every slice of ``(B, C, S, H, W)`` → ``(B, S, F)``.

    The ``B·S`` images go through as one batch, split in chunks of at most ``max_chunk``.
    """

    def __init__(self, module: nn.Module, max_chunk: int | None = None) -> None:
        super().__init__()
        self.module = module
        self.max_chunk = max_chunk

    def forward(self, x: Tensor) -> Tensor:
        b, c, s, h, w = x.shape
        images = x.transpose(1, 2).reshape(b * s, c, h, w)
        chunk = self.max_chunk or images.shape[0]
        feats = [self.module(part) for part in images.split(chunk)]
        return torch.cat(feats).reshape(b, s, -1)


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the fixed sinusoidal table ``pe`` ``(1, slices, emb)``, then dropout."""

    def __init__(self, emb_dim: int, num_slices: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("pe", sinusoidal_table(num_slices, emb_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(x + self.pe[:, : x.shape[1]])


def sinusoidal_table(length: int, dim: int) -> Tensor:
    """Transformer sinusoid table ``(1, length, dim)``: sin on even, cos on odd channels."""
    pos = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : dim // 2]
    return pe.unsqueeze(0)


class SoftAttention(nn.Module):
    """Softmax-weighted mean over slices with scores from ``Linear(emb → 1)``."""

    def __init__(self, emb_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(emb_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        weights = torch.softmax(self.linear(x), dim=1)
        return (weights * x).sum(dim=1)


def build_backbone(config: EncoderConfig) -> nn.Module:
    """The 2D slice network named by ``config.backbone``."""
    if config.backbone == "convnext":
        return ConvNeXt(config.block_setting or [], config.stochastic_depth)
    return SmallCNN(config.small_cnn_channels, config.emb_dim)


class SemanticEncoder(nn.Module):
    """2.5D semantic encoder: ``(B, 1, slices, H, W)`` → ``(B, emb)``.

    Per-slice features ``x`` (+ sinusoidal positions, dropout) are pooled by soft attention into a
    global query ``q``; ``Q = Lin(q)``, ``K = Lin(x)``, ``V = Lin(x)`` feed a multi-head cross
    attention of that single query over the slices, followed by a LayerNorm. The slice network is
    registered twice (``backbone`` and ``slice_distributed.module``), as in the reference, so the
    state dict lists its weights under both names; loading accepts either name alone.
    """

    def __init__(self, config: EncoderConfig, max_chunk: int | None = None) -> None:
        super().__init__()
        self.config = config
        e = config.emb_dim
        self.backbone = SliceBackbone(build_backbone(config))
        self.slice_distributed = SliceDistributed(self.backbone, max_chunk)
        self.positional_encoding = SinusoidalPositionalEncoding(
            e, config.num_slices, config.dropout
        )
        self.query_projection = nn.Linear(e, e)
        self.key_projection = nn.Linear(e, e)
        self.value_projection = nn.Linear(e, e)
        self.soft_attention = SoftAttention(e)
        self.cross_attention = nn.MultiheadAttention(
            e, config.num_heads, dropout=config.attn_dropout, batch_first=True
        )
        self.layer_norm_after_attention = nn.LayerNorm(e)
        self.register_load_state_dict_pre_hook(_fill_aliases)

    needs_latent = False

    def code(self, volume: Tensor, latent: Tensor | None = None) -> Tensor:
        """y of volumes ``(B, 1, X, Y, Z)`` (their axial slices; the latent is not used)."""
        return self(axial_slices(volume))

    @property
    def max_chunk(self) -> int | None:
        """Most slice images sent through the backbone at once (``None``: all of them)."""
        return self.slice_distributed.max_chunk

    @max_chunk.setter
    def max_chunk(self, value: int | None) -> None:
        self.slice_distributed.max_chunk = value

    def forward(self, volume: Tensor) -> Tensor:
        if volume.ndim != 5 or volume.shape[1] != 1:
            raise ValueError(f"expected (B, 1, slices, H, W), got {tuple(volume.shape)}")
        if volume.shape[2] > self.config.num_slices:
            raise ValueError(
                f"{volume.shape[2]} slices given; this encoder takes at most "
                f"{self.config.num_slices}"
            )
        x = self.positional_encoding(self.slice_distributed(volume))
        q = self.soft_attention(x).unsqueeze(1)
        out, _ = self.cross_attention(
            self.query_projection(q),
            self.key_projection(x),
            self.value_projection(x),
            need_weights=False,
        )
        return self.layer_norm_after_attention(out.squeeze(1))

    def canonical_state_dict(self) -> dict[str, Tensor]:
        """State dict with every tensor once (no ``slice_distributed.module.*`` aliases)."""
        return drop_aliases(self.state_dict())


def axial_slices(volume: Tensor) -> Tensor:
    """``(B, 1, X, Y, Z)`` RAS volumes → ``(B, 1, Z, X, Y)``: the encoder's input, axial slices
    first (the one place the slice axis is chosen, for training and inference alike)."""
    return volume.permute(0, 1, 4, 2, 3)


def drop_aliases(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Remove the ``slice_distributed.module.*`` duplicates of the ``backbone.*`` weights."""
    return {k: v for k, v in state_dict.items() if not k.startswith(ALIAS_PREFIX)}


def _fill_aliases(module: nn.Module, state_dict: dict, prefix: str, *_args) -> None:
    """Load-state-dict pre-hook: supply whichever of the two backbone names is missing."""
    main, alias = prefix + BACKBONE_PREFIX, prefix + ALIAS_PREFIX
    for key in list(state_dict):
        if key.startswith(main):
            state_dict.setdefault(alias + key[len(main) :], state_dict[key])
        elif key.startswith(alias):
            state_dict.setdefault(main + key[len(alias) :], state_dict[key])


class LatentEncoder(nn.Module):
    """y = W·z + b of the normalised latent, ``(B, C, x, y, z)`` → ``(B, emb)`` (``input:
    latent``, not the paper's): a code that starts from everything the latent carries, where the
    2.5D encoder's was measured unused (docs/demo-model.md)."""

    needs_latent = True

    def __init__(self, config: EncoderConfig, latent_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.config = config
        self.projection = nn.Linear(math.prod(latent_shape), config.emb_dim)

    def forward(self, latent: Tensor) -> Tensor:
        return self.projection(latent.flatten(1))

    def code(self, volume: Tensor | None, latent: Tensor) -> Tensor:
        """y of the volumes' normalised latents (the volumes are not used)."""
        return self(latent)

    def canonical_state_dict(self) -> dict[str, Tensor]:
        return self.state_dict()


def build_encoder(model: Mapping) -> nn.Module:
    """The semantic encoder of a model config (its ``encoder``; for ``input: latent`` also its
    ``autoencoder`` and ``preprocessing``, which give the latent's shape)."""
    config = EncoderConfig.from_dict(model["encoder"])
    if config.input == "latent":
        from napari_ldae.core.autoencoder import latent_shape

        return LatentEncoder(config, latent_shape(model["autoencoder"],
                                                  model["preprocessing"]["shape"]))
    return SemanticEncoder(config)
