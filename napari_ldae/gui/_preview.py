"""Live previews of a slider: a few anchor values decoded once, any value in between blended.

The anchors span the slider's range and are decoded in one batch with the preview step count;
while the slider moves, the shown volume is the piecewise-linear blend of the two anchors
around its value (no network call), and full quality follows when it rests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

ANCHORS = 5  # anchor values, evenly over the slider's range
THROTTLE_MS = 40  # at most one blended preview per 40 ms while dragging
REST_MS = 300  # the slider rests: full quality (the blend already shows the value)


def blend_anchors(values: np.ndarray, volumes: np.ndarray, value: float) -> np.ndarray:
    """Piecewise-linear blend of ``volumes`` (one per sorted anchor value) at ``value``
    (clipped to the anchors' range)."""
    v = float(np.clip(value, values[0], values[-1]))
    i = int(np.clip(np.searchsorted(values, v, side="right") - 1, 0, len(values) - 2))
    w = np.float32((v - values[i]) / (values[i + 1] - values[i]))
    return (1.0 - w) * volumes[i] + w * volumes[i + 1]


@dataclass
class Anchors:
    """Decoded anchor volumes (model space) for one source and setting (``key``)."""

    key: tuple
    values: np.ndarray  # (A,) sorted
    volumes: np.ndarray  # (A, X, Y, Z)
    extra: dict[str, Any] = field(default_factory=dict)  # references, layers, geometry

    def at(self, value: float) -> np.ndarray:
        return blend_anchors(self.values, self.volumes, value)
