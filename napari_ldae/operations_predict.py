"""The checks of a prediction from two or more visits (:func:`napari_ldae.operations.
iter_predict`): what is refused, what is warned about.

Bad input is refused before anything runs (:func:`check_visits`: one visit, duplicate dates,
dates that do not match the visits) or warned about (visits that look like different subjects,
by their BIDS names (:func:`check_visits`) or their semantic codes (:func:`code_warnings`);
dates far outside the visits' span). Warnings are returned; ``iter_predict`` records them in
the provenance and raises them as :class:`PredictionWarning`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from napari_ldae.errors import LDAEError

if TYPE_CHECKING:
    from napari_ldae.core.model import Codes
    from napari_ldae.session import Session

#: Standardised RMS distance of two visits' y above which they look like different subjects.
#: Measured with the demo bundle (sha256 fecb9823f198…) on the held-out synthetic cohort (30
#: subjects, 132 scans): no two visits of one subject are further apart than 1.75, while 30 % of
#: the pairs of different subjects are (the median pair is only 1.03 apart). So the codes catch
#: some mix-ups, never flag a true subject with this bundle, and the BIDS names stay the surer
#: sign. Measure again for another bundle.
SUBJECT_DISTANCE = 2.0
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
            raise LDAEError(f"{short_name(seen[t])} and {short_name(name)} are both dated month "
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
    a, b = (short_name(names[k]) for k in pair)
    return [f"{a} and {b} have semantic codes {worst:.2f} apart (standardised RMS; visits of "
            f"one subject are usually below {SUBJECT_DISTANCE}): are they the same subject?"]


def short_name(name: str) -> str:
    """A path's file name (a layer name as it is)."""
    return Path(name).name or str(name)
