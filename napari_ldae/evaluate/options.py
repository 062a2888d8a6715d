"""What ``napari-ldae evaluate`` evaluates (:class:`EvaluateOptions`, the CLI's options) and on
which subjects (:class:`Plan`: the evaluated subjects and the probe folds)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from napari_ldae.data.cohort import Cohort, ScanRecord
from napari_ldae.errors import LDAEError
from napari_ldae.evaluate import PROBE_FIT_KINDS, SECTIONS

SPLITS = ("test", "all")


@dataclass(frozen=True)
class EvaluateOptions:
    """What to evaluate and how (the CLI's options)."""

    steps: tuple[int, ...] = (10, 20, 50, 100)  # DDIM steps T of the reconstruction table
    task_steps: int | None = None  # T of semantic-only, interpolation, manipulation (max steps)
    split: str = "test"  # "test": the held-out subjects; "all": the whole cohort
    # Subject split and random x_T; None: the bundle's training split (its provenance), else
    # seed 0 and fractions 0.1 (the trainer's defaults): the same test subjects as in training.
    seed: int | None = None
    val_fraction: float | None = None
    test_fraction: float | None = None
    max_subjects: int | None = None  # per split, diagnoses kept balanced
    strengths: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0)
    direction: str | None = None  # None: the bundle's direction "toward AD"
    lpips_weights: str | None = None
    probe_steps: int | None = None  # optimizer steps of each probe (None: the trainer's, 2000)
    probe_fit: str = "paper"  # "paper": the trainer's probes; "regularised": L2, inner CV
    probe_train: str | None = None  # a cohort whose scans train the probes (no CV, no split)
    probe_volumes: bool = False  # also the probes on the structure volumes (scan, reconstruction)
    skip: tuple[str, ...] = ()
    device: str | None = None
    precision: str = "fp32"
    max_batch: int = 8
    command: str = ""

    def __post_init__(self) -> None:
        if not self.steps or min(self.steps) < 1:
            raise LDAEError(f"--steps must be positive integers, got {list(self.steps)}")
        if not self.strengths:
            raise LDAEError("--strengths needs at least one value")
        if self.probe_fit not in PROBE_FIT_KINDS:
            raise LDAEError(f"--probe-fit must be one of {', '.join(PROBE_FIT_KINDS)}, "
                            f"not {self.probe_fit!r}")
        if self.probe_steps and self.probe_fit != "paper":
            raise LDAEError("--probe-steps sets the paper's probes; --probe-fit "
                            f"{self.probe_fit} fits to convergence and takes no step count")
        object.__setattr__(self, "steps", tuple(dict.fromkeys(int(t) for t in self.steps)))
        if self.split not in SPLITS:
            raise LDAEError(f"--split must be one of {', '.join(SPLITS)}, not {self.split!r}")
        unknown = sorted(set(self.skip) - set(SECTIONS))
        if unknown:
            raise LDAEError(f"unknown section(s) to skip {unknown}; choose from {SECTIONS}")
        if self.max_subjects is not None and self.max_subjects < 1:
            raise LDAEError("--max-subjects must be at least 1")

    @property
    def decode_steps(self) -> int:
        return int(self.task_steps or max(self.steps))

    def runs(self, section: str) -> bool:
        return section not in self.skip


def resolve_split(options: EvaluateOptions,
                  config: dict[str, Any] | None = None) -> EvaluateOptions:
    """Fill the unset split options from a bundle config's provenance (its training split),
    else with the trainer's defaults (seed 0, fractions 0.1)."""
    prov = (config or {}).get("provenance") or {}
    data = (prov.get("config") or {}).get("data") or {}
    seed = prov.get("split_seed") if prov.get("split_seed") is not None else prov.get("seed")
    return dataclasses.replace(
        options,
        seed=options.seed if options.seed is not None else int(seed or 0),
        val_fraction=_first(options.val_fraction, data.get("val_fraction"), 0.1),
        test_fraction=_first(options.test_fraction, data.get("test_fraction"), 0.1),
    )


def _first(*values: float | None) -> float:
    return float(next(v for v in values if v is not None))


# ----------------------------------------------------------------------------- the plan
@dataclass
class Plan:
    """Which subjects are evaluated and how the probes are fitted."""

    evaluated: dict[str, list[ScanRecord]]  # subject → visits (months order)
    folds: list[dict[str, list[ScanRecord]]]  # probe folds: train / val / test records
    protocol: str
    notes: dict[str, str] = field(default_factory=dict)


def make_plan(cohort: Cohort, options: EvaluateOptions,
              probe_cohort: Cohort | None = None) -> Plan:
    """Evaluated subjects and probe folds, deterministic in the cohort and the seed.

    ``probe_cohort`` (``--probe-train``): the probes are fitted on all its scans and reported on
    every evaluated scan, one fold, instead of cross-validation or the split's training part.
    """
    from napari_ldae.data.subject_splits import limit_subjects, split_subjects, subject_folds

    options = resolve_split(options)
    if options.split == "all":
        subjects = limit_subjects(cohort.by_subject(), options.max_subjects, options.seed)
        folds, protocol = subject_folds(subjects, options.seed)
        return _probe_trained_on(Plan(subjects, folds, protocol), probe_cohort)
    splits = split_subjects(cohort, options.val_fraction, options.test_fraction, options.seed)
    parts = {s: limit_subjects(splits[s].by_subject(), options.max_subjects, options.seed)
             for s in ("train", "val", "test")}
    fold = {s: [r for recs in parts[s].values() for r in recs] for s in parts}
    protocol = (f"subject-grouped split (seed {options.seed}, val {options.val_fraction}, test "
                f"{options.test_fraction}): fitted on train, model selection on val, "
                "reported on test")
    return _probe_trained_on(Plan(parts["test"], [fold], protocol), probe_cohort)


def _probe_trained_on(plan: Plan, probe_cohort: Cohort | None) -> Plan:
    if probe_cohort is None:
        return plan
    evaluated = [r for recs in plan.evaluated.values() for r in recs]
    shared = {str(r.path) for r in evaluated} & {str(r.path) for r in probe_cohort}
    if shared:
        raise LDAEError(f"--probe-train shares {len(shared)} scan(s) with the evaluated "
                        f"subjects, e.g. {sorted(shared)[0]}; give it another cohort")
    protocol = (f"probes fitted on every scan of the --probe-train cohort "
                f"({len(probe_cohort.subjects())} subjects, {len(probe_cohort)} scans), "
                "reported on every evaluated scan")
    return Plan(plan.evaluated, [{"train": list(probe_cohort), "test": evaluated}], protocol,
                plan.notes)
