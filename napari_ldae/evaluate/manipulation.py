"""The manipulation section of ``napari-ldae evaluate``: each subject's baseline scan edited toward
AD at each strength, then

- the **structures** the cohort has a true volume for (``ventricle_ml``, ``hippocampus_ml``):
  the region measurement (:mod:`napari_ldae.data.regions`) validated on the real scans (on the
  model grid, on their autoencoder reconstructions, and on the cohort's files at their own
  resolution), then measured on the edits, which should enlarge the ventricles and shrink the
  hippocampi;
- the same structures' **change by deformation** (:mod:`napari_ldae.data.tbm`) from the strength-0
  decode to each edit, validated on each subject's first and last real visits against the true
  change;
- **known change**: the baseline's ventricles enlarged by a known field (up to 2 mm), read on the
  scan and on its autoencoder reconstruction: the fraction of a change the autoencoder keeps;
- **identity**: at the largest strength, whether each edit is still closer (MSE) to its own
  subject's reconstruction than to every other evaluated subject's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_ldae.core.progress import ProgressGen
from napari_ldae.errors import LDAEError
from napari_ldae.evaluate import image_metrics as im
from napari_ldae.evaluate.context import Context, SubjectResult, keep, number, skipped, task


@dataclass(frozen=True)
class Structure:
    column: str  # the cohort's true volume (ml)
    sign: int  # expected change along "toward AD": +1 grows, −1 shrinks
    validation_key: str  # where the measurement's validation goes under "manipulation"
    curves_key: str  # where the per-subject curves go
    note_key: str  # where a failed measurement is explained
    method: str
    region: str  # its name in the region volumes and napari_ldae.data.tbm


def measure(volume: np.ndarray, affine: np.ndarray) -> dict[str, float]:
    """Both structures (ml) of one volume, by region name: the measurement the region volumes of
    every input and result use (one pass of the structure network)."""
    from napari_ldae.data.regions import structure_volumes

    return structure_volumes(volume, affine)


NETWORK = "structure network (napari_ldae.data.structures)"
STRUCTURES = {
    "ventricle": Structure("ventricle_ml", +1, "segmentation_validation", "per_subject",
                           "manipulation.segmentation", NETWORK, "lateral_ventricles"),
    "hippocampus": Structure("hippocampus_ml", -1, "hippocampus_validation",
                             "hippocampus_per_subject", "manipulation.hippocampus_measurement",
                             NETWORK, "hippocampal_region"),
}
#: The change by deformation: its keys carry this after the structure's name.
DEFORMATION = "deformation"
DEFORMATION_METHOD = ("template region pulled through the demons deformation between two "
                      "volumes (napari_ldae.data.tbm)")
KEYS = ("ventricle_monotonic_fraction", "ventricle_change_ml_per_unit",
        "hippocampus_monotonic_fraction", "hippocampus_change_ml_per_unit",
        "hippocampus_deformation_monotonic_fraction",
        "hippocampus_deformation_change_ml_per_unit", "identity_kept_fraction")


def truths(records) -> tuple[str, ...]:
    """The structures some of ``records`` carry a true volume for."""
    return tuple(name for name, s in STRUCTURES.items()
                 if any(number(r.extra.get(s.column)) is not None for r in records))


# ----------------------------------------------------------------------------- one subject
def iter_subject(ctx: Context, x: torch.Tensor, ae: torch.Tensor, affines: list, codes,
                 res: SubjectResult, label: str) -> ProgressGen[None]:
    """Structures of the real scans (validation), then the baseline edited toward AD."""
    from napari_ldae.data.io import read_scan

    measured = list(ctx.truths)
    if measured:
        files = [read_scan(rec.path) for rec in res.records]
        try:
            volumes = [{"measured": measure(x[v, 0].numpy(), affines[v]),
                        "measured_ae": measure(ae[v, 0].numpy(), affines[v]),
                        "measured_file": measure(files[v].data, files[v].affine)}
                       for v in range(len(res.records))]
        except (ValueError, LDAEError) as err:  # not MNI-aligned, or no nilearn
            for name in measured:
                ctx.notes[STRUCTURES[name].note_key] = f"{name} measurement impossible: {err}"
            measured = []
        for name in measured:
            s = STRUCTURES[name]
            res.structures[name] = [
                {"truth": number(rec.extra.get(s.column)),
                 **{key: ml[s.region] for key, ml in volumes[v].items()},
                 "spacing_mm": round(float(np.mean(files[v].zooms)), 3)}
                for v, rec in enumerate(res.records)]
        if "ventricle" in measured:
            try:
                res.known_change = _known_change(ctx, x[0, 0].numpy(), affines[0],
                                                 volumes[0]["measured"], volumes[0]["measured_ae"])
            except ValueError as err:  # the grid does not cover the template's ventricles
                ctx.notes["manipulation.ventricle_known_change"] = f"known change impossible: {err}"
    deformed = _deformation_of_visits(x, affines, res, measured, ctx.notes)
    if ctx.direction is None:
        return
    strengths = list(ctx.options.strengths)
    gen = ctx.model.iter_manipulate(codes[0], ctx.direction, strengths, ctx.options.decode_steps)
    edits = yield from task(gen, f"{label}: edit toward AD")
    edit_ml = [measure(e[0].cpu().numpy(), affines[0]) for e in edits] if measured else []
    for name in measured:
        res.edit_ml[name] = [ml[STRUCTURES[name].region] for ml in edit_ml]
    if deformed and 0.0 in strengths:
        start = edits[strengths.index(0.0), 0].cpu().numpy()
        changes = [_changes(start, e[0].cpu().numpy(), affines[0], deformed) for e in edits]
        for name in deformed:
            res.edit_ml[f"{name}_{DEFORMATION}"] = [c[name] for c in changes]
    res.edit = keep(edits[int(np.argmax(strengths))])
    if res.reconstruction is None and 0.0 in strengths:  # strength 0 decodes the codes as they are
        res.reconstruction = keep(edits[strengths.index(0.0)])


def _known_change(ctx: Context, scan: np.ndarray, affine: np.ndarray, scan_ml: dict,
                  ae_ml: dict) -> dict[str, float]:
    """The known ventricle enlargement (``data.known_change``) of the baseline scan, measured on
    the scan and on its autoencoder reconstruction: how much of a change the autoencoder keeps."""
    from napari_ldae.data.known_change import pulled_back, ventricle_enlargement

    region = STRUCTURES["ventricle"].region
    field = ventricle_enlargement(affine, scan.shape)
    grown = pulled_back(scan, affine, field, affine)
    grown_ae = ctx.model.autoencode(torch.from_numpy(grown)[None, None])[0, 0].numpy()
    return {"scan": measure(grown, affine)[region] - scan_ml[region],
            "autoencoder": measure(grown_ae, affine)[region] - ae_ml[region]}


def _changes(before: np.ndarray, after: np.ndarray, affine: np.ndarray,
             names: Sequence[str]) -> dict[str, float]:
    from napari_ldae.data.tbm import structure_changes

    changes = structure_changes(before, after, affine, tuple(STRUCTURES[n].region for n in names))
    return {name: changes[STRUCTURES[name].region] for name in names}


def _deformation_of_visits(x: torch.Tensor, affines: list, res: SubjectResult,
                           measured: Sequence[str], notes: dict[str, str]) -> list[str]:
    """The structures' change by deformation from the first real visit to the last, against
    their true change (``res.deformation``); the structures it works on."""
    if not measured:
        return []
    try:
        changes = _changes(x[0, 0].numpy(), x[-1, 0].numpy(), affines[0], measured) \
            if len(x) > 1 else {}
    except (ValueError, LDAEError) as err:
        notes[f"manipulation.{DEFORMATION}"] = f"change by deformation impossible: {err}"
        return []
    for name, change in changes.items():
        first, last = (res.structures[name][v]["truth"] for v in (0, -1))
        if first is not None and last is not None:
            res.deformation[name] = {"truth": last - first, "measured": change}
    return list(measured)


# ----------------------------------------------------------------------------- the section
def section(results: list[SubjectResult], ctx: Context, notes: dict[str, str]) -> dict[str, Any]:
    if not ctx.options.runs("manipulation"):
        return skipped(notes, "manipulation", KEYS)
    strengths = list(ctx.options.strengths)
    out: dict[str, Any] = {"direction": ctx.direction, "strengths": strengths,
                           "steps": ctx.options.decode_steps}
    no_edits = notes.get("manipulation.direction", "no edits")
    for name, s in STRUCTURES.items():
        keys = (f"{name}_monotonic_fraction", f"{name}_change_ml_per_unit")
        if name not in ctx.truths:
            out |= dict.fromkeys(keys)
            for key in keys:
                notes[f"manipulation.{key}"] = (f"the cohort has no {s.column} column to "
                                                f"validate the {name} measurement against")
            continue
        out[s.validation_key] = validation(results, name)
        curves = {r.subject: r.edit_ml[name] for r in results if name in r.edit_ml}
        out |= structure_change(name, curves, strengths, notes, notes.get(s.note_key, no_edits))
        out |= _deformation(results, name, strengths, notes, no_edits)
    out |= known_change(results)
    out |= identity(results, strengths, notes, no_edits)
    out["n_subjects"] = sum(1 for r in results if r.edit is not None)
    return out


def _deformation(results: list[SubjectResult], name: str, strengths: Sequence[float],
                 notes: dict[str, str], no_edits: str) -> dict[str, Any]:
    """A structure's change by deformation: its validation on real visits and its edit curves."""
    label = f"{name}_{DEFORMATION}"
    pairs = [r.deformation[name] for r in results if name in r.deformation]
    truth, seen = (np.asarray([p[k] for p in pairs], dtype=float) for k in ("truth", "measured"))
    check = agreement(truth, seen) if pairs else {"n": 0}
    check.pop("mean_relative_error", None)  # a change may be near 0: relative to it means nothing
    check |= {"method": DEFORMATION_METHOD, "between": "first and last real visits",
              "mean_true_change_ml": float(truth.mean()) if pairs else None,
              "mean_measured_change_ml": float(seen.mean()) if pairs else None,
              "same_sign_fraction": float(np.mean(np.sign(truth) == np.sign(seen)))
              if pairs else None}
    curves = {r.subject: r.edit_ml[label] for r in results if label in r.edit_ml}
    why = notes.get(f"manipulation.{DEFORMATION}", no_edits if 0.0 in strengths
                    else "the change by deformation is taken from strength 0: add it")
    return {f"{label}_validation": check} | structure_change(name, curves, strengths, notes, why,
                                                             label=label)


def structure_change(name: str, curves: dict[str, list[float]], strengths: Sequence[float],
                     notes: dict[str, str], why_none: str, label: str = "") -> dict[str, Any]:
    """Monotonic fraction (in the expected direction) and mean slope of the edit curves, under
    keys starting with ``label`` (default: the structure's name)."""
    s = STRUCTURES[name]
    label = label or name
    mono, slope = f"{label}_monotonic_fraction", f"{label}_change_ml_per_unit"
    measured = {k: v for k, v in curves.items() if all(map(math.isfinite, v))}
    if not measured:
        if curves:
            why_none = (f"the {label} measurement failed on the edits of every subject (decoded "
                        "volumes that do not look like the template brain)")
        for key in (mono, slope):
            notes[f"manipulation.{key}"] = why_none
        return {mono: None, slope: None}
    curves = measured
    x = np.asarray(strengths, dtype=float)
    slopes = [float(np.polyfit(x, v, 1)[0]) if len(x) > 1 else math.nan for v in curves.values()]
    expected = [bool(np.all(s.sign * np.diff(v) > 0)) for v in curves.values()]
    if len(x) < 2:
        notes[f"manipulation.{slope}"] = "needs at least two strengths"
    return {mono: float(np.mean(expected)), slope: im.summary(slopes)["mean"],
            f"{label}_ml_by_strength": {f"{v:g}": float(np.mean([c[i] for c in curves.values()]))
                                        for i, v in enumerate(x)},
            (s.curves_key if label == name else f"{label}_per_subject"):
                {k: [round(c, 3) for c in v] for k, v in curves.items()},
            f"{label}_n_subjects": len(curves),
            f"{label}_expected_change": "rise" if s.sign > 0 else "fall"}


def validation(results: list[SubjectResult], name: str) -> dict[str, Any]:
    rows = [v for r in results for v in r.structures.get(name, []) if v["truth"] is not None]
    truth = np.asarray([v["truth"] for v in rows], dtype=float)
    out: dict[str, Any] = {"method": STRUCTURES[name].method, "n_scans": len(rows),
                           "cohort_spacing_mm": sorted({v["spacing_mm"] for v in rows})}
    for key, label in (("measured", "scans"), ("measured_ae", "autoencoder"),
                       ("measured_file", "cohort_grid")):
        out[label] = agreement(truth, np.asarray([v[key] for v in rows], dtype=float))
    return out


def agreement(truth: np.ndarray, measured: np.ndarray) -> dict[str, float | None]:
    """Pearson r, MAE (ml), mean relative error and mean bias of measured vs true volumes
    (scans the measurement failed on, ``nan``, left out)."""
    ok = np.isfinite(measured) & np.isfinite(truth)
    truth, measured = truth[ok], measured[ok]
    if len(truth) < 2 or np.std(truth) == 0 or np.std(measured) == 0:
        r = None
    else:
        r = float(np.corrcoef(truth, measured)[0, 1])
    if not len(truth):
        return {"pearson_r": None, "mae_ml": None, "mean_relative_error": None, "bias_ml": None,
                "n": 0}
    err = measured - truth
    return {"pearson_r": r, "mae_ml": float(np.abs(err).mean()),
            "mean_relative_error": float(np.mean(np.abs(err) / np.maximum(truth, 1e-6))),
            "bias_ml": float(err.mean()), "n": int(ok.sum())}


def known_change(results: list[SubjectResult]) -> dict[str, Any]:
    """``ventricle_known_change``: the known enlargement as read on the scans and on their
    autoencoder reconstructions, and the fraction the autoencoder keeps (per subject)."""
    pairs = [r.known_change for r in results if r.known_change]
    if not pairs:
        return {}
    scan, ae = (np.asarray([p[k] for p in pairs]) for k in ("scan", "autoencoder"))
    kept = ae / scan
    return {"ventricle_known_change": {
        "method": "the baseline's ventricles pushed outward by up to 2 mm "
                  "(napari_ldae.data.known_change), measured before and after",
        "scan_change_ml_mean": float(scan.mean()), "autoencoder_change_ml_mean": float(ae.mean()),
        "autoencoder_kept_fraction": float(kept.mean()), "autoencoder_kept_min": float(kept.min()),
        "autoencoder_kept_max": float(kept.max()), "n": len(pairs)}}


# ----------------------------------------------------------------------------- identity
def identity(results: list[SubjectResult], strengths: Sequence[float], notes: dict[str, str],
             no_edits: str) -> dict[str, Any]:
    """``identity_kept_fraction`` of the edits at the largest strength, with its margins."""
    kept = [r for r in results if r.edit is not None and r.reconstruction is not None]
    if len(kept) < 2:
        notes["manipulation.identity_kept_fraction"] = (
            no_edits if not kept else "needs at least two evaluated subjects with edits")
        return {"identity_kept_fraction": None}
    distances = pairwise_mse([r.reconstruction for r in kept], [r.edit for r in kept])
    own = np.diag(distances)
    others = np.where(np.eye(len(kept), dtype=bool), np.inf, distances).min(axis=1)
    return {"identity_kept_fraction": identity_kept_fraction(distances),
            "identity_strength": float(max(strengths)),
            "identity_mse_own_mean": float(own.mean()),
            "identity_mse_nearest_other_mean": float(others.mean()),
            "identity_n_subjects": len(kept)}


def pairwise_mse(reconstructions: Sequence[torch.Tensor],
                 edits: Sequence[torch.Tensor]) -> np.ndarray:
    """``d[i, j]`` = MSE between edit i and reconstruction j (computed in float32)."""
    out = np.empty((len(edits), len(reconstructions)))
    for i, e in enumerate(edits):
        e = e.float()
        for j, r in enumerate(reconstructions):
            out[i, j] = float(torch.mean((e - r.float()) ** 2))
    return out


def identity_kept_fraction(distances: np.ndarray | None = None, *,
                           reconstructions: Sequence[torch.Tensor] | None = None,
                           edits: Sequence[torch.Tensor] | None = None) -> float:
    """The fraction of edits closer to their own subject's reconstruction than to any other's.

    ``distances[i, j]``: MSE between edit i and reconstruction j (the same subject order), or
    ``reconstructions`` and ``edits`` to compute them. A tie with another subject is not kept.
    """
    if distances is None:
        distances = pairwise_mse(reconstructions or [], edits or [])
    distances = np.asarray(distances, dtype=float)
    n = len(distances)
    if n < 2 or distances.shape != (n, n):
        raise ValueError(f"need a square matrix of at least two subjects, got {distances.shape}")
    others = np.where(np.eye(n, dtype=bool), np.inf, distances).min(axis=1)
    return float(np.mean(np.diag(distances) < others))

