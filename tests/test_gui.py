"""The napari widgets on a tiny random bundle, headless (pytest-xvfb).

Workers run for real (threads) except where ``NAPARI_LDAE_SYNC=1`` is set; each test reuses
one module-wide Session so that codes stay cached between tests.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ldae_factory import shared_tiny_bundle, tiny_scan

from napari_ldae.data.io import write_scan
from napari_ldae.gui import _jobs
from napari_ldae.gui._state import get_state
from napari_ldae.session import DEMO_BUNDLE, OOM_HINT, Session

pytestmark = pytest.mark.filterwarnings("ignore:System theme detection")

WIDGETS = {"LDAE model": "ModelWidget", "LDAE encode": "EncodeWidget",
           "LDAE manipulate": "ManipulateWidget", "LDAE interpolate": "InterpolateWidget",
           "LDAE export": "ExportWidget", "LDAE train": "TrainWidget"}
FAST = {"encode": 1, "decode": 1, "preview": 1, "carry": 1}
WAIT_MS = 30_000


@pytest.fixture(scope="module")
def bundle():
    return shared_tiny_bundle()


@pytest.fixture(scope="module")
def session(bundle, tmp_path_factory):
    return Session(bundle, device="cpu", cache_dir=tmp_path_factory.mktemp("gui-cache"))


@pytest.fixture
def viewer(make_napari_viewer, session):
    """A viewer with the session loaded (fast steps) and one scan opened from a file."""
    v = make_napari_viewer()
    state = get_state(v)
    state.set_session(session)
    state.set_steps(FAST)
    return v


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scans")
    return write_scan(folder / "sub-01_ses-M00_T1w.nii.gz", tiny_scan().data, like=tiny_scan())


def _open(viewer, path):
    return viewer.open(str(path), plugin="napari-ldae")[0]


def _widget(viewer, name):
    from napari_ldae import gui

    module = {"ModelWidget": "model_widget", "EncodeWidget": "encode_widget",
              "ManipulateWidget": "manipulate_widget", "InterpolateWidget": "interpolate_widget",
              "ExportWidget": "export_widget", "TrainWidget": "train_widget"}[name]
    import importlib

    cls = getattr(importlib.import_module(f"{gui.__name__}.{module}"), name)
    w = cls(viewer)
    viewer.window.add_dock_widget(w, name=name)
    return w


def _idle(qtbot, controls):
    qtbot.waitUntil(lambda: not controls.busy, timeout=WAIT_MS)


def _no_workers(qtbot):
    from qtpy.QtCore import QThreadPool

    qtbot.waitUntil(lambda: QThreadPool.globalInstance().activeThreadCount() == 0,
                    timeout=WAIT_MS)


def _assert_idle_ui(controls):
    assert not controls.busy and controls.button.isEnabled()
    assert controls.button.text() == controls.text and not controls.bar.isVisible()


def _open_progress_bars():
    from napari.utils.progress import progress

    return [p for p in progress._all_instances if not p.disable]


# ----------------------------------------------------------------------------- manifest
def test_widgets_through_the_manifest_share_one_state(make_napari_viewer):
    viewer = make_napari_viewer()
    widgets = []
    for display_name, cls in WIDGETS.items():
        _, widget = viewer.window.add_plugin_dock_widget("napari-ldae", display_name)
        assert type(widget).__name__ == cls
        widgets.append(widget)
    assert all(w.state is get_state(viewer) for w in widgets)
    assert get_state(make_napari_viewer()) is not widgets[0].state  # one state per viewer


def test_sample_data_loads(make_napari_viewer, monkeypatch):
    from napari_ldae.data import synthetic

    def small_subject(seed=0, spacing=3.0, n_visits=4):  # the real one needs the template
        from types import SimpleNamespace

        visits = [SimpleNamespace(data=tiny_scan(seed=i).data, affine=np.diag([6, 6, 6, 1.0]),
                                  session=f"ses-M{6 * i:02d}", months=6 * i, truth={})
                  for i in range(n_visits)]
        return SimpleNamespace(subject="sub-s0", diagnosis="CN", visits=visits)

    monkeypatch.setattr(synthetic, "make_subject", small_subject)
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-ldae", "synthetic_subject")
    assert len(layers) == 4 and layers[1].metadata["ldae_visit"]["months"] == 6


# ----------------------------------------------------------------------------- model panel
def test_model_panel_load_and_unload(make_napari_viewer, bundle, tmp_path, qtbot):
    viewer = make_napari_viewer()
    panel = _widget(viewer, "ModelWidget")
    manip = _widget(viewer, "ManipulateWidget")
    panel.bundle_edit.setText(str(bundle))
    panel.cache_edit.setText(str(tmp_path / "cache"))
    panel.controls.button.click()
    _idle(qtbot, panel.controls)
    state = get_state(viewer)
    assert state.session is not None and state.session.cache_dir == tmp_path / "cache"
    assert "ldae-tiny" in panel.facts.text() and "toward AD" in panel.facts.text()
    assert state.steps == {"encode": 2, "decode": 2, "preview": 1, "carry": 2}  # the bundle's
    assert manip.direction.count() == 2 and manip.direction.currentData() == "AD"
    panel.step_boxes["decode"].setValue(3)
    assert state.steps["decode"] == 3
    panel.unload_button.click()
    assert state.session is None and manip.direction.count() == 0
    _assert_idle_ui(panel.controls)


def test_model_panel_shows_no_absolute_paths(make_napari_viewer, monkeypatch, tmp_path):
    """The built-in bundle is named as such and the cache is under ``~``: no machine's paths."""
    from napari_ldae._resources import BUILTIN_BUNDLE, path_from_display

    for env in ("NAPARI_LDAE_BUNDLE", "NAPARI_LDAE_CACHE"):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    panel = _widget(make_napari_viewer(), "ModelWidget")
    assert panel.bundle_edit.text() == BUILTIN_BUNDLE
    assert panel.cache_edit.text() == "~/.cache/napari-ldae"
    assert str(Path.home()) not in panel.bundle_edit.text() + panel.cache_edit.text()
    assert path_from_display(panel.bundle_edit.text()) == DEMO_BUNDLE
    assert path_from_display(panel.cache_edit.text()) == tmp_path / ".cache" / "napari-ldae"


def test_model_panel_reports_a_bad_bundle(make_napari_viewer, tmp_path, qtbot):
    viewer = make_napari_viewer()
    panel = _widget(viewer, "ModelWidget")
    panel.bundle_edit.setText(str(tmp_path / "nothing"))
    panel.controls.button.click()
    _idle(qtbot, panel.controls)
    assert "no model bundle" in panel.controls.status.text()
    _assert_idle_ui(panel.controls)


# ----------------------------------------------------------------------------- encode, edit
def test_encode_then_slider_updates_one_layer_in_place(viewer, scan_file, qtbot):
    source = _open(viewer, scan_file)
    enc = _widget(viewer, "EncodeWidget")
    enc.prepare.setCurrentText("no")  # a blob, not a brain
    enc.controls.button.click()
    _idle(qtbot, enc.controls)
    assert enc.codes is not None and "encoded" in enc.controls.status.text()

    manip = _widget(viewer, "ManipulateWidget")
    manip.slider.setValue(2.0)
    qtbot.waitUntil(lambda: f"{source.name} [edit]" in viewer.layers, timeout=WAIT_MS)
    _idle(qtbot, manip.controls)
    edit, diff = viewer.layers[f"{source.name} [edit]"], viewer.layers[f"{source.name} [Δ edit]"]
    n_layers, before = len(viewer.layers), edit.data.copy()
    assert "full (1 steps)" in manip.quality.text()
    manip.slider.setValue(-3.0)
    qtbot.waitUntil(lambda: manip.quality.text() == "full (1 steps) · strength -3.00",
                    timeout=WAIT_MS)
    assert len(viewer.layers) == n_layers
    assert viewer.layers[f"{source.name} [edit]"] is edit and not np.allclose(edit.data, before)
    # display: gray in the source's window; Δ diverging, symmetric, translucent over the scan
    assert edit.colormap.name == "gray"
    assert tuple(edit.contrast_limits) == pytest.approx(tuple(source.contrast_limits))
    lo, hi = diff.contrast_limits
    assert lo == pytest.approx(-hi) and hi > 0
    assert diff.blending == "translucent" and diff.colormap.name.startswith("ldae Δ")
    assert edit.metadata["ldae_provenance"]["strength"] == -3.0

    for value in (1.0, 4.0, 2.5):  # quick successive requests: the latest wins
        manip.slider.blockSignals(True)
        manip.slider.setValue(value)
        manip.slider.blockSignals(False)
        manip.render_full()
    _idle(qtbot, manip.controls)
    _no_workers(qtbot)  # stale workers have reported (and must not have changed anything)
    assert manip.quality.text() == "full (1 steps) · strength +2.50"
    status = manip.controls.status.text()
    assert "largest change" in status and "% of the scan's range" in status
    assert edit.metadata["ldae_provenance"]["strength"] == 2.5 and len(viewer.layers) == n_layers


def test_live_preview_blends_anchors_then_full_quality(viewer, scan_file, qtbot, monkeypatch):
    """The first move decodes the anchor strengths once; later moves are blends of them,
    shown with no network call; resting renders full quality of the exact value."""
    monkeypatch.setenv(_jobs.SYNC_ENV, "1")
    get_state(viewer).set_steps({"decode": 2, "preview": 1})
    source = _open(viewer, scan_file)
    manip = _widget(viewer, "ManipulateWidget")
    manip.target.onto.setCurrentText("model")  # on the scan: tests/test_gui_transfer.py
    manip.slider.setValue(1.0)
    qtbot.waitUntil(lambda: manip.preview.anchors is not None, timeout=WAIT_MS)
    anchors = manip.preview.anchors
    assert list(anchors.values) == [-5.0, -2.5, 0.0, 2.5, 5.0]
    image, diff = anchors.shown
    assert image.shape[0] == diff.shape[0] == 5
    assert not diff[2].any()  # strength 0 is the reconstruction
    session = get_state(viewer).session
    calls = []
    monkeypatch.setattr(session.model, "_net", lambda *a: calls.append(a))  # must not be used
    manip.preview.rest_timer.stop()
    manip.slider.setValue(3.75)  # halfway between the anchors +2.5 and +5
    qtbot.waitUntil(lambda: manip.quality.text().startswith("live preview"), timeout=WAIT_MS)
    assert manip.quality.text() == "live preview (blend, 1 steps) · strength +3.75"
    assert calls == [] and manip.preview.anchors is anchors
    edit = viewer.layers[f"{source.name} [edit]"]
    expected = 0.5 * (image[3] + image[4])
    np.testing.assert_allclose(edit.data, expected, rtol=1e-5, atol=1e-5)
    assert "blend" in edit.metadata["ldae_provenance"]["preview"]
    monkeypatch.undo()  # the real network for the full-quality render
    monkeypatch.setenv(_jobs.SYNC_ENV, "1")
    manip.preview.released()
    assert manip.quality.text() == "full (2 steps) · strength +3.75"
    assert "preview" not in edit.metadata["ldae_provenance"]


def test_blend_anchors_is_piecewise_linear_and_clipped():
    from napari_ldae.gui._preview import blend_anchors

    strengths = np.array([-2.0, 0.0, 2.0])
    volumes = np.array([np.full((2, 2, 2), v, np.float32) for v in (10.0, 0.0, 4.0)])
    for s, value in ((-2.0, 10.0), (-1.0, 5.0), (0.0, 0.0), (0.5, 1.0), (2.0, 4.0), (9.0, 4.0)):
        np.testing.assert_allclose(blend_anchors(strengths, volumes, s), value)


def test_release_while_anchors_are_made_queues_full_quality(viewer, scan_file, qtbot):
    """On a slow machine the anchors come first: resting or releasing the slider while they
    are decoded queues full quality after them instead of cancelling them."""
    get_state(viewer).set_steps({"preview": 10, "decode": 12})  # not cached: long anchors
    _open(viewer, scan_file)
    manip = _widget(viewer, "ManipulateWidget")
    manip.target.onto.setCurrentText("model")  # the decodes alone: timing-sensitive
    shown, show = [], manip._show
    manip._show = lambda *args: (shown.append(args[-1].provenance["steps"]), show(*args))
    manip.slider.setValue(1.5)
    qtbot.waitUntil(lambda: manip.controls.busy, timeout=WAIT_MS)  # the anchors
    manip.slider.sliderReleased.emit()
    qtbot.waitUntil(lambda: manip.quality.text() == "full (12 steps) · strength +1.50",
                    timeout=WAIT_MS)
    assert shown == [10, 12]


def test_keep_and_sweep(viewer, scan_file, monkeypatch):
    monkeypatch.setenv(_jobs.SYNC_ENV, "1")
    source = _open(viewer, scan_file)
    manip = _widget(viewer, "ManipulateWidget")
    manip.target.onto.setCurrentText("model")  # on the scan: tests/test_gui_transfer.py
    manip.render_full()
    kept = manip.keep()
    assert [k.name for k in kept] == [f"{source.name} AD +0.00", f"{source.name} Δ AD +0.00"]
    manip.sweep_from.setValue(-2.0)
    manip.sweep_to.setValue(2.0)
    manip.sweep_frames.setValue(3)
    manip.sweep_controls.button.click()
    sweep = viewer.layers[f"{source.name} [sweep AD]"]
    assert sweep.data.shape == (3, 32, 32, 32) and sweep.ndim == 4
    assert viewer.layers[f"{source.name} [Δ sweep AD]"].data.shape == (3, 32, 32, 32)
    assert "-2, +0, +2" in manip.sweep_controls.status.text()
    assert sweep.metadata["ldae_provenance"]["strength"] == [-2.0, 0.0, 2.0]


# ----------------------------------------------------------------------------- cancel, errors
def test_cancel_aborts_and_the_ui_recovers(viewer, scan_file, qtbot):
    _open(viewer, scan_file)
    get_state(viewer).set_steps({"encode": 400})  # a new cache key: a long run
    enc = _widget(viewer, "EncodeWidget")
    enc.prepare.setCurrentText("no")
    enc.controls.button.click()
    qtbot.waitUntil(lambda: enc.controls.bar.value() >= 1, timeout=WAIT_MS)
    assert enc.controls.button.text() == "Cancel"
    enc.controls.button.click()
    _idle(qtbot, enc.controls)
    _assert_idle_ui(enc.controls)
    assert "cancelled" in enc.controls.status.text() and enc.codes is None
    assert not _open_progress_bars()


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried"),
                                   RuntimeError("boom")])
def test_injected_errors_reset_the_ui(viewer, scan_file, qtbot, monkeypatch, error):
    shown = []
    monkeypatch.setattr(_jobs, "show_error", shown.append)
    session = get_state(viewer).session

    def broken(*args, **kwargs):
        raise error
        yield

    monkeypatch.setattr(session, "iter_reconstruction", broken)
    _open(viewer, scan_file)
    manip = _widget(viewer, "ManipulateWidget")
    manip.render_full()
    _idle(qtbot, manip.controls)
    _assert_idle_ui(manip.controls)
    expected = OOM_HINT if isinstance(error, torch.OutOfMemoryError) else "boom"
    assert expected in manip.controls.status.text() and expected in shown[-1]
    assert not _open_progress_bars()
    monkeypatch.undo()  # the UI works again
    monkeypatch.setenv(_jobs.SYNC_ENV, "1")
    manip.render_full()
    assert "full quality" in manip.controls.status.text()


def test_without_a_model_the_widgets_say_so(make_napari_viewer, scan_file, monkeypatch):
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    viewer = make_napari_viewer()
    _open(viewer, scan_file)
    enc = _widget(viewer, "EncodeWidget")
    enc.controls.button.click()
    assert "no model loaded" in enc.controls.status.text() and shown
    _assert_idle_ui(enc.controls)


# ----------------------------------------------------------------------------- export
def test_export_overlays_the_source_file_and_never_overwrites_silently(
        viewer, scan_file, tmp_path, monkeypatch):
    monkeypatch.setenv(_jobs.SYNC_ENV, "1")
    source = _open(viewer, scan_file)
    manip = _widget(viewer, "ManipulateWidget")
    manip.slider.setValue(1.5)
    manip.render_full()
    exp = _widget(viewer, "ExportWidget")
    exp.folder.setText(str(tmp_path / "out"))
    names = [f"{source.name} [edit]", f"{source.name} [Δ edit]"]
    exp.select(names)
    exp.controls.button.click()
    assert len(exp.written) == 2
    ref = nib.load(scan_file)
    for path in exp.written:
        img = nib.load(path)
        assert img.shape == ref.shape
        np.testing.assert_allclose(img.affine, ref.affine)
    side = path.with_name(path.name.replace(".nii.gz", ".json")).read_text()
    assert '"strength": 1.5' in side and "bundle_sha256" in side

    first = list(exp.written)
    before = [p.stat().st_mtime_ns for p in first]
    asked = []
    exp.confirm_overwrite = lambda paths: asked.append(paths) or False
    exp.select(names)
    exp.controls.button.click()
    assert asked and "skipped 2" in exp.controls.status.text()
    assert exp.written == [] and [p.stat().st_mtime_ns for p in first] == before
    exp.confirm_overwrite = lambda paths: True
    exp.select(names)
    exp.controls.button.click()
    assert "wrote 2" in exp.controls.status.text()

    manip.sweep_frames.setValue(2)  # a sweep becomes one 4D file, volumes last
    manip.sweep()
    exp.select([f"{source.name} [sweep AD]"])
    exp.controls.button.click()
    [sweep] = exp.written
    assert nib.load(sweep).shape == (*ref.shape, 2)
    np.testing.assert_allclose(nib.load(sweep).affine, ref.affine)


# ----------------------------------------------------------------------------- train
def test_parse_progress():
    from napari_ldae.gui._train_run import parse_progress

    assert parse_progress("Epoch 3:  45%|####5     | 45/100 [00:10<00:12]") == (0.45, "epoch 3")
    assert parse_progress("step 20/80 loss 0.1") == (0.25, None)
    assert parse_progress("Epoch 2/10") == (None, "epoch 2/10")
    assert parse_progress("hello") == (None, None)


def test_change_percent_is_relative_to_the_scan_range():
    from types import SimpleNamespace

    from napari_ldae.gui._layers import change_percent

    geometry = SimpleNamespace(scan=SimpleNamespace(intensity_range=(100.0, 300.0)))
    diff = np.array([[-4.0, 1.0], [2.0, 0.0]], np.float32)
    assert change_percent(geometry, diff) == pytest.approx(2.0)
