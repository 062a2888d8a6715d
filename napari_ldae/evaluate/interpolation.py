"""The interpolation section of ``napari-ldae evaluate``: every (start, target, end) visit
triplet of a subject, α = (t_target − t_start)/(t_end − t_start) from the months, decoded and
compared with the autoencoder reconstruction of the real target (as the paper), beside copying
the nearest visit (its autoencoder reconstruction), by time gap (end − start) and prediction gap
(target − start)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from napari_ldae.core.progress import ProgressGen
from napari_ldae.data.cohort import ScanRecord
from napari_ldae.evaluate import image_metrics as im
from napari_ldae.evaluate.context import Context, SubjectResult, score, skipped, task
from napari_ldae.evaluate.options import EvaluateOptions

KEYS = ("ssim_mean", "copy_baseline_ssim_mean")


def iter_subject(ctx: Context, records: list[ScanRecord], codes, ae: torch.Tensor,
                 label: str) -> ProgressGen[list[dict[str, float]]]:
    """Every (start, target, end) triplet of one subject, against the AE reconstruction."""
    rows: list[dict[str, float]] = []
    months = [r.months for r in records]
    for (i, k), targets in triplets(months).items():
        alphas = [(months[j] - months[i]) / (months[k] - months[i]) for j in targets]
        gen = ctx.model.iter_interpolate(codes[i], codes[k], alphas, ctx.options.decode_steps)
        vol = yield from task(gen, f"{label}: interpolate {months[i]:g}→{months[k]:g} months")
        ref = ae[targets]
        nearest = [i if months[j] - months[i] <= months[k] - months[j] else k for j in targets]
        ours, copy = score(ctx, vol, ref), score(ctx, ae[nearest], ref)
        for n, j in enumerate(targets):
            rows.append({"time_gap": months[k] - months[i], "prediction_gap": months[j] - months[i],
                         "alpha": alphas[n], **{m: v[n] for m, v in ours.items()},
                         **{f"copy_{m}": v[n] for m, v in copy.items()}})
    return rows


def triplets(months: Sequence[float]) -> dict[tuple[int, int], list[int]]:
    """Valid visit triplets: (start, end) → targets strictly between them in months."""
    n = len(months)
    out: dict[tuple[int, int], list[int]] = {}
    for i in range(n):
        for k in range(i + 2, n):
            between = [j for j in range(i + 1, k) if months[i] < months[j] < months[k]]
            if between:
                out[(i, k)] = between
    return out


def section(results: list[SubjectResult], opts: EvaluateOptions,
            notes: dict[str, str]) -> dict[str, Any]:
    if not opts.runs("interpolation"):
        return skipped(notes, "interpolation", KEYS)
    rows = [row for r in results for row in r.triplets]
    out: dict[str, Any] = {"steps": opts.decode_steps, "n_triplets": len(rows),
                           "n_subjects": sum(1 for r in results if r.triplets),
                           "reference": "autoencoder reconstruction of the real target visit",
                           "copy_baseline": "autoencoder reconstruction of the visit nearest "
                                            "in months to the target (start on ties)"}
    out |= _triplet_means(rows)
    if not rows:
        for key in KEYS:
            notes[f"interpolation.{key}"] = ("no valid visit triplets (subjects need 3 visits "
                                             "at distinct months)")
        return out
    out["beats_copy_fraction"] = float(np.mean([r["ssim"] > r["copy_ssim"] for r in rows]))
    for gap in ("time_gap", "prediction_gap"):
        out[f"by_{gap}"] = {f"{g:g}": _triplet_means([r for r in rows if r[gap] == g])
                            for g in sorted({r[gap] for r in rows})}
    return out


def _triplet_means(rows: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(rows)}
    for metric in ("ssim", "mse", "lpips"):
        if rows and metric not in rows[0]:
            continue
        out[f"{metric}_mean"] = im.summary(r[metric] for r in rows)["mean"]
        out[f"copy_baseline_{metric}_mean"] = im.summary(r[f"copy_{metric}"] for r in rows)["mean"]
    return out
