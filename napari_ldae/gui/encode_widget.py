"""Encode: an image layer → LDAE codes (cached per scan, bundle and steps), a raw scan prepared
first (skull stripping and registration to MNI: **prepare** auto, yes or no), with its QC as
layers: the brain mask's outline on the scan, and the registered brain over the ICBM152
template. The registered brain (``<scan> [prepared]``) is what the model sees: manipulate and
visits over time work on it, and its results export onto the raw scan's voxels."""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QComboBox, QLabel, QWidget

from napari_ldae._resources import display_path
from napari_ldae.gui._base import LDAEWidget, form_row
from napari_ldae.gui._controls import LayerCombo, RunControls
from napari_ldae.gui._layers import is_volume_layer, scan_from_layer
from napari_ldae.operations_prepare import PREPARE_CHOICES
from napari_ldae.session import describe_error

TEMPLATE_LAYER = "ICBM152 2009a template"
PREPARE_TIP = ("auto: skull-strip and register the scan to MNI unless it already looks "
               "skull-stripped and in MNI position; yes: always; no: encode it as it is")


class EncodeWidget(LDAEWidget):
    """Prepare a scan if asked (or needed), then compute its codes per the bundle's contract."""

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        self.layer_combo = form_row(self.form, "scan", LayerCombo(napari_viewer, is_volume_layer),
                                    "a 3D T1 image layer")
        self.prepare = form_row(self.form, "prepare", QComboBox(), PREPARE_TIP)
        self.prepare.addItems(PREPARE_CHOICES)
        self.steps_label = form_row(self.form, "steps", QLabel())
        self.controls = self.add_controls(RunControls("Encode", self.encode))
        self.finish_layout()
        self.state.steps_changed.connect(self._show_steps)
        self._show_steps(self.state.steps)
        self.codes = None  # the last result
        self.preparation = None  # what was done to the last scan encoded

    def _show_steps(self, steps: dict) -> None:
        self.steps_label.setText(f"{steps['encode']} DDIM inversion steps")

    def encode(self) -> None:
        from napari_ldae.operations_prepare import iter_encode

        layer = self.layer_combo.layer()
        try:
            session = self.state.require_session()
            if layer is None:
                raise ValueError("no 3D image layer to encode: open a scan first")
            scan = scan_from_layer(layer)
        except Exception as err:
            self.fail(self.controls, describe_error(err))
            return
        steps, choice, name = self.state.steps["encode"], self.prepare.currentText(), layer.name

        def work():
            codes, prep = yield from iter_encode(session, scan, steps, choice)
            return codes, prep, qc_layer_data(prep, name) if prep.ran else None

        def done(out) -> None:
            self.codes, self.preparation, qc = out
            if qc is not None:
                show_qc(self.viewer, layer, qc)
            warnings = self.preparation.prepared.warnings if qc is not None else []
            self.controls.say(f"{name}: {self.preparation.summary()}; encoded ({steps} steps; "
                              f"cached in {display_path(session.cache_dir)})"
                              + "".join(f"; warning: {w}" for w in warnings),
                              error=bool(warnings))

        self.run_job(self.controls, work, f"Encode {name}", done)


def qc_layer_data(prep, name: str) -> dict:
    """The QC layers of the preparation of layer ``name``: ``mask`` (its display data),
    ``template`` and ``prepared`` (napari layer data). Made in the worker."""
    from napari_ldae.data.io import Scan
    from napari_ldae.data.mni import template
    from napari_ldae.napari_io import scan_layer_data

    t1, _, affine = template(2.0)
    return {"mask": prep.input.display.to_display(prep.prepared.mask.astype(np.uint8)),
            "template": scan_layer_data(Scan.from_array(t1, affine), TEMPLATE_LAYER),
            "prepared": scan_layer_data(prep.model_scan, f"{name} [prepared]")}


def show_qc(viewer, source, qc: dict) -> None:
    """The mask's outline over ``source``; the registered brain (magenta, additive) over the
    template (green): white where they agree, magenta or green where they do not.

    Layers of the same names are replaced (the template is added once)."""
    from napari.utils.colormaps import DirectLabelColormap

    name = f"{source.name} [brain mask]"
    prepared_data, prepared_kwargs, _ = qc["prepared"]
    for old in (name, prepared_kwargs["name"]):
        if old in viewer.layers:
            viewer.layers.remove(old)
    mask = viewer.add_labels(
        qc["mask"], name=name, scale=source.scale, translate=source.translate, opacity=0.9,
        colormap=DirectLabelColormap(color_dict={None: "transparent", 1: "lime"}))
    mask.contour = 1
    if TEMPLATE_LAYER not in viewer.layers:
        data, kwargs, _ = qc["template"]
        viewer.add_image(data, **{**kwargs, "colormap": "green"})
    viewer.add_image(prepared_data, **{**prepared_kwargs, "colormap": "magenta",
                                       "blending": "additive"})
