"""The model panel: bundle, device, precision, step counts, cache dir, Load/Unload, facts.

Paths are shown as people read them (:func:`~napari_ldae._resources.display_path`): the shipped
bundle as "built-in demo bundle", folders under the home folder as ``~/…``.
"""

from __future__ import annotations

import html
from pathlib import Path

from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from napari_ldae._resources import display_path, path_from_display
from napari_ldae.core.progress import Progress
from napari_ldae.gui._base import LDAEWidget, form_row
from napari_ldae.gui._controls import RunControls


class ModelWidget(LDAEWidget):
    """Load one bundle for this viewer; every other LDAE widget uses it."""

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        from napari_ldae.core.device import available_devices

        self.bundle_edit = QLineEdit(_default_bundle_text())
        self.bundle_edit.setPlaceholderText("bundle directory or .ldae file")
        browse = QPushButton("…")
        browse.setMaximumWidth(30)
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.bundle_edit)
        row.addWidget(browse)
        holder = QWidget()
        holder.setLayout(row)
        row.setContentsMargins(0, 0, 0, 0)
        form_row(self.form, "bundle", holder, "model bundle (the demo bundle by default; "
                 "env NAPARI_LDAE_BUNDLE)")
        self.device = form_row(self.form, "device", QComboBox(), "only devices that work here")
        self.device.addItems(available_devices())
        self.precision = form_row(self.form, "precision", QComboBox())
        self.device.currentTextChanged.connect(self._update_precisions)
        self._update_precisions(self.device.currentText())
        self.step_boxes: dict[str, QSpinBox] = {}
        for key, tip in (("encode", "DDIM steps of the inversion"),
                         ("decode", "DDIM steps of full-quality decoding"),
                         ("preview", "DDIM steps while the slider moves"),
                         ("carry", "DDIM steps of full quality shown on the scan (only the "
                          "change's geometry is carried onto it)")):
            box = form_row(self.form, f"{key} steps", QSpinBox(), tip)
            box.setRange(1, 1000)
            box.setValue(self.state.steps[key])
            box.valueChanged.connect(self._steps_edited)
            self.step_boxes[key] = box
        self.cache_edit = form_row(self.form, "cache dir", QLineEdit(_default_cache_text()),
                                   "where codes are cached (env NAPARI_LDAE_CACHE)")
        self.controls = self.add_controls(RunControls("Load", self.load))
        self.unload_button = QPushButton("Unload")
        self.unload_button.clicked.connect(self.unload)
        self.unload_button.setEnabled(False)
        self.outer.addWidget(self.unload_button)
        self.facts = QLabel("no model loaded")
        self.facts.setWordWrap(True)
        self.outer.addWidget(self.facts)
        self.finish_layout()
        self.state.session_changed.connect(self._show_session)
        self.state.steps_changed.connect(self._show_steps)
        if self.state.session is not None:
            self._show_session(self.state.session)

    # ------------------------------------------------------------------------- actions
    def load(self) -> None:
        """Load the bundle in a worker (replacing the current model)."""
        from napari_ldae.session import Session

        text = self.bundle_edit.text().strip()
        bundle = path_from_display(text) if text else None
        device, precision = self.device.currentText(), self.precision.currentText()
        cache = self.cache_edit.text().strip()
        if self.state.session is not None:
            self.unload()

        def work():
            yield Progress(0, 1, "loading")
            return Session(bundle, device=device, precision=precision,
                           cache_dir=path_from_display(cache) if cache else None)

        self.run_job(self.controls, work, "Load model", self._loaded)

    def unload(self) -> None:
        session = self.state.session
        if session is not None:
            session.unload()
        self.state.set_session(None)
        self.controls.say("model unloaded (memory freed)")

    # ------------------------------------------------------------------------- views
    def _loaded(self, session) -> None:
        self.state.cache_dir = session.cache_dir
        self.state.set_session(session)
        self.controls.say(f"loaded {session.bundle.name} on {session.device}")

    def _show_session(self, session) -> None:
        self.unload_button.setEnabled(session is not None)
        if session is not None:
            self.bundle_edit.setText(display_path(session.bundle.path))
            self.cache_edit.setText(display_path(session.cache_dir))
            if self.device.findText(session.device) >= 0:
                self.device.setCurrentText(session.device)
            self.precision.setCurrentText(session.precision)
        self.facts.setText(_facts_html(session.info()) if session else "no model loaded")

    def _show_steps(self, steps: dict) -> None:
        for key, box in self.step_boxes.items():
            box.blockSignals(True)
            box.setValue(int(steps[key]))
            box.blockSignals(False)

    def _steps_edited(self, *_) -> None:
        self.state.set_steps({k: b.value() for k, b in self.step_boxes.items()})

    def _update_precisions(self, device: str) -> None:
        from napari_ldae.core.device import supported_precisions

        self.precision.clear()
        self.precision.addItems(supported_precisions(device) if device else ["fp32"])
        self.precision.setCurrentText("fp32")

    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Model bundle directory")
        if path:
            self.bundle_edit.setText(display_path(path))


def _default_bundle_text() -> str:
    from napari_ldae.errors import BundleError
    from napari_ldae.session import default_bundle_path

    try:
        return display_path(default_bundle_path())
    except BundleError:
        return ""


def _default_cache_text() -> str:
    import os

    from napari_ldae.session import CACHE_ENV

    return display_path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "napari-ldae")


def readable(value: float) -> str:
    """A metric as people read it: three significant digits (0.874, not 0.8739361763000488)."""
    return str(value) if isinstance(value, int) else f"{value:.3g}"


def _facts_html(info: dict) -> str:
    params = info["parameters"] or 0
    dirs = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v.get('meaning', k))}</li>"
                   for k, v in info["directions"].items()) or "<li>none</li>"
    shape = "×".join(map(str, info["input_shape"]))
    spacing = "×".join(f"{s:g}" for s in info["spacing"])
    trained = "" if info["trained"] else " <i>(untrained weights)</i>"
    metrics = ", ".join(f"{k} {readable(v)}" for k, v in (info.get("metrics") or {}).items()
                        if isinstance(v, int | float))
    return (f"<b>{html.escape(info['name'])}</b>{trained}<br>"
            f"{params / 1e6:.2f} M parameters · {info['device']} · {info['precision']}<br>"
            f"input {shape} voxels at {spacing} mm ({info['orientation']})<br>"
            f"bundle {info['bundle_sha256'][:12]}<br>"
            + (f"metrics: {html.escape(metrics)}<br>" if metrics else "")
            + f"directions:<ul style='margin:0'>{dirs}</ul>")
