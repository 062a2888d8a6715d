"""Interpolate: the brain at any date between two visits of one subject (a missing visit).

Visits come from image layers (or files opened into layers); their dates (months from
baseline) come from the layer's ``ldae_visit`` metadata, BIDS names or ``sessions.tsv``, or
are typed. α = (t − t_A)/(t_B − t_A) interpolates the codes (lerp y, slerp x_T). Results are
shown on visit A's model grid (the two visits should be registered to one another); the
differences to each visit are interpolation − reconstruction of that visit. Dragging the date
slider shows a live preview blended from a few anchor dates decoded once (``gui._preview``);
full quality follows when it rests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QDoubleSpinBox, QFileDialog, QHBoxLayout, QPushButton, QSpinBox, QWidget
from superqt import QLabeledDoubleSlider

from napari_ldae.gui._base import LDAEWidget, form_row
from napari_ldae.gui._controls import LayerCombo, RunControls
from napari_ldae.gui._layers import (
    ResultGeometry,
    change_percent,
    is_source_layer,
    label_sweep_axis,
    scan_from_layer,
    show_difference,
    show_image,
)
from napari_ldae.gui._preview import ANCHORS, LivePreview, PreviewContext, Request
from napari_ldae.operations import Result
from napari_ldae.session import alpha_from_months, describe_error, months_from_bids


class InterpolateWidget(LDAEWidget):
    """Two visits with their dates, a date slider, a sweep over time, Δ to each visit; the
    :class:`~napari_ldae.gui._preview.PreviewSource` of its slider."""

    title = "Interpolate"

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        self.combo_a, self.months_a = self._visit_row("visit A")
        self.combo_b, self.months_b = self._visit_row("visit B")
        self.slider = QLabeledDoubleSlider(Qt.Horizontal)
        self.slider.setSingleStep(0.5)
        form_row(self.form, "date (months)", self.slider, "date of the interpolated scan")
        self.frames = form_row(self.form, "sweep frames", QSpinBox(),
                               "dates rendered into one 4D layer by Sweep")
        self.frames.setRange(2, 101)
        self.frames.setValue(5)
        self.controls = self.add_controls(RunControls("Interpolate",
                                                      lambda: self.preview.render_full()))
        self.sweep_controls = self.add_controls(RunControls("Sweep over time", self.sweep))
        self.finish_layout()
        self.preview = LivePreview(self, self.controls, self.slider, self)
        self.combo_a.currentTextChanged.connect(lambda _t: self._dates_from(self.combo_a, 0))
        self.combo_b.currentTextChanged.connect(lambda _t: self._dates_from(self.combo_b, 1))
        for box in (self.months_a, self.months_b):
            box.valueChanged.connect(self._update_range)
        if self.combo_b.count() > 1:
            self.combo_b.setCurrentIndex(self.combo_b.count() - 1)
        self._dates_from(self.combo_a, 0)
        self._dates_from(self.combo_b, 1)

    def _visit_row(self, label: str) -> tuple[LayerCombo, QDoubleSpinBox]:
        combo = LayerCombo(self.viewer, is_source_layer)
        months = QDoubleSpinBox()
        months.setRange(-1200.0, 1200.0)
        months.setSuffix(" mo")
        months.setToolTip("months from baseline (from BIDS names / sessions.tsv when present)")
        open_button = QPushButton("file…")
        open_button.clicked.connect(lambda: self._open_file(combo))
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        for w, stretch in ((combo, 3), (months, 1), (open_button, 0)):
            row.addWidget(w, stretch)
        holder = QWidget()
        holder.setLayout(row)
        form_row(self.form, label, holder)
        return combo, months

    # ------------------------------------------------------------------------- dates
    def _open_file(self, combo: LayerCombo) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a visit", "",
                                              "NIfTI (*.nii *.nii.gz)")
        if path:
            self.open_visit(path, combo)

    def open_visit(self, path: str | Path, combo: LayerCombo) -> None:
        layers = self.viewer.open(str(path), plugin="napari-ldae")
        if layers:
            combo.select(layers[0].name)

    def _dates_from(self, combo: LayerCombo, which: int) -> None:
        months = layer_months(combo.layer())
        if months is not None:
            (self.months_a, self.months_b)[which].setValue(months)
        self._update_range()

    def _update_range(self, *_) -> None:
        a, b = self.months_a.value(), self.months_b.value()
        lo, hi = min(a, b), max(a, b)
        hi = hi if hi > lo else lo + 1.0
        if (self.slider.minimum(), self.slider.maximum()) == (lo, hi):
            return  # same visits (layer lists refresh often): keep the user's date
        self.slider.blockSignals(True)
        self.slider.setRange(lo, hi)
        self.slider.setValue((lo + hi) / 2)
        self.slider.blockSignals(False)

    def alphas(self, months: list[float]) -> list[float]:
        a, b = self.months_a.value(), self.months_b.value()
        return [round(alpha_from_months(a, b, m), 6) for m in months]

    # ------------------------------------------------------------------------- work
    def _prepare(self):
        session = self.state.require_session()
        la, lb = self.combo_a.layer(), self.combo_b.layer()
        if la is None or lb is None or la is lb:
            raise ValueError("choose two different visits (3D image layers)")
        if self.months_a.value() == self.months_b.value():
            raise ValueError("the two visits need different dates (months)")
        scan_a, scan_b = scan_from_layer(la), scan_from_layer(lb)
        return session, la, lb, scan_a, scan_b, ResultGeometry.of(session, scan_a)

    def _fields(self, la, lb, months: list[float]) -> dict:
        """The provenance of the visits and dates (α is added by the operation)."""
        return {"visit_a": la.name, "visit_b": lb.name, "months_a": self.months_a.value(),
                "months_b": self.months_b.value(),
                "months": months if len(months) > 1 else months[0]}

    def _show(self, ctx: PreviewContext, shown: tuple, result: Result, tag: str) -> None:
        image, diff_a, diff_b = shown
        (la, lb), geometry = ctx.layers, ctx.geometry
        name = f"{la.name} → {lb.name} [{tag}]"
        show_image(self.viewer, name, image, geometry, la,
                   geometry.result_metadata("image", result, la.name))
        for i, (visit, diff) in enumerate(((la, diff_a), (lb, diff_b))):
            show_difference(self.viewer, f"{name} Δ to {visit.name}", diff, geometry,
                            geometry.result_metadata("difference", result, la.name, i),
                            visible=visit is la)

    # ------------------------------------------------------------------------- the slider
    def key(self) -> tuple[tuple, PreviewContext]:
        session, la, lb, scan_a, scan_b, geometry = self._prepare()
        steps = self.state.steps
        key = (la.name, id(la.data), lb.name, id(lb.data), self.months_a.value(),
               self.months_b.value(), steps["preview"], steps["decode"], steps["encode"],
               id(session))
        return key, PreviewContext(session, (la, lb), (scan_a, scan_b), geometry)

    def anchor_values(self, key: tuple) -> np.ndarray:
        """Anchor dates α = 0 … 1 (the ends are the reconstructions)."""
        return np.linspace(0.0, 1.0, ANCHORS)

    def position(self, value: float) -> float:
        return self.alphas([round(value, 3)])[0]

    def at(self, value: float) -> dict:
        return {"months": round(value, 3), "alpha": self.position(value)}

    def iter_result(self, request: Request, positions: list[float] | None):
        ctx, key = request.context, request.key
        months = [round(request.value, 3)]
        alphas = self.alphas(months) if positions is None else positions
        return ctx.session.iter_interpolate_visits(
            *ctx.scans, alphas, key[7] if positions is None else key[6], key[8],
            **self._fields(*ctx.layers, months))

    def show(self, request: Request, shown: tuple, result: Result) -> None:
        """The interpolation and its Δ to each visit, from a blend or at full quality."""
        self._show(request.context, shown, result, "interp")
        month, prov = round(request.value, 3), result.provenance
        alpha, steps = self.position(request.value), prov["steps"]
        if request.kind == "blend":
            self.controls.say(f"interp: month {month:g} (α {alpha:.2f}), live preview (blend, "
                              f"{steps} steps)")
            return
        self.controls.say(f"interp: months {month:g} (α {alpha:.2f}), full quality ({steps} "
                          f"steps); largest change to visit A "
                          f"{change_percent(request.context.geometry, shown[1]):.3g} % of its "
                          "range")

    def interpolate(self) -> None:
        """The scan at the slider's date."""
        self.preview.render_full()

    def sweep(self) -> None:
        """Dates from visit A to visit B into one 4D layer."""
        months = np.linspace(self.months_a.value(), self.months_b.value(), self.frames.value())
        months = [round(float(m), 3) for m in months]
        controls = self.sweep_controls
        try:
            session, la, lb, scan_a, scan_b, geometry = self._prepare()
            alphas = self.alphas(months)
        except Exception as err:
            self.fail(controls, describe_error(err))
            return
        if controls.busy:  # a sweep replaces the running sweep (a cancelled job reports
            controls.job.cancel()  # no result)
        ctx = PreviewContext(session, (la, lb), (scan_a, scan_b), geometry)
        steps, encode_steps = self.state.steps["decode"], self.state.steps["encode"]

        def work():
            result = yield from session.iter_interpolate_visits(
                scan_a, scan_b, alphas, steps, encode_steps, **self._fields(la, lb, months))
            return result, geometry.for_display(result.volumes, *result.references)

        def done(out) -> None:
            self._show(ctx, out[1], out[0], "sweep")
            label_sweep_axis(self.viewer)
            self.viewer.dims.set_current_step(0, len(months) // 2)
            controls.say(f"sweep: months {', '.join(f'{m:g}' for m in months)} (α "
                         f"{', '.join(f'{a:.2f}' for a in alphas)}) on the first dims slider")

        self.run_job(controls, work, "Interpolate (sweep)", done)

def layer_months(layer) -> float | None:
    """Months from baseline of a visit layer: its metadata, else its file or layer name."""
    if layer is None:
        return None
    visit = layer.metadata.get("ldae_visit") or {}
    if visit.get("months") is not None:
        return float(visit["months"])
    path = (layer.metadata.get("ldae_scan") or {}).get("path")
    for candidate in (path, layer.name.replace(" ", "_")):
        if candidate:
            months = months_from_bids(candidate)
            if months is not None:
                return months
    return None
