"""Export: result layers → NIfTI in the original scan's space and header, with a sidecar.

Each selected layer's model-space record is mapped back onto its source scan's voxel grid
(through :func:`napari_ldae.operations.export`, shared with the CLI and the napari writer) and
written as ``<folder>/<layer name>.nii.gz``
next to a JSON sidecar (bundle hash, direction, strength/α, steps, seed, version). Existing
files are never replaced silently: a dialog asks (``confirm_overwrite``, replaceable in tests).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPushButton,
    QWidget,
)

from napari_ldae.core.progress import Progress
from napari_ldae.data.io import sidecar_path
from napari_ldae.gui._base import LDAEWidget, form_row
from napari_ldae.gui._controls import RunControls
from napari_ldae.gui._layers import RESULT_KEY
from napari_ldae.napari_io import export_layer
from napari_ldae.session import describe_error


class ExportWidget(LDAEWidget):
    """Choose result layers and a folder; write NIfTI files that overlay the source scans."""

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        self.layer_list = QListWidget()
        self.layer_list.setSelectionMode(QAbstractItemView.MultiSelection)
        form_row(self.form, "layers", self.layer_list, "LDAE result layers to export")
        self.folder = QLineEdit(str(Path.cwd() / "ldae-exports"))
        browse = QPushButton("…")
        browse.setMaximumWidth(30)
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.folder)
        row.addWidget(browse)
        holder = QWidget()
        holder.setLayout(row)
        form_row(self.form, "folder", holder)
        self.controls = self.add_controls(RunControls("Export", self.export))
        self.finish_layout()
        self.confirm_overwrite: Callable[[list[Path]], bool] = self._ask_overwrite
        events = napari_viewer.layers.events
        for ev in (events.inserted, events.removed):
            ev.connect(self.refresh)
        self.refresh()

    def refresh(self, *_) -> None:
        try:
            selected = {i.text() for i in self.layer_list.selectedItems()}
            self.layer_list.clear()
        except RuntimeError:
            return
        for layer in self.viewer.layers:
            if RESULT_KEY in layer.metadata:
                item = QListWidgetItem(layer.name)
                self.layer_list.addItem(item)
                item.setSelected(layer.name in selected)

    def select(self, names: list[str]) -> None:
        for i in range(self.layer_list.count()):
            item = self.layer_list.item(i)
            item.setSelected(item.text() in names)

    # ------------------------------------------------------------------------- export
    def export(self) -> None:
        names = [i.text() for i in self.layer_list.selectedItems()]
        folder = Path(self.folder.text()).expanduser()
        try:
            session = self.state.require_session()
            if not names:
                raise ValueError("select one or more result layers to export")
            layers = [self.viewer.layers[n] for n in names]
            _check_contract(layers, session)
            jobs = [(self._target(folder, ly.name), ly) for ly in layers]
        except Exception as err:
            self.fail(self.controls, describe_error(err))
            return
        existing = [p for p, _ in jobs if p.exists() or sidecar_path(p).exists()]
        overwrite = bool(existing) and self.confirm_overwrite(existing)
        if existing and not overwrite:
            jobs = [j for j in jobs if j[0] not in existing]
        skipped = len(names) - len(jobs)

        def work():
            written = []
            for i, (path, layer) in enumerate(jobs):
                yield Progress(i, len(jobs), path.name)
                written.append(export_layer(path, layer.metadata, layer.name, overwrite))
            return written

        def done(written: list[Path]) -> None:
            self.written = written
            note = f"; skipped {skipped} existing file(s)" if skipped else ""
            self.controls.say(f"wrote {len(written)} file(s) to {folder}{note}")

        self.run_job(self.controls, work, "Export", done)

    @staticmethod
    def _target(folder: Path, name: str) -> Path:
        safe = re.sub(r"[^\w.+-]+", "_", name.replace("Δ", "diff")).strip("_")
        return folder / f"{safe}.nii.gz"

    def _ask_overwrite(self, paths: list[Path]) -> bool:
        listed = "\n".join(str(p) for p in paths[:8])
        answer = QMessageBox.question(
            self, "Replace files?", f"These files exist:\n{listed}\n\nReplace them?",
            QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
        return answer == QMessageBox.Yes

    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Export folder", self.folder.text())
        if path:
            self.folder.setText(path)


def _check_contract(layers, session) -> None:
    for layer in layers:
        if layer.metadata[RESULT_KEY].get("contract") != session.contract.to_dict():
            raise ValueError(f"{layer.name!r} was made with another bundle's preprocessing "
                             "contract; load that bundle to export it")

