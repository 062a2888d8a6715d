"""Visits over time: a subject's brain at any date, between its visits or past the last one.

Any number of a subject's loaded visits (two or more, checked in the visits table, each with its
date in months from baseline) are encoded and their trajectory is fitted in code space
(:func:`napari_ldae.operations.iter_predict`, its default rules: y through every visit and on
the least-squares slope past them, x_T by slerp between visits and held at the end visits'
outside them). The date slider runs from before the first visit to past the last one; a date
past the last visit is labelled a *prediction*.
Results are shown on the latest visit's model grid (the visits should be registered to one
another), with the difference to the latest visit's reconstruction. Dragging the slider shows a
live preview blended from anchor dates decoded once (``gui._preview``); full quality follows
when it rests. Sweep renders a range of dates, a future one included, into one 4D layer.
**show on** ``scan`` (the default) carries the change from the latest visit's reconstruction
onto the latest visit itself, at its own resolution (``gui._onto``); ``model`` shows the decoded
volumes. Region volumes of the latest full-quality date or sweep, with the visits' own:
``gui._volumes``.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QDoubleSpinBox, QLabel, QSpinBox, QWidget
from superqt import QLabeledDoubleSlider

from napari_ldae.gui._base import LDAEWidget, form_row
from napari_ldae.gui._controls import RunControls
from napari_ldae.gui._layers import (
    ResultGeometry,
    change_percent,
    label_sweep_axis,
    scan_from_layer,
)
from napari_ldae.gui._onto import (
    TargetChoice,
    described,
    for_display,
    geometry_of,
    iter_target,
    show_result,
)
from napari_ldae.gui._preview import ANCHORS, LivePreview, PreviewContext, Request
from napari_ldae.gui._visits import VisitTable
from napari_ldae.gui._volumes import VolumePanel
from napari_ldae.session import describe_error


def date_label(month: float, first: float, last: float) -> str:
    """What a date is, relative to the visits: a prediction past the last one."""
    if month > last:
        return f"prediction: {month - last:g} months past the last visit (month {last:g})"
    if month < first:
        return f"before the first visit (month {first:g}): extrapolated back"
    return "between the visits: interpolation"


def slider_range(months: list[float]) -> tuple[float, float]:
    """Half the visits' span before the first, the whole span (at least 12 months) past the
    last, in half months."""
    first, last = min(months), max(months)
    span = max(last - first, 1.0)
    lo, hi = first - span / 2, last + max(span, 12.0)
    return float(np.floor(2 * lo) / 2), float(np.ceil(2 * hi) / 2)


class InterpolateWidget(LDAEWidget):
    """Visits with their dates, a date slider before, between and past them, a sweep over time,
    Δ to the latest visit; the :class:`~napari_ldae.gui._preview.PreviewSource` of its slider."""

    title = "Visits over time"

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        self.table = form_row(self.form, "visits", VisitTable(self.viewer),
                              "a subject's visits (two or more) and their dates")
        self.slider = QLabeledDoubleSlider(Qt.Horizontal)
        self.slider.setSingleStep(0.5)
        form_row(self.form, "date (months)", self.slider, "date of the scan shown")
        self.kind = form_row(self.form, "", QLabel(""))
        self.target = TargetChoice(self.form)
        self.sweep_to = form_row(self.form, "sweep to (months)", QDoubleSpinBox(),
                                 "Sweep renders the first visit's date up to this date")
        self.sweep_to.setRange(-1200.0, 1200.0)
        self.frames = form_row(self.form, "sweep frames", QSpinBox(),
                               "dates rendered into one 4D layer by Sweep")
        self.frames.setRange(2, 101)
        self.frames.setValue(5)
        self.controls = self.add_controls(RunControls("Render date",
                                                      lambda: self.preview.render_full()))
        self.sweep_controls = self.add_controls(RunControls("Sweep over time", self.sweep))
        self.volumes = VolumePanel(self)
        self.outer.addWidget(self.volumes)
        self.finish_layout()
        self.preview = LivePreview(self, self.controls, self.slider, self)
        self.table.changed.connect(self._update_range)
        self.slider.valueChanged.connect(self.label_date)
        self.target.connect(self._rerender)
        self._shown = False
        self._update_range()

    # ------------------------------------------------------------------------- dates
    def months(self) -> list[float]:
        return [m for _, m in self.table.visits()]

    def _update_range(self, *_) -> None:
        months = self.months()
        if len(months) < 2:
            self.kind.setText("check two or more visits of one subject")
            return
        lo, hi = slider_range(months)
        if (self.slider.minimum(), self.slider.maximum()) == (lo, hi):
            self.label_date()
            return  # same visits (layer lists refresh often): keep the user's date
        self.slider.blockSignals(True)
        self.slider.setRange(lo, hi)
        self.slider.setValue((months[0] + months[-1]) / 2)
        self.slider.blockSignals(False)
        self.sweep_to.setValue(hi)
        self.label_date()

    def label_date(self, *_) -> None:
        """Say what the slider's date is: between the visits, before them or a prediction."""
        months = self.months()
        if len(months) >= 2:
            self.kind.setText(date_label(round(self.slider.value(), 3), months[0], months[-1]))

    # ------------------------------------------------------------------------- work
    def _prepare(self):
        session = self.state.require_session()
        visits = self.table.visits()
        if len(visits) < 2:
            raise ValueError("check two or more visits of one subject (3D image layers) in "
                             "the visits table")
        layers = tuple(ly for ly, _ in visits)
        scans = tuple(scan_from_layer(ly) for ly in layers)
        return session, visits, scans, ResultGeometry.of(session, scans[-1])

    def _rerender(self) -> None:
        """Show the current date again with the new choice (when one is shown)."""
        if self._shown:
            self.preview.render_full()

    def _show(self, ctx: PreviewContext, shown: tuple, result, tag: str) -> str:
        latest = ctx.layers[-1]
        name = f"{latest.name} [{tag}]"
        show_result(self.viewer, {"image": name, "difference": f"{name} Δ to {latest.name}",
                                  "log_jacobian": f"{name} log-Jacobian"},
                    latest, ctx.geometry, shown, result)
        self._shown = True
        found = result.provenance.get("warnings") or []
        return "".join(f"; warning: {w}" for w in found)

    # ------------------------------------------------------------------------- the slider
    def key(self) -> tuple[tuple, PreviewContext]:
        session, visits, scans, geometry = self._prepare()
        steps = self.state.steps
        key = (tuple((ly.name, id(ly.data), m) for ly, m in visits), self.slider.minimum(),
               self.slider.maximum(), steps["preview"], self.target.full_steps(steps),
               steps["encode"], id(session), *self.target.key())
        return key, PreviewContext(session, tuple(ly for ly, _ in visits), scans, geometry)

    def anchor_values(self, key: tuple) -> np.ndarray:
        """Dates evenly over the slider's range and every visit's date."""
        even = np.linspace(key[1], key[2], ANCHORS)
        return np.unique(np.round(np.concatenate([even, [m for _, _, m in key[0]]]), 3))

    def position(self, value: float) -> float:
        return round(float(value), 3)

    def at(self, value: float) -> dict:
        last = max(self.months(), default=value)
        return {"months": round(value, 3), "horizon_months": round(value - last, 3),
                "prediction": value > last}

    def iter_result(self, request: Request, positions: list[float] | None):
        ctx, key = request.context, request.key
        months = [m for _, _, m in key[0]]
        targets = [round(request.value, 3)] if positions is None else positions
        result = yield from ctx.session.iter_predict(
            list(ctx.scans), months, targets, key[4] if positions is None else key[3], key[5],
            names=[ly.name for ly in ctx.layers], warn=False)
        return (yield from iter_target(result, *key[7:]))

    def show(self, request: Request, shown: tuple, result) -> None:
        """The scan at the slider's date and its Δ to the latest visit."""
        warned = self._show(request.context, shown, result, "over time")
        months = [m for _, _, m in request.key[0]]
        month, steps = round(request.value, 3), result.provenance["steps"]
        what = date_label(month, months[0], months[-1])
        if request.kind == "blend":  # (the anchors' warnings are about the anchors' dates)
            self.controls.say(f"month {month:g}, {what}; live preview (blend, {steps} steps)")
            return
        change = change_percent(geometry_of(result, request.context.geometry), shown[1])
        self.controls.say(f"month {month:g}, {what}; full quality ({steps} steps), "
                          f"{described(result)}; largest change to the latest visit "
                          f"{change:.3g} % of its range; fit residual "
                          f"{result.provenance['fit_residual']:.3g}{warned}")
        self.volumes.set_offer(result, [f"month {month:g}"], [month], "months",
                               request.context.layers[-1].name)

    def interpolate(self) -> None:
        """The scan at the slider's date."""
        self.preview.render_full()

    def sweep(self) -> None:
        """Dates from the first visit to "sweep to" (past the last visit: predictions) into one
        4D layer."""
        controls = self.sweep_controls
        try:
            session, visits, scans, geometry = self._prepare()
        except Exception as err:
            self.fail(controls, describe_error(err))
            return
        months = [m for _, m in visits]
        dates = [round(float(t), 3) for t in np.linspace(months[0], self.sweep_to.value(),
                                                          self.frames.value())]
        if controls.busy:  # a sweep replaces the running sweep (a cancelled job reports
            controls.job.cancel()  # no result)
        layers = tuple(ly for ly, _ in visits)
        ctx = PreviewContext(session, layers, scans, geometry)
        onto, transfer = self.target.key()
        steps, encode_steps = self.target.full_steps(self.state.steps), self.state.steps["encode"]

        def work():
            result = yield from session.iter_predict(
                list(scans), months, dates, steps, encode_steps,
                names=[ly.name for ly in layers], warn=False)
            record = yield from iter_target(result, onto, transfer)
            return record, for_display(record, geometry)

        def done(out) -> None:
            warned = self._show(ctx, out[1], out[0], "sweep over time")
            self.volumes.set_offer(out[0], [f"month {t:g}" for t in dates], dates, "months",
                                   layers[-1].name)
            label_sweep_axis(self.viewer, "months")
            future = sum(t > months[-1] for t in dates)
            self.viewer.dims.set_current_step(0, len(dates) - 1 if future else len(dates) // 2)
            controls.say(f"sweep: months {', '.join(f'{t:g}' for t in dates)} on the first "
                         f"dims slider; {future} past the last visit (prediction), "
                         f"{described(out[0])}{warned}")

        self.run_job(controls, work, "Visits over time (sweep)", done)
