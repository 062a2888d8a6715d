"""Manipulate: move a scan's semantic code along a learned direction with a live slider.

While the slider moves, a preview (``steps["preview"]`` DDIM steps) is rendered after a short
debounce; when it rests (or is released) the full-quality decode (``steps["decode"]``) follows,
after the preview of that same value if one is running (on a slow CPU the preview is the first
image the user sees). The latest request wins: a new value cancels the running decode at its
next step and stale results are dropped. The edit and its signed difference to the
reconstruction (edit − strength-0 decode, which removes the autoencoder's blur) are updated in
place.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QWidget,
)
from superqt import QLabeledDoubleSlider
from superqt.utils import qdebounced

from napari_ldae.gui._base import LDAEWidget, form_row
from napari_ldae.gui._controls import LayerCombo, RunControls
from napari_ldae.gui._layers import (
    ResultGeometry,
    is_source_layer,
    label_sweep_axis,
    scan_from_layer,
    show_difference,
    show_image,
    unique_name,
)
from napari_ldae.session import describe_error

PREVIEW_DEBOUNCE_MS = 150
REST_MS = 600


class ManipulateWidget(LDAEWidget):
    """Direction dropdown, strength slider, live edit + difference, Keep and Sweep."""

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        self.layer_combo = form_row(self.form, "scan", LayerCombo(napari_viewer, is_source_layer))
        self.direction = form_row(self.form, "direction", QComboBox(),
                                  "learned directions of the bundle, with their meaning")
        self.slider = QLabeledDoubleSlider(Qt.Horizontal)
        self.slider.setRange(-5.0, 5.0)
        self.slider.setSingleStep(0.1)
        self.slider.setValue(0.0)
        form_row(self.form, "strength", self.slider, "standard deviations along the direction")
        self.quality = form_row(self.form, "showing", QLabel("nothing yet"))
        self.with_diff = form_row(self.form, "difference", QCheckBox("signed Δ map"))
        self.with_diff.setChecked(True)
        self.controls = self.add_controls(RunControls("Render full quality", self.render_full))
        self.keep_button = QPushButton("Keep (snapshot)")
        self.keep_button.clicked.connect(self.keep)
        self.outer.addWidget(self.keep_button)
        self._build_sweep()
        self.finish_layout()
        self._source_key = None
        self._source = None
        self._request = 0
        self._running: tuple | None = None  # (quality, direction, strength) of the last render
        self._full_next = False  # render full quality when the running preview is shown
        self._shown: dict | None = None
        self._preview_later = qdebounced(self._render_preview, timeout=PREVIEW_DEBOUNCE_MS)
        self._rest_timer = QTimer(self)
        self._rest_timer.setSingleShot(True)
        self._rest_timer.setInterval(REST_MS)
        self._rest_timer.timeout.connect(self._rest)
        self.slider.valueChanged.connect(self._value_changed)
        self.slider.sliderReleased.connect(self._released)
        self.state.session_changed.connect(self._fill_directions)
        self._fill_directions(self.state.session)

    def _build_sweep(self) -> None:
        form = QFormLayout()
        self.outer.addLayout(form)
        self.sweep_from, self.sweep_to = QDoubleSpinBox(), QDoubleSpinBox()
        for box, value, label in ((self.sweep_from, -3.0, "sweep from"),
                                  (self.sweep_to, 3.0, "sweep to")):
            box.setRange(-20.0, 20.0)
            box.setDecimals(1)
            box.setSingleStep(0.5)
            box.setValue(value)
            form_row(form, label, box, "strengths rendered into one 4D layer, scrubbed with "
                     "napari's own dims slider")
        self.sweep_frames = form_row(form, "frames", QSpinBox())
        self.sweep_frames.setRange(2, 101)
        self.sweep_frames.setValue(7)
        self.sweep_controls = self.add_controls(RunControls("Sweep", self.sweep))

    # ------------------------------------------------------------------------- inputs
    def _fill_directions(self, session) -> None:
        current = self.direction.currentData()
        self.direction.clear()
        for name, meaning in (session.directions if session else {}).items():
            self.direction.addItem(f"{name}: {meaning}" if meaning != name else name, name)
        index = self.direction.findData(current)
        if index >= 0:
            self.direction.setCurrentIndex(index)

    @property
    def strength(self) -> float:
        return round(float(self.slider.value()), 4)

    def _prepare(self):
        """(session, source layer, scan, geometry) for a request; cached per source."""
        session = self.state.require_session()
        layer = self.layer_combo.layer()
        if layer is None:
            raise ValueError("no 3D image layer: open a scan first")
        if self.direction.currentData() is None:
            raise ValueError("this bundle has no directions to move along")
        key = (layer.name, id(layer.data), id(session))
        if key != self._source_key:
            scan = scan_from_layer(layer)
            self._source = (scan, ResultGeometry.of(session, scan))
            self._source_key = key
        return (session, layer, *self._source)

    # ------------------------------------------------------------------------- slider
    def _value_changed(self, _value: float) -> None:
        self.quality.setText(f"… strength {self.strength:+.2f}")
        steps = self.state.steps
        if steps["preview"] < steps["decode"]:
            self._preview_later()
        self._rest_timer.start()

    def _released(self) -> None:
        self._preview_later.cancel()
        self._rest_timer.stop()
        self._rest()

    def _rest(self) -> None:
        """The slider rests: full quality, after the running preview of this very value."""
        value = ("preview", self.direction.currentData(), self.strength)
        if self.controls.busy and self._running == value:
            self._full_next = True
        else:
            self.render_full()

    def _render_preview(self) -> None:
        self.render("preview")

    def render_full(self) -> None:
        self._rest_timer.stop()
        self.render("full")

    def render(self, quality: str = "full") -> None:
        """Decode the current strength (``"preview"`` or ``"full"``); the latest wins."""
        try:
            session, layer, scan, geometry = self._prepare()
        except Exception as err:
            self.fail(self.controls, describe_error(err))
            return
        steps = self.state.steps["preview" if quality == "preview" else "decode"]
        encode_steps = self.state.steps["encode"]
        direction, strength = self.direction.currentData(), self.strength
        if self.controls.busy:
            self.controls.job.cancel()
        self._request += 1
        request = self._request
        self._running, self._full_next = (quality, direction, strength), False

        def work():
            codes = yield from session.iter_encode(scan, encode_steps)
            recon = yield from session.iter_reconstruction(codes, steps)
            edit = yield from session.iter_manipulate(codes, direction, [strength], steps)
            return geometry.for_display(edit[0], recon)

        def done(result) -> None:
            if request != self._request:
                return  # a newer value was asked for
            prov = {"operation": "manipulate", "direction": direction, "strength": strength,
                    "steps": steps, "encode_steps": encode_steps}
            self._show(layer, geometry, *result, prov)
            self.quality.setText(f"{quality} ({steps} steps) · strength {strength:+.2f}")
            self.controls.say(f"{direction} {strength:+.2f}: {quality} quality")
            if self._full_next:  # after this job has finished
                QTimer.singleShot(0, self.render_full)

        self.quality.setText(f"{quality} ({steps} steps) · strength {strength:+.2f} …")
        # the widget's own bar and Cancel only: slider renders are frequent and short
        self.run_job(self.controls, work, f"Manipulate ({quality})", done, activity=False)

    def _show(self, layer, geometry, image, diff, prov) -> None:
        meta = geometry.result_metadata("image", prov, layer.name)
        show_image(self.viewer, f"{layer.name} [edit]", image, geometry, layer, meta)
        self._shown = {"source": layer.name, **prov}
        if self.with_diff.isChecked():
            dmeta = geometry.result_metadata("difference", prov, layer.name)
            show_difference(self.viewer, f"{layer.name} [Δ edit]", diff, geometry, dmeta)

    # ------------------------------------------------------------------------- keep, sweep
    def keep(self) -> list:
        """Copy the current edit (and Δ) into new layers named after direction and strength."""
        if self._shown is None:
            self.controls.say("nothing to keep yet: move the slider first", error=True)
            return []
        src, tag = self._shown["source"], f"{self._shown['direction']} " \
            f"{self._shown['strength']:+.2f}"
        kept = []
        for suffix, label in (("[edit]", ""), ("[Δ edit]", "Δ ")):
            name = f"{src} {suffix}"
            if name in self.viewer.layers:
                ly = self.viewer.layers[name]
                kept.append(self.viewer.add_image(
                    np.array(ly.data), name=unique_name(self.viewer, f"{src} {label}{tag}"),
                    scale=ly.scale, translate=ly.translate, colormap=ly.colormap,
                    contrast_limits=ly.contrast_limits, blending=ly.blending,
                    rendering=ly.rendering, metadata=dict(ly.metadata)))
        self.controls.say(f"kept {', '.join(k.name for k in kept)}")
        return kept

    def sweep_strengths(self) -> list[float]:
        values = np.linspace(self.sweep_from.value(), self.sweep_to.value(),
                             self.sweep_frames.value())
        return [round(float(v), 4) for v in values]

    def sweep(self) -> None:
        """Render the strength range into one 4D layer (and its Δ) at full quality."""
        try:
            session, layer, scan, geometry = self._prepare()
        except Exception as err:
            self.fail(self.sweep_controls, describe_error(err))
            return
        steps, encode_steps = self.state.steps["decode"], self.state.steps["encode"]
        direction, strengths = self.direction.currentData(), self.sweep_strengths()

        def work():
            codes = yield from session.iter_encode(scan, encode_steps)
            recon = yield from session.iter_reconstruction(codes, steps)
            vols = yield from session.iter_manipulate(codes, direction, strengths, steps)
            return geometry.for_display(vols, recon[None])

        def done(result) -> None:
            images, diffs = result
            prov = {"operation": "manipulate sweep", "direction": direction,
                    "strength": strengths, "steps": steps, "encode_steps": encode_steps}
            meta = geometry.result_metadata("image", prov, layer.name)
            show_image(self.viewer, f"{layer.name} [sweep {direction}]",
                       images, geometry, layer, meta)
            if self.with_diff.isChecked():
                show_difference(self.viewer, f"{layer.name} [Δ sweep {direction}]", diffs,
                                geometry, geometry.result_metadata("difference", prov,
                                                                   layer.name))
            label_sweep_axis(self.viewer)
            self.viewer.dims.set_current_step(0, len(strengths) // 2)
            listed = ", ".join(f"{s:+g}" for s in strengths)
            self.sweep_controls.say(f"sweep of {len(strengths)} frames along {direction}, "
                                    f"strengths {listed} (first dims slider)")

        self.run_job(self.sweep_controls, work, f"Sweep {direction}", done)
