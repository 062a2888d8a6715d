"""The Train widget, headless (pytest-xvfb): its form and its checks, and real trainer runs
started through it (``napari-ldae train`` on the tiny cohort and config), not a stand-in."""

from __future__ import annotations

from pathlib import Path

import pytest

from napari_ldae._resources import path_from_display
from napari_ldae.gui._state import get_state

pytestmark = pytest.mark.filterwarnings("ignore:System theme detection")

RUN_MS = 900_000  # a whole tiny run on a busy 2-core machine, with margin
WAIT_MS = 180_000


def _train(viewer):
    from napari_ldae.gui.train_widget import TrainWidget

    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w, name="LDAE train")
    return w


def _assert_idle_ui(controls):
    assert not controls.busy and controls.button.isEnabled()
    assert controls.button.text() == controls.text and not controls.bar.isVisible()


def _fill(w, cohort, out, stage="all", max_steps=1, resume=False):
    w.cohort.value = cohort
    w.out.value = out
    w.config.value = "tiny"
    w.stage.value = stage
    w.max_steps.value = max_steps
    w.resume.value = resume


def _start_refused(w, text):
    w.controls.button.click()
    assert w.process is None and not w.controls.busy
    assert text in w.controls.status.text(), w.controls.status.text()


# ----------------------------------------------------------------------------- the form
def test_form_offers_every_stage_and_the_shipped_configs(make_napari_viewer):
    w = _train(make_napari_viewer())
    assert list(w.stage.choices) == ["all", "autoencoder", "decoder", "latent",
                                     "representation", "probe"]
    assert w.stage.value == "all"
    assert {"tiny", "demo", "paper"} <= set(w.config.choices) and w.config.value == "tiny"
    assert w.config_file.native.isHidden()  # shown only for "a YAML file…"
    w.config.value = w.config.choices[-1]
    assert not w.config_file.native.isHidden()
    w.config.value = "tiny"
    assert w.config_file.native.isHidden()
    assert not w.load_button.isEnabled()


def test_form_validation_messages(make_napari_viewer, tmp_path, tiny_cohort):
    w = _train(make_napari_viewer())
    _start_refused(w, "choose the cohort")
    w.cohort.value = tmp_path / "nowhere"
    _start_refused(w, "cohort not found")
    w.cohort.value = tiny_cohort
    _start_refused(w, "choose a run folder")

    run = tmp_path / "run"
    (run / "autoencoder" / "checkpoints").mkdir(parents=True)
    (run / "autoencoder" / "checkpoints" / "last.ckpt").write_bytes(b"")
    w.out.value = run
    _start_refused(w, "already holds a run of the autoencoder stage: tick resume")
    w.stage.value = "latent"  # the next stage in the same folder is the normal use
    assert w.problem() is None
    w.stage.value = "autoencoder"
    w.resume.value = True
    assert w.problem() is None

    w.config.value = w.config.choices[-1]
    _start_refused(w, "choose a config file")
    w.config_file.value = tmp_path / "missing.yaml"
    _start_refused(w, "config file not found")
    w.config.value = "tiny"
    w.extra.value = "--devices 'unbalanced"
    _start_refused(w, "extra args")


def test_command_is_the_cli_train_command(make_napari_viewer, tmp_path, tiny_cohort):
    w = _train(make_napari_viewer())
    _fill(w, tiny_cohort, tmp_path / "run", stage="latent", max_steps=3, resume=True)
    w.extra.value = "--accelerator cpu latent.lr=1e-4"
    cmd = w.command()
    i = cmd.index("train")
    assert Path(cmd[0]).name.startswith(("napari-ldae", "python")) or cmd[1:3] == ["-m",
                                                                                 "napari_ldae.cli"]
    assert cmd[i:] == ["train", "latent", "--config", "tiny", "--data", str(tiny_cohort),
                       "--out", str(tmp_path / "run"), "--resume", "--max-steps", "3",
                       "--accelerator", "cpu", "latent.lr=1e-4"]
    w.max_steps.value = 0  # the config's
    w.resume.value = False
    assert "--max-steps" not in w.command() and "--resume" not in w.command()


def test_stage_tracking_from_the_run_folder(tmp_path):
    import os

    from napari_ldae.gui._train_run import existing_runs, stage_finished

    marker = tmp_path / "autoencoder" / "autoencoder.json"
    assert not stage_finished(tmp_path, "autoencoder", 0)
    marker.parent.mkdir()
    marker.write_text("{}")
    assert stage_finished(tmp_path, "autoencoder", 0)
    os.utime(marker, (1000, 1000))  # from an earlier run
    assert not stage_finished(tmp_path, "autoencoder", 2000)
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "metrics.json").write_text("{}")
    assert stage_finished(tmp_path, "probe", 0)
    (tmp_path / "latent" / "checkpoints").mkdir(parents=True)
    (tmp_path / "latent" / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert existing_runs(tmp_path, ("autoencoder", "latent", "probe")) == ["latent"]


def test_stages_the_trainer_skips_count_as_done():
    from napari_ldae.gui._train_run import skipped_stage

    assert skipped_stage("latent: already trained in /r/latent; skipping") == "latent"
    assert skipped_stage("decoder: off (decoder.max_steps is 0); skipping") == "decoder"
    assert skipped_stage("decoder: training") is None


# ----------------------------------------------------------------------------- real runs
@pytest.mark.slow
def test_train_widget_runs_a_tiny_run_and_loads_its_bundle(make_napari_viewer, qtbot,
                                                           tmp_path, tiny_cohort):
    from napari_ldae.gui.model_widget import ModelWidget

    viewer = make_napari_viewer()
    model = ModelWidget(viewer)
    viewer.window.add_dock_widget(model, name="LDAE model")
    w = _train(viewer)
    run = tmp_path / "run"
    _fill(w, tiny_cohort, run, stage="all", max_steps=1)
    seen: list[str] = []
    bar, set_format = w.controls.bar, w.controls.bar.setFormat
    bar.setFormat = lambda text: (seen.append(text), set_format(text))

    w.controls.button.click()
    assert w.process is not None and w.controls.busy and w.controls.button.text() == "Cancel"
    assert seen[-1].startswith("autoencoder (1/5)")
    assert w._pbar is not None  # napari's activity bar
    qtbot.waitUntil(lambda: w.process is None, timeout=RUN_MS)

    log = w.log.toPlainText()
    assert w.controls.status.text().startswith("training finished"), (w.controls.status.text(),
                                                                      log[-3000:])
    assert log.startswith("$ ") and "train all --config tiny" in log and "wrote bundle" in log
    for stage in ("autoencoder", "decoder", "latent", "representation"):
        assert (run / stage / f"{stage}.json").is_file()
        assert (run / stage / f"{stage}.json").stat().st_size > 0
    assert (run / "probe" / "metrics.json").is_file()
    assert (run / "bundle" / "config.json").is_file()
    assert any(s.startswith("latent (3/5)") for s in seen), seen
    assert any(s.startswith("representation (4/5)") for s in seen), (seen, log[-3000:])
    _assert_idle_ui(w.controls)
    assert w._pbar is None

    assert w.load_button.isEnabled()
    w.load_button.click()
    state = get_state(viewer)
    qtbot.waitUntil(lambda: state.session is not None and not w.controls.busy, timeout=WAIT_MS)
    assert Path(state.session.bundle.path).resolve() == (run / "bundle").resolve()
    assert "loaded the trained bundle" in w.controls.status.text()
    assert path_from_display(model.bundle_edit.text()).resolve() == (run / "bundle").resolve()
    assert model.unload_button.isEnabled()

    # the same folder again, without resume: refused before any process starts
    _start_refused(w, "already holds a run of the autoencoder, decoder, latent, representation "
                      "stages")


@pytest.mark.slow
def test_train_widget_reports_a_failing_run_and_cancels_one(make_napari_viewer, qtbot,
                                                           monkeypatch, tmp_path, tiny_cohort):
    from napari_ldae.gui import train_widget

    monkeypatch.setattr(train_widget, "KILL_AFTER_MS", 3000)
    w = _train(make_napari_viewer())
    # stage 2 without stage 1's autoencoder: the trainer itself refuses
    _fill(w, tiny_cohort, tmp_path / "empty", stage="latent")
    w.controls.button.click()
    qtbot.waitUntil(lambda: w.process is None, timeout=WAIT_MS)
    status = w.controls.status.text()
    assert status.startswith("training failed (exit 2)") and "autoencoder" in status, status
    assert "error" in w.log.toPlainText()
    _assert_idle_ui(w.controls)
    assert w._pbar is None and not w.load_button.isEnabled()

    # a long run, cancelled once the trainer is up
    _fill(w, tiny_cohort, tmp_path / "long", stage="autoencoder", max_steps=100_000)
    w.controls.button.click()
    qtbot.waitUntil(lambda: "GPU available" in w.log.toPlainText() or w.process is None,
                    timeout=WAIT_MS)
    assert w.process is not None, w.log.toPlainText()[-3000:]
    w.controls.button.click()  # Cancel
    qtbot.waitUntil(lambda: w.process is None, timeout=WAIT_MS)
    assert "cancelled" in w.controls.status.text()
    _assert_idle_ui(w.controls)
    assert w._pbar is None
    assert not (tmp_path / "long" / "autoencoder" / "autoencoder.json").exists()
