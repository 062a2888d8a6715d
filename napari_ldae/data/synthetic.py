"""A synthetic longitudinal cohort with known ground truth, built on the ICBM152 2009a template.

Every scan is the skull-stripped 1 mm template (shipped in the ``nilearn`` wheel) pulled back
through one warp, ``scan(x) = template(Φ_A(p(x)))``:

- ``p``: the subject's anatomy (:mod:`napari_ldae.data.synthetic_subject`): a small residual
  affine and a smooth low-frequency (DCT) displacement; in the ``realistic`` variety (the
  default, generator v2) also the head size and invertible steps of the ventricle, hippocampal
  and cortical fields (constitutional ventricle size, hippocampal size, cortical thickness,
  left–right asymmetry); the ``registered`` variety is the same without the head size, as an
  affine registration to MNI leaves it; in the ``template`` variety (v1) one small ventricle
  step only;
- ``Φ_A``: the atrophy flow run for a severity ``A(t)`` (:func:`atrophy`: grows with age, faster
  under AD) along the unit field ``U`` = lateral-ventricle expansion + hippocampal shrinkage +
  grey-matter thinning (:mod:`napari_ldae.data.synthetic_template`). Unit Euler steps are each
  invertible, so ``Φ_A`` is a diffeomorphism at any severity (no folding).

Intensities then get a gamma, a smooth bias field and Rician noise, and the brain mask is applied.
A scan's ground truth (ventricle and hippocampal volumes) is the volume of the template masks
pulled back through the same warp. This module writes cohorts (:func:`make_cohort`) and is the
public entry point for the whole generator. See ``docs/synthetic-cohort.md``.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_ldae import __version__
from napari_ldae._files import atomic_write
from napari_ldae.data.synthetic_subject import (
    AGE_ONSET,
    C_AGE,
    DIAGNOSES,
    DISEASE_YEARS_AT_BASELINE,
    GENERATOR_VERSIONS,
    MAX_ATROPHY,
    MAX_VISITS,
    R_DISEASE,
    VARIETIES,
    SyntheticSubject,
    SyntheticVisit,
    atrophy,
    make_subject,
    visit_months,
)
from napari_ldae.data.synthetic_template import (
    FOV_CENTER_MM,
    FOV_MM,
    Grid,
    _flow_entry,
    _template,
    hippocampus_mask_template,
    template_grid,
    template_mni,
    ventricle_mask_mni,
    ventricle_mask_template,
)
from napari_ldae.errors import CohortError, LDAEError

#: Version of the default (realistic) generator; bumped whenever the same seed would produce
#: different scans. The template variety stays at GENERATOR_VERSIONS["template"] ("1").
GENERATOR_VERSION = GENERATOR_VERSIONS["realistic"]
#: NIfTI files store int16 with this fixed slope (intensity = stored · slope).
INTENSITY_SLOPE = 1.0 / 10000.0
#: participants.tsv columns: always, then the realistic variety's per-subject anatomy.
PARTICIPANT_COLUMNS = ("participant_id", "diagnosis", "age", "sex", "seed")
ANATOMY_COLUMNS = {"brain_scale": "{:.4f}", "brain_ml": "{:.1f}", "ventricle_step": "{:.3f}",
                   "hippocampus_step": "{:.3f}", "cortex_step": "{:.3f}", "asymmetry": "{:.3f}"}


def nifti_gz_bytes(data: np.ndarray, affine: np.ndarray, version: str = GENERATOR_VERSION,
                   ) -> bytes:
    """A .nii.gz (int16, fixed slope :data:`INTENSITY_SLOPE`) with a fixed gzip header.

    ``version`` (the generator version) goes into the header's ``descrip``.
    """
    import nibabel as nib

    stored = np.clip(np.round(data / INTENSITY_SLOPE), -32768, 32767).astype("<i2")
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(stored.shape)
    hdr.set_data_dtype(np.int16)
    hdr.set_xyzt_units("mm")
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=4)  # aligned to MNI152 (like affinely registered scans)
    hdr["scl_slope"], hdr["scl_inter"] = INTENSITY_SLOPE, 0.0
    hdr["vox_offset"] = 352
    hdr["descrip"] = f"napari-ldae synthetic v{version}".encode()
    raw = hdr.binaryblock + b"\0" * 4 + stored.tobytes(order="F")
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=6) as gz:
        gz.write(raw)
    return buf.getvalue()


def _tsv(header: Sequence[str], rows: Sequence[Sequence[object]]) -> bytes:
    lines = ["\t".join(header)] + ["\t".join(str(v) for v in row) for row in rows]
    return ("\n".join(lines) + "\n").encode()


def _write_subject(out: Path, label: str, subj: SyntheticSubject) -> None:
    """The subject's scans and its ``sub-XXX_sessions.tsv``."""
    version = GENERATOR_VERSIONS[subj.variety]
    rows = []
    for v in subj.visits:
        anat = out / label / v.session / "anat"
        atomic_write(anat / f"{label}_{v.session}_T1w.nii.gz",
                      nifti_gz_bytes(v.data, v.affine, version=version))
        t = v.truth
        rows.append([v.session, v.months, f"{t['age']:.2f}", f"{t['ventricle_ml']:.3f}",
                     f"{t['hippocampus_ml']:.3f}", f"{t['atrophy']:.4f}"])
    header = ["session_id", "months", "age", "ventricle_ml", "hippocampus_ml", "atrophy"]
    atomic_write(out / label / f"{label}_sessions.tsv", _tsv(header, rows))


@dataclass(frozen=True)
class _Job:
    out: str
    label: str
    seed: int
    spacing: float
    n_visits: int
    diagnosis: str
    variety: str


def _run_job(job: _Job) -> list[object]:
    """Generate and write one subject; returns its participants.tsv row."""
    subj = make_subject(job.seed, job.spacing, job.n_visits, job.diagnosis, variety=job.variety)
    _write_subject(Path(job.out), job.label, subj)
    anatomy = [fmt.format(subj.anatomy[k]) for k, fmt in ANATOMY_COLUMNS.items() if subj.anatomy]
    return [job.label, subj.diagnosis, f"{subj.age:.1f}", subj.sex, subj.seed, *anatomy]


def _plan(out: Path, subjects: int, seed: int, spacing: float, visits: tuple[int, int],
          mci: bool, variety: str) -> list[_Job]:
    """Per-subject seeds, diagnoses (balanced, shuffled) and visit counts; from ``seed`` only."""
    rng = np.random.default_rng(seed)
    labels = ("CN", "MCI", "AD") if mci else ("CN", "AD")
    dxs = rng.permutation([labels[i % len(labels)] for i in range(subjects)])
    counts = rng.integers(visits[0], visits[1] + 1, subjects)
    width = max(3, len(str(subjects)))
    return [
        _Job(str(out), f"sub-{i + 1:0{width}d}",
             int(np.random.SeedSequence([seed, i]).generate_state(1)[0]),
             spacing, int(counts[i]), str(dxs[i]), variety)
        for i in range(subjects)
    ]


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Create ``out``; refuse a non-empty one unless ``overwrite`` and it is a synthetic cohort."""
    if out.exists() and not out.is_dir():
        raise CohortError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise CohortError(f"{out} is not empty; choose a new folder or pass --overwrite")
        desc = out / "dataset_description.json"
        if not desc.is_file() or "napari-ldae" not in desc.read_text(errors="replace"):
            raise CohortError(
                f"{out} is not empty and is not a synthetic cohort written by napari-ldae; "
                "refusing to delete its content"
            )
        for child in out.glob("sub-*"):
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _description(subjects: int, seed: int, spacing: float, visits: tuple[int, int],
                 mci: bool, variety: str) -> bytes:
    import scipy

    command = (f"napari-ldae make-cohort --out DIR --subjects {subjects} --seed {seed} "
               f"--spacing {spacing:g} --visits {visits[0]} {visits[1]}")
    command += (" --mci" if mci else "") + f" --variety {variety}"
    grid = template_grid(spacing)
    desc = {
        "Name": "napari-ldae synthetic longitudinal cohort (ICBM152 2009a, known ground truth)",
        "BIDSVersion": "1.9.0",
        "DatasetType": "raw",
        "GeneratedBy": [{"Name": "napari-ldae", "Version": __version__,
                         "Description": "napari_ldae.data.synthetic.make_cohort"}],
        "GeneratorVersion": GENERATOR_VERSIONS[variety],
        "Command": command,
        "Parameters": {"subjects": subjects, "seed": seed, "spacing_mm": spacing,
                       "visits": list(visits), "mci": mci, "variety": variety},
        "Grid": {"shape": list(grid.shape), "affine": grid.affine.tolist()},
        "Software": {"numpy": np.__version__, "scipy": scipy.__version__},
    }
    return (json.dumps(desc, indent=2) + "\n").encode()


def _fork_pool(workers: int) -> ProcessPoolExecutor:
    import multiprocessing as mp

    methods = mp.get_all_start_methods()
    ctx = mp.get_context("fork" if "fork" in methods else None)
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx)


def make_cohort(
    out: str | Path,
    subjects: int,
    seed: int,
    spacing: float = 3.0,
    visits: tuple[int, int] = (3, 6),
    mci: bool = False,
    overwrite: bool = False,
    progress: Callable[[int, int], object] | None = None,
    *,
    workers: int = 1,
    variety: str = "realistic",
) -> Path:
    """Write a BIDS-like synthetic cohort to ``out`` and return its path.

    Layout: ``sub-XXX/ses-MYY/anat/sub-XXX_ses-MYY_T1w.nii.gz``, ``sub-XXX/sub-XXX_sessions.tsv``
    (session_id, months, age, ventricle_ml, hippocampus_ml, atrophy), ``participants.tsv``
    (participant_id, diagnosis, age, sex, seed, and for the realistic and registered varieties
    brain_scale, brain_ml, ventricle_step, hippocampus_step, cortex_step, asymmetry) and
    ``dataset_description.json``. ``variety`` is "realistic" (between-subject anatomy, generator
    v2), "registered" (the same with each brain's size taken out, as an affine registration to
    MNI does) or "template" (v1: the same files as before it existed). The same arguments give
    byte-identical files whatever ``workers``. ``progress(done, total)`` is called
    once the arguments are checked (``done`` = 0) and after each subject.
    """
    if subjects < 1:
        raise LDAEError(f"subjects must be at least 1, got {subjects}")
    lo, hi = visits
    if not 1 <= lo <= hi <= MAX_VISITS:
        raise LDAEError(f"visits must satisfy 1 <= MIN <= MAX <= {MAX_VISITS}, got {lo} {hi}")
    if variety not in VARIETIES:
        raise LDAEError(f"variety must be one of {', '.join(VARIETIES)}, got {variety!r}")
    out = Path(out)
    template_grid(spacing)  # validates spacing before anything is written
    _prepare_out(out, overwrite)
    jobs = _plan(out, subjects, seed, float(spacing), (lo, hi), mci, variety)
    tpl = _template(float(spacing))  # built once here, inherited by forked workers
    if workers > 1:
        _flow_entry(tpl, int(MAX_ATROPHY) + 1)
    if progress is not None:
        progress(0, subjects)
    rows = []
    with _fork_pool(workers) if workers > 1 else contextlib.nullcontext() as pool:
        results = pool.map(_run_job, jobs) if pool else map(_run_job, jobs)
        for done, row in enumerate(results, 1):
            rows.append(row)
            if progress is not None:
                progress(done, subjects)
    header = [*PARTICIPANT_COLUMNS, *(ANATOMY_COLUMNS if variety != "template" else ())]
    atomic_write(out / "participants.tsv", _tsv(header, rows))
    atomic_write(out / "dataset_description.json", _description(subjects, seed, spacing,
                                                                 (lo, hi), mci, variety))
    return out


__all__ = [
    "AGE_ONSET",
    "ANATOMY_COLUMNS",
    "C_AGE",
    "DIAGNOSES",
    "DISEASE_YEARS_AT_BASELINE",
    "FOV_CENTER_MM",
    "FOV_MM",
    "GENERATOR_VERSION",
    "GENERATOR_VERSIONS",
    "INTENSITY_SLOPE",
    "MAX_ATROPHY",
    "MAX_VISITS",
    "PARTICIPANT_COLUMNS",
    "R_DISEASE",
    "VARIETIES",
    "Grid",
    "SyntheticSubject",
    "SyntheticVisit",
    "atrophy",
    "hippocampus_mask_template",
    "make_cohort",
    "make_subject",
    "nifti_gz_bytes",
    "template_grid",
    "template_mni",
    "ventricle_mask_mni",
    "ventricle_mask_template",
    "visit_months",
]
