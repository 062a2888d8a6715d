"""Small Qt building blocks shared by the widgets: a layer chooser and a Run/Cancel row."""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QProgressBar, QPushButton, QWidget

from napari_ldae.core.progress import Progress
from napari_ldae.gui._jobs import Job


def follow_layer_list(viewer, refresh: Callable) -> None:
    """Call ``refresh`` whenever layers are added, removed or reordered."""
    events = viewer.layers.events
    for ev in (events.inserted, events.removed, events.moved):
        ev.connect(refresh)


class LayerCombo(QComboBox):
    """Image layers of the viewer that pass ``accept``, kept up to date by name."""

    def __init__(self, viewer, accept: Callable, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer, self.accept = viewer, accept
        follow_layer_list(viewer, self.refresh)
        self.refresh()

    def refresh(self, *_) -> None:
        try:
            current = self.currentText()
            names = [ly.name for ly in self.viewer.layers if self.accept(ly)]
        except RuntimeError:  # the Qt object is gone
            return
        self.blockSignals(True)
        self.clear()
        self.addItems(names)
        if current in names:
            self.setCurrentText(current)
        self.blockSignals(False)
        self.currentTextChanged.emit(self.currentText())

    def layer(self):
        name = self.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def select(self, name: str) -> None:
        self.refresh()
        self.setCurrentText(name)


class RunControls(QWidget):
    """A Run button that turns into Cancel while its job runs, a progress bar, a status line."""

    def __init__(self, text: str, on_run: Callable[[], None],
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.text = text
        self.job: Job | None = None
        self.button = QPushButton(text)
        self.button.clicked.connect(lambda: self.job.cancel() if self.busy else on_run())
        self.bar = QProgressBar()
        self.bar.setTextVisible(True)
        self.bar.setMaximumHeight(16)
        self.bar.setVisible(False)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.button)
        row.addWidget(self.bar, 1)

    @property
    def busy(self) -> bool:
        return self.job is not None and self.job.running

    def started(self, job: Job) -> None:
        self.job = job
        self.button.setText("Cancel")
        self.bar.setRange(0, 0)
        self.bar.setVisible(True)
        self.say(f"{job.desc}…")

    def progress(self, p: Progress) -> None:
        self.bar.setRange(0, max(p.total, 1))
        self.bar.setValue(p.step)
        self.bar.setFormat(f"{p.message} {p.step}/{p.total}")

    def finished(self, job: Job) -> None:
        """Back to idle (only if ``job`` is still the current one)."""
        if job is not self.job:
            return
        self.job = None
        self.button.setText(self.text)
        self.button.setEnabled(True)
        self.bar.setVisible(False)
        self.bar.setRange(0, 1)

    def say(self, message: str, error: bool = False) -> None:
        self.status.setText(message)
        self.status.setStyleSheet("color: #ff6b6b;" if error else "")
