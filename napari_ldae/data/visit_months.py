"""Months from baseline of a visit, from its BIDS session label or a ``sessions.tsv`` table.

The one parser of session dates, shared by cohorts (training, evaluate), the GUI and the CLI:
``ses-M06`` → 6; ``bl``, ``baseline``, ``sc``, ``screening`` → 0.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_MONTH_RE = re.compile(r"^(?:ses-)?m(\d+(?:\.\d+)?)$", re.IGNORECASE)
_BASELINE = {"bl", "baseline", "sc", "screening"}


def session_months(session: str) -> float | None:
    """Months from baseline that a session label names, or None: ``ses-M06``/``M06`` → 6;
    ``bl``, ``baseline``, ``sc``, ``screening`` (with or without ``ses-``) → 0. The one
    parser of session labels: cohorts (training, evaluate), the GUI and the CLI."""
    label = session.strip().lower().removeprefix("ses-")
    if label in _BASELINE:
        return 0.0
    match = _MONTH_RE.match(label)
    return float(match.group(1)) if match else None


def months_from_bids(path: str | os.PathLike) -> float | None:
    """Months from baseline of a BIDS-named scan, or None when unknown.

    The ``months`` column of ``sub-X_sessions.tsv`` (searched in the parent folders) wins;
    otherwise the session label (:func:`session_months`).
    """
    p = Path(path)
    session = _session_label(p)
    if session is None:
        return None
    from_table = _months_from_table(p, session)
    if from_table is not None:
        return from_table
    return session_months(session)


def _session_label(p: Path) -> str | None:
    for part in [*p.name.split("_"), *(q.name for q in p.parents)]:
        if part.startswith("ses-"):
            return part.split(".")[0]
    return None


def _months_from_table(p: Path, session: str) -> float | None:
    for folder in list(p.parents)[:4]:
        for tsv in sorted(folder.glob("*sessions.tsv")):
            lines = [ln.split("\t") for ln in tsv.read_text().splitlines() if ln.strip()]
            if not lines or "session_id" not in lines[0] or "months" not in lines[0]:
                continue
            sid, col = lines[0].index("session_id"), lines[0].index("months")
            for row in lines[1:]:
                if len(row) > max(sid, col) and row[sid].strip() == session:
                    try:
                        return float(row[col])
                    except ValueError:
                        return None
    return None
