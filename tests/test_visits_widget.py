"""The "visits over time" widget (gui/interpolate_widget.py) on a tiny random bundle, headless
(pytest-xvfb): visits and dates, the slider before, between and past them, predictions, the
sweep into a 4D layer and the live preview."""

from __future__ import annotations

import numpy as np
import pytest
from ldae_factory import tiny_scan

from napari_ldae import operations
from napari_ldae.core.progress import drain
from napari_ldae.data.io import write_scan
from napari_ldae.gui import _jobs
from napari_ldae.gui._state import get_state
from napari_ldae.gui.interpolate_widget import InterpolateWidget, date_label, slider_range

pytestmark = pytest.mark.filterwarnings("ignore:System theme detection")
WAIT_MS = 30_000


@pytest.fixture
def viewer(make_napari_viewer, session):
    v = make_napari_viewer()
    state = get_state(v)
    state.set_session(session)
    state.set_steps({"encode": 1, "decode": 1, "preview": 1, "carry": 1})
    return v


def open_visits(viewer, tmp_path, months=(0, 6, 12)):
    """Visits of sub-01 (BIDS names) opened as layers; returns them and a docked widget."""
    layers = []
    for i, m in enumerate(months):
        scan = tiny_scan(seed=i)
        path = write_scan(tmp_path / f"sub-01_ses-M{m:02d}_T1w.nii.gz", scan.data, like=scan)
        layers.append(viewer.open(str(path), plugin="napari-ldae")[0])
    widget = InterpolateWidget(viewer)
    widget.target.onto.setCurrentText("model")  # on the scan: tests/test_gui_transfer*.py
    viewer.window.add_dock_widget(widget, name="visits over time")
    return layers, widget


def test_dates_range_and_labels(viewer, tmp_path):
    layers, w = open_visits(viewer, tmp_path)
    assert w.title == "Visits over time"
    assert [(ly.name, m) for ly, m in w.table.visits()] == [
        (layers[0].name, 0.0), (layers[1].name, 6.0), (layers[2].name, 12.0)]  # BIDS names
    assert (w.slider.minimum(), w.slider.maximum()) == slider_range([0, 6, 12]) == (-6.0, 24.0)
    w.slider.setValue(18.0)
    assert w.kind.text() == "prediction: 6 months past the last visit (month 12)"
    w.slider.setValue(3.0)
    assert w.kind.text() == "between the visits: interpolation"
    w.table.set_visit(layers[2].name, checked=False)  # two visits left: the range follows
    assert (w.slider.minimum(), w.slider.maximum()) == (-3.0, 18.0)
    assert w.sweep_to.value() == 18.0
    w.table.set_visit(layers[1].name, months=9.0)
    assert [m for _, m in w.table.visits()] == [0.0, 9.0]
    assert date_label(-2, 0, 9).startswith("before the first visit")


def test_prediction_and_sweep_into_the_future(viewer, tmp_path, monkeypatch, session):
    monkeypatch.setenv(_jobs.SYNC_ENV, "1")
    layers, w = open_visits(viewer, tmp_path)
    w.slider.setValue(18.0)
    w.interpolate()
    name = f"{layers[2].name} [over time]"
    prov = viewer.layers[name].metadata["ldae_provenance"]
    assert prov["operation"] == "predict" and prov["months"] == 18.0
    assert prov["prediction"] is True and prov["horizon_months"] == 6.0
    assert prov["visit_months"] == [0.0, 6.0, 12.0]
    assert prov["visits"] == [ly.name for ly in layers]
    assert f"{name} Δ to {layers[2].name}" in viewer.layers
    assert "month 18, prediction: 6 months past the last visit" in w.controls.status.text()
    w.sweep_to.setValue(24.0)
    w.frames.setValue(3)
    w.sweep()
    sweep = viewer.layers[f"{layers[2].name} [sweep over time]"]
    assert sweep.data.shape == (3, 32, 32, 32)
    prov = sweep.metadata["ldae_provenance"]
    assert prov["months"] == [0.0, 12.0, 24.0] and prov["prediction"] == [False, False, True]
    assert "sweep: months 0, 12, 24" in w.sweep_controls.status.text()
    assert "1 past the last visit (prediction)" in w.sweep_controls.status.text()
    assert viewer.dims.axis_labels[0] == "months" and viewer.dims.current_step[0] == 2


def test_between_two_visits_it_is_the_interpolation(viewer, tmp_path, monkeypatch, session):
    monkeypatch.setenv(_jobs.SYNC_ENV, "1")
    layers, w = open_visits(viewer, tmp_path, months=(0, 12))
    w.slider.setValue(3.0)
    w.interpolate()
    record = viewer.layers[f"{layers[1].name} [over time]"].metadata["ldae_result"]["record"]
    scans = [w._prepare()[2][i] for i in (0, 1)]
    interp = drain(operations.iter_interpolate(session, *scans, [0.25], 1, 1, references=False))
    # the same codes (the default y rule lerps y between visits, as interpolation); the
    # tolerance allows the float rounding the random tiny model's decoder amplifies
    np.testing.assert_allclose(record.volumes, interp.volumes[0], atol=1e-4)
    assert record.provenance["prediction"] is False


def test_one_visit_is_a_clear_message(viewer, tmp_path, monkeypatch):
    monkeypatch.setenv(_jobs.SYNC_ENV, "1")
    layers, w = open_visits(viewer, tmp_path, months=(0, 12))
    w.table.only([layers[0].name])
    assert w.kind.text() == "check two or more visits of one subject"
    w.interpolate()
    assert "check two or more visits" in w.controls.status.text()
    w.sweep()
    assert "check two or more visits" in w.sweep_controls.status.text()
    assert not w.controls.busy and not w.sweep_controls.busy


def test_live_preview_blends_anchor_dates(viewer, tmp_path, monkeypatch, qtbot):
    monkeypatch.setenv(_jobs.SYNC_ENV, "1")
    get_state(viewer).set_steps({"encode": 1, "decode": 2, "preview": 1})
    layers, w = open_visits(viewer, tmp_path, months=(0, 12))  # slider -6 … 24
    w.slider.setValue(15.0)  # between the anchors 12 and 16.5: a prediction
    qtbot.waitUntil(lambda: w.preview.anchors is not None, timeout=WAIT_MS)
    anchors = w.preview.anchors
    assert list(anchors.values) == [-6.0, 0.0, 1.5, 9.0, 12.0, 16.5, 24.0]  # visits included
    image, diff = anchors.shown
    # at the latest visit's date: its reconstruction (up to the float noise of a batch)
    lo, hi = w._prepare()[3].scan.intensity_range
    assert np.abs(diff[4]).max() < 1e-3 * (hi - lo)  # batch float noise depends on threads
    layer = viewer.layers[f"{layers[1].name} [over time]"]
    qtbot.waitUntil(lambda: layer.metadata["ldae_provenance"]["months"] == 15.0,
                    timeout=WAIT_MS)
    prov = layer.metadata["ldae_provenance"]
    assert "blend" in prov["preview"] and prov["steps"] == 1 and prov["prediction"] is True
    expected = (1.5 * image[4] + 3.0 * image[5]) / 4.5
    np.testing.assert_allclose(layer.data, expected, rtol=1e-5, atol=1e-5)
    assert "live preview" in w.controls.status.text()
    w.slider.sliderReleased.emit()  # full quality of the exact date
    prov = layer.metadata["ldae_provenance"]
    assert prov["steps"] == 2 and "preview" not in prov and prov["months"] == 15.0
    assert "full quality (2 steps)" in w.controls.status.text()
