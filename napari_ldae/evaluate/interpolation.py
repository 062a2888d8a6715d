"""The interpolation section of ``napari-ldae evaluate``: every (start, target, end) visit
triplet of a subject, α = (t_target − t_start)/(t_end − t_start) from the months, by time gap
(end − start) and prediction gap (target − start). Against the autoencoder reconstruction of the
real target (as the paper):

- the **decode** of the interpolated codes (the paper's measure);
- the interpolation **carried** onto the nearest visit, as the product shows it on a scan
  (:mod:`napari_ldae.operations_transfer`, intensity): that visit plus the model's change,
  decode(α) − decode at that visit's end (α = 0 or 1, its reconstruction, same DDIM steps);
- **copying** the nearest visit.

Where the cohort has true ``ventricle_ml``, the same three against it (the decode measured, the
nearest visit's measured volume plus the decoded change, and that volume alone), and the line
between the two end visits' measured volumes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from napari_ldae.core.progress import ProgressGen
from napari_ldae.data.cohort import ScanRecord
from napari_ldae.evaluate import image_metrics as im
from napari_ldae.evaluate.context import (
    Context,
    SubjectResult,
    Ventricles,
    error_means,
    score,
    skipped,
    task,
)
from napari_ldae.evaluate.options import EvaluateOptions

KEYS = ("ssim_mean", "copy_baseline_ssim_mean", "carried_ssim_mean",
        "carried_ventricle_abs_error_ml_mean", "copy_ventricle_abs_error_ml_mean")
_VENTRICLE_KEYS = KEYS[3:]


def iter_subject(ctx: Context, records: list[ScanRecord], codes, ae: torch.Tensor,
                 vent: Ventricles | None, label: str) -> ProgressGen[list[dict[str, float]]]:
    """Every (start, target, end) triplet of one subject (``vent``: its :func:`~napari_ldae.
    evaluate.context.measured_ventricles`)."""
    rows: list[dict[str, float]] = []
    months = [r.months for r in records]
    for (i, k), targets in triplets(months).items():
        alphas = [(months[j] - months[i]) / (months[k] - months[i]) for j in targets]
        gen = ctx.model.iter_interpolate(codes[i], codes[k], [0.0, *alphas, 1.0],
                                         ctx.options.decode_steps)
        vol = yield from task(gen, f"{label}: interpolate {months[i]:g}→{months[k]:g} months")
        vol = vol.cpu().float()
        ends, vol = {i: vol[0], k: vol[-1]}, vol[1:-1]
        ref = ae[targets].float()
        nearest = [i if months[j] - months[i] <= months[k] - months[j] else k for j in targets]
        carried = torch.stack([ae[v].float() + vol[n] - ends[v] for n, v in enumerate(nearest)])
        ours, copy = score(ctx, vol, ref), score(ctx, ae[nearest], ref)
        moved = score(ctx, carried, ref)
        end_ml = {} if vent is None else {v: vent.measure(e, v) for v, e in ends.items()}
        for n, j in enumerate(targets):
            row = {"time_gap": months[k] - months[i], "prediction_gap": months[j] - months[i],
                   "alpha": alphas[n], **{m: v[n] for m, v in ours.items()},
                   **{f"copy_{m}": v[n] for m, v in copy.items()},
                   **{f"carried_{m}": v[n] for m, v in moved.items()}}
            if vent is not None and vent.truth[j] is not None:
                near, truth, real = nearest[n], vent.truth[j], vent.real
                decoded = vent.measure(vol[n], near)
                row |= {"ventricle_error_ml": decoded - truth,
                        "carried_ventricle_error_ml": real[near] + decoded - end_ml[near] - truth,
                        "copy_ventricle_error_ml": real[near] - truth,
                        "linear_ventricle_error_ml": (real[i] + alphas[n] * (real[k] - real[i])
                                                      - truth)}
            rows.append(row)
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
                                            "in months to the target (start on ties)",
                           "carried": "the nearest visit's autoencoder reconstruction (its "
                                      "measured ventricle volume) plus the decoded change from "
                                      "that visit's end of the interpolation",
                           "linear_baseline": "the measured ventricle volumes of the two end "
                                              "visits, interpolated linearly in time"}
    out |= _triplet_means(rows)
    if not rows:
        for key in KEYS:
            notes[f"interpolation.{key}"] = ("no valid visit triplets (subjects need 3 visits "
                                             "at distinct months)")
        return dict.fromkeys(KEYS) | out
    if out.get("carried_ventricle_abs_error_ml_mean") is None:
        for key in _VENTRICLE_KEYS:
            out[key] = None
            notes.setdefault(f"interpolation.{key}", notes.get(
                "ventricles", "the cohort has no ventricle_ml column"))
    out["beats_copy_fraction"] = float(np.mean([r["ssim"] > r["copy_ssim"] for r in rows]))
    out["carried_beats_copy_fraction"] = float(np.mean([r["carried_ssim"] > r["copy_ssim"]
                                                        for r in rows]))
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
        out[f"carried_{metric}_mean"] = im.summary(r[f"carried_{metric}"] for r in rows)["mean"]
    return out | error_means(rows)
