"""Prediction of a subject's brain at any date from two or more of its visits.

The visits are encoded, their trajectory is fitted in code space
(:mod:`napari_ldae.core.trajectory`: y by least squares in time, x_T by a documented rule) and
decoded at each target date. Results lie on the latest visit's grid and are exported in its
space; a date past the last visit is a *prediction*, one between visits an interpolation.

Bad input is refused before anything runs (:func:`check_visits`: one visit, duplicate dates,
dates that do not match the visits) or warned about (visits that look like different subjects,
by their BIDS names or their semantic codes; dates far outside the visits' span). Warnings are
returned, recorded in the provenance and raised as :class:`PredictionWarning`.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_ldae.core.progress import ProgressGen
from napari_ldae.core.trajectory import DEFAULT_X_T_RULE, fit_trajectory
from napari_ldae.errors import LDAEError

if TYPE_CHECKING:
    from napari_ldae.core.model import Codes
    from napari_ldae.data.io import Scan
    from napari_ldae.operations import Result
    from napari_ldae.session import Session

#: Standardised RMS distance of two visits' y above which they look like different subjects.
#: Measured with the demo bundle on the held-out synthetic cohort (30 subjects, 132 scans):
#: visits of one subject are at most 0.52 apart (99th percentile 0.37), scans of different
#: subjects 1.57 at the median (10th percentile 0.81).
SUBJECT_DISTANCE = 0.75
_SUBJECT_RE = re.compile(r"(?:^|[_/\\])(sub-[A-Za-z0-9]+)")


class PredictionWarning(UserWarning):
    """The inputs of a prediction look doubtful (different subjects, far dates)."""


def check_visits(names: Sequence[str], months: Sequence[float],
                 targets: Sequence[float]) -> list[str]:
    """Refuse what cannot be predicted (a clear :class:`LDAEError`); return warnings for what
    is doubtful. ``names``: the visits' paths or layer names; ``months``: their dates."""
    months, targets = [float(m) for m in months], [float(t) for t in targets]
    if len(names) != len(months):
        raise LDAEError(f"{len(names)} visit(s) but {len(months)} date(s): give one date per "
                        "visit")
    if len(names) < 2:
        raise LDAEError("prediction needs two or more visits of one subject (got "
                        f"{len(names)}): one visit shows no change to follow")
    if not targets:
        raise LDAEError("no target dates: give the months to predict")
    if not all(math.isfinite(t) for t in months + targets):
        raise LDAEError("dates must be finite numbers of months")
    seen: dict[float, str] = {}
    for name, t in zip(names, months, strict=True):
        if t in seen:
            raise LDAEError(f"{_short(seen[t])} and {_short(name)} are both dated month "
                            f"{t:g}; each visit needs its own date")
        seen[t] = name
    found: list[str] = []
    subjects = {s for s in (subject_label(n) for n in names) if s}
    if len(subjects) > 1:
        found.append(f"the visits name different subjects ({', '.join(sorted(subjects))}); a "
                     "trajectory needs visits of one subject")
    first, last = min(months), max(months)
    span = last - first
    far = [t for t in targets if t > last + span or t < first - span]
    if far:
        found.append(f"month(s) {', '.join(f'{t:g}' for t in far)} lie further from the visits "
                     f"than the visits span ({first:g}–{last:g}, {span:g} months): the "
                     "prediction follows a straight line that far and is uncertain")
    return found


def subject_label(name: str) -> str | None:
    """The BIDS subject (``sub-XXX``) of a path or layer name, or None."""
    match = _SUBJECT_RE.search(str(name))
    return match.group(1) if match else None


def code_warnings(session: Session, codes: Sequence[Codes], names: Sequence[str]) -> list[str]:
    """A warning when two visits' semantic codes are as far apart as different subjects'."""
    model = session.model
    z = [((c.y[0].double().cpu() - model.semantic_mean.double().cpu())
          / model.semantic_std.double().cpu()) for c in codes]
    worst, pair = 0.0, (0, 0)
    for i in range(len(z)):
        for j in range(i + 1, len(z)):
            d = float((z[i] - z[j]).norm()) / math.sqrt(z[i].numel())
            if d > worst:
                worst, pair = d, (i, j)
    if worst <= SUBJECT_DISTANCE:
        return []
    a, b = (_short(names[k]) for k in pair)
    return [f"{a} and {b} have semantic codes {worst:.2f} apart (standardised RMS; visits of "
            f"one subject are usually below {SUBJECT_DISTANCE}): are they the same subject?"]


def iter_predict(session: Session, scans: Sequence[Scan], months: Sequence[float],
                 targets: Sequence[float], steps: int | None = None,
                 encode_steps: int | None = None, *, x_T_rule: str = DEFAULT_X_T_RULE,
                 reference: bool = True, names: Sequence[str] | None = None,
                 warn: bool = True, **fields: Any) -> ProgressGen[Result]:
    """The brain at each target date from two or more visits: ``(N, X, Y, Z)`` on the latest
    visit's grid.

    ``months``: the visits' dates (any order); ``names``: how the provenance names the visits
    (default: their paths). ``reference``: also decode the latest visit's reconstruction, for
    the differences. ``warn``: raise the warnings as :class:`PredictionWarning` too (the GUI
    shows them from the provenance instead). ``fields`` go into the provenance.
    """
    from napari_ldae.operations import Result, _per_volume, _steps, provenance

    names = [str(n) for n in names] if names is not None else \
        [str(s.path) if s.path else f"visit {i + 1}" for i, s in enumerate(scans)]
    found = check_visits(names, months, targets)
    if len(scans) != len(names):
        raise LDAEError(f"{len(scans)} scan(s) but {len(names)} name(s)")
    steps, encode_steps = _steps(session, steps, encode_steps)
    order = sorted(range(len(scans)), key=lambda i: float(months[i]))
    scans, names = [scans[i] for i in order], [names[i] for i in order]
    months = [float(months[i]) for i in order]
    targets = [float(t) for t in targets]
    codes = []
    for scan in scans:
        codes.append((yield from session.iter_encode(scan, encode_steps)))
    found += code_warnings(session, codes, names)
    trajectory = fit_trajectory(codes, months, x_T_rule)
    refs: tuple[np.ndarray, ...] = ()
    if reference:
        refs = ((yield from session.iter_reconstruction(codes[-1], steps)),)
    volumes = yield from session.iter_decode(trajectory.codes_at(targets), steps)
    for message in found if warn else ():
        warnings.warn(message, PredictionWarning, stacklevel=2)
    prov = provenance(
        session, "predict", steps, encode_steps, visits=names, **trajectory.summary(),
        months=_per_volume(targets), horizon_months=_per_volume([t - months[-1] for t in targets]),
        prediction=_flags([trajectory.is_prediction(t) for t in targets]),
        space=f"the latest visit's ({_short(names[-1])})", warnings=found, **fields)
    return Result(volumes, refs, scans[-1], session.contract, prov, tuple(codes))


def _flags(values: list[bool]) -> bool | list[bool]:
    return values[0] if len(values) == 1 else values


def _short(name: str) -> str:
    return Path(name).name or str(name)
