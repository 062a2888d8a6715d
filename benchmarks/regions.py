"""Region volumes against the synthetic cohort's truth (``ventricle_ml``, ``hippocampus_ml``,
``brain_ml``), per scan, with the CPU time of each measurement.

``python -m benchmarks.regions COHORT [COHORT ...] [--visits N] [--structures] [--json OUT]``

``--structures`` measures only the lateral ventricles and the hippocampal region (the structure
network, a fraction of a second per scan) instead of every region.

Make the cohorts first, e.g. ``napari-ldae make-cohort --out /tmp/coh3 --subjects 8 --seed 5
--spacing 3``. ``brain_ml`` is the constitutional brain before atrophy (participants.tsv), so it
reads a little above the whole brain of later visits.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

TRUTH = {"lateral_ventricles": "ventricle_ml", "hippocampal_region": "hippocampus_ml",
         "whole_brain": "brain_ml"}


def _table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _scans(cohort: Path, visits: int | None):
    participants = {r["participant_id"]: r for r in _table(cohort / "participants.tsv")}
    for table in sorted(cohort.glob("sub-*/sub-*_sessions.tsv")):
        subject = table.parent.name
        for row in _table(table)[:visits]:
            path = table.parent / row["session_id"] / "anat" / (
                f"{subject}_{row['session_id']}_T1w.nii.gz")
            yield subject, row["session_id"], path, {**participants[subject], **row}


def _summary(errors: list[float]) -> dict[str, float]:
    e = np.abs(np.asarray(errors))
    return {"mean_abs_relative_error": round(float(e.mean()), 4),
            "max_abs_relative_error": round(float(e.max()), 4),
            "mean_relative_error": round(float(np.mean(errors)), 4), "n": len(errors)}


def run(cohort: Path, visits: int | None, structures: bool = False) -> dict:
    import nibabel as nib

    from napari_ldae.data.regions import measure_regions, structure_volumes

    def measure(data, affine) -> tuple[dict[str, float], float]:
        if structures:
            return structure_volumes(data, affine), float("nan")
        measured = measure_regions(data, affine)
        return measured.ml, measured.match

    rows, errors = [], {region: [] for region in TRUTH}
    for subject, session, path, truth in _scans(cohort, visits):
        image = nib.load(path)
        cpu = time.process_time()
        ml, match = measure(np.asarray(image.dataobj, dtype=np.float32), image.affine)
        row = {"subject": subject, "session": session,
               "cpu_s": round(time.process_time() - cpu, 2), "match": round(match, 4),
               **{k: round(v, 3) for k, v in ml.items()}}
        for region, column in TRUTH.items():
            if region in ml and truth.get(column) not in (None, "", "n/a"):
                true = float(truth[column])
                row[f"{column}_truth"] = true
                errors[region].append(ml[region] / true - 1.0)
        rows.append(row)
        print(json.dumps(row), flush=True)
    spacing = float(np.linalg.norm(image.affine[:3, 0]))
    return {"cohort": cohort.name, "spacing_mm": spacing, "rows": rows,
            "cpu_s_per_scan": round(float(np.mean([r["cpu_s"] for r in rows])), 2),
            "summary": {region: _summary(e) for region, e in errors.items() if e}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.regions", description=__doc__)
    parser.add_argument("cohorts", nargs="+", type=Path)
    parser.add_argument("--visits", type=int, help="first N visits of each subject (all)")
    parser.add_argument("--structures", action="store_true",
                        help="only the lateral ventricles and the hippocampal region")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    results = [run(cohort, args.visits, args.structures) for cohort in args.cohorts]
    text = json.dumps([{k: v for k, v in r.items() if k != "rows"} for r in results], indent=2)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
