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
from napari_ldae.gui._preview import ANCHORS, Anchors, LivePreview
from napari_ldae.session import alpha_from_months, describe_error, months_from_bids


class InterpolateWidget(LDAEWidget):
    """Two visits with their dates, a date slider, a sweep over time, Δ to each visit."""

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
        self.controls = self.add_controls(RunControls("Interpolate", self.interpolate))
        self.sweep_controls = self.add_controls(RunControls("Sweep over time", self.sweep))
        self.finish_layout()
        self.preview = LivePreview(self, self.controls, self.slider, key=self._preview_key,
                                   anchor_job=self._anchor_job, show_blend=self._show_blend,
                                   render_full=self.interpolate)
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

    @staticmethod
    def _work(session, scan_a, scan_b, alphas, steps, encode_steps, geometry):
        """Images and differences to each visit, placed for display (in the worker)."""
        codes_a = yield from session.iter_encode(scan_a, encode_steps)
        codes_b = yield from session.iter_encode(scan_b, encode_steps)
        rec_a = yield from session.iter_reconstruction(codes_a, steps)
        rec_b = yield from session.iter_reconstruction(codes_b, steps)
        vols = yield from session.iter_interpolate(codes_a, codes_b, alphas, steps)
        if len(alphas) == 1:
            vols = vols[0]
        return geometry.for_display(vols, rec_a, rec_b)

    def _show(self, la, lb, geometry, result, prov: dict, tag: str) -> None:
        image, diff_a, diff_b = result
        name = f"{la.name} → {lb.name} [{tag}]"
        show_image(self.viewer, name, image, geometry, la,
                   geometry.result_metadata("image", prov, la.name))
        for visit, diff in ((la, diff_a), (lb, diff_b)):
            show_difference(self.viewer, f"{name} Δ to {visit.name}", diff, geometry,
                            geometry.result_metadata("difference", prov, la.name),
                            visible=visit is la)

    def _provenance(self, la, lb, months: list[float], alphas: list[float], steps: int,
                    encode_steps: int) -> dict:
        return {"operation": "interpolate", "visit_a": la.name, "visit_b": lb.name,
                "months_a": self.months_a.value(), "months_b": self.months_b.value(),
                "months": months if len(months) > 1 else months[0],
                "alpha": alphas if len(alphas) > 1 else alphas[0], "steps": steps,
                "encode_steps": encode_steps}

    def _run(self, controls: RunControls, months: list[float], tag: str) -> None:
        try:
            session, la, lb, scan_a, scan_b, geometry = self._prepare()
            alphas = self.alphas(months)
        except Exception as err:
            self.fail(controls, describe_error(err))
            return
        steps, encode_steps = self.state.steps["decode"], self.state.steps["encode"]
        if controls is self.controls:
            self.preview.rest_timer.stop()
            request = self.preview.new_request(("full",))
        elif controls.busy:  # a sweep replaces the running sweep (a cancelled job reports
            controls.job.cancel()  # no result)

        def done(result) -> None:
            if controls is self.controls and request != self.preview.request:
                return
            prov = self._provenance(la, lb, months, alphas, steps, encode_steps)
            self._show(la, lb, geometry, result, prov, tag)
            if len(months) > 1:
                label_sweep_axis(self.viewer)
                self.viewer.dims.set_current_step(0, len(months) // 2)
            when = ", ".join(f"{m:g}" for m in months)
            controls.say(f"{tag}: months {when} (α {', '.join(f'{a:.2f}' for a in alphas)})"
                         + (" on the first dims slider" if len(months) > 1 else
                            f", full quality ({steps} steps); largest change to visit A "
                            f"{change_percent(geometry, result[1]):.3g} % of its range"))

        def work():
            return (yield from self._work(session, scan_a, scan_b, alphas, steps, encode_steps,
                                          geometry))

        self.run_job(controls, work, f"Interpolate ({tag})", done)

    # ------------------------------------------------------------------------- live preview
    def _preview_key(self) -> tuple[tuple, tuple]:
        session, la, lb, scan_a, scan_b, geometry = self._prepare()
        steps = self.state.steps
        key = (la.name, id(la.data), lb.name, id(lb.data), self.months_a.value(),
               self.months_b.value(), steps["preview"], steps["encode"], id(session))
        return key, (session, la, lb, scan_a, scan_b, geometry)

    def _anchor_job(self, key: tuple, context: tuple):
        """Anchor dates α = 0 … 1, decoded in one batch (the ends are the reconstructions)."""
        steps, encode_steps = key[6], key[7]
        session, la, lb, scan_a, scan_b, geometry = context
        alphas = np.linspace(0.0, 1.0, ANCHORS)

        def work():
            codes_a = yield from session.iter_encode(scan_a, encode_steps)
            codes_b = yield from session.iter_encode(scan_b, encode_steps)
            rec_a = yield from session.iter_reconstruction(codes_a, steps)
            rec_b = yield from session.iter_reconstruction(codes_b, steps)
            inner = yield from session.iter_interpolate(codes_a, codes_b, alphas[1:-1], steps)
            volumes = np.concatenate([rec_a[None], inner, rec_b[None]])
            shown = geometry.for_display(volumes, rec_a, rec_b)
            return shown, {"layers": (la, lb), "geometry": geometry}

        return alphas, work, "Interpolate (live preview)"

    def _show_blend(self, a: Anchors) -> None:
        """The anchors blended at the slider's date, shown at once (no network call)."""
        month = round(float(self.slider.value()), 3)
        alpha = self.alphas([month])[0]
        (la, lb), geometry = a.extra["layers"], a.extra["geometry"]
        image, diff_a, diff_b = a.shown_at(alpha)
        prov = self._provenance(la, lb, [month], [alpha], a.key[6], a.key[7])
        prov["preview"] = "linear blend of decodes at α " + ", ".join(f"{v:g}" for v in a.values)
        self._show(la, lb, geometry, (image, diff_a, diff_b), prov, "interp")
        self.controls.say(f"interp: month {month:g} (α {alpha:.2f}), live preview (blend, "
                          f"{a.key[6]} steps)")

    def interpolate(self) -> None:
        """The scan at the slider's date."""
        self._run(self.controls, [round(float(self.slider.value()), 3)], "interp")

    def sweep(self) -> None:
        """Dates from visit A to visit B into one 4D layer."""
        months = np.linspace(self.months_a.value(), self.months_b.value(), self.frames.value())
        self._run(self.sweep_controls, [round(float(m), 3) for m in months], "sweep")


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
