"""Metrics shared by the trainer and the evaluation command (plain torch/numpy, no sklearn).

Binary classification metrics take labels in {0, 1} (1 = positive class, AD) and scores
(probabilities or logits: only their order matters for ROC-AUC; predictions are
``score >= threshold``). Undefined values (a ratio with a zero denominator, ROC-AUC with one
class) are ``nan``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor | list


#: SSIM window of the reference code (GenerativeModels ``SSIMMetric(kernel_size=4)``).
SSIM_KERNEL = 4

def _np(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def confusion(labels: ArrayLike, predictions: ArrayLike) -> tuple[int, int, int, int]:
    """(TP, FP, TN, FN) of binary predictions."""
    y, p = _np(labels) > 0.5, _np(predictions) > 0.5
    return int((y & p).sum()), int((~y & p).sum()), int((~y & ~p).sum()), int((y & ~p).sum())


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties count ½."""
    y, s = _np(labels) > 0.5, _np(scores)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return math.nan
    ranks = _average_ranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank (Mann–Whitney U)."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_vals = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_vals[j + 1] == sorted_vals[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def binary_metrics(labels: ArrayLike, scores: ArrayLike, threshold: float = 0.5) -> dict:
    """ACC, precision, recall, F1, MCC and ROC-AUC of scores against binary labels."""
    y, s = _np(labels), _np(scores)
    tp, fp, tn, fn = confusion(y, s >= threshold)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    mcc_den = math.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    return {
        "accuracy": _ratio(tp + tn, len(y)),
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "mcc": _ratio(tp * tn - fp * fn, mcc_den),
        "roc_auc": roc_auc(y, s),
        "n": len(y),
        "n_positive": int((y > 0.5).sum()),
    }


def regression_metrics(targets: ArrayLike, predictions: ArrayLike) -> dict:
    """MAE and RMSE (in the targets' unit)."""
    err = _np(predictions) - _np(targets)
    if not len(err):
        return {"mae": math.nan, "rmse": math.nan, "n": 0}
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err**2).mean())),
            "n": len(err)}


def semantic_spread(codes: torch.Tensor) -> float:
    """How much semantic codes ``(N, d)`` differ between scans: the mean over dimensions of
    their standard deviation across scans, over their mean magnitude. An encoder that has
    collapsed (the same y for every brain, so the decoder cannot use it) scores near 0."""
    codes = codes.float()
    if codes.ndim != 2 or len(codes) < 2:
        raise ValueError(f"need (N ≥ 2, d) codes, got {tuple(codes.shape)}")
    return float(codes.std(dim=0).mean() / codes.abs().mean().clamp_min(1e-12))


def ssim(pred: torch.Tensor, target: torch.Tensor, kernel_size: int = SSIM_KERNEL,
         data_range: float = 1.0) -> torch.Tensor:
    """3D SSIM per volume (B,) of ``(B, 1, X, Y, Z)`` tensors (MONAI, Gaussian window σ 1.5)."""
    from monai.metrics import SSIMMetric

    metric = SSIMMetric(spatial_dims=3, data_range=data_range, win_size=kernel_size,
                        reduction="none")
    return metric(pred.float(), target.float()).reshape(-1)


def ssim_and_masked(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                    kernel_size: int = SSIM_KERNEL, data_range: float = 1.0,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`ssim` per volume (B,), and the same map averaged over ``mask``'s voxels only,
    from one computation of the map (the one ``SSIMMetric`` averages).

    MONAI's map covers the windows that fit in the volume; the mask is cropped alike.
    """
    from monai.metrics.regression import compute_ssim_and_cs

    k = [kernel_size] * 3
    ssim_map, _ = compute_ssim_and_cs(pred.float(), target.float(), 3, k, [1.5] * 3, data_range,
                                      "gaussian", 0.01, 0.03)
    start = [(n - m) // 2 for n, m in zip(target.shape[2:], ssim_map.shape[2:], strict=True)]
    inside = mask[(..., *(slice(a, a + m) for a, m in zip(start, ssim_map.shape[2:],
                                                           strict=True)))].float()
    masked = (ssim_map * inside).flatten(1).sum(1) / inside.flatten(1).sum(1).clamp_min(1.0)
    return ssim_map.flatten(1).mean(1), masked
