"""The 2D networks the semantic encoder runs on every axial slice.

``ConvNeXt`` reproduces torchvision's module and state-dict layout (written here; torchvision is
not a dependency), so an ImageNet checkpoint loads after :func:`convnext_state_from_torchvision`.
``SmallCNN`` is a few conv stages for CPU-sized models.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: ``(in_ch, out_ch or None, num_blocks)`` per ConvNeXt stage.
BlockSetting = list[tuple[int, int | None, int]]

CONVNEXT_SMALL: BlockSetting = [(96, 192, 3), (192, 384, 3), (384, 768, 27), (768, None, 3)]
CONVNEXT_TINY: BlockSetting = [(96, 192, 3), (192, 384, 3), (384, 768, 9), (768, None, 3)]


# ----------------------------------------------------------------------------------------------
# ConvNeXt (torchvision layout)
# ----------------------------------------------------------------------------------------------


def stochastic_depth(x: Tensor, p: float, training: bool) -> Tensor:
    """Drop whole samples ("row" mode) with probability ``p``, rescaling the survivors."""
    if not training or p == 0.0:
        return x
    survival = 1.0 - p
    noise = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(survival)
    if survival > 0.0:
        noise.div_(survival)
    return x * noise


class StochasticDepth(nn.Module):
    """Module form of :func:`stochastic_depth` (no parameters)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return stochastic_depth(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an ``(N, C, H, W)`` tensor."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Permute(nn.Module):
    """``torch.permute`` as a module (keeps torchvision's ``block.N`` indices)."""

    def __init__(self, dims: Sequence[int]) -> None:
        super().__init__()
        self.dims = list(dims)

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(self.dims)


class CNBlock(nn.Module):
    """ConvNeXt block: depthwise 7×7, LayerNorm, MLP ×4, layer scale, stochastic depth."""

    def __init__(self, dim: int, layer_scale: float, sd_prob: float) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, bias=True),
            Permute([0, 2, 3, 1]),
            nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(dim, 4 * dim),
            nn.GELU(),
            nn.Linear(4 * dim, dim),
            Permute([0, 3, 1, 2]),
        )
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), float(layer_scale)))
        self.stochastic_depth = StochasticDepth(sd_prob)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.stochastic_depth(self.layer_scale * self.block(x))


class ConvNeXt(nn.Module):
    """Single-channel ConvNeXt with torchvision's state-dict layout and an identity head.

    ``block_setting`` lists ``(in_ch, out_ch or None, num_blocks)`` per stage. The output is the
    pooled, normalised feature vector of size ``out_dim`` (the last stage's width).
    """

    def __init__(
        self,
        block_setting: Sequence[tuple[int, int | None, int]],
        stochastic_depth_prob: float = 0.0,
        layer_scale: float = 1e-6,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        setting = [tuple(s) for s in block_setting]
        first = setting[0][0]
        stem = nn.Sequential(
            nn.Conv2d(in_channels, first, kernel_size=4, stride=4, bias=True),
            LayerNorm2d(first, eps=1e-6),
        )
        layers: list[nn.Module] = [stem]
        total = sum(s[2] for s in setting)
        block_id = 0
        for in_ch, out_ch, num in setting:
            stage = []
            for _ in range(num):
                sd_prob = stochastic_depth_prob * block_id / max(total - 1.0, 1.0)
                stage.append(CNBlock(in_ch, layer_scale, sd_prob))
                block_id += 1
            layers.append(nn.Sequential(*stage))
            if out_ch is not None:
                layers.append(
                    nn.Sequential(
                        LayerNorm2d(in_ch, eps=1e-6),
                        nn.Conv2d(in_ch, out_ch, kernel_size=2, stride=2),
                    )
                )
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        last = setting[-1][1] if setting[-1][1] is not None else setting[-1][0]
        self.out_dim = last
        self.classifier = nn.Sequential(LayerNorm2d(last, eps=1e-6), nn.Flatten(1), nn.Identity())
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)))


def rgb_stem_to_gray(weight: Tensor) -> Tensor:
    """Turn a 3-channel stem kernel ``(C, 3, k, k)`` into a 1-channel one by summing RGB."""
    if weight.ndim != 4:
        raise ValueError(f"expected a (C, in, k, k) conv weight, got shape {tuple(weight.shape)}")
    return weight.sum(dim=1, keepdim=True)


def convnext_state_from_torchvision(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Adapt a torchvision ImageNet ConvNeXt state dict to :class:`ConvNeXt` (grey stem, no
    final Linear), e.g. a ``convnext_small`` checkpoint the user has locally."""
    out = {k: v for k, v in state_dict.items() if not k.startswith("classifier.2.")}
    stem = "features.0.0.weight"
    if stem in out and out[stem].shape[1] == 3:
        out[stem] = rgb_stem_to_gray(out[stem])
    return out


# ----------------------------------------------------------------------------------------------
# Small CNN
# ----------------------------------------------------------------------------------------------


def _gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(channels, 8), channels)


class SmallCNN(nn.Module):
    """A small 2D slice CNN for CPU-sized models: stride-2 conv/GN/SiLU stages, global average
    pooling and a linear map to ``emb_dim``."""

    def __init__(self, channels: Sequence[int], emb_dim: int, in_channels: int = 1) -> None:
        super().__init__()
        stages = []
        prev = in_channels
        for ch in channels:
            stages.append(
                nn.Sequential(
                    nn.Conv2d(prev, ch, 3, stride=2, padding=1),
                    _gn(ch),
                    nn.SiLU(),
                    nn.Conv2d(ch, ch, 3, padding=1),
                    _gn(ch),
                    nn.SiLU(),
                )
            )
            prev = ch
        self.features = nn.Sequential(*stages)
        self.head = nn.Linear(prev, emb_dim)
        self.out_dim = emb_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))
