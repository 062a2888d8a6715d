"""Results carried onto the user's scan in the widgets, headless (pytest-xvfb), on a tiny
random bundle: the "show on" and "transfer" choices, strength 0 shows the input exactly, the
log-Jacobian layer and the change maps' noise floor in 3D, export of a carried result."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from ldae_factory import tiny_scan

from napari_ldae.data.io import write_scan
from napari_ldae.data.transfer import DEFAULT_TRANSFER
from napari_ldae.gui import _jobs
from napari_ldae.gui._change import LOG_JACOBIAN_FLOOR, NOISE_FLOOR, show_difference
from napari_ldae.gui._layers import ResultGeometry
from napari_ldae.gui._state import get_state
from napari_ldae.gui.export_widget import ExportWidget
from napari_ldae.gui.manipulate_widget import ManipulateWidget
from napari_ldae.operations_transfer import DEFAULT_ONTO, OnScan

pytestmark = pytest.mark.filterwarnings("ignore:System theme detection")


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory):
    scan = tiny_scan()
    return write_scan(tmp_path_factory.mktemp("scans") / "sub-01_T1w.nii.gz", scan.data,
                      like=scan)


@pytest.fixture
def manip(make_napari_viewer, session, scan_file, monkeypatch):
    """A manipulate widget on one opened scan, its work run synchronously."""
    monkeypatch.setenv(_jobs.SYNC_ENV, "1")
    viewer = make_napari_viewer()
    get_state(viewer).set_session(session)
    get_state(viewer).set_steps({"encode": 1, "decode": 2, "preview": 1})
    viewer.open(str(scan_file), plugin="napari-ldae")
    widget = ManipulateWidget(viewer)
    viewer.window.add_dock_widget(widget, name="manipulate")
    return widget


def _render(manip, strength: float) -> None:
    manip.slider.blockSignals(True)  # one full render, no preview
    manip.slider.setValue(strength)
    manip.slider.blockSignals(False)
    manip.render_full()


def _layers(manip) -> dict:
    """The source layer and the edit's layers by kind (None when absent)."""
    name = manip.layer_combo.currentText()
    by_name = {layer.name: layer for layer in manip.viewer.layers}
    return {"source": by_name[name],
            **{kind: by_name.get(f"{name} {suffix}") for kind, suffix in (
                ("image", "[edit]"), ("difference", "[Δ edit]"),
                ("log_jacobian", "[log-Jacobian edit]"))}}


def test_the_choice_exists_and_changes_what_the_layer_shows(manip, session):
    assert manip.target.key() == (DEFAULT_ONTO, DEFAULT_TRANSFER) == ("scan", "warp")
    _render(manip, 4.0)
    shown = _layers(manip)
    source, image = shown["source"], shown["image"]
    # on the scan: its grid, its placement, its units, the record carried by warp
    assert image.data.shape == source.data.shape
    np.testing.assert_allclose(image.scale, source.scale)
    np.testing.assert_allclose(image.translate, source.translate)
    record = image.metadata["ldae_result"]["record"]
    assert isinstance(record, OnScan) and record.method == "warp"
    assert image.metadata["ldae_provenance"]["transfer"] == "warp"
    assert shown["log_jacobian"] is not None and "carried onto the scan by warp" in \
        manip.controls.status.text()
    warped = image.data.copy()

    manip.target.transfer.setCurrentText("intensity")  # shown again with the new choice
    shown = _layers(manip)
    assert shown["image"].metadata["ldae_provenance"]["transfer"] == "intensity"
    assert shown["log_jacobian"] is None  # no log-Jacobian for the intensity transfer
    assert not np.array_equal(shown["image"].data, warped)

    manip.target.onto.setCurrentText("model")
    shown = _layers(manip)
    grid = session.contract.shape
    assert shown["image"].data.shape == tuple(grid) and not manip.target.transfer.isEnabled()
    np.testing.assert_allclose(shown["image"].scale, session.contract.spacing)
    assert not isinstance(shown["image"].metadata["ldae_result"]["record"], OnScan)
    assert "on the model grid" in manip.controls.status.text()


def test_strength_zero_shows_the_input_exactly(manip):
    _render(manip, 0.0)
    shown = _layers(manip)
    assert np.array_equal(shown["image"].data, shown["source"].data)
    assert not shown["difference"].data.any() and not shown["log_jacobian"].data.any()
    manip.slider.setValue(1.0)  # anchors (0 among them), then a blend exactly at 0
    manip.preview.rest_timer.stop()
    assert 0.0 in manip.preview.anchors.values
    manip.slider.setValue(0.0)
    manip.preview._preview()
    assert manip.quality.text().startswith("live preview")
    assert np.array_equal(_layers(manip)["image"].data, shown["source"].data)


def test_live_preview_blends_carried_anchors(manip):
    manip.slider.setValue(1.0)
    manip.preview.rest_timer.stop()
    anchors = manip.preview.anchors
    assert isinstance(anchors.result, OnScan) and len(anchors.shown) == 3  # image, Δ, log-J
    manip.slider.setValue(3.75)  # halfway between +2.5 and +5
    manip.preview._preview()
    image = _layers(manip)["image"]
    np.testing.assert_allclose(image.data, 0.5 * (anchors.shown[0][3] + anchors.shown[0][4]),
                               rtol=1e-5, atol=1e-4)
    record = image.metadata["ldae_result"]["record"]
    assert "carried onto the scan by warp" in record.provenance["preview"]
    assert record.volumes[0].shape == image.data.shape  # the scan's (RAS) voxel order here


def test_log_jacobian_layer_is_symmetric_and_exports(manip, tmp_path):
    _render(manip, 5.0)
    logj = _layers(manip)["log_jacobian"]
    lo, hi = logj.contrast_limits
    assert lo == -hi and hi >= LOG_JACOBIAN_FLOOR
    assert hi == pytest.approx(max(np.abs(logj.data).max(), LOG_JACOBIAN_FLOOR))
    assert logj.colormap.name.startswith("ldae log-Jacobian") and logj.blending == "translucent"
    rgba = logj.colormap.map(np.linspace(0.0, 1.0, 11))
    assert rgba[5, 3] == 0.0  # no change: transparent
    np.testing.assert_allclose(rgba[:, 3], rgba[::-1, 3])  # symmetric about 0
    assert not np.allclose(rgba[0, :3], rgba[-1, :3])  # shrinkage and expansion differ
    export = ExportWidget(manip.viewer)
    export.folder.setText(str(tmp_path))
    export.select([logj.name])
    export.controls.button.click()
    [path] = export.written
    source = nib.load(manip.viewer.layers[manip.layer_combo.currentText()]
                      .metadata["ldae_scan"]["path"])
    written = nib.load(path)
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine)
    side = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
    assert side["provenance"]["kind"] == "log_jacobian"
    assert side["provenance"]["transfer"] == "warp"


def test_3d_shows_only_change_above_the_noise_floor(make_napari_viewer, session):
    viewer = make_napari_viewer()
    scan = tiny_scan()
    geometry = ResultGeometry.carried(session, scan)
    lo, hi = scan.intensity_range
    meta = {"ldae_result": {"kind": "difference"}}
    faint = np.zeros(scan.data.shape, np.float32)
    faint[10:14, 10:14, 10:14] = 0.5 * NOISE_FLOOR * (hi - lo)  # below the floor
    layer = show_difference(viewer, "Δ", faint, geometry, meta)
    assert layer.contrast_limits[1] == pytest.approx(NOISE_FLOOR * (hi - lo))
    viewer.dims.ndisplay = 3
    assert not layer.colormap.map(np.linspace(0.0, 1.0, 21))[:, 3].any()  # nothing drawn
    strong = faint * 20.0  # ten times the floor: its main change is drawn
    layer = show_difference(viewer, "Δ", strong, geometry, meta)
    alpha = layer.colormap.map(np.array([0.5, 0.5 + 0.5 * 0.05, 1.0]))[:, 3]
    assert alpha[0] == alpha[1] == 0.0 and alpha[2] == 1.0
    viewer.dims.ndisplay = 2
    assert layer.colormap.map(np.array([0.9]))[0, 3] > 0.0


def test_full_quality_on_the_scan_uses_the_carry_steps(manip):
    """Shown on the scan, full quality decodes with the carry steps; on the model grid with
    the decode steps (the choice re-renders)."""
    get_state(manip.viewer).set_steps({"decode": 2, "carry": 1})
    _render(manip, 2.0)
    assert _layers(manip)["image"].metadata["ldae_provenance"]["steps"] == 1
    assert manip.quality.text() == "full (1 steps) · strength +2.00"
    manip.target.onto.setCurrentText("model")
    assert _layers(manip)["image"].metadata["ldae_provenance"]["steps"] == 2
    assert manip.quality.text() == "full (2 steps) · strength +2.00"


def test_no_blends_where_full_quality_costs_no_more_than_the_preview(manip):
    """On the scan with carry steps equal to the preview's, a slider move renders full quality
    only; on the model grid (decode steps above the preview's) it prepares the anchors."""
    get_state(manip.viewer).set_steps({"preview": 1, "decode": 2, "carry": 1})
    manip.slider.setValue(1.0)
    manip.preview.rest_timer.stop()
    assert manip.preview.anchors is None
    manip.target.onto.setCurrentText("model")
    manip.slider.setValue(2.0)
    manip.preview.rest_timer.stop()
    assert manip.preview.anchors is not None and manip.preview.anchors.key[3] == 2
