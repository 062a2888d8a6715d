"""Base class of the LDAE widgets: the viewer's shared state and job plumbing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtWidgets import QFormLayout, QVBoxLayout, QWidget

from napari_ldae.gui._controls import RunControls
from napari_ldae.gui._jobs import Job
from napari_ldae.gui._state import LDAEState, get_state


class LDAEWidget(QWidget):
    """A dock widget bound to one viewer's :class:`LDAEState`."""

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state: LDAEState = get_state(napari_viewer)
        self.outer = QVBoxLayout(self)
        self.form = QFormLayout()
        self.outer.addLayout(self.form)

    def add_controls(self, controls: RunControls) -> RunControls:
        self.outer.addWidget(controls)
        self.outer.addWidget(controls.status)
        return controls

    def finish_layout(self) -> None:
        self.outer.addStretch(1)

    def run_job(self, controls: RunControls, gen_func: Callable, desc: str,
                on_result: Callable[[Any], None], *,
                on_cancel: Callable[[], None] | None = None, activity: bool = True) -> Job:
        """Run ``gen_func()`` as the controls' job; errors and cancels reset the controls.

        ``activity=False``: no bar in napari's activity dock (see :class:`Job`)."""
        job: Job

        def error(message: str, _err: BaseException) -> None:
            if controls.job is job:  # a newer request speaks for itself
                controls.say(f"{desc} failed: {message}", error=True)

        def cancelled() -> None:
            if controls.job is job:
                controls.say(f"{desc}: cancelled")
            if on_cancel is not None:
                on_cancel()

        job = Job(gen_func, desc=desc, on_result=on_result, on_error=error,
                  on_cancel=cancelled, on_progress=lambda p: _if_current(controls, job, p),
                  on_done=lambda: controls.finished(job), activity=activity)
        controls.started(job)
        return job.start()

    def fail(self, controls: RunControls, message: str) -> None:
        """Report a problem found before any work started."""
        from napari.utils.notifications import show_error

        controls.say(message, error=True)
        show_error(message)


def _if_current(controls: RunControls, job: Job, p) -> None:
    if controls.job is job:
        controls.progress(p)


def form_row(form: QFormLayout, label: str, widget: QWidget, tip: str = "") -> QWidget:
    if tip:
        widget.setToolTip(tip)
    form.addRow(label, widget)
    return widget
