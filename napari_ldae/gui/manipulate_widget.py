"""Manipulate: move a scan's semantic code along a learned direction with a live slider.

Live preview: the first slider move on a (scan, direction) decodes a few anchor strengths
spanning the slider (``steps["preview"]`` DDIM steps, one batch); from then on every slider
value is shown at once as the piecewise-linear blend of its two neighbouring anchors (no network
call while dragging). When the slider rests (or is released) the full-quality decode
(``steps["decode"]``, or ``steps["carry"]`` shown on the scan) of that exact strength follows,
after the anchors if they are still being made. The latest request wins: a new value cancels
the running decode at its next step and stale results are dropped.

**show on** ``scan`` (the default) carries the edit's change onto the scan at its own resolution
(``gui._onto``; anchors are carried once and blended): the edit, its difference to the scan and,
for the ``warp`` transfer, the log-Jacobian are updated in place. On the ``model`` grid the
difference is to the reconstruction (the strength-0 decode, which removes the autoencoder's
blur). Region volumes of the latest full-quality edit or sweep: ``gui._volumes``.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt
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

from napari_ldae.gui._base import LDAEWidget, form_row
from napari_ldae.gui._controls import LayerCombo, RunControls
from napari_ldae.gui._layers import (
    ResultGeometry,
    change_percent,
    is_source_layer,
    label_sweep_axis,
    scan_from_layer,
    unique_name,
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
from napari_ldae.gui._volumes import VolumePanel
from napari_ldae.session import describe_error

#: The layers of an edit, by kind, after the source layer's name.
SUFFIXES = {"image": "[edit]", "difference": "[Δ edit]", "log_jacobian": "[log-Jacobian edit]"}


class ManipulateWidget(LDAEWidget):
    """Direction dropdown, strength slider, live edit + difference, Keep and Sweep; the
    :class:`~napari_ldae.gui._preview.PreviewSource` of its slider."""

    title = "Manipulate"

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
        self.in_years = form_row(self.form, "in years", QLabel(""),
                                 "the strength as years of the training cohort's own change "
                                 "along the direction, between its subjects' visits")
        self.in_years.setWordWrap(True)
        self.target = TargetChoice(self.form)
        self.quality = form_row(self.form, "showing", QLabel("nothing yet"))
        self.with_diff = form_row(self.form, "difference", QCheckBox("signed Δ map"))
        self.with_diff.setChecked(True)
        self.controls = self.add_controls(RunControls("Render full quality",
                                                      lambda: self.preview.render_full()))
        self.keep_button = QPushButton("Keep (snapshot)")
        self.keep_button.clicked.connect(self.keep)
        self.outer.addWidget(self.keep_button)
        self._build_sweep()
        self.volumes = VolumePanel(self)
        self.outer.addWidget(self.volumes)
        self.finish_layout()
        self._source_key = None
        self._source = None
        self._shown: dict | None = None
        self.preview = LivePreview(self, self.controls, self.slider, self)
        self.slider.valueChanged.connect(
            lambda _v: self.quality.setText(f"… strength {self.strength:+.2f}"))
        self.slider.valueChanged.connect(self._show_years)
        self.direction.currentIndexChanged.connect(self._show_years)
        self.target.connect(self._rerender)
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

    def _show_years(self, *_args) -> None:
        session, direction = self.state.session, self.direction.currentData()
        self.in_years.setText("" if session is None or direction is None
                              else session.years_text(direction, self.strength))

    def _rerender(self) -> None:
        """Show the current strength again with the new choice (when one is shown)."""
        if self._shown is not None:
            self.preview.render_full()

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
    def key(self) -> tuple[tuple, PreviewContext]:
        session, layer, scan, geometry = self._prepare()
        steps = self.state.steps
        key = (self._source_key, self.direction.currentData(), steps["preview"],
               self.target.full_steps(steps), steps["encode"], *self.target.key())
        return key, PreviewContext(session, (layer,), (scan,), geometry)

    def anchor_values(self, key: tuple) -> np.ndarray:
        """Anchor strengths over the slider's range (0, when among them, is the recon)."""
        return np.linspace(self.slider.minimum(), self.slider.maximum(), ANCHORS)

    def position(self, value: float) -> float:
        return value

    def at(self, value: float) -> dict:
        return {"strength": value}

    def iter_result(self, request: Request, positions: list[float] | None):
        _, direction, preview, decode, encode, onto, transfer = request.key
        ctx = request.context
        strengths = [request.value] if positions is None else positions
        result = yield from ctx.session.iter_edit(ctx.scans[0], direction, strengths,
                                                  decode if positions is None else preview,
                                                  encode)
        return (yield from iter_target(result, onto, transfer))

    def show(self, request: Request, shown: tuple, result) -> None:
        """The edit and its change maps, from the live preview (a blend) or at full quality."""
        ctx, value = request.context, request.value
        self._show(ctx.layers[0], ctx.geometry, shown, result)
        steps = result.provenance["steps"]
        if request.kind == "blend":
            self.quality.setText(f"live preview (blend, {steps} steps) · strength {value:+.2f}")
            return
        self.quality.setText(f"full ({steps} steps) · strength {value:+.2f}")
        change = change_percent(geometry_of(result, ctx.geometry), shown[1])
        self.controls.say(f"{result.provenance['direction']} {value:+.2f}: full quality, "
                          f"{described(result)}; largest change {change:.3g} % of the scan's "
                          "range")
        self.volumes.set_offer(result, [f"{result.provenance['direction']} {value:+.2f}"],
                               [value], "strength", ctx.layers[0].name)

    def render_full(self) -> None:
        """Decode the current strength at full quality; the latest request wins."""
        self.preview.render_full()

    def _names(self, layer, tag: str = "edit") -> dict[str, str | None]:
        names = {k: f"{layer.name} {v.replace('edit', tag)}" for k, v in SUFFIXES.items()}
        if not self.with_diff.isChecked():
            names["difference"] = None
        return names

    def _show(self, layer, geometry, shown, result) -> None:
        show_result(self.viewer, self._names(layer), layer, geometry, shown, result)
        self._shown = {"source": layer.name, **result.provenance}

    # ------------------------------------------------------------------------- keep, sweep
    def keep(self) -> list:
        """Copy the current edit (and Δ) into new layers named after direction and strength."""
        if self._shown is None:
            self.controls.say("nothing to keep yet: move the slider first", error=True)
            return []
        src, tag = self._shown["source"], f"{self._shown['direction']} " \
            f"{self._shown['strength']:+.2f}"
        kept = []
        for suffix, label in zip(SUFFIXES.values(), ("", "Δ ", "log-Jacobian "), strict=True):
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
        """Render the strength range into one 4D layer (and its change maps) at full quality."""
        try:
            session, layer, scan, geometry = self._prepare()
        except Exception as err:
            self.fail(self.sweep_controls, describe_error(err))
            return
        direction, strengths = self.direction.currentData(), self.sweep_strengths()
        onto, transfer = self.target.key()
        steps, encode_steps = self.target.full_steps(self.state.steps), self.state.steps["encode"]

        def work():
            result = yield from session.iter_edit(scan, direction, strengths, steps,
                                                  encode_steps)
            record = yield from iter_target(
                result.with_provenance(operation="manipulate sweep"), onto, transfer)
            return record, for_display(record, geometry)

        def done(out) -> None:
            record, shown = out
            show_result(self.viewer, self._names(layer, f"sweep {direction}"), layer, geometry,
                        shown, record)
            label_sweep_axis(self.viewer)
            self.volumes.set_offer(record, [f"{direction} {v:+g}" for v in strengths],
                                   strengths, "strength", layer.name)
            self.viewer.dims.set_current_step(0, len(strengths) // 2)
            listed = ", ".join(f"{s:+g}" for s in strengths)
            self.sweep_controls.say(f"sweep of {len(strengths)} frames along {direction}, "
                                    f"strengths {listed} (first dims slider), "
                                    f"{described(record)}")

        self.run_job(self.sweep_controls, work, f"Sweep {direction}", done)
