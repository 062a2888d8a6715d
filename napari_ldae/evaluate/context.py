"""What the sections of ``napari-ldae evaluate`` share: the run's context, one subject's results,
scan loading, scoring and the "skipped" entries."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from napari_ldae.core.progress import Progress, ProgressGen
from napari_ldae.data.cohort import ScanRecord
from napari_ldae.errors import LDAEError
from napari_ldae.evaluate import image_metrics as im
from napari_ldae.evaluate.options import EvaluateOptions


@dataclass
class Context:
    model: Any  # LDAEModel
    contract: Any  # PreprocessContract
    options: EvaluateOptions
    lpips: im.VolumeMetric | None
    direction: str | None
    truths: tuple[str, ...]  # structures whose true volume the cohort has (manipulation)
    notes: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)

    def timed(self, name: str, start: float) -> None:
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    @property
    def edits(self) -> bool:
        """Whether each subject's baseline is edited toward AD."""
        return self.options.runs("manipulation") and self.direction is not None

    @property
    def needs_inversion(self) -> bool:
        """Whether any section needs x_T (the DDIM inversion); the probes and semantic-only
        decoding need y alone."""
        return any(self.options.runs(s) for s in (
            "reconstruction", "interpolation", "extrapolation", "manipulation", "code_use"))

    @property
    def needs_reconstruction(self) -> bool:
        """Whether each subject's baseline reconstruction is kept (identity, code use)."""
        return self.edits or self.options.runs("code_use")


@dataclass
class SubjectResult:
    records: list[ScanRecord]
    y: torch.Tensor  # (V, d) semantic codes of the visits
    latents: torch.Tensor | None = None  # (V, C·X·Y·Z) their normalised latents, flattened
    scores: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # section → metric
    seconds: dict[str, float] = field(default_factory=dict)  # section → seconds per scan
    triplets: list[dict[str, float]] = field(default_factory=list)
    extrapolations: list[dict[str, Any]] = field(default_factory=list)  # held-out visits
    # structure → per visit: truth, measured (scan), measured_ae (its AE reconstruction),
    # measured_file (the cohort's file on its own grid) and that grid's spacing_mm
    structures: dict[str, list[dict[str, float | None]]] = field(default_factory=dict)
    # structure → measured volume of the baseline edited at each strength; "<structure>_deformation"
    # → its change by deformation from strength 0 to each strength
    edit_ml: dict[str, list[float]] = field(default_factory=dict)
    # structure → its true and measured ("measured") change by deformation, first to last visit
    deformation: dict[str, dict[str, float]] = field(default_factory=dict)
    # the known ventricle enlargement of the baseline, read on the scan and on its AE reconstruction
    known_change: dict[str, float] = field(default_factory=dict)
    baseline: Any = None  # Codes of the baseline at the task steps (CPU)
    reconstruction: torch.Tensor | None = None  # decoded baseline codes (float16, CPU)
    edit: torch.Tensor | None = None  # the baseline edited at the largest strength (float16)

    @property
    def subject(self) -> str:
        return self.records[0].subject


def task(gen: ProgressGen, message: str) -> ProgressGen:
    """Re-yield a model generator's progress under a message; return its result."""
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return stop.value
        yield Progress(p.step, p.total, message)


def load_scans(records: list[ScanRecord], contract) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Model-space volumes ``(B, 1, X, Y, Z)`` of the records and their affines."""
    from napari_ldae.data.io import read_scan
    from napari_ldae.data.preprocess import model_affine, preprocess

    vols, affines = [], []
    for r in records:
        scan = read_scan(r.path)
        vols.append(torch.from_numpy(preprocess(scan, contract)))
        affines.append(model_affine(scan, contract))
    return torch.stack(vols)[:, None], affines


def score(ctx: Context, pred: torch.Tensor, target: torch.Tensor,
          head: bool = False) -> dict[str, list[float]]:
    """SSIM, MSE (and LPIPS) per volume; ``head``: also ``ssim_head`` (the head's voxels only)."""
    pred, target = pred.float().cpu(), target.float().cpu()
    out = {"mse": im.mse(pred, target)}
    if head:
        out["ssim"], out["ssim_head"] = im.ssim_and_head(pred, target)
    else:
        out["ssim"] = im.ssim(pred, target)
    if ctx.lpips is not None:
        out["lpips"] = ctx.lpips(pred, target)
    return out


def skipped(notes: dict[str, str], section: str, keys: Iterable[str],
            reason: str | None = None) -> dict[str, Any]:
    reason = reason or f"skipped (--skip {section})"
    for key in keys:
        notes[f"{section}.{key}"] = reason
    return {key: None for key in keys} | {"skipped": reason}


def keep(volume: torch.Tensor) -> torch.Tensor:
    """A decoded volume kept for later comparisons: CPU, float16 (half the memory)."""
    return volume.detach().to("cpu", torch.float16)


def number(value: Any) -> float | None:
    """A cohort cell as a finite float, else None."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


@dataclass(frozen=True)
class Ventricles:
    """A subject's lateral-ventricle volumes per visit (ml): the cohort's truth (None where it
    has none), and as measured on the real scans (model grid) and on their autoencoder
    reconstructions, with the region measurement of every input and result."""

    truth: list[float | None]
    real: list[float]
    recon: list[float]
    affines: list[np.ndarray]

    def measure(self, volume: torch.Tensor | np.ndarray, visit: int) -> float:
        """A model-grid volume's ventricles, on visit ``visit``'s grid."""
        return ventricle_ml(volume, self.affines[visit])


def ventricle_ml(volume: torch.Tensor | np.ndarray, affine: np.ndarray) -> float:
    """The lateral ventricles (ml) of a model-grid volume (any leading singleton axes)."""
    from napari_ldae.data.regions import lateral_ventricles_ml

    data = volume.float().numpy() if isinstance(volume, torch.Tensor) else volume
    return lateral_ventricles_ml(np.asarray(data).squeeze(), affine)


def measured_ventricles(ctx: Context, records: list[ScanRecord], x: torch.Tensor,
                        ae: torch.Tensor, affines: list) -> Ventricles | None:
    """The subject's :class:`Ventricles`, or None (with a note) when the cohort has no true
    volume or the scans cannot be measured."""
    truth = [number(r.extra.get("ventricle_ml")) for r in records]
    if "ventricle" not in ctx.truths or all(t is None for t in truth):
        return None
    try:
        real = [ventricle_ml(x[i], affines[i]) for i in range(len(records))]
        recon = [ventricle_ml(ae[i], affines[i]) for i in range(len(records))]
    except (ValueError, LDAEError) as err:  # not MNI-aligned, or no nilearn
        ctx.notes["ventricles"] = f"ventricle measurement impossible: {err}"
        return None
    return Ventricles(truth, real, recon, list(affines))


def error_means(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Every ``*_error_ml`` of the rows as its mean absolute error and its bias (mean)."""
    out: dict[str, float | None] = {}
    for key in dict.fromkeys(k for r in rows for k in r if k.endswith("_error_ml")):
        values = [r[key] for r in rows if r.get(key) is not None]
        stem = key.removesuffix("_error_ml")
        out[f"{stem}_abs_error_ml_mean"] = im.summary(abs(v) for v in values)["mean"]
        out[f"{stem}_bias_ml"] = im.summary(values)["mean"]
    return out
