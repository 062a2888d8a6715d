"""Where a result is shown: on the user's scan at its own resolution, or on the model grid.

**show on** ``scan`` (the default) carries the model's change, result − reconstruction, onto the
input scan by the chosen **transfer** (``warp``: the scan deformed, with its log-Jacobian;
``intensity``: the scan plus the resampled change) through
:func:`napari_ldae.operations_transfer.iter_onto_scan`, the function the CLI's ``--onto scan``
uses; ``model`` shows the decoded volume on the model grid. A carried result is shown as the
image, its difference to the input scan and, for ``warp``, the log-Jacobian.

Live previews carry their anchors once, in the worker, by the chosen transfer and blend the
carried anchors while the slider moves (``gui._preview``). For ``intensity`` the blend equals
carrying the blended change (the transfer is linear); for ``warp`` it is a cross-fade of the two
neighbouring warped anchors. Full quality carries the exact value. At strength 0 the anchor is
the reconstruction, which carries onto the scan as the scan itself, so the layer shows the input
exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import QComboBox, QFormLayout

from napari_ldae.data.transfer import DEFAULT_TRANSFER, TRANSFERS
from napari_ldae.gui._base import form_row
from napari_ldae.gui._change import show_difference, show_log_jacobian
from napari_ldae.gui._layers import ResultGeometry, show_image
from napari_ldae.operations_transfer import (
    DEFAULT_ONTO,
    ONTO,
    OnScan,
    full_steps,
    iter_onto_scan,
)

if TYPE_CHECKING:
    from napari_ldae.core.progress import ProgressGen
    from napari_ldae.operations import Result

ONTO_TIP = ("scan: the model's change carried onto your scan at its own resolution (its detail "
            "kept); model: the model's decoded volume on its own grid")
TRANSFER_TIP = ("warp: the scan deformed as the model's change moves tissue, with its "
                "log-Jacobian (expansion > 0, shrinkage < 0); intensity: the scan plus the "
                "model's intensity change")
KINDS = ("image", "difference", "log_jacobian")


class TargetChoice:
    """The "show on" and "transfer" rows of a widget's form."""

    def __init__(self, form: QFormLayout) -> None:
        self.onto = form_row(form, "show on", QComboBox(), ONTO_TIP)
        self.onto.addItems(ONTO)
        self.onto.setCurrentText(DEFAULT_ONTO)
        self.transfer = form_row(form, "transfer", QComboBox(), TRANSFER_TIP)
        self.transfer.addItems(TRANSFERS)
        self.transfer.setCurrentText(DEFAULT_TRANSFER)
        self.onto.currentTextChanged.connect(
            lambda text: self.transfer.setEnabled(text == "scan"))

    def key(self) -> tuple[str, str]:
        """(onto, transfer) as chosen now."""
        return self.onto.currentText(), self.transfer.currentText()

    def full_steps(self, steps: dict[str, int]) -> int:
        """DDIM steps of full quality where results are shown now (``carry`` on the scan)."""
        return full_steps(steps, self.onto.currentText())

    def connect(self, slot) -> None:
        """Call ``slot()`` when either choice changes."""
        for box in (self.onto, self.transfer):
            box.currentTextChanged.connect(lambda _text: slot())


def iter_target(result: Result, onto: str, transfer: str) -> ProgressGen[Result | OnScan]:
    """``result`` itself (``model``), or carried onto its scan by ``transfer``."""
    if onto == "model":
        return result
    return (yield from iter_onto_scan(result, transfer))


def geometry_of(record: Result | OnScan, geometry: ResultGeometry) -> ResultGeometry:
    """Where a record is shown: its scan for a carried one, else the model-space ``geometry``."""
    if isinstance(record, OnScan):
        return ResultGeometry.carried(geometry.session, record.scans[0])
    return geometry


def for_display(record: Result | OnScan, geometry: ResultGeometry) -> tuple[np.ndarray, ...]:
    """(image, difference[, log-Jacobian]) of a record, placed for display; run it in the
    worker. A carried record's difference is to its input scan."""
    if not isinstance(record, OnScan):
        return geometry.for_display(record.volumes, *record.references)
    g = geometry_of(record, geometry)
    many = len(record.volumes) > 1
    volumes = np.stack(record.volumes) if many else record.volumes[0]
    shown = [g.place(volumes), g.place(volumes - g.scan.data)]
    if record.log_jacobians is not None:
        shown.append(g.place(np.stack(record.log_jacobians) if many
                             else record.log_jacobians[0]))
    return tuple(shown)


def blend_record(record: Result | OnScan, model_volume: np.ndarray,
                 shown: tuple[np.ndarray, ...], **provenance: Any) -> Result | OnScan:
    """The record of a blended preview: the blended model volume and, for a carried record,
    the blended display arrays back in the scan's voxel order."""
    if not isinstance(record, OnScan):
        return record.with_volumes(model_volume, **provenance)
    display = record.scans[0].display
    logj = (display.from_display(shown[2]),) if len(shown) > 2 else None
    return OnScan(record.result.with_volumes(model_volume, **provenance),
                  (display.from_display(shown[0]),), record.inputs[:1], record.method, logj)


def show_result(viewer, names: dict[str, str | None], source, geometry: ResultGeometry,
                shown: tuple[np.ndarray, ...], record: Result | OnScan,
                reference: int = 0) -> None:
    """Show a record's layers, named by kind in ``names`` (None: not shown). A log-Jacobian
    layer of an earlier record is removed when this one has none."""
    g = geometry_of(record, geometry)
    arrays = dict(zip(KINDS, shown, strict=False))
    for kind, name in names.items():
        if name is None:
            continue
        if kind not in arrays:
            if name in viewer.layers:
                viewer.layers.remove(name)
            continue
        meta = g.result_metadata(kind, record, source.name, reference)
        if kind == "image":
            show_image(viewer, name, arrays[kind], g, source, meta)
        elif kind == "difference":
            show_difference(viewer, name, arrays[kind], g, meta)
        else:
            show_log_jacobian(viewer, name, arrays[kind], g, meta)


def described(record: Result | OnScan) -> str:
    """How a record is shown, for the status line."""
    if isinstance(record, OnScan):
        return f"carried onto the scan by {record.method}"
    return "on the model grid"
