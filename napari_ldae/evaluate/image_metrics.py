"""Per-volume image metrics of the paper's tables: 3D SSIM, MSE and (optional) LPIPS.

Volumes are ``(B, 1, X, Y, Z)`` tensors in [0, 1]. SSIM is MONAI's ``SSIMMetric`` (Gaussian
window, σ 1.5, data range 1) with the reference code's window of 4 voxels
(``SSIMMetric(spatial_dims=3, data_range=1.0, kernel_size=4)`` in GenerativeModels, the
package the paper's numbers were computed with). LPIPS is the reference's fake-3D SqueezeNet
LPIPS, available only from a local weights file (nothing is downloaded).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from napari_ldae.evaluate import metrics

#: SSIM window of the reference code (GenerativeModels ``kernel_size=4``).
SSIM_KERNEL = metrics.SSIM_KERNEL

VolumeMetric = Callable[[torch.Tensor, torch.Tensor], list[float]]


def ssim(pred: torch.Tensor, target: torch.Tensor, kernel_size: int = SSIM_KERNEL) -> list[float]:
    """3D SSIM (data range 1) of each volume of a batch."""
    pred, target = _pair(pred, target)
    return [float(v) for v in metrics.ssim(pred, target, kernel_size=kernel_size)]


def ssim_and_head(pred: torch.Tensor, target: torch.Tensor,
                  kernel_size: int = SSIM_KERNEL) -> tuple[list[float], list[float]]:
    """:func:`ssim`, and the same over the head's voxels only (``target`` > 0), which a clean
    background cannot lift; one SSIM map for both."""
    pred, target = _pair(pred, target)
    whole, head = metrics.ssim_and_masked(pred, target, target > 0, kernel_size)
    return [float(v) for v in whole], [float(v) for v in head]


def mse(pred: torch.Tensor, target: torch.Tensor) -> list[float]:
    """Mean squared error of each volume of a batch."""
    pred, target = _pair(pred, target)
    return [float(v) for v in ((pred - target) ** 2).flatten(1).mean(1)]


def lpips_metric(weights: str | Path | None) -> tuple[VolumeMetric | None, str | None]:
    """The LPIPS metric from local weights, or ``(None, reason)`` when it cannot be built."""
    if not weights:
        return None, "no LPIPS weights given (--lpips-weights FILE); nothing is downloaded"
    try:
        from napari_ldae.evaluate.perceptual import perceptual_loss

        loss = perceptual_loss(str(weights))
    except Exception as err:  # missing lpips/torchvision/lightning, or a wrong file
        return None, f"LPIPS unavailable: {err}"
    if loss is None:  # pragma: no cover - weights is non-empty here
        return None, "LPIPS unavailable"

    @torch.inference_mode()
    def lpips(pred: torch.Tensor, target: torch.Tensor) -> list[float]:
        pred, target = _pair(pred, target)
        net = loss.to(pred.device)
        return [float(net(p[None], t[None])) for p, t in zip(pred, target, strict=True)]

    return lpips, None


def summary(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """Mean, standard deviation and count of the finite values (``None`` when there are none)."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if not arr.size:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(arr.mean()), "std": float(arr.std()), "n": int(arr.size)}


def _pair(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if pred.shape != target.shape or pred.dim() != 5:
        raise ValueError(f"expected two (B, 1, X, Y, Z) batches of one shape, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    return pred.float(), target.to(pred.device).float()
