"""The probe section of ``napari-ldae evaluate``: linear probes AD vs CN and age refitted on
standardised y with the trainer's own code, the bundle's own directions scored on the evaluated
scans, and the **ceiling**: the same probes, on the same folds, fitted on the scans' true
measures (the cohort's numeric ground-truth columns) instead of y.

The ceiling tells what a perfect measurement of the anatomy the cohort records would give: a
probe on y below it has room to improve; near it, the codes hold what the truth holds. Its
features never include a target (nor any column named like one: age, diagnosis, dx, group…) nor
an identifier (``*_id``, ``seed``): see :func:`truth_columns`.

Beside it, the **latent read**: the same probes on the first d principal components of each
scan's normalised latent (d = the code's size; components of each fold's training scans). It
tells which part limits the codes: y near the latent read means a linear map of the latent
reads no more than the encoder does (a linear encoder of the latent is at its limit), and a
ceiling above both, that what the anatomy holds more is not linear in the latent.

With ``--probe-volumes``, the **volumes**: the same probes on the structure network's two
volumes (lateral ventricles, hippocampal region) measured on each scan and on its autoencoder
reconstruction. The second says what the latent holds of them, read as the decoder renders it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from napari_ldae.core.progress import Progress, ProgressGen
from napari_ldae.data.cohort import ScanRecord
from napari_ldae.errors import LDAEError
from napari_ldae.evaluate import image_metrics as im
from napari_ldae.evaluate.context import Context, SubjectResult, load_scans, skipped
from napari_ldae.evaluate.metrics import semantic_spread
from napari_ldae.evaluate.options import EvaluateOptions, Plan

KEYS = ("ad_vs_cn", "age")


def iter_section(ctx: Context, plan: Plan, results: list[SubjectResult],
                 notes: dict[str, str]) -> ProgressGen[dict[str, Any]]:
    """Probes refitted on the folds, and the bundle's own directions on the evaluated scans."""
    codes = {_key(r): y for res in results for r, y in zip(res.records, res.y, strict=True)}
    latents = {_key(r): z for res in results if res.latents is not None
               for r, z in zip(res.records, res.latents, strict=True)}
    scans = list({_key(r): r for fold in plan.folds for s in fold.values() for r in s}.values())
    volumes = ctx.options.probe_volumes  # measured on the scans, so every scan is read again
    todo = scans if volumes else [r for r in scans if _key(r) not in latents]
    more, more_latents, volumes, failure = yield from _iter_embed(ctx, todo, volumes)
    codes, latents = more | codes, latents | more_latents
    out: dict[str, Any] = {"protocol": plan.protocol}
    if len(codes) > 1:  # near 0: the encoder gives every brain the same y
        out["semantic_spread"] = semantic_spread(torch.stack(list(codes.values())))
    try:
        out |= _refit(plan.folds, codes, ctx.options, notes)
        out["ceiling"] = ceiling(plan.folds, ctx.options, notes)
        out["latent"] = latent_read(plan.folds, latents, ctx.model.semantic_dim, ctx.options,
                                    notes)
        if failure:
            out["volumes"] = {"skipped": failure}
            notes["probe.volumes"] = failure
        elif volumes:
            out["volumes"] = {"features": list(VOLUMES), **{
                source: _without_hyperparameters(_refit(
                    plan.folds, {k: v[source] for k, v in volumes.items()}, ctx.options, notes,
                    prefix=f"probe.volumes.{source}")) for source in ("scan", "autoencoder")}}
    except ImportError as err:
        reason = f"the probe fitting needs napari-ldae[train] ({err})"
        out |= skipped(notes, "probe", ("ad_vs_cn", "age"), reason)
        out["ad_vs_cn"] = {"roc_auc": None, "accuracy": None}
        out["age"] = {"mae": None}
        notes |= {f"probe.{k}": reason for k in ("ad_vs_cn.roc_auc", "ad_vs_cn.accuracy",
                                                 "age.mae", *BESIDE_KEYS)}
    evaluated = [r for recs in plan.evaluated.values() for r in recs]
    out["bundle_directions"] = _bundle_directions(ctx.model, evaluated, codes)
    out["bundle_directions_scored_on"] = (
        "the held-out test scans" if ctx.options.split == "test" else
        "every evaluated scan (split all: may include the bundle's own training subjects)")
    return out


def _key(r: ScanRecord) -> str:
    return str(r.path)


#: The structure volumes of ``--probe-volumes`` (region names of ``data.regions``).
VOLUMES = ("lateral_ventricles", "hippocampal_region")


def _iter_embed(ctx: Context, records: list[ScanRecord], volumes: bool = False
                ) -> ProgressGen[tuple[dict[str, torch.Tensor], ...]]:
    """Semantic codes y, flattened latents and (``volumes``) the :data:`VOLUMES` of each scan
    and of its autoencoder reconstruction, by scan; then why the volumes failed, or ``None``."""
    from napari_ldae.data.regions import structure_volumes

    codes: dict[str, torch.Tensor] = {}
    latents: dict[str, torch.Tensor] = {}
    measured: dict[str, dict[str, torch.Tensor]] = {}
    failure = None
    batch = ctx.model.max_batch
    for i in range(0, len(records), batch):
        chunk = records[i:i + batch]
        x, affines = load_scans(chunk, ctx.contract)
        y, z = ctx.model.embed_with_latent(x)
        codes |= {_key(r): y[n].cpu() for n, r in enumerate(chunk)}
        latents |= {_key(r): z[n].flatten().cpu() for n, r in enumerate(chunk)}
        if volumes and failure is None:
            decoded = ctx.model.decode_latent(z).cpu()
            try:
                for n, r in enumerate(chunk):
                    measured[_key(r)] = {source: torch.tensor(
                        [structure_volumes(v[n, 0].numpy(), affines[n])[name]
                         for name in VOLUMES]) for source, v in (("scan", x), ("autoencoder",
                                                                              decoded))}
            except (ValueError, LDAEError) as err:  # not MNI-aligned, or no nilearn
                failure, measured = f"volume measurement impossible: {err}", {}
        yield Progress(min(i + batch, len(records)), len(records), "embedding probe scans")
    return codes, latents, measured, failure


def _refit(folds: list[dict[str, list[ScanRecord]]], codes: dict[str, torch.Tensor],
           options: EvaluateOptions, notes: dict[str, str], prefix: str = "probe",
           project: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None
           ) -> dict[str, Any]:
    """Fit the trainer's probes on each fold, on ``codes`` (a feature vector per scan: y, the
    truth or the latent) standardised by the fold's training scans, after ``project`` (fitted
    on them too) if given; notes go under ``prefix``."""
    import copy

    from napari_ldae.evaluate import PROBE_FITS
    from napari_ldae.evaluate import probes as p

    if options.probe_fit == "regularised":
        classifier_probe, age_probe = p.regularised_classifier_probe, p.regularised_age_probe
        hp = {"fit": "regularised", "positive": PROBE_FITS["positive"],
              "negative": PROBE_FITS["negative"], "penalties": list(p.PENALTIES),
              "inner_folds": p.INNER_FOLDS, "fallback_penalty": p.FALLBACK_PENALTY}
    else:
        classifier_probe, age_probe = p.classifier_probe, p.age_probe
        hp = copy.deepcopy(PROBE_FITS)
        if options.probe_steps:
            hp["classifier"]["steps"] = hp["age"]["steps"] = int(options.probe_steps)
    per_fold: dict[str, list[dict]] = {"ad_vs_cn": [], "age": []}
    for fold in folds:
        if not fold["train"]:
            continue
        raw = {s: _stack(codes, fold[s]) for s in fold}
        raw = project(raw) if project is not None else raw
        mean, std = raw["train"].mean(0), raw["train"].std(0).clamp_min(1e-6)
        z = {s: (v - mean) / std for s, v in raw.items()}
        for name, probe in (("ad_vs_cn", classifier_probe), ("age", age_probe)):
            result = probe(z, fold, hp, options.seed)
            if result is not None:
                per_fold[name].append(result[1])
    out = {"ad_vs_cn": _fold_mean(per_fold["ad_vs_cn"], f"{prefix}.ad_vs_cn", notes,
                                  ("accuracy", "precision", "recall", "f1", "mcc", "roc_auc")),
           "age": _fold_mean(per_fold["age"], f"{prefix}.age", notes, ("mae", "rmse"))}
    out["ad_vs_cn"]["positive_class"] = hp["positive"]
    out["age"]["unit"] = "years"
    out["hyperparameters"] = hp
    return out


# ----------------------------------------------------------------------------- the ceiling
#: The report keys of the reads beside y that always exist (a number, or ``None`` with a reason).
BESIDE_KEYS = ("ceiling.ad_vs_cn.roc_auc", "ceiling.age.mae", "latent.ad_vs_cn.roc_auc",
               "latent.age.mae")
#: Words that make a column a target (or an alias of one), never a feature of the ceiling.
TARGET_WORDS = frozenset({"age", "ages", "diagnosis", "diagnoses", "diag", "dx", "group",
                          "label", "labels", "class"})
#: Words that make a column an identifier, not a measure.
ID_WORDS = frozenset({"id", "ids", "seed", "rid", "ptid", "index"})


def truth_columns(records: Sequence[ScanRecord]) -> list[str]:
    """The cohort's numeric ground-truth columns usable as probe features: the ``extra``
    columns (per scan from the sessions table or the CSV, per subject from participants.tsv)
    that hold a finite number in every record, except targets (``age``, ``diagnosis`` and any
    column with one of :data:`TARGET_WORDS` in its name) and identifiers (:data:`ID_WORDS`)."""
    if not records:
        return []
    names = set.intersection(*(set(r.extra) for r in records))
    return sorted(c for c in names if _usable(c)
                  and all(_finite(r.extra[c]) for r in records))


def _usable(column: str) -> bool:
    words = {w for w in re.split(r"[^a-z0-9]+", column.lower()) if w}
    return bool(words) and not words & (TARGET_WORDS | ID_WORDS)


def _finite(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def ceiling(folds: list[dict[str, list[ScanRecord]]], options: EvaluateOptions,
            notes: dict[str, str]) -> dict[str, Any]:
    """The same probes on the same folds, fitted on the true measures instead of y."""
    records = list({_key(r): r for fold in folds for s in fold.values() for r in s}.values())
    columns = truth_columns(records)
    if not columns:
        reason = "the cohort has no numeric ground-truth column in every scan"
        notes |= {f"probe.{k}": reason for k in BESIDE_KEYS if k.startswith("ceiling.")}
        return {"features": [], "ad_vs_cn": {"roc_auc": None}, "age": {"mae": None}}
    features = {_key(r): torch.tensor([float(r.extra[c]) for c in columns]) for r in records}
    out = _refit(folds, features, options, notes, prefix="probe.ceiling")
    return {"features": columns, **_without_hyperparameters(out)}


def latent_read(folds: list[dict[str, list[ScanRecord]]], latents: dict[str, torch.Tensor],
                dim: int, options: EvaluateOptions, notes: dict[str, str]) -> dict[str, Any]:
    """The same probes on the same folds, fitted on the first ``dim`` principal components of
    the latents (those of each fold's training scans)."""
    out = _refit(folds, latents, options, notes, prefix="probe.latent",
                 project=lambda raw: principal_components(raw, dim))
    return {"features": f"the first {dim} principal components of the normalised latent "
                        "(of each fold's training scans)", **_without_hyperparameters(out)}


def _without_hyperparameters(out: dict[str, Any]) -> dict[str, Any]:
    """A read beside y: its fit's settings are y's, reported once."""
    out.pop("hyperparameters", None)
    return out


def principal_components(raw: dict[str, torch.Tensor], dim: int) -> dict[str, torch.Tensor]:
    """Each split's rows on the first ``dim`` principal components of ``raw["train"]`` (those
    that carry any of its variance)."""
    train = raw["train"].double()
    mean = train.mean(0)
    _, sv, vh = torch.linalg.svd(train - mean, full_matrices=False)
    rank = int((sv > sv[0] * 1e-6).sum()) if len(sv) else 0
    basis = vh[:min(dim, rank)].T
    return {s: ((x.double() - mean) @ basis).float() for s, x in raw.items()}


def _stack(codes: dict[str, torch.Tensor], records: list[ScanRecord]) -> torch.Tensor:
    if not records:
        return torch.zeros((0, next(iter(codes.values())).numel()))
    return torch.stack([codes[_key(r)].float() for r in records])


def _fold_mean(folds: list[dict], name: str, notes: dict[str, str],
               metrics: Sequence[str]) -> dict[str, Any]:
    """Metrics averaged over folds (finite values only); ``None`` with a reason otherwise
    (``name``: the dotted key of the probe, e.g. ``probe.age``)."""
    out: dict[str, Any] = {"n_folds": len(folds), "n_test_scans": sum(f.get("n", 0) for f in folds)}
    for m in metrics:
        out[m] = im.summary(f.get(m) for f in folds)["mean"]
        if out[m] is None:
            notes[f"{name}.{m}"] = _probe_reason(folds, name.rsplit(".", 1)[-1], m)
    if len(folds) > 1 or any("penalty" in f for f in folds):  # a single fit keeps its penalty
        out["folds"] = [{m: f.get(m) for m in (*metrics, "n")}
                        | ({"penalty": f["penalty"]} if "penalty" in f else {}) for f in folds]
    return out


def _probe_reason(folds: list[dict], name: str, metric: str) -> str:
    if not folds:
        return ("no fold could be fitted: the training scans lack AD or CN scans"
                if name == "ad_vs_cn" else "too few training scans with an age")
    if not any(f.get("n") for f in folds):
        return "no test scans with the needed labels"
    if metric == "roc_auc":
        return "undefined: the test scans are all of one class"
    return f"undefined on these test scans ({metric} has a zero denominator)"


def _bundle_directions(model, records: list[ScanRecord],
                       codes: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The bundle's directions applied to the evaluated scans (no refitting).

    A direction is a unit vector without a bias, so only threshold-free scores are possible:
    ROC-AUC of the projection for "toward AD", Pearson r with age for "older".
    """
    from napari_ldae.evaluate.metrics import roc_auc

    if not records:
        return {}
    y = _stack(codes, records).to(model.semantic_mean.device)
    z = ((y - model.semantic_mean) / model.semantic_std).cpu()
    out: dict[str, Any] = {}
    for name, d in model.directions.items():
        proj = (z @ torch.nn.functional.normalize(d.vector.float().cpu(), dim=0)).numpy()
        entry: dict[str, Any] = {"meaning": d.meaning, "source": d.source,
                                 "trained_metrics": d.metrics}
        meaning = d.meaning.strip().lower()
        if meaning in ("toward ad", "toward cn"):
            keep = [i for i, r in enumerate(records) if r.diagnosis in ("AD", "CN")]
            labels = [float(records[i].diagnosis == meaning[-2:].upper()) for i in keep]
            auc = roc_auc(labels, proj[keep]) if keep else math.nan
            entry |= {"roc_auc": auc if math.isfinite(auc) else None, "n": len(keep)}
        elif meaning == "older":
            entry |= _age_correlation(records, proj)
        out[name] = entry
    return out


def _age_correlation(records: list[ScanRecord], proj: np.ndarray) -> dict[str, Any]:
    keep = [i for i, r in enumerate(records) if r.age is not None]
    ages = np.asarray([records[i].age for i in keep], dtype=float)
    if len(keep) < 2 or ages.std() == 0:
        return {"pearson_r_with_age": None, "n": len(keep)}
    return {"pearson_r_with_age": float(np.corrcoef(ages, proj[keep])[0, 1]), "n": len(keep)}
