"""``napari-ldae evaluate``: the paper's evaluations on any cohort, as a JSON (and Markdown) report.

For each evaluated subject (the held-out test split, or the whole cohort with ``split="all"``),
visit by visit in model space (the bundle's preprocessing contract):

- **autoencoder**: AE encode → decode against the input (the ceiling of every reconstruction);
- **reconstruction**: y = Enc(x), x_T = DDIM inversion with T steps, decoded with T steps,
  against the input, for each T (SSIM, MSE, LPIPS when local weights are given);
- **semantic_only**: y with a random, seeded x_T, against the input;
- **interpolation**: every (start, target, end) visit triplet, α from the months, against the
  autoencoder reconstruction of the real target (as the paper), beside copying the nearest visit
  (its autoencoder reconstruction), by time gap (end − start) and prediction gap (target − start);
- **extrapolation** (:mod:`.extrapolation`): the last visit(s) left out and predicted from the
  earlier ones, against the truth and two baselines, by horizon;
- **manipulation** (:mod:`.manipulation`): the baseline scan edited toward AD at each strength;
  the ventricles and hippocampi measured on the edits where the cohort has their true volumes
  (``ventricle_ml``, ``hippocampus_ml``; each measurement first validated on the real scans), and
  whether the strongest edit is still closest to its own subject's reconstruction.

Then **code_use** (:mod:`.code_use`): how much decoding one subject's x_T with another's y moves
the scan, and **probe** (:mod:`.probe_report`): linear probes AD vs CN and age refitted on
standardised y (subject-grouped train/test split, or subject-grouped cross-validation with
``split="all"``) with the trainer's own fitting code, the same probes on the cohort's true
measures (the ceiling), and the bundle's own directions scored on the evaluated scans.

Everything is a progress generator (:func:`iter_evaluate`); a quantity that cannot be computed is
``None`` with its reason under ``notes`` (dotted key → reason).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_ldae import __version__
from napari_ldae._files import atomic_write
from napari_ldae._resources import shown_path
from napari_ldae.core.progress import Progress, ProgressGen, drain
from napari_ldae.data.cohort import Cohort, ScanRecord
from napari_ldae.errors import LDAEError
from napari_ldae.evaluate import code_use, extrapolation, interpolation, manipulation, probe_report
from napari_ldae.evaluate import image_metrics as im
from napari_ldae.evaluate.context import (
    Context,
    SubjectResult,
    keep,
    load_scans,
    measured_ventricles,
    score,
    skipped,
    task,
)
from napari_ldae.evaluate.interpolation import triplets  # noqa: F401 - re-exported
from napari_ldae.evaluate.options import (  # noqa: F401 - re-exported: the public API
    SPLITS,
    EvaluateOptions,
    Plan,
    make_plan,
    resolve_split,
)

#: Keys every report has (a number, or ``None`` with a reason in ``notes``).
REQUIRED_KEYS = (
    "autoencoder.ssim", "reconstruction.ssim.T10", "reconstruction.ssim.T50",
    "semantic_only.ssim", "probe.ad_vs_cn.roc_auc", "probe.ad_vs_cn.accuracy", "probe.age.mae",
    "probe.ceiling.ad_vs_cn.roc_auc", "probe.ceiling.age.mae", "probe.latent.ad_vs_cn.roc_auc",
    "probe.latent.age.mae",
    "interpolation.ssim_mean", "interpolation.copy_baseline_ssim_mean",
    "manipulation.ventricle_monotonic_fraction", "manipulation.ventricle_change_ml_per_unit",
    "manipulation.hippocampus_monotonic_fraction", "manipulation.hippocampus_change_ml_per_unit",
    "manipulation.hippocampus_deformation_monotonic_fraction",
    "manipulation.hippocampus_deformation_change_ml_per_unit",
    "manipulation.identity_kept_fraction", "code_use.swap_fraction_mean",
)
#: The paper's numbers (Lozupone et al., MedIA 2026, and the official repository's README),
#: beside ours in the Markdown report. Probe keys prefixed "dae." and "supervised." are the
#: paper's voxel-space DAE baseline and its supervised encoder.
PAPER: dict[str, float] = {
    "autoencoder.ssim": 0.962, "autoencoder.lpips": 0.075, "autoencoder.mse": 0.001,
    **{f"reconstruction.ssim.T{t}": v for t, v in ((10, 0.953), (20, 0.960), (50, 0.962),
                                                   (100, 0.962))},
    **{f"reconstruction.lpips.T{t}": v for t, v in ((10, 0.081), (20, 0.077), (50, 0.076),
                                                    (100, 0.075))},
    **{f"reconstruction.mse.T{t}": 0.001 for t in (10, 20, 50, 100)},
    **{f"semantic_only.ssim.T{t}": v for t, v in ((10, 0.872), (20, 0.871), (50, 0.870),
                                                  (100, 0.869))},
    **{f"semantic_only.lpips.T{t}": v for t, v in ((10, 0.156), (20, 0.155), (50, 0.155),
                                                   (100, 0.155))},
    **{f"semantic_only.mse.T{t}": 0.005 for t in (10, 20, 50, 100)},
    "semantic_only.ssim": 0.87,
    "probe.ad_vs_cn.accuracy": 0.8365, "probe.ad_vs_cn.precision": 0.8469,
    "probe.ad_vs_cn.recall": 0.9102, "probe.ad_vs_cn.f1": 0.8774, "probe.ad_vs_cn.mcc": 0.6369,
    "probe.ad_vs_cn.roc_auc": 0.8948, "probe.age.mae": 4.16, "probe.age.rmse": 5.23,
    "dae.probe.ad_vs_cn.accuracy": 0.7468, "dae.probe.ad_vs_cn.precision": 0.7768,
    "dae.probe.ad_vs_cn.recall": 0.8504, "dae.probe.ad_vs_cn.f1": 0.8119,
    "dae.probe.ad_vs_cn.roc_auc": 0.78, "dae.probe.age.mae": 4.93, "dae.probe.age.rmse": 6.11,
    "supervised.probe.ad_vs_cn.accuracy": 0.8464, "supervised.probe.ad_vs_cn.precision": 0.8690,
    "supervised.probe.ad_vs_cn.recall": 0.8743, "supervised.probe.ad_vs_cn.f1": 0.8716,
    "supervised.probe.ad_vs_cn.roc_auc": 0.9067, "supervised.probe.age.mae": 4.34,
    "supervised.probe.age.rmse": 4.63,
    # "SSIM 0.969 (MSE 0.0019) at a 6-month gap, > 0.93 (MSE < 0.004) at 24 months": with visits
    # at least 6 months apart, a 6-month gap can only be target − start (the prediction gap).
    "interpolation.by_prediction_gap.6.ssim_mean": 0.969,
    "interpolation.by_prediction_gap.6.mse_mean": 0.0019,
    "interpolation.by_prediction_gap.24.ssim_mean": 0.93,
    "interpolation.by_prediction_gap.24.mse_mean": 0.004,
}



# ----------------------------------------------------------------------------- one subject
def _iter_subject(ctx: Context, records: list[ScanRecord],
                  label: str) -> ProgressGen[SubjectResult]:
    t = time.perf_counter()
    x, affines = load_scans(records, ctx.contract)
    ctx.timed("load", t)
    yield Progress(1, 1, f"{label}: loaded {len(records)} scan(s)")
    t = time.perf_counter()
    y, latents = ctx.model.embed_with_latent(x)  # one autoencoder pass for both
    ae = ctx.model.decode_latent(latents).cpu()
    ctx.timed("autoencoder", t)
    res = SubjectResult(records, y.cpu(), latents=latents.flatten(1).cpu())
    res.scores["autoencoder"] = score(ctx, ae, x, head=True)
    if ctx.needs_inversion:  # the probes and semantic-only decoding need y alone
        codes = yield from _iter_reconstruction(ctx, x, res, label)
        res.y = codes.y.cpu()
        res.baseline = codes[0].cpu()
    if ctx.options.runs("semantic_only"):
        t = time.perf_counter()
        seed = ctx.options.seed + zlib.crc32(records[0].subject.encode())
        sample = ctx.model.iter_sample(res.y, ctx.options.decode_steps, seed=seed)
        vol = yield from task(sample, f"{label}: semantic-only decode")
        res.scores["semantic_only"] = score(ctx, vol, x)
        ctx.timed("semantic_only", t)
    vent = None
    if ctx.options.runs("interpolation") or ctx.options.runs("extrapolation"):
        vent = measured_ventricles(ctx, records, x, ae, affines)
    if ctx.options.runs("interpolation"):
        t = time.perf_counter()
        res.triplets = yield from interpolation.iter_subject(ctx, records, codes, ae, vent,
                                                             label)
        ctx.timed("interpolation", t)
    if ctx.options.runs("extrapolation"):
        t = time.perf_counter()
        res.extrapolations = yield from extrapolation.iter_subject(ctx, records, codes, ae, vent,
                                                                   label)
        ctx.timed("extrapolation", t)
    if ctx.options.runs("manipulation"):
        t = time.perf_counter()
        yield from manipulation.iter_subject(ctx, x, ae, affines, codes, res, label)
        ctx.timed("manipulation", t)
    if ctx.needs_reconstruction and res.reconstruction is None:
        t = time.perf_counter()
        gen = ctx.model.iter_decode(codes[0], ctx.options.decode_steps)
        res.reconstruction = keep((yield from task(gen, f"{label}: decode the baseline"))[0])
        ctx.timed("code_use", t)
    return res


def _iter_reconstruction(ctx: Context, x: torch.Tensor, res: SubjectResult,
                         label: str) -> ProgressGen:
    """Reconstruction at every T; returns the codes at the task steps (for the other parts)."""
    model, steps, codes = ctx.model, ctx.options.decode_steps, None
    for T in ctx.options.steps if ctx.options.runs("reconstruction") else ():
        t = time.perf_counter()
        c = yield from task(model.iter_encode(x, T), f"{label}: encode T={T}")
        recon = yield from task(model.iter_decode(c, T), f"{label}: decode T={T}")
        res.seconds[f"T{T}"] = (time.perf_counter() - t) / len(x)
        res.scores[f"T{T}"] = score(ctx, recon, x, head=True)
        ctx.timed("reconstruction", t)
        if steps == T:
            codes = c
            res.reconstruction = keep(recon[0]) if ctx.needs_reconstruction else None
    if codes is None:
        t = time.perf_counter()
        codes = yield from task(model.iter_encode(x, steps), f"{label}: encode T={steps}")
        ctx.timed("encode", t)
    return codes


# ----------------------------------------------------------------------------- the run
def iter_evaluate(bundle: str | os.PathLike, cohort: str | os.PathLike,
                  options: EvaluateOptions | None = None) -> ProgressGen[dict[str, Any]]:
    """Evaluate a bundle on a cohort; yields progress and returns the report (a dict)."""
    from napari_ldae.data.cohort import read_cohort

    started, t0 = _dt.datetime.now(_dt.timezone.utc), time.perf_counter()
    session = _session(bundle, options or EvaluateOptions())
    loaded = session.bundle
    options = resolve_split(options or EvaluateOptions(), loaded.config)
    cohort_table = read_cohort(cohort)
    probe_cohort = read_cohort(options.probe_train) if options.probe_train else None
    plan = make_plan(cohort_table, options, probe_cohort)
    if not plan.evaluated:
        raise LDAEError(f"no subjects to evaluate in {cohort} (split {options.split!r})")
    ctx = _context(session, plan, options)
    results = []
    for n, (subject, records) in enumerate(plan.evaluated.items(), start=1):
        label = f"[{n}/{len(plan.evaluated)}] {subject}"
        results.append((yield from _iter_subject(ctx, records, label)))
    report: dict[str, Any] = {"notes": ctx.notes}
    _image_sections(report, results, ctx)
    t = time.perf_counter()
    report["code_use"] = yield from code_use.iter_section(ctx, results, report["notes"])
    ctx.timed("code_use", t)
    if options.runs("probe"):
        t = time.perf_counter()
        report["probe"] = yield from probe_report.iter_section(ctx, plan, results,
                                                               report["notes"])
        ctx.timed("probe", t)
    else:
        report["probe"] = skipped(report["notes"], "probe", probe_report.KEYS)
        report["notes"] |= {f"probe.{k}": report["probe"]["skipped"]
                            for k in probe_report.BESIDE_KEYS}
    report["meta"] = _meta(loaded, cohort, cohort_table, plan, options, ctx, started, t0,
                           probe_cohort)
    return finalize(report)


def evaluate(bundle: str | os.PathLike, cohort: str | os.PathLike,
             options: EvaluateOptions | None = None,
             callback: Callable[[Progress], None] | None = None) -> dict[str, Any]:
    """:func:`iter_evaluate`, drained."""
    return drain(iter_evaluate(bundle, cohort, options), callback)


def _session(bundle: str | os.PathLike, options: EvaluateOptions):
    """The bundle loaded as every command loads it: a :class:`~napari_ldae.session.Session`
    (one loader, one device and precision resolver, the bundle's preprocessing contract)."""
    from napari_ldae.session import Session

    return Session(bundle, device=options.device, precision=options.precision,
                   max_batch=options.max_batch)


def _context(session, plan: Plan, options: EvaluateOptions) -> Context:
    notes = plan.notes
    lpips, why = im.lpips_metric(options.lpips_weights)
    if why:
        notes["lpips"] = why
    direction, why = ad_direction(session.model, options.direction)
    if why:
        notes["manipulation.direction"] = why
    evaluated = [r for recs in plan.evaluated.values() for r in recs]
    return Context(session.model, session.contract, options, lpips, direction,
                   manipulation.truths(evaluated), notes)


def ad_direction(model, requested: str | None) -> tuple[str | None, str | None]:
    """The direction toward AD: ``requested``, else the one meaning "toward AD", else "AD"."""
    directions = model.directions
    if requested:
        if requested not in directions:
            return None, (f"the bundle has no direction {requested!r} (it has: "
                          f"{', '.join(directions) or 'none'})")
        return requested, None
    for name, d in directions.items():
        if d.meaning.strip().lower() == "toward ad":
            return name, None
    if "AD" in directions:
        return "AD", None
    return None, (f"the bundle has no direction toward AD (it has: "
                  f"{', '.join(directions) or 'none'}); train the probe stage or pass --direction")


# ----------------------------------------------------------------------------- aggregation
def _image_sections(report: dict[str, Any], results: list[SubjectResult],
                    ctx: Context) -> None:
    notes, opts = report["notes"], ctx.options
    n_scans = sum(len(r.records) for r in results)
    report["autoencoder"] = _means(results, "autoencoder") | {"n_scans": n_scans}
    report["reconstruction"] = _reconstruction(results, ctx, notes)
    if opts.runs("semantic_only"):
        report["semantic_only"] = _means(results, "semantic_only") | {
            "steps": opts.decode_steps, "seed": opts.seed, "n_scans": n_scans}
    else:
        report["semantic_only"] = skipped(notes, "semantic_only", ("ssim", "mse"))
    report["interpolation"] = interpolation.section(results, opts, notes)
    report["extrapolation"] = extrapolation.section(results, ctx, notes)
    report["manipulation"] = manipulation.section(results, ctx, notes)


def _means(results: list[SubjectResult], key: str) -> dict[str, float | None]:
    metrics = sorted({m for r in results for m in r.scores.get(key, {})})
    return {m: im.summary(v for r in results for v in r.scores[key][m])["mean"] for m in metrics}


def _reconstruction(results: list[SubjectResult], ctx: Context,
                    notes: dict[str, str]) -> dict[str, Any]:
    opts = ctx.options
    if not opts.runs("reconstruction"):
        out = skipped(notes, "reconstruction", ())
        for metric in ("ssim", "mse"):
            out[metric] = {f"T{T}": None for T in (10, 50)}
            for T in (10, 50):
                notes[f"reconstruction.{metric}.T{T}"] = "skipped (--skip reconstruction)"
        return out
    out: dict[str, Any] = {"steps": list(opts.steps)}
    for metric in ("ssim", "ssim_head", "mse", *(("lpips",) if ctx.lpips else ())):
        out[metric] = {f"T{T}": _means(results, f"T{T}").get(metric) for T in opts.steps}
    out["seconds_per_scan"] = {
        f"T{T}": im.summary(r.seconds.get(f"T{T}") for r in results)["mean"] for T in opts.steps}
    out["device"] = ctx.model.device
    for metric in ("ssim", "mse"):
        for T in (10, 50):
            if f"T{T}" not in out[metric]:
                out[metric][f"T{T}"] = None
                notes[f"reconstruction.{metric}.T{T}"] = (
                    f"T={T} not among --steps {' '.join(map(str, opts.steps))}")
    if ctx.lpips is None:
        out["lpips"] = None
        notes["reconstruction.lpips"] = notes.get("lpips", "LPIPS unavailable")
    return out


# ----------------------------------------------------------------------------- the report
def _meta(loaded, cohort_path, cohort: Cohort, plan: Plan, options: EvaluateOptions,
          ctx: Context, started: _dt.datetime, t0: float,
          probe_cohort: Cohort | None = None) -> dict[str, Any]:
    evaluated = [r for recs in plan.evaluated.values() for r in recs]
    return {
        "napari_ldae_version": __version__,
        "command": options.command,
        "started": started.isoformat(timespec="seconds"),
        "seconds": time.perf_counter() - t0,
        "timings_s": ctx.timings,
        # paths as the user gave them (the built-in bundle as such) plus content hashes
        "bundle": {"path": shown_path(loaded.path), "name": loaded.name,
                   "sha256": loaded.sha256,
                   "trained": loaded.config.get("provenance", {}).get("trained")},
        "cohort": {"path": shown_path(cohort_path), "sha256": cohort.sha256(),
                   "n_subjects": len(cohort.subjects()), "n_scans": len(cohort)},
        "probe_train": None if probe_cohort is None else {
            "path": shown_path(options.probe_train), "sha256": probe_cohort.sha256(),
            "n_subjects": len(probe_cohort.subjects()), "n_scans": len(probe_cohort)},
        "evaluated": {"split": options.split, "n_subjects": len(plan.evaluated),
                      "n_scans": len(evaluated), "subjects": list(plan.evaluated)},
        "options": {"steps": list(options.steps), "task_steps": options.decode_steps,
                    "seed": options.seed, "max_subjects": options.max_subjects,
                    "strengths": list(options.strengths), "skip": list(options.skip),
                    "probe_steps": options.probe_steps,
                    "val_fraction": options.val_fraction, "test_fraction": options.test_fraction},
        "device": ctx.model.device, "precision": options.precision,
        "ssim": {"kernel_size": im.SSIM_KERNEL, "data_range": 1.0, "kernel": "gaussian σ 1.5"},
        "space": "model space (the bundle's preprocessing contract), intensities in [0, 1]",
    }


def finalize(report: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe numbers (nan → ``None``); every missing or ``None`` required key gets a note."""
    report = _clean(report)
    notes = report.setdefault("notes", {})
    for key in REQUIRED_KEYS:
        if lookup(report, key) is None:
            _put(report, key, None)
            notes.setdefault(key, "not computed")
    return report


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer | np.bool_):
        return obj.item()
    return obj


def lookup(report: dict[str, Any], dotted: str) -> Any:
    """``report["a"]["b"]`` for ``"a.b"`` (``None`` when any part is missing)."""
    node: Any = report
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _put(report: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = report
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node.setdefault(last, value)


def write_json(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write the report as JSON (atomically)."""
    return atomic_write(Path(path).expanduser(),
                        json.dumps(report, indent=2, allow_nan=False) + "\n")


def write_markdown(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write the report as Markdown tables with the paper's numbers beside ours."""
    from napari_ldae.evaluate.markdown import render

    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(report, PAPER))
    return path
