"""A table of a subject's visits: the viewer's scan layers, each with a check box and its date.

Dates (months from baseline) come from a layer's ``ldae_visit`` metadata, its file's BIDS name
or ``sessions.tsv``, or its layer name; they can be typed. A layer with a known date is checked
when it appears.
"""

from __future__ import annotations

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QDoubleSpinBox,
    QHeaderView,
    QTableWidget,
    QTableWidgetItem,
)

from napari_ldae.data.visit_months import months_from_bids
from napari_ldae.gui._controls import follow_layer_list
from napari_ldae.gui._layers import is_source_layer


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


class VisitTable(QTableWidget):
    """Scan layers (rows) with a check box and a date; ``changed`` fires on any edit."""

    changed = Signal()

    def __init__(self, viewer, parent=None) -> None:
        super().__init__(0, 2, parent)
        self.viewer = viewer
        self.setHorizontalHeaderLabels(["visit", "months"])
        header = self.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.Stretch)
        header.setSectionResizeMode(1, QHeaderView.Fixed)
        self.setColumnWidth(1, 110)
        self.verticalHeader().setVisible(False)
        self.setSelectionMode(QAbstractItemView.NoSelection)
        self.setMinimumHeight(110)
        self._known: dict[str, tuple[bool, float]] = {}  # name → (checked, months)
        self.itemChanged.connect(lambda _item: self._remember_and_emit())
        follow_layer_list(viewer, self.refresh)
        self.refresh()

    # ----------------------------------------------------------------------- rows
    def refresh(self, *_) -> None:
        try:
            layers = [ly for ly in self.viewer.layers if is_source_layer(ly)]
        except RuntimeError:  # the Qt object is gone
            return
        self.blockSignals(True)
        self.setRowCount(0)  # drops the old rows' date boxes (layers may have moved)
        self.setRowCount(len(layers))
        for row, layer in enumerate(layers):
            checked, months = self._known.get(layer.name, (None, None))
            if checked is None:
                found = layer_months(layer)
                checked, months = found is not None, found or 0.0
            item = QTableWidgetItem(layer.name)
            item.setFlags(Qt.ItemIsUserCheckable | Qt.ItemIsEnabled)
            item.setCheckState(Qt.Checked if checked else Qt.Unchecked)
            self.setItem(row, 0, item)
            box = QDoubleSpinBox()
            box.setRange(-1200.0, 1200.0)
            box.setValue(months)
            box.setToolTip("months from baseline (from BIDS names / sessions.tsv when present)")
            box.valueChanged.connect(lambda _v: self._remember_and_emit())
            self.setCellWidget(row, 1, box)
            self._known[layer.name] = (checked, months)
        self.blockSignals(False)
        self.changed.emit()

    def _remember_and_emit(self) -> None:
        for row in range(self.rowCount()):
            item, box = self.item(row, 0), self.cellWidget(row, 1)
            if item is not None and box is not None:
                self._known[item.text()] = (item.checkState() == Qt.Checked, box.value())
        self.changed.emit()

    # ----------------------------------------------------------------------- access
    def set_visit(self, name: str, checked: bool = True, months: float | None = None) -> None:
        """Check (or uncheck) a layer's row and optionally set its date."""
        for row in range(self.rowCount()):
            if self.item(row, 0).text() == name:
                if months is not None:
                    self.cellWidget(row, 1).setValue(months)
                self.item(row, 0).setCheckState(Qt.Checked if checked else Qt.Unchecked)
                return
        raise KeyError(f"no scan layer named {name!r}")

    def only(self, names: list[str]) -> None:
        """Check exactly these layers."""
        for row in range(self.rowCount()):
            item = self.item(row, 0)
            item.setCheckState(Qt.Checked if item.text() in names else Qt.Unchecked)

    def visits(self) -> list[tuple[object, float]]:
        """The checked layers and their dates, by date."""
        out = []
        for row in range(self.rowCount()):
            item = self.item(row, 0)
            if item.checkState() == Qt.Checked and item.text() in self.viewer.layers:
                out.append((self.viewer.layers[item.text()], self.cellWidget(row, 1).value()))
        return sorted(out, key=lambda v: v[1])
