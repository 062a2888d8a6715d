"""Train: run ``napari-ldae train STAGE --config FILE`` in a separate process.

The trainer never runs inside napari's process, so its GPU memory is released when it ends
(the GUI's own model can be unloaded first). Its output is streamed into a log; progress is
parsed from tqdm/Lightning lines (``Epoch 3:  45%|…| 45/100``) or ``step N/M``. Cancel
terminates the process, then kills it if it has not stopped after a few seconds.
"""

from __future__ import annotations

import re
import shlex
import sys

from qtpy.QtCore import QProcess, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QWidget,
)

from napari_ldae.gui._base import LDAEWidget, form_row
from napari_ldae.gui._controls import RunControls

STAGES = ("autoencoder", "latent", "representation", "probe")
KILL_AFTER_MS = 5000
_PERCENT = re.compile(r"(\d{1,3})%\|")
_FRACTION = re.compile(r"(?:\||step\s*)\s*(\d+)\s*/\s*(\d+)", re.IGNORECASE)
_EPOCH = re.compile(r"epoch\s*(\d+)(?:\s*/\s*(\d+))?", re.IGNORECASE)


def parse_progress(line: str) -> tuple[float | None, str | None]:
    """(fraction done in [0, 1] or None, a short label or None) from one output line."""
    fraction = None
    if m := _PERCENT.search(line):
        fraction = min(int(m.group(1)), 100) / 100
    elif (m := _FRACTION.search(line)) and int(m.group(2)) > 0:
        fraction = min(int(m.group(1)) / int(m.group(2)), 1.0)
    label = None
    if m := _EPOCH.search(line):
        label = f"epoch {m.group(1)}" + (f"/{m.group(2)}" if m.group(2) else "")
    return fraction, label


class _ProcessJob:
    """Adapter so RunControls can cancel a QProcess like a worker job."""

    def __init__(self, widget: TrainWidget) -> None:
        self.widget, self.desc, self.running = widget, "Training", True

    def cancel(self) -> None:
        self.widget.cancel()


class TrainWidget(LDAEWidget):
    """Stage, config file and extra arguments; Start/Cancel, progress and the live log."""

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        self.stage = form_row(self.form, "stage", QComboBox())
        self.stage.addItems(STAGES)
        self.config = QLineEdit()
        self.config.setPlaceholderText("resources/configs/….yaml")
        browse = QPushButton("…")
        browse.setMaximumWidth(30)
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.config)
        row.addWidget(browse)
        holder = QWidget()
        holder.setLayout(row)
        form_row(self.form, "config", holder)
        self.extra = form_row(self.form, "extra args", QLineEdit(),
                              "more arguments for napari-ldae train, e.g. --devices 2")
        self.unload_first = form_row(self.form, "", QCheckBox("unload the GUI's model first"),
                                     "frees the GPU memory napari holds before training")
        self.unload_first.setChecked(True)
        self.controls = self.add_controls(RunControls("Start training", self.start))
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(2000)
        self.outer.addWidget(self.log, 1)
        self.process: QProcess | None = None
        self._job: _ProcessJob | None = None
        self._tail = ""
        self._last_line = ""
        self._cancelled = False

    def command(self) -> list[str]:
        """The trainer's command line (its own Python process)."""
        cmd = [sys.executable, "-u", "-m", "napari_ldae.cli", "train", self.stage.currentText()]
        if self.config.text().strip():
            cmd += ["--config", self.config.text().strip()]
        return cmd + shlex.split(self.extra.text())

    # ------------------------------------------------------------------------- process
    def start(self) -> None:
        if self.process is not None:
            return
        if self.unload_first.isChecked() and self.state.session is not None \
                and self.state.session.device.startswith("cuda"):
            self.state.session.unload()
            self.state.set_session(None)
        cmd = self.command()
        self.log.appendPlainText("$ " + shlex.join(cmd))
        proc = QProcess(self)
        proc.setProcessChannelMode(QProcess.MergedChannels)
        proc.readyReadStandardOutput.connect(self._read)
        proc.finished.connect(self._finished)
        proc.errorOccurred.connect(self._error)
        self.process, self._cancelled, self._tail = proc, False, ""
        self._job = _ProcessJob(self)
        self.controls.started(self._job)  # type: ignore[arg-type]
        self.controls.bar.setRange(0, 100)
        proc.start(cmd[0], cmd[1:])

    def cancel(self) -> None:
        """Terminate the trainer; kill it if it is still running after a few seconds."""
        proc = self.process
        if proc is None:
            return
        self._cancelled = True
        self.controls.say("stopping the trainer…")
        proc.terminate()
        QTimer.singleShot(KILL_AFTER_MS, lambda: self._kill(proc))

    def _kill(self, proc: QProcess) -> None:
        if self.process is proc and proc.state() != QProcess.NotRunning:
            proc.kill()

    def _read(self) -> None:
        if self.process is None:
            return
        text = self._tail + bytes(self.process.readAllStandardOutput()).decode(errors="replace")
        parts = re.split(r"(\r|\n)", text)
        self._tail = parts[-1]
        for line, sep in zip(parts[0:-1:2], parts[1:-1:2], strict=True):
            self._line(line, final=sep == "\n")

    def _line(self, line: str, final: bool) -> None:
        if not line.strip():
            return
        fraction, label = parse_progress(line)
        if fraction is not None:
            self.controls.bar.setValue(round(fraction * 100))
        if label is not None:
            self.controls.bar.setFormat(f"{label}  %p%")
        if final:
            self.log.appendPlainText(line)
            self._last_line = line

    def _finished(self, code: int, _status=None) -> None:
        self._read()
        if self._tail.strip():
            self._line(self._tail, final=True)
        if self._cancelled:
            message, error = "training cancelled", False
        elif code == 0:
            message, error = "training finished", False
        else:
            message, error = f"training failed (exit {code}): {self._last_line}", True
        self._done(message, error)

    def _error(self, err) -> None:
        if err == QProcess.FailedToStart:
            self._done(f"the trainer could not start: {self.process.errorString()}", True)

    def _done(self, message: str, error: bool) -> None:
        if self._job is None:
            return
        job, self._job = self._job, None
        job.running = False
        self.process = None
        self.controls.finished(job)  # type: ignore[arg-type]
        self.controls.say(message, error=error)
        if error:
            from napari.utils.notifications import show_error

            show_error(message)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Training config", "",
                                              "YAML (*.yaml *.yml);;all (*)")
        if path:
            self.config.setText(path)
