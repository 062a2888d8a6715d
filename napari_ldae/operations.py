"""The use cases, assembled once: encode → reconstruct → edit or interpolate → provenance.

Each ``iter_*`` function is a progress generator over a :class:`~napari_ldae.session.Session`
that returns one :class:`Result`: model-space volumes, the reconstructions they are compared
with, the source scan and the provenance. Widgets, CLI commands and ``evaluate`` present
results; :func:`export` writes one (in the scan's space) for the CLI, the export widget and the
napari writer alike. ``Session`` exposes these functions as methods. Each use case takes
``prepare`` ("auto", "yes" or "no"): raw scans are skull-stripped and registered to MNI first,
and their results go back onto the input's voxels (:mod:`napari_ldae.operations_prepare`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_ldae import __version__
from napari_ldae.core.progress import ProgressGen
from napari_ldae.operations_prepare import Preparation, iter_prepare_inputs
from napari_ldae.operations_prepare import provenance as prepare_provenance

if TYPE_CHECKING:
    from napari_ldae.core.model import Codes
    from napari_ldae.data.io import Scan
    from napari_ldae.data.prepare import Prepared
    from napari_ldae.data.preprocess import PreprocessContract
    from napari_ldae.operations_transfer import OnScan
    from napari_ldae.session import Session

SAMPLER = "deterministic DDIM (no random seed involved)"
#: The provenance keys that vary along a result's volumes (one value per volume).
PER_VOLUME = ("strength", "years", "alpha", "months", "horizon_months", "prediction")
#: What :func:`export` writes (a log-Jacobian only for a result carried onto its scan by warp).
EXPORT_KINDS = ("image", "difference", "log_jacobian")


@dataclass(frozen=True)
class Result:
    """A model-space result: the single source of truth for display and export.

    ``volumes``: ``(X, Y, Z)`` or ``(N, X, Y, Z)`` in [0, 1] on the model grid of ``scan``;
    ``references``: ``(X, Y, Z)`` reconstructions the differences are taken to; ``provenance``
    lists the per-volume values (:data:`PER_VOLUME`) when there are several volumes.
    ``scan`` is what the model saw; when it was prepared, ``prepared`` is the way back to the
    input (:func:`export` writes there) and ``preparations`` say what was done to each input.
    """

    volumes: np.ndarray
    references: tuple[np.ndarray, ...]
    scan: Scan
    contract: PreprocessContract
    provenance: dict[str, Any]
    codes: tuple[Codes, ...] = field(default=(), compare=False, repr=False)
    prepared: Prepared | None = field(default=None, compare=False, repr=False)
    preparations: tuple[Preparation, ...] = field(default=(), compare=False, repr=False)

    @property
    def differences(self) -> tuple[np.ndarray, ...]:
        """``volumes − reference`` for each reference (signed, model units)."""
        return tuple(self.volumes - r for r in self.references)

    def item(self, index: int) -> Result:
        """The ``index``-th volume alone, with its own strength/α in the provenance."""
        prov = {k: (v[index] if k in PER_VOLUME and isinstance(v, list) else v)
                for k, v in self.provenance.items()}
        return replace(self, volumes=self.volumes[index], provenance=prov)

    def with_provenance(self, **provenance: Any) -> Result:
        return replace(self, provenance={**self.provenance, **provenance})

    def with_volumes(self, volumes: np.ndarray, **provenance: Any) -> Result:
        """The same result record holding other volumes (a preview blend) and provenance."""
        return replace(self, volumes=np.asarray(volumes, dtype=np.float32),
                       provenance={**self.provenance, **provenance})


def provenance(session: Session, operation: str, steps: int, encode_steps: int,
               **fields: Any) -> dict[str, Any]:
    """The provenance every result records: operation, bundle, steps, version and ``fields``."""
    return {"operation": operation, **fields, "steps": int(steps),
            "encode_steps": int(encode_steps), "bundle": session.bundle.name,
            "bundle_sha256": session.bundle.sha256, "napari_ldae_version": __version__}


def _steps(session: Session, steps: int | None, encode_steps: int | None) -> tuple[int, int]:
    return int(steps or session.steps["decode"]), int(encode_steps or session.steps["encode"])


def _per_volume(values: Sequence[float]) -> float | list[float]:
    return _one_or_all([float(v) for v in values])


def _one_or_all(values: Sequence[Any]) -> Any:
    return values[0] if len(values) == 1 else list(values)


# ----------------------------------------------------------------------------- use cases
def iter_reconstruct(session: Session, scan: Scan, steps: int | None = None,
                     encode_steps: int | None = None, *,
                     prepare: str = "no") -> ProgressGen[Result]:
    """Encode a scan and decode its codes: one ``(X, Y, Z)`` volume (cached)."""
    steps, encode_steps = _steps(session, steps, encode_steps)
    (prep,) = yield from iter_prepare_inputs(session.contract, [scan], prepare)
    codes = yield from session.iter_encode(prep.model_scan, encode_steps)
    volume = yield from session.iter_reconstruction(codes, steps)
    prov = provenance(session, "reconstruct", steps, encode_steps, **prepare_provenance([prep]))
    return Result(volume, (), prep.model_scan, session.contract, prov, (codes,), prep.prepared,
                  (prep,))


def iter_edit(session: Session, scan: Scan, direction: str, strengths: Sequence[float],
              steps: int | None = None, encode_steps: int | None = None, *,
              reference: bool = True, prepare: str = "no", **fields: Any) -> ProgressGen[Result]:
    """Move a scan's code along ``direction`` by each strength: ``(N, X, Y, Z)`` volumes.

    ``reference``: also decode the reconstruction (strength 0 is then taken from it, not decoded
    again) for the differences. ``fields`` go into the provenance.
    """
    check_direction(session, direction)
    steps, encode_steps = _steps(session, steps, encode_steps)
    strengths = [float(s) for s in strengths]
    (prep,) = yield from iter_prepare_inputs(session.contract, [scan], prepare)
    codes = yield from session.iter_encode(prep.model_scan, encode_steps)
    refs: tuple[np.ndarray, ...] = ()
    moved = strengths
    if reference:
        refs = ((yield from session.iter_reconstruction(codes, steps)),)
        moved = [s for s in strengths if s != 0.0]
    volumes = (yield from session.iter_manipulate(codes, direction, moved, steps)) if moved \
        else np.zeros((0, *refs[0].shape), np.float32)
    if len(moved) < len(strengths):
        parts = iter(volumes)
        volumes = np.stack([refs[0] if s == 0.0 else next(parts) for s in strengths])
    prov = provenance(session, "manipulate", steps, encode_steps, direction=direction,
                      meaning=session.directions[direction], strength=_per_volume(strengths),
                      years=_one_or_all([session.years(direction, v) for v in strengths]),
                      **fields, **prepare_provenance([prep]))
    return Result(volumes, refs, prep.model_scan, session.contract, prov, (codes,),
                  prep.prepared, (prep,))


def check_direction(session: Session, direction: str) -> None:
    """A clear error for a direction the bundle does not have, listing those it has."""
    from napari_ldae.errors import LDAEError

    if direction not in session.directions:
        known = ", ".join(f"{k} ({v})" for k, v in session.directions.items()) or "none"
        raise LDAEError(f"unknown direction {direction!r}; this bundle has: {known}")


def iter_interpolate(session: Session, scan_a: Scan, scan_b: Scan, alphas: Sequence[float],
                     steps: int | None = None, encode_steps: int | None = None, *,
                     references: bool = True, prepare: str = "no",
                     **fields: Any) -> ProgressGen[Result]:
    """The brain between two visits at each α (0: A, 1: B): ``(N, X, Y, Z)`` on A's grid.

    ``references``: also decode both reconstructions (α 0 and 1 are then taken from them) for
    the differences to each visit. ``fields`` (visits, dates) go into the provenance. Prepared
    visits are prepared together (B rigidly to A).
    """
    steps, encode_steps = _steps(session, steps, encode_steps)
    alphas = [float(a) for a in alphas]
    preps = yield from iter_prepare_inputs(session.contract, [scan_a, scan_b], prepare,
                                           visits=True)
    scan_a, scan_b = (p.model_scan for p in preps)
    codes_a = yield from session.iter_encode(scan_a, encode_steps)
    codes_b = yield from session.iter_encode(scan_b, encode_steps)
    refs: tuple[np.ndarray, ...] = ()
    inner = alphas
    if references:
        rec_a = yield from session.iter_reconstruction(codes_a, steps)
        rec_b = yield from session.iter_reconstruction(codes_b, steps)
        refs, inner = (rec_a, rec_b), [a for a in alphas if a not in (0.0, 1.0)]
    volumes = (yield from session.iter_interpolate(codes_a, codes_b, inner, steps)) if inner \
        else np.zeros((0, *refs[0].shape), np.float32)
    if len(inner) < len(alphas):
        parts = iter(volumes)
        ends = {0.0: refs[0], 1.0: refs[1]}
        volumes = np.stack([ends[a] if a in ends else next(parts) for a in alphas])
    prov = provenance(session, "interpolate", steps, encode_steps, alpha=_per_volume(alphas),
                      **fields, **prepare_provenance(preps))
    return Result(volumes, refs, scan_a, session.contract, prov, (codes_a, codes_b),
                  preps[0].prepared, tuple(preps))


def iter_predict(session: Session, scans: Sequence[Scan], months: Sequence[float],
                 targets: Sequence[float], steps: int | None = None,
                 encode_steps: int | None = None, *, x_T_rule: str | None = None,
                 y_rule: str | None = None, reference: bool = True,
                 names: Sequence[str] | None = None, warn: bool = True,
                 prepare: str = "no", **fields: Any) -> ProgressGen[Result]:
    """The brain at each target date from two or more visits: ``(N, X, Y, Z)`` on the latest
    visit's grid, decoded from the visits' trajectory in code space (:mod:`napari_ldae.core.
    trajectory`; ``x_T_rule``, ``y_rule`` None: its default rules). Bad or doubtful input: see
    :mod:`napari_ldae.operations_predict`.

    ``months``: the visits' dates (any order); ``names``: how the provenance names the visits
    (default: their paths). ``reference``: also decode the latest visit's reconstruction, for
    the differences. ``warn``: raise the warnings as :class:`PredictionWarning` too (the GUI
    shows them from the provenance instead). ``fields`` go into the provenance. Prepared visits
    are prepared together (the others rigidly to the earliest).
    """
    import warnings

    from napari_ldae.core.trajectory import (
        DEFAULT_X_T_RULE,
        DEFAULT_Y_RULE,
        check_rules,
        fit_trajectory,
    )
    from napari_ldae.errors import LDAEError
    from napari_ldae.operations_predict import (
        PredictionWarning,
        check_visits,
        code_warnings,
        short_name,
    )

    names = [str(n) for n in names] if names is not None else \
        [str(s.path) if s.path else f"visit {i + 1}" for i, s in enumerate(scans)]
    found = check_visits(names, months, targets)
    rules = check_rules(x_T_rule or DEFAULT_X_T_RULE, y_rule or DEFAULT_Y_RULE)
    if len(scans) != len(names):
        raise LDAEError(f"{len(scans)} scan(s) but {len(names)} name(s)")
    steps, encode_steps = _steps(session, steps, encode_steps)
    order = sorted(range(len(scans)), key=lambda i: float(months[i]))
    scans, names = [scans[i] for i in order], [names[i] for i in order]
    months = [float(months[i]) for i in order]
    targets = [float(t) for t in targets]
    preps = yield from iter_prepare_inputs(session.contract, scans, prepare, visits=True)
    scans = [p.model_scan for p in preps]
    codes = []
    for scan in scans:
        codes.append((yield from session.iter_encode(scan, encode_steps)))
    found += code_warnings(session, codes, names)
    trajectory = fit_trajectory(codes, months, *rules)
    refs: tuple[np.ndarray, ...] = ()
    if reference:
        refs = ((yield from session.iter_reconstruction(codes[-1], steps)),)
    volumes = yield from session.iter_decode(trajectory.codes_at(targets), steps)
    for message in found if warn else ():
        warnings.warn(message, PredictionWarning, stacklevel=2)
    prov = provenance(
        session, "predict", steps, encode_steps, visits=names, **trajectory.summary(),
        months=_per_volume(targets), horizon_months=_per_volume([t - months[-1] for t in targets]),
        prediction=_one_or_all([bool(trajectory.is_prediction(t)) for t in targets]),
        space=f"the latest visit's ({short_name(names[-1])})", warnings=found, **fields,
        **prepare_provenance(preps))
    return Result(volumes, refs, scans[-1], session.contract, prov, tuple(codes),
                  preps[-1].prepared, tuple(preps))


# ----------------------------------------------------------------------------- export
def export(path: str | os.PathLike, result: Result | OnScan, kind: str = "image",
           overwrite: bool = False, reference: int = 0, **extra: Any) -> Path:
    """Write a result as NIfTI in the ORIGINAL scan's space, header and intensity units.

    ``kind`` "image" writes the volumes, "difference" the signed ``volumes − references[
    reference]`` (no intensity offset), "log_jacobian" a warp's log-Jacobian. Several volumes
    become one 4D file (volumes last). The JSON sidecar records the provenance (and ``extra``).
    Raises :class:`FileExistsError` rather than replacing a file unless ``overwrite``. A result
    of a prepared scan goes back onto the raw input's voxels, inside its brain mask only
    (outside: the input's values, or 0 for a difference). A result carried onto its scan
    (:class:`~napari_ldae.operations_transfer.OnScan`) is written as it is, its difference taken
    to the input scan.
    """
    from napari_ldae.data.io import write_scan
    from napari_ldae.errors import LDAEError
    from napari_ldae.operations_transfer import OnScan

    if kind not in EXPORT_KINDS:
        raise LDAEError(f"unknown export kind {kind!r}; one of {', '.join(EXPORT_KINDS)}")
    difference = kind == "difference"
    if isinstance(result, OnScan):
        vol, scan = result.on_scan(kind)
    elif kind == "log_jacobian":
        raise LDAEError("a model-space result has no log-Jacobian; carry it onto the scan by "
                        "warp first")
    else:
        vol, scan = _in_scan_space(result, difference, reference)
    if vol.ndim == 4:
        vol = np.moveaxis(vol, 0, -1)  # NIfTI: volumes last
    meta = {"direction": None, "strength": None, "alpha": None, "steps": None, "seed": None,
            "sampler": SAMPLER, "kind": kind, **result.provenance, **extra}
    if difference:
        meta.setdefault("reference", "input scan" if isinstance(result, OnScan)
                        else "reconstruction")
    return write_scan(path, vol, like=scan, provenance=meta, overwrite=overwrite)


def _in_scan_space(result: Result, difference: bool, reference: int) -> tuple[np.ndarray, Scan]:
    """A model-space result's volumes (or differences) on its input's voxels, in its units."""
    from napari_ldae.data.preprocess import to_scan_space
    from napari_ldae.operations_prepare import to_input_space

    model = result.differences[reference] if difference else result.volumes
    if result.prepared is not None:
        return (to_input_space(model, result.scan, result.prepared, difference=difference),
                result.prepared.scan)
    vol = to_scan_space(model, result.scan, result.contract)
    lo, hi = result.scan.intensity_range
    return vol * np.float32(hi - lo) + (np.float32(0) if difference else np.float32(lo)), \
        result.scan


# ----------------------------------------------------------------------------- codes, dates
CODES_FORMAT = "napari-ldae-codes"


def write_codes(path: str | os.PathLike, codes: Codes, session: Session,
                source: str | os.PathLike, steps: int,
                preparation: Preparation | None = None) -> Path:
    """Codes as safetensors (``y`` (1, d), ``x_T`` (1, C, x, y, z)) with their provenance in
    the metadata (``prepare``: JSON of the input's :class:`Preparation`); written atomically."""
    import json

    from safetensors.torch import save_file

    from napari_ldae._files import atomic_write

    path = Path(path)
    meta = {"format": CODES_FORMAT, "format_version": "1", "steps": str(steps),
            "bundle": session.bundle.name, "bundle_sha256": session.bundle.sha256,
            "source": str(source), "napari_ldae_version": __version__}
    if preparation is not None:
        meta["prepare"] = json.dumps(preparation.provenance())
    tensors = {"y": codes.y.detach().cpu().contiguous(),
               "x_T": codes.x_T.detach().cpu().contiguous()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def visit_dates(path_a: str | os.PathLike, path_b: str | os.PathLike,
                months_a: float | None = None,
                months_b: float | None = None) -> tuple[float, float]:
    """The two visits' dates in months: given, else from BIDS names or ``sessions.tsv``."""
    from napari_ldae.errors import LDAEError

    dates = visit_months([path_a, path_b], [months_a, months_b],
                         flags=("--months-a (and the other visit's)",
                                "--months-b (and the other visit's)"))
    if dates[0] == dates[1]:
        raise LDAEError(f"both visits are dated month {number(dates[0])}; interpolation needs "
                        "two dates (check --months-a/--months-b)")
    return dates[0], dates[1]


def visit_months(paths: Sequence[str | os.PathLike],
                 given: Sequence[float | None] | None = None,
                 flags: Sequence[str] | None = None) -> list[float]:
    """Each visit's date in months: given, else from its BIDS name or ``sessions.tsv``.

    ``flags``: per visit, the option that gives its date (named in the error when unknown).
    """
    from napari_ldae.data.visit_months import months_from_bids
    from napari_ldae.errors import LDAEError

    given = list(given) if given is not None else [None] * len(paths)
    dates = []
    for i, (path, months) in enumerate(zip(paths, given, strict=True)):
        t = months if months is not None else months_from_bids(path)
        if t is None:
            flag = flags[i] if flags else "--dates (one per visit)"
            raise LDAEError(f"cannot tell the date of {Path(path).name}: no ses-M<months> in its "
                            f"name and no sessions.tsv with a months column; give {flag} in "
                            "months")
        dates.append(float(t))
    return dates


def number(value: float, sign: bool = False) -> str:
    """2 → '2.0', 0.25 → '0.25' (with '+' for positive values when ``sign``): file names, notes."""
    text = f"{value:.1f}" if round(value, 1) == value else f"{value:g}"
    return f"+{text}" if sign and not text.startswith("-") else text
