"""Strength in years: how fast a direction's projection moves in a cohort's own visits.

For each training subject with visits at two or more dates, the slope of the projection of its
standardised codes on the direction (least squares against time in years) is one sample; their
mean is the projection's change per year, and its standard error says whether the codes move
along the direction at all. ``edit_codes`` moves the projection by strength·√d, so one strength
unit is √d / rate years. A direction whose rate is not positive by at least two standard errors
gets no calibration: a number of years would then mean nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from napari_ldae.data.cohort import ScanRecord

MIN_SUBJECTS = 3
MIN_T = 2.0  # the mean slope must exceed this many standard errors


def projection_per_year(z: torch.Tensor, records: Sequence[ScanRecord], direction: torch.Tensor,
                        group: str | None = None) -> dict:
    """Calibrate one direction on standardised codes ``z`` (N, d) of ``records``.

    ``group`` keeps only subjects of that diagnosis (``None``: every subject). Returns the
    calibration record stored in the bundle; ``years_per_unit`` is ``None`` when the codes do
    not move along the direction measurably.
    """
    if len(records) != len(z):
        raise ValueError(f"{len(z)} codes for {len(records)} scans")
    w = direction.reshape(-1).double()
    projection = (z.double() @ (w / w.norm())).numpy()
    visits: dict[str, list[tuple[float, float]]] = {}
    for record, p in zip(records, projection, strict=True):
        if group is None or record.diagnosis == group:
            visits.setdefault(record.subject, []).append((record.months / 12.0, float(p)))
    slopes = [np.polyfit(*np.array(v).T, 1)[0] for v in visits.values()
              if len(v) > 1 and np.ptp([t for t, _ in v]) > 0]
    rate = float(np.mean(slopes)) if slopes else float("nan")
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
