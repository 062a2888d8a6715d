"""The code-use section of ``napari-ldae evaluate``: does the decoder use the semantic code y?

For pairs of different subjects (a, b), a's stochastic code x_T is decoded with b's semantic code
y, and the change this makes is compared with the whole difference between the two subjects'
reconstructions (norms over the volume)::

    swap_fraction(a, b) = ‖decode(x_T_a, y_b) − decode(x_T_a, y_a)‖
                          / ‖decode(x_T_b, y_b) − decode(x_T_a, y_a)‖

0: swapping y changes nothing (the decoder ignores y, everything comes from x_T); 1: swapping y
alone moves the scan as far as the other subject's scan. The codes are the baseline scans'
(inverted with the task steps); their reconstructions are already decoded for the other
sections, so the cost is one extra decode per subject: subject i's x_T with subject i+1's y
(subjects in report order, the last with the first).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from napari_ldae.core.progress import ProgressGen
from napari_ldae.evaluate import image_metrics as im
from napari_ldae.evaluate.context import Context, SubjectResult, skipped, task

KEYS = ("swap_fraction_mean",)


def swap_fraction(own_a: torch.Tensor, own_b: torch.Tensor, swapped: torch.Tensor) -> float:
    """‖swapped − own_a‖ / ‖own_b − own_a‖ over the whole volume (``nan`` if a = b)."""
    own_a, own_b, swapped = (v.detach().float().cpu() for v in (own_a, own_b, swapped))
    if own_a.shape != own_b.shape or own_a.shape != swapped.shape:
        raise ValueError(f"volumes of different shapes: {tuple(own_a.shape)}, "
                         f"{tuple(own_b.shape)}, {tuple(swapped.shape)}")
    den = float(torch.linalg.vector_norm(own_b - own_a))
    num = float(torch.linalg.vector_norm(swapped - own_a))
    return num / den if den > 0 else math.nan


def pairs(n: int) -> list[tuple[int, int]]:
    """(a, b) index pairs: each subject with the next one, the last with the first."""
    return [(i, (i + 1) % n) for i in range(n)] if n >= 2 else []


def iter_section(ctx: Context, results: list[SubjectResult],
                 notes: dict[str, str]) -> ProgressGen[dict[str, Any]]:
    if not ctx.options.runs("code_use"):
        return skipped(notes, "code_use", KEYS)
    usable = [r for r in results if r.baseline is not None and r.reconstruction is not None]
    if len(usable) < 2:
        notes["code_use.swap_fraction_mean"] = "needs at least two evaluated subjects"
        return {"swap_fraction_mean": None}
    from napari_ldae.core.model import Codes

    index = pairs(len(usable))
    codes = Codes(torch.cat([usable[b].baseline.y for _, b in index]),
                  torch.cat([usable[a].baseline.x_T for a, _ in index]),
                  usable[0].baseline.steps)
    gen = ctx.model.iter_decode(codes, ctx.options.decode_steps)
    swapped = yield from task(gen, "code use: decoding x_T of one subject with y of the next")
    fractions = {f"{usable[a].subject}→{usable[b].subject}":
                 swap_fraction(usable[a].reconstruction, usable[b].reconstruction, swapped[n])
                 for n, (a, b) in enumerate(index)}
    values = [v for v in fractions.values() if math.isfinite(v)]
    if not values:
        notes["code_use.swap_fraction_mean"] = "the subjects' reconstructions are identical"
    return {"swap_fraction_mean": im.summary(values)["mean"],
            "swap_fraction_min": float(np.min(values)) if values else None,
            "swap_fraction_max": float(np.max(values)) if values else None,
            "per_pair": fractions, "n_pairs": len(index), "steps": ctx.options.decode_steps,
            "pairing": "baseline scans; each subject's x_T decoded with the next subject's y "
                       "(report order, the last with the first)"}
