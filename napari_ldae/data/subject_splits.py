"""Subject-grouped splits of a cohort: train/val/test, a stratified subset, K folds.

Every visit of a subject lands in the same part; parts are stratified by baseline diagnosis and
seeded, so they do not depend on row order. Training and evaluation both split here.
"""

from __future__ import annotations

import math
import random

from napari_ldae.data.cohort import Cohort, ScanRecord
from napari_ldae.errors import CohortError

SPLITS = ("train", "val", "test")


def split_subjects(
    cohort: Cohort, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0
) -> dict[str, Cohort]:
    """Split by subject into ``{"train", "val", "test"}``, stratified by baseline diagnosis.

    Deterministic for a given cohort and ``seed`` (independent of row order); every visit of a
    subject lands in the same split. A non-zero fraction gets at least one subject.
    """
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise CohortError(f"{name} must be in [0, 1), got {f}")
    groups = cohort.by_subject()
    n = len(groups)
    n_test = _split_size(n, test_fraction)
    n_val = _split_size(n, val_fraction)
    if n - n_test - n_val < 1:
        raise CohortError(
            f"cannot split {n} subject(s) into train/val/test with val_fraction={val_fraction} "
            f"and test_fraction={test_fraction}; training needs at least one subject"
        )
    strata = _strata(groups, seed)
    test_counts = _allocate({k: len(v) for k, v in strata.items()}, n_test)
    left = {k: len(v) - test_counts[k] for k, v in strata.items()}
    val_counts = _allocate(left, n_val)
    assignment: dict[str, str] = {}
    for key, subjects in strata.items():
        t, v = test_counts[key], val_counts[key]
        for i, s in enumerate(subjects):
            assignment[s] = "test" if i < t else "val" if i < t + v else "train"
    return {
        split: Cohort([r for r in cohort if assignment[r.subject] == split], cohort.root)
        for split in SPLITS
    }


def limit_subjects(groups: dict[str, list[ScanRecord]], n: int | None,
                   seed: int) -> dict[str, list[ScanRecord]]:
    """At most ``n`` subjects, taken in turn from each diagnosis (seeded order)."""
    if n is None or n >= len(groups):
        return dict(sorted(groups.items()))
    order = _stratified_order(groups, seed)
    return {s: groups[s] for s in sorted(order[:n])}


def _stratified_order(groups: dict[str, list[ScanRecord]], seed: int) -> list[str]:
    """Subjects taken in turn from each diagnosis."""
    lists = list(_strata(groups, seed).values())
    return [lst[i] for i in range(max(map(len, lists))) for lst in lists if i < len(lst)]


def subject_folds(groups: dict[str, list[ScanRecord]],
                  seed: int) -> tuple[list[dict[str, list[ScanRecord]]], str]:
    """Subject-grouped K-fold (stratified by diagnosis), K = 2…5 as the smaller class allows."""
    strata = _strata(groups, seed)
    smaller = min(len(strata.get("AD", [])), len(strata.get("CN", []))) or len(groups)
    k = min(max(2, min(5, smaller)), len(groups))
    fold_of, offset = {}, 0
    for subjects in strata.values():
        for i, s in enumerate(subjects):
            fold_of[s] = (i + offset) % k
        offset += len(subjects)
    folds = [{"train": [r for s in sorted(groups) if fold_of[s] != f for r in groups[s]],
              "val": [],
              "test": [r for s in sorted(groups) if fold_of[s] == f for r in groups[s]]}
             for f in range(k)]
    return folds, (f"subject-grouped {k}-fold cross-validation over the evaluated subjects "
                   f"(stratified by diagnosis, seed {seed}); metrics averaged over folds")


def _split_size(n: int, fraction: float) -> int:
    return 0 if fraction == 0 else max(1, round(n * fraction))


def _strata(groups: dict[str, list[ScanRecord]], seed: int) -> dict[str, list[str]]:
    """Subjects by baseline diagnosis, each list in a seeded random order."""
    strata: dict[str, list[str]] = {}
    for subject in sorted(groups):
        key = groups[subject][0].diagnosis or "unknown"
        strata.setdefault(key, []).append(subject)
    for key in sorted(strata):
        random.Random(f"{seed}:{key}").shuffle(strata[key])
    return dict(sorted(strata.items()))


def _allocate(sizes: dict[str, int], total: int) -> dict[str, int]:
    """Largest-remainder allocation of ``total`` across strata in proportion to their sizes."""
    n = sum(sizes.values())
    if n == 0 or total == 0:
        return dict.fromkeys(sizes, 0)
    exact = {k: total * s / n for k, s in sizes.items()}
    counts = {k: math.floor(e) for k, e in exact.items()}
    order = sorted(sizes, key=lambda k: (-(exact[k] - counts[k]), -sizes[k], k))
    for k in order[: total - sum(counts.values())]:
        counts[k] += 1
    return counts
