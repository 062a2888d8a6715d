"""Region volumes in the widgets: a table of the original's and a result's volumes and, for
several results (a sweep), a plot of each region's change against strength or date.

The regions are :data:`napari_ldae.data.regions.REGIONS`, measured by
:func:`napari_ldae.operations_transfer.iter_region_volumes` (the CLI's ``--volumes``) in a
background job with progress and Cancel; it remembers every measurement by content, so the
original is measured once however many results are compared with it. A result carried onto the
scan is compared with that scan; a result on the model grid with the model's reconstruction
(measured on the same grid, so that the grid's own bias cancels).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_ldae.data.regions import REGIONS
from napari_ldae.gui._controls import RunControls
from napari_ldae.operations_transfer import OnScan, iter_region_volumes

COLUMNS = ("region", "original ml", "result ml", "change ml", "change %",
           "change by deformation ml")
#: One colour per region in the plot (distinguishable on napari's dark theme).
COLORS = ("#4fc3f7", "#81c784", "#e57373", "#ffb74d", "#ba68c8", "#e0e0e0")
BASELINE_MODEL = "reconstruction"


@dataclass(frozen=True)
class Offer:
    """A full-quality record to measure: its volumes' ``labels`` and ``positions`` (strength or
    months), what those are (``axis``) and the layer they were made from (``source``)."""

    record: object
    labels: tuple[str, ...]
    positions: tuple[float, ...]
    axis: str
    source: str


def change_rows(original: dict[str, float], result: dict[str, float]) -> list[tuple]:
    """(region, original ml, result ml, change ml, change %, change by deformation ml or nan)
    per region."""
    rows = []
    for region in REGIONS:
        a, b = original.get(region, math.nan), result.get(region, math.nan)
        rows.append((region, a, b, b - a, 100.0 * (b - a) / a if a else math.nan,
                     result.get(f"{region}_change_by_deformation", math.nan)))
    return rows


def _text(value: float, signed: bool = False) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:+.2f}" if signed else f"{value:.1f}"


class VolumePlot(QWidget):
    """Each region's change (% of the original) against strength or date, drawn with Qt; its
    legend is :meth:`legend`."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(160)
        self.x: list[float] = []
        self.series: dict[str, list[float]] = {}
        self.axis = ""

    def set_data(self, x, series: dict[str, list[float]], axis: str) -> None:
        self.x, self.series, self.axis = [float(v) for v in x], series, axis
        self.update()

    def legend(self) -> str:
        """The regions in their colours (rich text)."""
        return " ".join(f'<span style="color:{COLORS[k % len(COLORS)]}">■ {region}</span>'
                        for k, region in enumerate(self.series))

    def paintEvent(self, _event) -> None:
        values = [v for ys in self.series.values() for v in ys if math.isfinite(v)]
        if len(self.x) < 2 or not values:
            return
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        p.setPen(QPen(self.palette().windowText().color(), 1))
        left, right, top, bottom = 58, 10, 8, 34
        w, h = self.width() - left - right, self.height() - top - bottom
        x0, x1 = min(self.x), max(self.x)
        y0, y1 = min(min(values), 0.0), max(max(values), 0.0)
        y0, y1 = (y0 - 0.5, y1 + 0.5) if y1 - y0 < 1e-9 else (y0, y1)

        def at(x: float, y: float) -> QPointF:
            return QPointF(left + w * (x - x0) / (x1 - x0), top + h * (y1 - y) / (y1 - y0))

        p.drawRect(left, top, w, h)
        p.drawLine(at(x0, 0.0), at(x1, 0.0))
        for y in (y0, 0.0, y1):
            if y == 0.0 or abs(at(x0, y).y() - at(x0, 0.0).y()) > 14:  # labels apart
                p.drawText(2, int(at(x0, y).y()) + 5, f"{y:+.1f} %")
        for x in (x0, x1):
            p.drawText(int(at(x, y0).x()) - 10, top + h + 15, f"{x:g}")
        p.drawText(left + w // 2 - 40, top + h + 30, self.axis)
        for k, ys in enumerate(self.series.values()):
            p.setPen(QPen(QColor(COLORS[k % len(COLORS)]), 2))
            points = [at(x, y) for x, y in zip(self.x, ys, strict=True) if math.isfinite(y)]
            for a, b in itertools.pairwise(points):
                p.drawLine(a, b)
            for point in points:
                p.drawEllipse(point, 2.5, 2.5)
        p.end()


class VolumePanel(QWidget):
    """Measure the regions of a widget's latest full-quality result and show them (the table
    and the plot appear with the first measurement)."""

    def __init__(self, widget, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.widget = widget
        self.offer: Offer | None = None
        self.rows: dict[str, dict[str, float]] = {}
        self.baseline: str | None = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.auto = QCheckBox("measure after each full-quality result")
        self.auto.setToolTip("region volumes take a few seconds per volume on a CPU")
        layout.addWidget(self.auto)
        self.controls = RunControls("Measure region volumes", self.measure)
        layout.addWidget(self.controls)
        layout.addWidget(self.controls.status)
        self.caption = QLabel("")
        self.caption.setWordWrap(True)
        layout.addWidget(self.caption)
        self.frame = QComboBox()
        self.frame.setToolTip("the result the table compares with the original")
        self.frame.currentIndexChanged.connect(lambda _i: self._fill_table())
        layout.addWidget(self.frame)
        self.table = QTableWidget(len(REGIONS), len(COLUMNS))
        self.table.setHorizontalHeaderLabels([c.replace(" ", "\n") for c in COLUMNS])
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.Stretch)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        layout.addWidget(self.table)
        self.plot = VolumePlot()
        layout.addWidget(self.plot)
        self.legend = QLabel("")
        self.legend.setWordWrap(True)
        layout.addWidget(self.legend)
        for part in (self.caption, self.frame, self.table, self.plot, self.legend):
            part.setVisible(False)

    def set_offer(self, record, labels, positions, axis: str, source: str) -> None:
        """The widget's latest full-quality record; measured at once when asked to."""
        self.offer = Offer(record, tuple(labels), tuple(float(v) for v in positions), axis,
                           source)
        if self.auto.isChecked():
            self.measure()

    def measure(self) -> None:
        offer = self.offer
        if offer is None:
            self.widget.fail(self.controls, "nothing to measure yet: render or sweep first")
            return
        if self.controls.busy:
            self.controls.job.cancel()
        record, labels = offer.record, list(offer.labels)

        def work():
            if isinstance(record, OnScan):
                originals = yield from iter_region_volumes(record, (), [])
                baseline = list(originals)[record.inputs[0]]
                rows = yield from iter_region_volumes(record, labels, inputs=False)
                return {baseline: originals[baseline], **rows}, baseline
            volumes = record.volumes if record.volumes.ndim == 4 else record.volumes[None]
            both = record.with_volumes(np.concatenate([record.references[0][None], volumes]))
            rows = yield from iter_region_volumes(both, [BASELINE_MODEL, *labels],
                                                  inputs=False)
            return rows, BASELINE_MODEL

        def done(out) -> None:
            self.rows, self.baseline = out
            self._show(offer)
            self.controls.say(f"measured {len(labels)} result(s) and the original")

        self.widget.run_job(self.controls, work, "Region volumes", done)

    def _show(self, offer: Offer) -> None:
        where = "carried onto the scan" if isinstance(offer.record, OnScan) else \
            "on the model grid"
        self.caption.setText(f"original: {self._original(offer)}; results {where}")
        self.frame.blockSignals(True)
        self.frame.clear()
        self.frame.addItems(offer.labels)
        self.frame.setCurrentIndex(len(offer.labels) - 1)
        self.frame.blockSignals(False)
        several = len(offer.labels) > 1
        for part, shown in ((self.caption, True), (self.table, True), (self.frame, several),
                            (self.plot, several), (self.legend, several)):
            part.setVisible(shown)
        self._fill_table()
        self.table.setFixedHeight(self.table.horizontalHeader().height()
                                  + sum(self.table.rowHeight(i) for i in range(len(REGIONS)))
                                  + 2 * self.table.frameWidth())
        if several:
            change = {label: {row[0]: row[4] for row in self.values(label)}
                      for label in offer.labels}
            series = {r: [change[label][r] for label in offer.labels] for r in REGIONS}
            self.plot.set_data(offer.positions, series, offer.axis)
            self.legend.setText(self.plot.legend())

    def _original(self, offer: Offer) -> str:
        """What the original is, for people."""
        record = offer.record
        if not isinstance(record, OnScan):
            return f"the model's {BASELINE_MODEL} of {offer.source}"
        if record.result.preparations[record.inputs[0]].prepared is not None:
            return f"the raw scan {self.baseline} behind {offer.source}"
        return offer.source

    def _fill_table(self) -> None:
        label = self.frame.currentText()
        shown = self.baseline is not None and label in self.rows
        for i, region in enumerate(REGIONS):
            cells = (region, "", "", "", "", "")
            if shown:
                _, a, b, d, pct, tbm = change_rows(self.rows[self.baseline],
                                                   self.rows[label])[i]
                cells = (region, _text(a), _text(b), _text(d, True), _text(pct, True),
                         "" if math.isnan(tbm) else _text(tbm, True))
            for j, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if j:
                    item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                self.table.setItem(i, j, item)

    def values(self, label: str | None = None) -> list[tuple]:
        """The table's rows for ``label`` (default: the one shown)."""
        label = label or self.frame.currentText()
        return change_rows(self.rows[self.baseline], self.rows[label])
