"""Cohorts: a BIDS-like folder or a CSV read into one table of scans (and written back as CSV).

BIDS-like tree::

    ROOT/participants.tsv                  participant_id, diagnosis, age (+ any columns)
    ROOT/sub-X/sub-X_sessions.tsv          session_id, months (+ age, diagnosis, any columns)
    ROOT/sub-X/ses-Y/anat/sub-X_ses-Y_T1w.nii.gz

CSV: one row per scan, columns ``path, subject`` and optionally ``session, months, diagnosis,
age``; other columns go to :attr:`ScanRecord.extra`. Relative paths are relative to the CSV's
folder. ``n/a`` or an empty cell means unknown. No pandas: the :mod:`csv` module does it all.
Visit dates come from :mod:`napari_ldae.data.visit_months`; splitting by subject is
:mod:`napari_ldae.data.subject_splits`.
"""

from __future__ import annotations

import csv
import difflib
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_ldae.data.visit_months import session_months
from napari_ldae.errors import CohortError

CSV_COLUMNS = ("path", "subject", "session", "months", "diagnosis", "age")
REQUIRED_CSV = ("path", "subject")
_NULL = {"", "n/a", "na", "nan", "none"}


@dataclass(frozen=True)
class ScanRecord:
    """One scan of one visit. ``extra`` holds any further (ground-truth) columns."""

    path: Path
    subject: str
    session: str
    months: float
    diagnosis: str | None = None
    age: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, hash=False)


class Cohort:
    """An ordered table of :class:`ScanRecord` (sorted by subject, then months)."""

    def __init__(self, records: Iterable[ScanRecord], root: Path | None = None) -> None:
        self.records: tuple[ScanRecord, ...] = tuple(
            sorted(records, key=lambda r: (r.subject, r.months, r.session))
        )
        self.root = root

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[ScanRecord]:
        return iter(self.records)

    def __getitem__(self, i: int) -> ScanRecord:
        return self.records[i]

    def __repr__(self) -> str:
        return f"Cohort({len(self)} scans, {len(self.subjects())} subjects)"

    def sha256(self) -> str:
        """Content hash of the table: each scan's path relative to the cohort root, subject,
        session, months, diagnosis, age and extra columns (not the voxels). Recorded beside
        the path a user gave, so a report or bundle names its cohort on any machine."""
        import hashlib
        import json

        base = self.root or Path.cwd()
        rows = [[_portable(r.path, base), r.subject, r.session, r.months, r.diagnosis, r.age,
                 sorted((k, str(v)) for k, v in r.extra.items())] for r in self.records]
        return hashlib.sha256(json.dumps(rows, default=str).encode()).hexdigest()

    def subjects(self) -> list[str]:
        """Sorted subject ids."""
        return sorted({r.subject for r in self.records})

    def by_subject(self) -> dict[str, list[ScanRecord]]:
        """Subject id → its visits, sorted by months."""
        out: dict[str, list[ScanRecord]] = {}
        for r in self.records:
            out.setdefault(r.subject, []).append(r)
        return out

    def visits(self, subject: str) -> list[ScanRecord]:
        """The visits of ``subject`` sorted by months."""
        visits = [r for r in self.records if r.subject == subject]
        if not visits:
            raise CohortError(f"no subject {subject!r} in this cohort")
        return visits

    def filter(self, keep: Callable[[ScanRecord], bool]) -> Cohort:
        """The records for which ``keep(record)`` is true."""
        return Cohort([r for r in self.records if keep(r)], self.root)

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write the table as a CSV that :func:`read_cohort` reads back to the same records."""
        out = Path(path)
        extra_keys = sorted({k for r in self.records for k in r.extra})
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow([*CSV_COLUMNS, *extra_keys])
            for r in self.records:
                writer.writerow([
                    _portable(r.path, out.parent), r.subject, r.session, _cell(r.months),
                    _cell(r.diagnosis), _cell(r.age), *(_cell(r.extra.get(k)) for k in extra_keys),
                ])
        return out


# ----------------------------------------------------------------------------- reading
def read_cohort(path: str | os.PathLike, *, check_files: bool = True) -> Cohort:
    """Read a BIDS-like folder or a CSV file into a :class:`Cohort`."""
    p = Path(path)
    if p.is_dir():
        return _read_bids(p, check_files)
    if p.is_file():
        return _read_csv(p, check_files)
    raise CohortError(f"{p}: no such folder or CSV file")


def _read_table(path: Path, delimiter: str) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    if not columns:
        raise CohortError(f"{path}: the file is empty; it needs a header row")
    return columns, rows


def _require(path: Path, columns: list[str], required: Iterable[str]) -> None:
    missing = [c for c in required if c not in columns]
    if not missing:
        return
    hints = []
    for m in missing:
        close = difflib.get_close_matches(m, columns, n=1, cutoff=0.6)
        hints.append(f"{m!r} (unknown column {close[0]!r} — did you mean {m!r}?)" if close
                     else repr(m))
    raise CohortError(
        f"{path}: missing column(s) {', '.join(hints)}; found {', '.join(columns)}"
    )


def _read_csv(path: Path, check_files: bool) -> Cohort:
    columns, rows = _read_table(path, "\t" if path.suffix.lower() == ".tsv" else ",")
    _require(path, columns, REQUIRED_CSV)
    if not rows:
        raise CohortError(f"{path}: no rows; list one scan per row")
    per_subject: dict[str, int] = {}
    for row in rows:
        per_subject[row["subject"]] = per_subject.get(row["subject"], 0) + 1
    records, seen = [], {}
    for line, row in enumerate(rows, start=2):
        where = f"{path}, line {line}"
        if not row["subject"] or not row["path"]:
            raise CohortError(f"{where}: empty subject or path")
        session = row.get("session", "")
        months = _months(row.get("months", ""), session, per_subject[row["subject"]], where)
        key = (row["subject"], session if session else row["path"])
        if key in seen:
            raise CohortError(f"{where}: duplicated row (same subject and session as line "
                              f"{seen[key]})")
        seen[key] = line
        scan = _resolve(row["path"], path.parent)
        if check_files and not scan.is_file():
            raise CohortError(f"{where}: scan {scan} does not exist")
        extra = {k: _value(v) for k, v in row.items() if k not in CSV_COLUMNS and k}
        records.append(ScanRecord(scan, row["subject"], session, months,
                                  _text(row.get("diagnosis", "")),
                                  _number(row.get("age", ""), "age", where), extra))
    _check_unique_paths(records, path)
    return Cohort(records, path.parent)


def _read_bids(root: Path, check_files: bool) -> Cohort:
    tsv = root / "participants.tsv"
    if not tsv.is_file():
        raise CohortError(
            f"{root}: no participants.tsv; a BIDS-like cohort needs one (columns "
            "participant_id, diagnosis, age), or pass a CSV listing the scans"
        )
    columns, rows = _read_table(tsv, "\t")
    _require(tsv, columns, ("participant_id",))
    participants: dict[str, dict[str, str]] = {}
    for line, row in enumerate(rows, start=2):
        pid = _bids_id(row["participant_id"], "sub-")
        if pid in participants:
            raise CohortError(f"{tsv}, line {line}: duplicated participant {pid}")
        participants[pid] = row
    folders = sorted(d for d in root.glob("sub-*") if d.is_dir())
    if not folders:
        raise CohortError(f"{root}: no sub-* folders")
    records = []
    for folder in folders:
        if folder.name not in participants:
            raise CohortError(f"{folder}: subject {folder.name} has no row in {tsv.name}")
        records += _subject_records(folder, participants[folder.name], check_files)
    return Cohort(records, root)


def _subject_records(folder: Path, participant: dict[str, str], check_files: bool):
    subject = folder.name
    sessions = _sessions_table(folder)
    ses_dirs = sorted(d for d in folder.glob("ses-*") if d.is_dir())
    if ses_dirs:
        visits = [(d.name, _t1w(d / "anat", d)) for d in ses_dirs]
    else:  # a BIDS subject without sessions
        visits = [("", _t1w(folder / "anat", folder))]
    base_age = _number(participant.get("age", ""), "age", f"participants.tsv ({subject})")
    base_dx = _text(participant.get("diagnosis", ""))
    p_extra = {k: _value(v) for k, v in participant.items()
               if k not in ("participant_id", "diagnosis", "age") and k}
    records = []
    for session, scan in visits:
        row = sessions.get(session, {})
        if sessions and session and not row:
            raise CohortError(f"{folder}: session {session} has no row in {subject}_sessions.tsv")
        where = f"{subject}/{session or 'anat'}"
        months = _months(row.get("months", ""), session, len(visits), where)
        age = _number(row.get("age", ""), "age", where)
        if age is None and base_age is not None:
            age = base_age + months / 12.0
        dx = _text(row.get("diagnosis", "")) or base_dx
        extra = p_extra | {k: _value(v) for k, v in row.items()
                           if k not in ("session_id", "months", "age", "diagnosis") and k}
        records.append(ScanRecord(scan, subject, session, months, dx, age, extra))
    return records


def _sessions_table(folder: Path) -> dict[str, dict[str, str]]:
    tsv = folder / f"{folder.name}_sessions.tsv"
    if not tsv.is_file():
        return {}
    columns, rows = _read_table(tsv, "\t")
    _require(tsv, columns, ("session_id",))
    table: dict[str, dict[str, str]] = {}
    for line, row in enumerate(rows, start=2):
        sid = _bids_id(row["session_id"], "ses-")
        if sid in table:
            raise CohortError(f"{tsv}, line {line}: duplicated session {sid}")
        table[sid] = row
    return table


def _t1w(anat: Path, owner: Path) -> Path:
    found = sorted(anat.glob("*T1w.nii.gz")) + sorted(anat.glob("*T1w.nii"))
    if not found:
        raise CohortError(f"{owner}: no anat/*_T1w.nii.gz (or .nii) file in this session folder")
    if len(found) > 1:
        names = ", ".join(f.name for f in found)
        raise CohortError(
            f"{owner}: {len(found)} T1w files ({names}); keep one, or list the scans to use "
            "in a CSV"
        )
    return found[0]


# ----------------------------------------------------------------------------- cells
def _months(cell: str, session: str, n_visits: int, where: str) -> float:
    value = _number(cell, "months", where)
    if value is not None:
        return value
    months = session_months(session)
    if months is not None:
        return months
    if n_visits == 1:
        return 0.0
    raise CohortError(
        f"{where}: the visit's months from baseline are unknown; add a 'months' column "
        "(BIDS: sub-X/sub-X_sessions.tsv with session_id, months) or name sessions ses-M06 etc."
    )


def _number(cell: str, name: str, where: str) -> float | None:
    if cell.strip().lower() in _NULL:
        return None
    try:
        value = float(cell)
    except ValueError:
        raise CohortError(f"{where}: {name} {cell!r} is not a number") from None
    return None if math.isnan(value) else value


def _text(cell: str) -> str | None:
    return None if cell.strip().lower() in _NULL else cell.strip()


def _value(cell: str) -> Any:
    if cell.strip().lower() in _NULL:
        return None
    for cast in (int, float):
        try:
            return cast(cell)
        except ValueError:
            pass
    return cell


def _cell(value: Any) -> str:
    return "n/a" if value is None else str(value)


def _bids_id(value: str, prefix: str) -> str:
    return value if value.startswith(prefix) else prefix + value


def _resolve(cell: str, base: Path) -> Path:
    p = Path(cell).expanduser()
    return (p if p.is_absolute() else base / p).resolve()


def _portable(path: Path, base: Path) -> str:
    try:
        return Path(os.path.relpath(path, base.resolve())).as_posix()
    except ValueError:  # another drive on Windows
        return str(path)


def _check_unique_paths(records: list[ScanRecord], source: Path) -> None:
    seen: dict[Path, str] = {}
    for r in records:
        if r.path in seen:
            raise CohortError(f"{source}: scan {r.path} is listed twice ({seen[r.path]} and "
                              f"{r.subject} {r.session})")
        seen[r.path] = f"{r.subject} {r.session}"
