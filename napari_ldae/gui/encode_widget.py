"""Encode: an image layer → LDAE codes (cached per scan, bundle and steps)."""

from __future__ import annotations

from qtpy.QtWidgets import QLabel, QWidget

from napari_ldae.gui._base import LDAEWidget, form_row
from napari_ldae.gui._controls import LayerCombo, RunControls
from napari_ldae.gui._layers import is_volume_layer, scan_from_layer
from napari_ldae.session import describe_error


class EncodeWidget(LDAEWidget):
    """Preprocess a scan per the bundle's contract and compute its codes."""

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        self.layer_combo = form_row(self.form, "scan", LayerCombo(napari_viewer, is_volume_layer),
                                    "a 3D T1 image layer")
        self.steps_label = form_row(self.form, "steps", QLabel())
        self.controls = self.add_controls(RunControls("Encode", self.encode))
        self.finish_layout()
        self.state.steps_changed.connect(self._show_steps)
        self._show_steps(self.state.steps)
        self.codes = None  # the last result

    def _show_steps(self, steps: dict) -> None:
        self.steps_label.setText(f"{steps['encode']} DDIM inversion steps")

    def encode(self) -> None:
        layer = self.layer_combo.layer()
        try:
            session = self.state.require_session()
            if layer is None:
                raise ValueError("no 3D image layer to encode: open a scan first")
            scan = scan_from_layer(layer)
        except Exception as err:
            self.fail(self.controls, describe_error(err))
            return
        steps = self.state.steps["encode"]
        name = layer.name

        def work():
            return (yield from session.iter_encode(scan, steps))

        def done(codes) -> None:
            self.codes = codes
            self.controls.say(f"encoded {name!r} ({steps} steps; cached in "
                              f"{session.cache_dir})")

        self.run_job(self.controls, work, f"Encode {name}", done)
