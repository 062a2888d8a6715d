"""What the sections of ``napari-ldae evaluate`` share: the run's context, one subject's results,
scan loading, scoring and the "skipped" entries."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from napari_ldae.core.progress import Progress, ProgressGen
from napari_ldae.data.cohort import ScanRecord
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
    def needs_reconstruction(self) -> bool:
        """Whether each subject's baseline reconstruction is kept (identity, code use)."""
        return self.edits or self.options.runs("code_use")


@dataclass
class SubjectResult:
    records: list[ScanRecord]
    y: torch.Tensor  # (V, d) semantic codes of the visits
    scores: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # section → metric
    seconds: dict[str, float] = field(default_factory=dict)  # section → seconds per scan
    triplets: list[dict[str, float]] = field(default_factory=list)
    extrapolations: list[dict[str, Any]] = field(default_factory=list)  # held-out visits
    # structure → per visit: truth, measured (scan), measured_ae (its AE reconstruction),
    # measured_file (the cohort's file on its own grid) and that grid's spacing_mm
    structures: dict[str, list[dict[str, float | None]]] = field(default_factory=dict)
    # structure → measured volume of the baseline edited at each strength
    edit_ml: dict[str, list[float]] = field(default_factory=dict)
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


def score(ctx: Context, pred: torch.Tensor, target: torch.Tensor) -> dict[str, list[float]]:
    pred, target = pred.float().cpu(), target.float().cpu()
    out = {"ssim": im.ssim(pred, target), "mse": im.mse(pred, target)}
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
