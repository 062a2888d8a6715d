"""The extrapolation section of ``napari-ldae evaluate``: a subject's later visits predicted from
its earlier ones and measured against the truth.

For every evaluated subject with 3 or more visits, the last visit is left out (and, with 4 or
more, also the last two); the trajectory (:mod:`napari_ldae.core.trajectory`) is fitted to the
earlier visits' codes and decoded at the held-out dates, once per y rule (x_T: the default
"hold"; the continued slerp was measured far worse, see ``docs/reproducing-the-paper.md``).
Compared with:

- **images**: SSIM and MSE against the autoencoder reconstruction of the real held-out scan (as
  the interpolation section and the paper), beside copying the last earlier visit (its
  autoencoder reconstruction);
- **ventricle volume** against the cohort's true ``ventricle_ml``, measured as the region volumes
  measure it (:mod:`napari_ldae.data.regions`): on the prediction itself, and as the product
  shows it, the last visit's measured volume plus the predicted change (prediction − the model's
  own decode of the trajectory at the last earlier visit's date, same batch and DDIM steps);
  beside two baselines, copying the last visit's measured volume and a least-squares line
  through the earlier visits' measured volumes. Measuring the autoencoder reconstruction of the
  real held-out scan gives the ceiling.

Rows are grouped by horizon, months from the last earlier visit to the held-out one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from napari_ldae.core.model import Codes
from napari_ldae.core.progress import ProgressGen
from napari_ldae.core.trajectory import DEFAULT_X_T_RULE, DEFAULT_Y_RULE, Y_RULES, fit_trajectory
from napari_ldae.data.cohort import ScanRecord
from napari_ldae.errors import LDAEError
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

#: The y rules compared, each with the default x_T rule.
RULES = Y_RULES
KEYS = (f"{DEFAULT_Y_RULE}_ssim_mean", "copy_ssim_mean",
        f"{DEFAULT_Y_RULE}_ventricle_abs_error_ml_mean",
        f"{DEFAULT_Y_RULE}_change_ventricle_abs_error_ml_mean",
        "copy_ventricle_abs_error_ml_mean", "linear_ventricle_abs_error_ml_mean")
#: Horizon groups: name → (lowest, highest) months from the last earlier visit, inclusive.
HORIZONS = {"6": (0.0, 6.0), "12": (6.0 + 1e-9, 12.0), "13-23": (12.0 + 1e-9, 24.0 - 1e-9),
            "24+": (24.0, math.inf)}
_ROW_INFO = ("subject", "held_out", "horizon", "n_inputs", "months", "truth_ml",
             "true_change_ml", "fit_unexplained")


def held_out_counts(n_visits: int) -> list[int]:
    """How many last visits are left out in turn: 1 with 3+ visits, also 2 with 4+."""
    return [k for k in (1, 2) if n_visits - k >= 2]


def horizon_group(months: float) -> str:
    return next(name for name, (lo, hi) in HORIZONS.items() if lo <= months <= hi)


# ----------------------------------------------------------------------------- one subject
def iter_subject(ctx: Context, records: list[ScanRecord], codes: Codes, ae: torch.Tensor,
                 vent: Ventricles | None, label: str) -> ProgressGen[list[dict]]:
    """Every held-out case of one subject: one row per held-out visit (``vent``: its
    :func:`~napari_ldae.evaluate.context.measured_ventricles`)."""
    months = [float(r.months) for r in records]
    measure = _ventricles(vent, months)
    rows: list[dict[str, Any]] = []
    for k in held_out_counts(len(records)):
        n = len(records) - k
        targets = list(range(n, len(records)))
        dates = [months[j] for j in targets]
        try:
            fits = [fit_trajectory(codes[:n], months[:n], DEFAULT_X_T_RULE, rule)
                    for rule in RULES]
        except LDAEError as err:  # duplicate dates
            ctx.notes[f"extrapolation.{records[0].subject}"] = str(err)
            return rows
        # each rule's own decode at the last earlier visit first: where its change starts
        gen = ctx.model.iter_decode(Codes.cat([f.codes_at([months[n - 1], *dates])
                                               for f in fits]), ctx.options.decode_steps)
        decoded = yield from task(gen, f"{label}: predict month(s) "
                                       f"{', '.join(f'{d:g}' for d in dates)} from {n} visits")
        decoded = decoded.cpu().reshape(len(fits), 1 + len(targets), *decoded.shape[1:])
        decoded, start = decoded[:, 1:], decoded[:, 0]
        ref = ae[targets]
        copy = score(ctx, ae[[n - 1] * len(targets)], ref)
        scores = {rule: score(ctx, decoded[i], ref) for i, rule in enumerate(RULES)}
        for m, j in enumerate(targets):
            row: dict[str, Any] = {"subject": records[0].subject, "held_out": k,
                                   "horizon": months[j] - months[n - 1], "n_inputs": n,
                                   "months": months[j],
                                   "fit_unexplained": fits[0].unexplained}
            for rule in RULES:
                row |= {f"{rule}_{metric}": v[m] for metric, v in scores[rule].items()}
            row |= {f"copy_{metric}": v[m] for metric, v in copy.items()}
            if measure is not None:
                row |= measure(n, j, {rule: (decoded[i, m, 0].numpy(), start[i, 0].numpy())
                                      for i, rule in enumerate(RULES)})
            rows.append(row)
    return rows


def _ventricles(vent: Ventricles | None, months: list[float]):
    """``measure(n, j, {rule: (prediction, start)})`` → the ventricle rows of held-out visit
    ``j`` predicted from the first ``n`` visits (``start``: the decode at visit ``n − 1``'s
    date), or None when the cohort has no true volumes to compare with."""
    if vent is None:
        return None
    truth, real, recon = vent.truth, vent.real, vent.recon
    starts: dict[tuple[str, int], float] = {}  # (rule, n) → the start's volume, measured once

    def measure(n: int, j: int, predictions: Mapping[str, tuple[np.ndarray, np.ndarray]]
                ) -> dict[str, float]:
        if truth[j] is None:
            return {}
        line = np.polyfit(months[:n], real[:n], 1)
        out = {"truth_ml": truth[j], "copy_ventricle_error_ml": real[n - 1] - truth[j],
               "linear_ventricle_error_ml": float(np.polyval(line, months[j])) - truth[j],
               "ceiling_ventricle_error_ml": recon[j] - truth[j]}
        if truth[n - 1] is not None:
            out["true_change_ml"] = truth[j] - truth[n - 1]
        for rule, (volume, start) in predictions.items():
            predicted = vent.measure(volume, n - 1)
            if (rule, n) not in starts:
                starts[rule, n] = vent.measure(start, n - 1)
            out[f"{rule}_ventricle_error_ml"] = predicted - truth[j]
            out[f"{rule}_change_ventricle_error_ml"] = (real[n - 1] + predicted
                                                        - starts[rule, n] - truth[j])
        return out

    return measure


# ----------------------------------------------------------------------------- the section
def section(results: list[SubjectResult], ctx: Context, notes: dict[str, str]) -> dict[str, Any]:
    if not ctx.options.runs("extrapolation"):
        return skipped(notes, "extrapolation", KEYS)
    rows = [row for r in results for row in r.extrapolations]
    out: dict[str, Any] = {
        "steps": ctx.options.decode_steps, "y_rules": list(RULES),
        "default_y_rule": DEFAULT_Y_RULE, "x_T_rule": DEFAULT_X_T_RULE,
        "n_predictions": len(rows),
        "n_subjects": sum(1 for r in results if r.extrapolations),
        "held_out": "the last visit (3+ visits), and the last two (4+ visits)",
        "reference": "autoencoder reconstruction of the real held-out visit",
        "copy_baseline": "the last earlier visit (its autoencoder reconstruction; its measured "
                         "ventricle volume)",
        "linear_baseline": "least-squares line in time through the earlier visits' measured "
                           "ventricle volumes",
        "change": "the last visit's measured volume plus the predicted change (prediction − "
                  "the same rule's decode at the last visit's date, same DDIM steps)",
        "ceiling": "ventricles measured on the autoencoder reconstruction of the real held-out "
                   "visit"}
    if not rows:
        for key in KEYS:
            notes[f"extrapolation.{key}"] = ("no subject with 3 or more visits at distinct "
                                             "months")
        return out | dict.fromkeys(KEYS)
    out |= means(rows)
    if not any("truth_ml" in r for r in rows):
        for key in KEYS[2:]:
            out[key] = None
            notes.setdefault(f"extrapolation.{key}", notes.get(
                "ventricles", "the cohort has no ventricle_ml column"))
    out["predictions"] = rows
    out["by_horizon"] = {name: means(group) for name in HORIZONS
                         if (group := [r for r in rows if horizon_group(r["horizon"]) == name])}
    return out


def means(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means of every metric over rows: ``*_error_ml`` as mean absolute error and bias."""
    out: dict[str, Any] = {"n": len(rows),
                           "horizon_mean": im.summary(r["horizon"] for r in rows)["mean"]}
    for key in dict.fromkeys(k for r in rows for k in r):
        if key not in _ROW_INFO and not key.endswith("_error_ml"):
            out[f"{key}_mean"] = im.summary(r.get(key) for r in rows)["mean"]
    out |= error_means(rows)
    if any("true_change_ml" in r for r in rows):
        out["true_change_ml_mean"] = im.summary(r.get("true_change_ml") for r in rows)["mean"]
    return out
