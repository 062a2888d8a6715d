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
- **manipulation** (when the cohort has ``ventricle_ml``): the ventricle measurement
  (:mod:`.ventricles`) validated on the real scans, then the measured ventricles of the baseline
  scan edited toward AD at each strength.

Then **probe**: linear probes AD vs CN and age refitted on standardised y (subject-grouped
train/test split, or subject-grouped cross-validation with ``split="all"``) with the trainer's
own fitting code, and the bundle's own directions scored on the evaluated scans.

Everything is a progress generator (:func:`iter_evaluate`); a quantity that cannot be computed is
``None`` with its reason under ``notes`` (dotted key → reason).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import random
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_ldae import __version__
from napari_ldae.core.progress import Progress, ProgressGen, drain
from napari_ldae.data.cohort import Cohort, ScanRecord
from napari_ldae.errors import LDAEError
from napari_ldae.evaluate import SECTIONS
from napari_ldae.evaluate import image_metrics as im
from napari_ldae.evaluate.metrics import semantic_spread

SPLITS = ("test", "all")
#: Keys every report has (a number, or ``None`` with a reason in ``notes``).
REQUIRED_KEYS = (
    "autoencoder.ssim", "reconstruction.ssim.T10", "reconstruction.ssim.T50",
    "semantic_only.ssim", "probe.ad_vs_cn.roc_auc", "probe.ad_vs_cn.accuracy", "probe.age.mae",
    "interpolation.ssim_mean", "interpolation.copy_baseline_ssim_mean",
    "manipulation.ventricle_monotonic_fraction", "manipulation.ventricle_change_ml_per_unit",
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


@dataclass(frozen=True)
class EvaluateOptions:
    """What to evaluate and how (the CLI's options)."""

    steps: tuple[int, ...] = (10, 20, 50, 100)  # DDIM steps T of the reconstruction table
    task_steps: int | None = None  # T of semantic-only, interpolation, manipulation (max steps)
    split: str = "test"  # "test": the held-out subjects; "all": the whole cohort
    # Subject split and random x_T; None: the bundle's training split (its provenance), else
    # seed 0 and fractions 0.1 (the trainer's defaults): the same test subjects as in training.
    seed: int | None = None
    val_fraction: float | None = None
    test_fraction: float | None = None
    max_subjects: int | None = None  # per split, diagnoses kept balanced
    strengths: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0)
    direction: str | None = None  # None: the bundle's direction "toward AD"
    lpips_weights: str | None = None
    probe_steps: int | None = None  # optimizer steps of each probe (None: the trainer's, 2000)
    skip: tuple[str, ...] = ()
    device: str | None = None
    precision: str = "fp32"
    max_batch: int = 8
    command: str = ""

    def __post_init__(self) -> None:
        if not self.steps or min(self.steps) < 1:
            raise LDAEError(f"--steps must be positive integers, got {list(self.steps)}")
        if not self.strengths:
            raise LDAEError("--strengths needs at least one value")
        object.__setattr__(self, "steps", tuple(dict.fromkeys(int(t) for t in self.steps)))
        if self.split not in SPLITS:
            raise LDAEError(f"--split must be one of {', '.join(SPLITS)}, not {self.split!r}")
        unknown = sorted(set(self.skip) - set(SECTIONS))
        if unknown:
            raise LDAEError(f"unknown section(s) to skip {unknown}; choose from {SECTIONS}")
        if self.max_subjects is not None and self.max_subjects < 1:
            raise LDAEError("--max-subjects must be at least 1")

    @property
    def decode_steps(self) -> int:
        return int(self.task_steps or max(self.steps))

    def runs(self, section: str) -> bool:
        return section not in self.skip


def resolve_split(options: EvaluateOptions,
                  config: dict[str, Any] | None = None) -> EvaluateOptions:
    """Fill the unset split options from a bundle config's provenance (its training split),
    else with the trainer's defaults (seed 0, fractions 0.1)."""
    prov = (config or {}).get("provenance") or {}
    data = (prov.get("config") or {}).get("data") or {}
    seed = prov.get("split_seed") if prov.get("split_seed") is not None else prov.get("seed")
    return dataclasses.replace(
        options,
        seed=options.seed if options.seed is not None else int(seed or 0),
        val_fraction=_first(options.val_fraction, data.get("val_fraction"), 0.1),
        test_fraction=_first(options.test_fraction, data.get("test_fraction"), 0.1),
    )


def _first(*values: float | None) -> float:
    return float(next(v for v in values if v is not None))


# ----------------------------------------------------------------------------- the plan
@dataclass
class Plan:
    """Which subjects are evaluated and how the probes are fitted."""

    evaluated: dict[str, list[ScanRecord]]  # subject → visits (months order)
    folds: list[dict[str, list[ScanRecord]]]  # probe folds: train / val / test records
    protocol: str
    notes: dict[str, str] = field(default_factory=dict)


def make_plan(cohort: Cohort, options: EvaluateOptions) -> Plan:
    """Evaluated subjects and probe folds, deterministic in the cohort and the seed."""
    from napari_ldae.data.cohort import split_subjects

    options = resolve_split(options)
    if options.split == "all":
        subjects = _limit(cohort.by_subject(), options.max_subjects, options.seed)
        folds, protocol = _cv_folds(subjects, options.seed)
        return Plan(subjects, folds, protocol)
    splits = split_subjects(cohort, options.val_fraction, options.test_fraction, options.seed)
    parts = {s: _limit(splits[s].by_subject(), options.max_subjects, options.seed)
             for s in ("train", "val", "test")}
    fold = {s: [r for recs in parts[s].values() for r in recs] for s in parts}
    protocol = (f"subject-grouped split (seed {options.seed}, val {options.val_fraction}, test "
                f"{options.test_fraction}): fitted on train, model selection on val, "
                "reported on test")
    return Plan(parts["test"], [fold], protocol)


def _limit(groups: dict[str, list[ScanRecord]], n: int | None,
           seed: int) -> dict[str, list[ScanRecord]]:
    """At most ``n`` subjects, taken in turn from each diagnosis (seeded order)."""
    if n is None or n >= len(groups):
        return dict(sorted(groups.items()))
    order = _stratified_order(groups, seed)
    return {s: groups[s] for s in sorted(order[:n])}


def _strata(groups: dict[str, list[ScanRecord]], seed: int) -> dict[str, list[str]]:
    """Subjects by baseline diagnosis, each list in a seeded random order."""
    strata: dict[str, list[str]] = {}
    for subject in sorted(groups):
        strata.setdefault(groups[subject][0].diagnosis or "unknown", []).append(subject)
    for key in sorted(strata):
        random.Random(f"{seed}:{key}").shuffle(strata[key])
    return dict(sorted(strata.items()))


def _stratified_order(groups: dict[str, list[ScanRecord]], seed: int) -> list[str]:
    """Subjects taken in turn from each diagnosis."""
    lists = list(_strata(groups, seed).values())
    return [lst[i] for i in range(max(map(len, lists))) for lst in lists if i < len(lst)]


def _cv_folds(groups: dict[str, list[ScanRecord]],
              seed: int) -> tuple[list[dict[str, list[ScanRecord]]], str]:
    """Subject-grouped K-fold (stratified by diagnosis), K = 2…5 as the smaller class allows."""
    strata = _strata(groups, seed)
    smaller = min(len(strata.get("AD", [])), len(strata.get("CN", []))) or len(groups)
    k = min(max(2, min(5, smaller)), len(groups))
    fold_of, offset = {}, 0
    for subjects in strata.values():
        for i, s in enumerate(subjects):
            fold_of[s] = (i + offset) % k
        offset += len(subjects)
    folds = [{"train": [r for s in sorted(groups) if fold_of[s] != f for r in groups[s]],
              "val": [],
              "test": [r for s in sorted(groups) if fold_of[s] == f for r in groups[s]]}
             for f in range(k)]
    return folds, (f"subject-grouped {k}-fold cross-validation over the evaluated subjects "
                   f"(stratified by diagnosis, seed {seed}); metrics averaged over folds")


# ----------------------------------------------------------------------------- context
@dataclass
class _Context:
    model: Any  # LDAEModel
    contract: Any  # PreprocessContract
    options: EvaluateOptions
    lpips: im.VolumeMetric | None
    direction: str | None
    has_truth: bool
    notes: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)

    def timed(self, name: str, start: float) -> None:
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start


@dataclass
class _SubjectResult:
    records: list[ScanRecord]
    y: torch.Tensor  # (V, d) semantic codes of the visits
    scores: dict[str, dict[str, list[float]]]  # section → metric → one value per visit
    seconds: dict[str, float]  # section → seconds per scan
    triplets: list[dict[str, float]]
    ventricles: list[dict[str, float | None]]  # per visit: truth, measured, measured_ae
    edit_ml: list[float] | None  # measured ventricles of the baseline edit at each strength


def _task(gen: ProgressGen, message: str) -> ProgressGen:
    """Re-yield a model generator's progress under a message; return its result."""
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return stop.value
        yield Progress(p.step, p.total, message)


# ----------------------------------------------------------------------------- one subject
def _iter_subject(ctx: _Context, records: list[ScanRecord],
                  label: str) -> ProgressGen[_SubjectResult]:
    t = time.perf_counter()
    x, affines = _load(records, ctx.contract)
    ctx.timed("load", t)
    yield Progress(1, 1, f"{label}: loaded {len(records)} scan(s)")
    t = time.perf_counter()
    ae = _autoencode(ctx.model, x)
    ctx.timed("autoencoder", t)
    res = _SubjectResult(records, torch.zeros(0), {}, {}, [], [], None)
    res.scores["autoencoder"] = _score(ctx, ae, x)
    codes = yield from _iter_reconstruction(ctx, x, res, label)
    res.y = codes.y.cpu()
    if ctx.options.runs("semantic_only"):
        t = time.perf_counter()
        seed = ctx.options.seed + zlib.crc32(records[0].subject.encode())
        sample = ctx.model.iter_sample(codes.y, ctx.options.decode_steps, seed=seed)
        vol = yield from _task(sample, f"{label}: semantic-only decode")
        res.scores["semantic_only"] = _score(ctx, vol, x)
        ctx.timed("semantic_only", t)
    if ctx.options.runs("interpolation"):
        t = time.perf_counter()
        res.triplets = yield from _iter_interpolation(ctx, records, codes, ae, label)
        ctx.timed("interpolation", t)
    if ctx.options.runs("manipulation") and ctx.has_truth:
        t = time.perf_counter()
        yield from _iter_manipulation(ctx, x, ae, affines, codes, res, label)
        ctx.timed("manipulation", t)
    return res


def _iter_reconstruction(ctx: _Context, x: torch.Tensor, res: _SubjectResult,
                         label: str) -> ProgressGen:
    """Reconstruction at every T; returns the codes at the task steps (for the other parts)."""
    model, steps, codes = ctx.model, ctx.options.decode_steps, None
    for T in ctx.options.steps if ctx.options.runs("reconstruction") else ():
        t = time.perf_counter()
        c = yield from _task(model.iter_encode(x, T), f"{label}: encode T={T}")
        recon = yield from _task(model.iter_decode(c, T), f"{label}: decode T={T}")
        res.seconds[f"T{T}"] = (time.perf_counter() - t) / len(x)
        res.scores[f"T{T}"] = _score(ctx, recon, x)
        ctx.timed("reconstruction", t)
        if steps == T:
            codes = c
    if codes is None:
        t = time.perf_counter()
        codes = yield from _task(model.iter_encode(x, steps), f"{label}: encode T={steps}")
        ctx.timed("encode", t)
    return codes


def _iter_interpolation(ctx: _Context, records: list[ScanRecord], codes, ae: torch.Tensor,
                        label: str) -> ProgressGen[list[dict[str, float]]]:
    """Every (start, target, end) triplet of one subject, against the AE reconstruction."""
    rows: list[dict[str, float]] = []
    months = [r.months for r in records]
    for (i, k), targets in triplets(months).items():
        alphas = [(months[j] - months[i]) / (months[k] - months[i]) for j in targets]
        gen = ctx.model.iter_interpolate(codes[i], codes[k], alphas, ctx.options.decode_steps)
        vol = yield from _task(gen, f"{label}: interpolate {months[i]:g}→{months[k]:g} months")
        ref = ae[targets]
        nearest = [i if months[j] - months[i] <= months[k] - months[j] else k for j in targets]
        ours, copy = _score(ctx, vol, ref), _score(ctx, ae[nearest], ref)
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


def _iter_manipulation(ctx: _Context, x: torch.Tensor, ae: torch.Tensor, affines: list,
                       codes, res: _SubjectResult, label: str) -> ProgressGen[None]:
    """Ventricles of the real scans (validation) and of the baseline edited toward AD."""
    from napari_ldae.evaluate.ventricles import ventricle_ml

    try:
        for v, rec in enumerate(res.records):
            truth = rec.extra.get("ventricle_ml")
            res.ventricles.append({
                "truth": float(truth) if isinstance(truth, int | float) else None,
                "measured": ventricle_ml(x[v, 0].numpy(), affines[v]),
                "measured_ae": ventricle_ml(ae[v, 0].numpy(), affines[v]),
            })
    except (ValueError, LDAEError) as err:  # not MNI-aligned, or no nilearn
        ctx.notes["manipulation.segmentation"] = f"ventricle measurement impossible: {err}"
        res.ventricles.clear()
        return
    if ctx.direction is None:
        return
    gen = ctx.model.iter_manipulate(codes[0], ctx.direction, ctx.options.strengths,
                                    ctx.options.decode_steps)
    edits = yield from _task(gen, f"{label}: edit toward AD")
    res.edit_ml = [ventricle_ml(e[0].cpu().numpy(), affines[0]) for e in edits]


def _load(records: list[ScanRecord], contract) -> tuple[torch.Tensor, list[np.ndarray]]:
    from napari_ldae.data.io import read_scan
    from napari_ldae.data.preprocess import model_affine, preprocess

    vols, affines = [], []
    for r in records:
        scan = read_scan(r.path)
        vols.append(torch.from_numpy(preprocess(scan, contract)))
        affines.append(model_affine(scan, contract))
    return torch.stack(vols)[:, None], affines


@torch.inference_mode()
def _autoencode(model, x: torch.Tensor) -> torch.Tensor:
    """The autoencoder's own reconstruction (encode mean → decode), clamped to [0, 1]."""
    out = []
    for i in range(0, len(x), model.max_batch):
        batch = x[i:i + model.max_batch].to(model.device)
        z = model.autoencoder.encode(batch)
        out.append(model.autoencoder.decode(z).float().clamp_(0.0, 1.0).cpu())
    return torch.cat(out)


def _score(ctx: _Context, pred: torch.Tensor, target: torch.Tensor) -> dict[str, list[float]]:
    pred, target = pred.float().cpu(), target.float().cpu()
    out = {"ssim": im.ssim(pred, target), "mse": im.mse(pred, target)}
    if ctx.lpips is not None:
        out["lpips"] = ctx.lpips(pred, target)
    return out


# ----------------------------------------------------------------------------- the run
def iter_evaluate(bundle: str | os.PathLike, cohort: str | os.PathLike,
                  options: EvaluateOptions | None = None) -> ProgressGen[dict[str, Any]]:
    """Evaluate a bundle on a cohort; yields progress and returns the report (a dict)."""
    from napari_ldae.data.cohort import read_cohort

    started, t0 = _dt.datetime.now(_dt.timezone.utc), time.perf_counter()
    loaded, model = _load_model(bundle, options or EvaluateOptions())
    options = resolve_split(options or EvaluateOptions(), loaded.config)
    cohort_table = read_cohort(cohort)
    plan = make_plan(cohort_table, options)
    if not plan.evaluated:
        raise LDAEError(f"no subjects to evaluate in {cohort} (split {options.split!r})")
    ctx = _context(loaded, model, plan, options)
    results = []
    for n, (subject, records) in enumerate(plan.evaluated.items(), start=1):
        label = f"[{n}/{len(plan.evaluated)}] {subject}"
        results.append((yield from _iter_subject(ctx, records, label)))
    report: dict[str, Any] = {"notes": ctx.notes}
    _image_sections(report, results, ctx)
    if options.runs("probe"):
        t = time.perf_counter()
        report["probe"] = yield from _iter_probe(ctx, plan, results, report["notes"])
        ctx.timed("probe", t)
    else:
        report["probe"] = _skipped(report["notes"], "probe", _PROBE_KEYS)
    report["meta"] = _meta(loaded, cohort, cohort_table, plan, options, ctx, started, t0)
    return finalize(report)


def evaluate(bundle: str | os.PathLike, cohort: str | os.PathLike,
             options: EvaluateOptions | None = None,
             callback: Callable[[Progress], None] | None = None) -> dict[str, Any]:
    """:func:`iter_evaluate`, drained."""
    return drain(iter_evaluate(bundle, cohort, options), callback)


def _load_model(bundle: str | os.PathLike, options: EvaluateOptions):
    from napari_ldae.core.bundle import load_bundle
    from napari_ldae.core.device import available_devices, supported_precisions

    loaded = load_bundle(bundle)
    device = {"cuda": "cuda:0"}.get(options.device or "", options.device)
    device = device or available_devices()[0]
    if device not in available_devices():
        raise LDAEError(f"device {device!r} is not available here; choose one of "
                        f"{', '.join(available_devices())}")
    if options.precision not in supported_precisions(device):
        raise LDAEError(f"precision {options.precision!r} is not supported on {device}; choose "
                        f"one of {', '.join(supported_precisions(device))}")
    return loaded, loaded.load_model(device, options.precision, options.max_batch)


def _context(loaded, model, plan: Plan, options: EvaluateOptions) -> _Context:
    from napari_ldae.data.preprocess import PreprocessContract

    notes = plan.notes
    lpips, why = im.lpips_metric(options.lpips_weights)
    if why:
        notes["lpips"] = why
    direction, why = ad_direction(model, options.direction)
    if why:
        notes["manipulation.direction"] = why
    evaluated = [r for recs in plan.evaluated.values() for r in recs]
    has_truth = any(isinstance(r.extra.get("ventricle_ml"), int | float) for r in evaluated)
    contract = PreprocessContract.from_dict(loaded.config["preprocessing"])
    return _Context(model, contract, options, lpips, direction, has_truth, notes)


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
def _image_sections(report: dict[str, Any], results: list[_SubjectResult],
                    ctx: _Context) -> None:
    notes, opts = report["notes"], ctx.options
    n_scans = sum(len(r.records) for r in results)
    report["autoencoder"] = _means(results, "autoencoder") | {"n_scans": n_scans}
    report["reconstruction"] = _reconstruction(results, ctx, notes)
    if opts.runs("semantic_only"):
        report["semantic_only"] = _means(results, "semantic_only") | {
            "steps": opts.decode_steps, "seed": opts.seed, "n_scans": n_scans}
    else:
        report["semantic_only"] = _skipped(notes, "semantic_only", ("ssim", "mse"))
    report["interpolation"] = _interpolation(results, opts, notes)
    report["manipulation"] = _manipulation(results, ctx, notes)


def _means(results: list[_SubjectResult], key: str) -> dict[str, float | None]:
    metrics = sorted({m for r in results for m in r.scores.get(key, {})})
    return {m: im.summary(v for r in results for v in r.scores[key][m])["mean"] for m in metrics}


def _reconstruction(results: list[_SubjectResult], ctx: _Context,
                    notes: dict[str, str]) -> dict[str, Any]:
    opts = ctx.options
    if not opts.runs("reconstruction"):
        out = _skipped(notes, "reconstruction", ())
        for metric in ("ssim", "mse"):
            out[metric] = {f"T{T}": None for T in (10, 50)}
            for T in (10, 50):
                notes[f"reconstruction.{metric}.T{T}"] = "skipped (--skip reconstruction)"
        return out
    out: dict[str, Any] = {"steps": list(opts.steps)}
    for metric in ("ssim", "mse", *(("lpips",) if ctx.lpips else ())):
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


def _interpolation(results: list[_SubjectResult], opts: EvaluateOptions,
                   notes: dict[str, str]) -> dict[str, Any]:
    keys = ("ssim_mean", "copy_baseline_ssim_mean")
    if not opts.runs("interpolation"):
        return _skipped(notes, "interpolation", keys)
    rows = [row for r in results for row in r.triplets]
    out: dict[str, Any] = {"steps": opts.decode_steps, "n_triplets": len(rows),
                           "n_subjects": sum(1 for r in results if r.triplets),
                           "reference": "autoencoder reconstruction of the real target visit",
                           "copy_baseline": "autoencoder reconstruction of the visit nearest "
                                            "in months to the target (start on ties)"}
    out |= _triplet_means(rows)
    if not rows:
        for key in keys:
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


def _manipulation(results: list[_SubjectResult], ctx: _Context,
                  notes: dict[str, str]) -> dict[str, Any]:
    keys = ("ventricle_monotonic_fraction", "ventricle_change_ml_per_unit")
    if not ctx.options.runs("manipulation"):
        return _skipped(notes, "manipulation", keys)
    if not ctx.has_truth:
        return _skipped(notes, "manipulation", keys, "the cohort has no ventricle_ml column to "
                        "validate the ventricle measurement against")
    out: dict[str, Any] = {"segmentation_validation": _validation(results),
                           "direction": ctx.direction, "strengths": list(ctx.options.strengths),
                           "steps": ctx.options.decode_steps}
    curves = {r.records[0].subject: r.edit_ml for r in results if r.edit_ml is not None}
    if not curves:
        out |= dict.fromkeys(keys)
        for key in keys:
            notes[f"manipulation.{key}"] = (notes.get("manipulation.segmentation")
                                            or notes.get("manipulation.direction", "no edits"))
        return out
    s = np.asarray(ctx.options.strengths, dtype=float)
    slopes = [float(np.polyfit(s, v, 1)[0]) if len(s) > 1 else math.nan for v in curves.values()]
    rising = [bool(np.all(np.diff(v) > 0)) for v in curves.values()]
    out |= {"ventricle_monotonic_fraction": float(np.mean(rising)),
            "ventricle_change_ml_per_unit": im.summary(slopes)["mean"],
            "ventricle_ml_by_strength": {f"{x:g}": float(np.mean([v[i] for v in
                                                                  curves.values()]))
                                         for i, x in enumerate(s)},
            "per_subject": {k: [round(x, 3) for x in v] for k, v in curves.items()},
            "n_subjects": len(curves)}
    if len(s) < 2:
        notes["manipulation.ventricle_change_ml_per_unit"] = "needs at least two strengths"
    return out


def _validation(results: list[_SubjectResult]) -> dict[str, Any]:
    rows = [v for r in results for v in r.ventricles if v["truth"] is not None]
    truth = np.asarray([v["truth"] for v in rows], dtype=float)
    out: dict[str, Any] = {"method": "template-prior partial-volume CSF segmentation "
                                     "(napari_ldae.evaluate.ventricles)", "n_scans": len(rows)}
    for key, name in (("measured", "scans"), ("measured_ae", "autoencoder")):
        out[name] = _agreement(truth, np.asarray([v[key] for v in rows], dtype=float))
    return out


def _agreement(truth: np.ndarray, measured: np.ndarray) -> dict[str, float | None]:
    """Pearson r, MAE (ml), mean relative error and mean bias of measured vs true volumes."""
    if len(truth) < 2 or np.std(truth) == 0 or np.std(measured) == 0:
        r = None
    else:
        r = float(np.corrcoef(truth, measured)[0, 1])
    if not len(truth):
        return {"pearson_r": None, "mae_ml": None, "mean_relative_error": None, "bias_ml": None}
    err = measured - truth
    return {"pearson_r": r, "mae_ml": float(np.abs(err).mean()),
            "mean_relative_error": float(np.mean(np.abs(err) / np.maximum(truth, 1e-6))),
            "bias_ml": float(err.mean())}


def _skipped(notes: dict[str, str], section: str, keys: Iterable[str],
             reason: str | None = None) -> dict[str, Any]:
    reason = reason or f"skipped (--skip {section})"
    for key in keys:
        notes[f"{section}.{key}"] = reason
    return {key: None for key in keys} | {"skipped": reason}


# ----------------------------------------------------------------------------- probes
_PROBE_KEYS = ("ad_vs_cn", "age")


def _iter_probe(ctx: _Context, plan: Plan, results: list[_SubjectResult],
                notes: dict[str, str]) -> ProgressGen[dict[str, Any]]:
    """Probes refitted on the folds, and the bundle's own directions on the evaluated scans."""
    codes = {_key(r): y for res in results for r, y in zip(res.records, res.y, strict=True)}
    missing = [r for fold in plan.folds for s in fold.values() for r in s
               if _key(r) not in codes]
    codes |= yield from _iter_embed(ctx, list({_key(r): r for r in missing}.values()))
    out: dict[str, Any] = {"protocol": plan.protocol}
    if len(codes) > 1:  # near 0: the encoder gives every brain the same y
        out["semantic_spread"] = semantic_spread(torch.stack(list(codes.values())))
    try:
        out |= _refit(plan.folds, codes, ctx.options, notes)
    except ImportError as err:
        reason = f"the probe fitting needs napari-ldae[train] ({err})"
        out |= _skipped(notes, "probe", ("ad_vs_cn", "age"), reason)
        out["ad_vs_cn"] = {"roc_auc": None, "accuracy": None}
        out["age"] = {"mae": None}
        notes |= {f"probe.{k}": reason for k in ("ad_vs_cn.roc_auc", "ad_vs_cn.accuracy",
                                                 "age.mae")}
    evaluated = [r for recs in plan.evaluated.values() for r in recs]
    out["bundle_directions"] = _bundle_directions(ctx.model, evaluated, codes)
    out["bundle_directions_scored_on"] = (
        "the held-out test scans" if ctx.options.split == "test" else
        "every evaluated scan (split all: may include the bundle's own training subjects)")
    return out


def _key(r: ScanRecord) -> str:
    return str(r.path)


def _iter_embed(ctx: _Context, records: list[ScanRecord]) -> ProgressGen[dict[str, torch.Tensor]]:
    """Semantic codes y of scans outside the evaluated subjects (probe training scans)."""
    out: dict[str, torch.Tensor] = {}
    batch = ctx.model.max_batch
    for i in range(0, len(records), batch):
        chunk = records[i:i + batch]
        x, _ = _load(chunk, ctx.contract)
        y = ctx.model.embed(x).cpu()
        out |= {_key(r): y[n] for n, r in enumerate(chunk)}
        yield Progress(min(i + batch, len(records)), len(records), "embedding probe scans")
    return out


def _refit(folds: list[dict[str, list[ScanRecord]]], codes: dict[str, torch.Tensor],
           options: EvaluateOptions, notes: dict[str, str]) -> dict[str, Any]:
    """Fit the trainer's probes on each fold (y standardised by its training scans)."""
    import copy

    from napari_ldae.evaluate.probes import age_probe, classifier_probe
    from napari_ldae.train.config import DEFAULTS

    hp = copy.deepcopy(DEFAULTS["probe"])
    if options.probe_steps:
        hp["classifier"]["steps"] = hp["age"]["steps"] = int(options.probe_steps)
    per_fold: dict[str, list[dict]] = {"ad_vs_cn": [], "age": []}
    for fold in folds:
        if not fold["train"]:
            continue
        raw = {s: _stack(codes, fold[s]) for s in fold}
        mean, std = raw["train"].mean(0), raw["train"].std(0).clamp_min(1e-6)
        z = {s: (v - mean) / std for s, v in raw.items()}
        for name, probe in (("ad_vs_cn", classifier_probe), ("age", age_probe)):
            result = probe(z, fold, hp, options.seed)
            if result is not None:
                per_fold[name].append(result[1])
    out = {"ad_vs_cn": _fold_mean(per_fold["ad_vs_cn"], "ad_vs_cn", notes,
                                  ("accuracy", "precision", "recall", "f1", "mcc", "roc_auc")),
           "age": _fold_mean(per_fold["age"], "age", notes, ("mae", "rmse"))}
    out["ad_vs_cn"]["positive_class"] = hp["positive"]
    out["age"]["unit"] = "years"
    out["hyperparameters"] = hp
    return out


def _stack(codes: dict[str, torch.Tensor], records: list[ScanRecord]) -> torch.Tensor:
    if not records:
        return torch.zeros((0, next(iter(codes.values())).numel()))
    return torch.stack([codes[_key(r)].float() for r in records])


def _fold_mean(folds: list[dict], name: str, notes: dict[str, str],
               metrics: Sequence[str]) -> dict[str, Any]:
    """Metrics averaged over folds (finite values only); ``None`` with a reason otherwise."""
    out: dict[str, Any] = {"n_folds": len(folds), "n_test_scans": sum(f.get("n", 0) for f in folds)}
    for m in metrics:
        out[m] = im.summary(f.get(m) for f in folds)["mean"]
        if out[m] is None:
            notes[f"probe.{name}.{m}"] = _probe_reason(folds, name, m)
    if len(folds) > 1:
        out["folds"] = [{m: f.get(m) for m in (*metrics, "n")} for f in folds]
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


# ----------------------------------------------------------------------------- the report
def _meta(loaded, cohort_path, cohort: Cohort, plan: Plan, options: EvaluateOptions,
          ctx: _Context, started: _dt.datetime, t0: float) -> dict[str, Any]:
    evaluated = [r for recs in plan.evaluated.values() for r in recs]
    return {
        "napari_ldae_version": __version__,
        "command": options.command,
        "started": started.isoformat(timespec="seconds"),
        "seconds": time.perf_counter() - t0,
        "timings_s": ctx.timings,
        "bundle": {"path": str(loaded.path), "name": loaded.name, "sha256": loaded.sha256,
                   "trained": loaded.config.get("provenance", {}).get("trained")},
        "cohort": {"path": str(Path(cohort_path).resolve()), "n_subjects": len(cohort.subjects()),
                   "n_scans": len(cohort)},
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
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


def write_markdown(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write the report as Markdown tables with the paper's numbers beside ours."""
    from napari_ldae.evaluate.markdown import render

    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(report, PAPER))
    return path
