"""Strength in years: how fast a direction's projection moves in a cohort's own visits.

For each training subject with visits at two or more dates, the slope of the projection of its
standardised codes on the direction (least squares against time in years) is one sample; their
mean is the projection's change per year, and its standard error says whether the codes move
along the direction at all. ``edit_codes`` moves the projection by strength·√d, so one strength
unit is √d / rate years. A direction whose rate is not positive by at least two standard errors
gets no calibration: a number of years would then mean nothing.

The same slopes, averaged as vectors, are a direction of their own (``probe.direction:
longitudinal``): where a group's codes go in a year of its own visits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from napari_ldae.data.cohort import ScanRecord

MIN_SUBJECTS = 3
MIN_T = 2.0  # the mean slope must exceed this many standard errors


def subject_slopes(z: torch.Tensor, records: Sequence[ScanRecord],
                   group: str | None = None) -> np.ndarray:
    """Each subject's change of ``z`` (N, d) per year: the least-squares slope over its visits
    (subjects of diagnosis ``group`` only, ``None``: all; two or more visit dates) → (S, d)."""
    if len(records) != len(z):
        raise ValueError(f"{len(z)} codes for {len(records)} scans")
    codes = z.double().numpy()
    visits: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        if group is None or record.diagnosis == group:
            visits.setdefault(record.subject, []).append(i)
    slopes = []
    for rows in visits.values():
        t = np.array([records[i].months / 12.0 for i in rows])
        if len(rows) > 1 and np.ptp(t) > 0:
            t = t - t.mean()
            slopes.append(t @ codes[rows] / (t @ t))
    return np.array(slopes).reshape(len(slopes), codes.shape[1])


def mean_change_per_year(z: torch.Tensor, records: Sequence[ScanRecord],
                         group: str | None) -> torch.Tensor:
    """The mean over subjects of :func:`subject_slopes`: where a group's codes go in a year."""
    slopes = subject_slopes(z, records, group)
    if len(slopes) < MIN_SUBJECTS:
        raise ValueError(f"{len(slopes)} {group or 'training'} subjects with visits at two or "
                         f"more dates; a direction from the visits needs {MIN_SUBJECTS}")
    return torch.from_numpy(slopes.mean(0)).float()


def projection_per_year(z: torch.Tensor, records: Sequence[ScanRecord], direction: torch.Tensor,
                        group: str | None = None) -> dict:
    """Calibrate one direction on standardised codes ``z`` (N, d) of ``records``.

    ``group`` keeps only subjects of that diagnosis (``None``: every subject). Returns the
    calibration record stored in the bundle; ``years_per_unit`` is ``None`` when the codes do
    not move along the direction measurably.
    """
    w = direction.reshape(-1).double().numpy()
    slopes = subject_slopes(z, records, group) @ (w / np.linalg.norm(w))
    rate = float(np.mean(slopes)) if len(slopes) else float("nan")
    stderr = float(np.std(slopes, ddof=1) / math.sqrt(len(slopes))) if len(slopes) > 1 \
        else float("nan")
    usable = len(slopes) >= MIN_SUBJECTS and rate > MIN_T * stderr
    unit = math.sqrt(z.shape[1])
    return {
        "group": group or "all",
        "subjects": len(slopes),
        "projection_per_year": _finite(rate),
        "stderr": _finite(stderr),
        "years_per_unit": unit / rate if usable else None,
        "method": ("mean over subjects of the least-squares slope of the standardised code's "
                   "projection on the direction against visit time; one strength unit moves "
                   f"the projection by sqrt(d) = {unit:.4g}"),
    }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
