"""Real scans in the use cases: ``prepare`` = "auto", "yes" or "no", and the way back.

Every use case of :mod:`napari_ldae.operations` takes ``prepare``:

- ``"no"`` (the library's default): the scan goes to the model as it is;
- ``"yes"``: it is prepared (:mod:`napari_ldae.data.prepare`: skull stripping unless it is
  already a brain, rigid then affine registration to the ICBM152 template, the model grid);
- ``"auto"`` (the default of the CLI and the GUI): prepared unless it already looks
  skull-stripped and in MNI position (:func:`napari_ldae.data.prepare_auto.check_prepared`).

Visits of one subject (interpolation, prediction) are prepared together
(:func:`~napari_ldae.data.prepare.iter_prepare_visits`: the earliest to the template, the
others rigidly to it, then through its affine), so that their difference is the anatomy's, not
the registration's; ``"auto"`` prepares them all unless every one looks prepared.

Each input gets a :class:`Preparation`: what was done and why. A result made from a prepared
scan keeps its :class:`~napari_ldae.data.prepare.Prepared`, and :func:`to_input_space` takes
the result back onto the input's voxels: inside the brain mask only, every other voxel keeps
the input's value exactly. The last few preparations are remembered by content, so preparing
the same input again is instant, and a prepared scan shown in napari, edited there and exported
goes back to its raw input too.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_ldae.core.progress import ProgressGen
from napari_ldae.errors import LDAEError, ScanError

if TYPE_CHECKING:
    from napari_ldae.core.model import Codes
    from napari_ldae.data.io import Scan
    from napari_ldae.data.prepare import Prepared
    from napari_ldae.data.preprocess import PreprocessContract
    from napari_ldae.session import Session

PREPARE_CHOICES = ("auto", "yes", "no")
#: How many preparations are remembered (each holds its input scan and mask).
REMEMBERED = 4
INSTALL_HINT = "pip install 'napari-ldae[prepare]'"


@dataclass(frozen=True, eq=False)
class Preparation:
    """How one input reached the model.

    ``model_scan``: what the model sees (the prepared brain, or the input as it is);
    ``prepared``: the way back to the input (None: results are in the input's space already);
    ``ran``: prepared by this call (False: used as it is, or a preparation remembered);
    ``reason``: why ``auto`` chose what it did.
    """

    choice: str
    input: Scan
    model_scan: Scan
    prepared: Prepared | None
    reason: str
    ran: bool = False

    @property
    def name(self) -> str:
        return self.input.path.name if self.input.path else "scan"

    def summary(self) -> str:
        """One line for people: which was chosen and why."""
        why = f"auto: {self.reason}" if self.choice == "auto" else f"prepare {self.choice}"
        if self.prepared is None:
            return f"used as it is ({why})"
        if not self.ran:
            return f"already prepared, from {self.prepared.transform.input_name or 'a scan'}"
        qc = self.prepared.qc
        return (f"prepared ({why}): {qc['steps']['skull_strip']}; registered to the ICBM152 "
                f"template (brain overlap {qc['dice_template']:.3f}, correlation "
                f"{qc['correlation_template']:.3f})")

    def provenance(self) -> dict[str, Any]:
        """What a result's sidecar records: the choice, the reason, QC and the transform."""
        out: dict[str, Any] = {"choice": self.choice, "prepared": self.prepared is not None,
                               "summary": self.summary()}
        if self.prepared is not None:
            out.update(qc=dict(self.prepared.qc), warnings=list(self.prepared.warnings),
                       transform=self.prepared.transform.to_dict())
        return out


def check_choice(choice: str) -> None:
    if choice not in PREPARE_CHOICES:
        raise LDAEError(f"prepare must be one of {', '.join(PREPARE_CHOICES)}, not {choice!r}")


def require_packages(why: str = "preparing scans") -> None:
    """A clear error naming the ``prepare`` extra's missing packages, if any."""
    from napari_ldae.data.prepare import missing_packages

    missing = missing_packages()
    if missing:
        raise ScanError(f"{why} needs {', '.join(missing)}: {INSTALL_HINT}")


def iter_prepare_inputs(contract: PreprocessContract, scans: Sequence[Scan], choice: str = "no",
                        *, visits: bool = False) -> ProgressGen[list[Preparation]]:
    """One :class:`Preparation` per scan (``visits``: of one subject, prepared together)."""
    from napari_ldae.data.io import content_key
    from napari_ldae.data.prepare_auto import check_prepared

    check_choice(choice)
    keys = [content_key(s) for s in scans]
    known = [_recall_output(k) for k in keys]
    if choice == "no" or all(p is not None for p in known):
        return [_as_is(choice, s, p) for s, p in zip(scans, known, strict=True)]
    checks = [check_prepared(s) for s in scans] if choice == "auto" else []
    if checks and all(c.looks_prepared or p is not None
                      for c, p in zip(checks, known, strict=True)):
        return [_as_is(choice, s, p, c.reason)
                for s, p, c in zip(scans, known, checks, strict=True)]
    if checks:
        bad = next(i for i, (c, p) in enumerate(zip(checks, known, strict=True))
                   if not c.looks_prepared and p is None)
        require_packages(f"{_name(scans[bad])} does not look prepared ({checks[bad].reason}); "
                         "preparing it")
        reasons = [c.reason for c in checks]
    else:
        require_packages()
        reasons = [""] * len(scans)
    preps = yield from _iter_prepared(contract, scans, keys, visits)
    return [Preparation(choice, s, p.prepared_scan(), p, why, ran=True)
            for s, p, why in zip(scans, preps, reasons, strict=True)]


def _iter_prepared(contract, scans, keys, visits: bool) -> ProgressGen[list[Prepared]]:
    """Prepare the scans (remembered ones are not prepared again)."""
    from napari_ldae.data.prepare import iter_prepare, iter_prepare_visits

    contract_key = str(sorted(contract.to_dict().items()))
    if visits and len(scans) > 1:
        ident = (tuple(keys), contract_key)
        preps = _recall_input(ident)
        if preps is None:
            preps = yield from iter_prepare_visits(list(scans), contract)
            _remember(ident, preps)
        return preps
    out = []
    for scan, key in zip(scans, keys, strict=True):
        preps = _recall_input(((key,), contract_key))
        if preps is None:
            preps = [(yield from iter_prepare(scan, contract))]
            _remember(((key,), contract_key), preps)
        out += preps
    return out


def _as_is(choice: str, scan: Scan, known: Prepared | None, reason: str = "") -> Preparation:
    """The scan goes to the model as it is (``known``: it was prepared earlier, from that)."""
    return Preparation(choice, scan, scan, known, reason)


def iter_encode(session: Session, scan: Scan, steps: int | None = None,
                prepare: str = "no") -> ProgressGen[tuple[Codes, Preparation]]:
    """The codes of a scan, prepared per ``prepare`` first, and its :class:`Preparation`."""
    (prep,) = yield from iter_prepare_inputs(session.contract, [scan], prepare)
    codes = yield from session.iter_encode(prep.model_scan, steps)
    return codes, prep


def provenance(preparations: Sequence[Preparation]) -> dict[str, Any]:
    """``{"prepare": ...}`` for a result: one record, or a list for several inputs."""
    records = [p.provenance() for p in preparations]
    return {"prepare": records[0] if len(records) == 1 else records}


# ----------------------------------------------------------------------------- the way back
def to_input_space(model: np.ndarray, model_scan: Scan, prepared: Prepared, *,
                   difference: bool = False) -> np.ndarray:
    """Model-space volume(s) in [0, 1] (``(X, Y, Z)`` or ``(N, X, Y, Z)``) on the input's voxel
    grid (file order, the input's units). Outside the brain mask: the input's values exactly,
    or 0 for a ``difference``."""
    lo, hi = model_scan.intensity_range
    scale, offset = np.float32(hi - lo), np.float32(0.0 if difference else lo)
    outside = 0.0 if difference else "input"
    vols = np.asarray(model, dtype=np.float32)
    back = [prepared.restore(v * scale + offset, outside=outside)
            for v in (vols if vols.ndim == 4 else vols[None])]
    return np.stack(back) if vols.ndim == 4 else back[0]


# ----------------------------------------------------------------------------- remembered
_LOCK = threading.Lock()
#: (input keys, contract) → (the prepared scans' keys, the preparations), newest last.
_REMEMBERED: OrderedDict[tuple, tuple[list[str], list[Prepared]]] = OrderedDict()


def _remember(ident: tuple, preps: list[Prepared]) -> None:
    from napari_ldae.data.io import content_key

    outputs = [content_key(p.prepared_scan()) for p in preps]
    with _LOCK:
        _REMEMBERED[ident] = (outputs, preps)
        _REMEMBERED.move_to_end(ident)
        while len(_REMEMBERED) > REMEMBERED:
            _REMEMBERED.popitem(last=False)


def _recall_input(ident: tuple) -> list[Prepared] | None:
    with _LOCK:
        hit = _REMEMBERED.get(ident)
        if hit is not None:
            _REMEMBERED.move_to_end(ident)
    return None if hit is None else hit[1]


def _recall_output(key: str) -> Prepared | None:
    """The remembered preparation whose prepared scan has this content key."""
    with _LOCK:
        for outputs, preps in _REMEMBERED.values():
            if key in outputs:
                return preps[outputs.index(key)]
    return None


def _name(scan: Scan) -> str:
    return scan.path.name if scan.path else "the scan"
