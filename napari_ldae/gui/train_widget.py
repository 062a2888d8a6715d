"""Train: a form for ``napari-ldae train STAGE --config C --data COHORT --out RUN``, run as a
separate process, with progress, Cancel and "load the trained bundle" at the end.

The trainer never runs inside napari's process, so its GPU memory is released when it ends
(the GUI's own model can be unloaded first). The widget runs the same command a user would
type (shown at the top of the log, to be copied), with its output streamed into the log.

Progress: the stage that runs is the first selected one not yet finished; a stage has
finished when it writes ``RUN/<stage>/<stage>.json`` during this run (or when the trainer says
it skips it on ``--resume``). The bar counts finished stages; its text names the running stage
and the latest tqdm/Lightning line (``Epoch 3:  45%|…| 45/100``, ``preprocessing 12 scans:
17%``). A napari progress bar in the activity dock shows the same and can cancel. Cancel
terminates the process (the trainer saves ``last.ckpt``; resume continues it), then kills it
if it has not stopped after a few seconds.

The form is made of magicgui widgets (folder pickers, drop-downs), as napari users know them.
What the widget knows about the trainer without Qt (its command, stages, marker files and
progress lines) is in ``gui/_train_run.py``.
"""

from __future__ import annotations

import re
import shlex
import time
from pathlib import Path

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, LineEdit, SpinBox
from qtpy.QtCore import QProcess, QProcessEnvironment, QTimer
from qtpy.QtWidgets import QPlainTextEdit, QPushButton, QWidget

from napari_ldae.gui._base import LDAEWidget
from napari_ldae.gui._controls import RunControls
from napari_ldae.gui._train_run import (
    STAGE_CHOICES,
    existing_runs,
    parse_progress,
    selected_stages,
    shipped_configs,
    skipped_stage,
    stage_finished,
    trainer_program,
)

OTHER_CONFIG = "a YAML file…"
KILL_AFTER_MS = 5000
POLL_MS = 500


class _ProcessJob:
    """Adapter so RunControls can cancel a QProcess like a worker job."""

    def __init__(self, widget: TrainWidget) -> None:
        self.widget, self.desc, self.running = widget, "Training", True

    def cancel(self) -> None:
        self.widget.cancel()


class TrainWidget(LDAEWidget):
    """Cohort, run folder, config, stage, resume; Start/Cancel, progress, the live log and
    "Load the trained bundle"."""

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        configs = shipped_configs()
        self.cohort = FileEdit(mode="d", label="cohort", tooltip=(
            "BIDS-like cohort folder (participants.tsv, sub-*/ses-*/anat/*_T1w.nii.gz), or "
            "type the path of a CSV with one row per scan (docs/training.md)"))
        self.out = FileEdit(mode="d", label="run folder", tooltip=(
            "where checkpoints, logs, caches and the bundle are written (created if needed); "
            "type a new folder's path"))
        self.config = ComboBox(label="config", choices=[*configs, OTHER_CONFIG],
                               value="tiny" if "tiny" in configs else configs[0], tooltip=(
                                   "tiny: seconds, for a smoke test; demo: the demo model "
                                   "(hours on a CPU); paper: the paper's recipe (GPUs)"))
        self.config_file = FileEdit(mode="r", filter="YAML (*.yaml *.yml)", label="config file",
                                    visible=False, tooltip="your training config (YAML)")
        self.stage = ComboBox(label="stage", choices=list(STAGE_CHOICES), value="all", tooltip=(
            "all: the stages in order, ending with a bundle (decoder only when the config "
            "turns it on); or one stage, which reads the previous stages' files in the run "
            "folder. decoder with extra args --bundle B refines that bundle's decoder"))
        self.resume = CheckBox(label="resume", value=False, tooltip=(
            "continue from the last checkpoints and skip finished stages; without it, a "
            "stage that already has checkpoints in the run folder is not started"))
        self.max_steps = SpinBox(label="max steps", min=0, max=10_000_000, value=0, tooltip=(
            "optimizer steps of each network stage; 0: the config's"))
        self.extra = LineEdit(label="extra args", tooltip=(
            "more arguments for napari-ldae train, e.g. --accelerator gpu --devices 2 "
            "latent.lr=1e-4"))
        self.unload_first = CheckBox(label="unload the GUI's model first", value=True,
                                     tooltip="frees the GPU memory napari holds before training")
        self.fields = Container(widgets=[self.cohort, self.out, self.config, self.config_file,
                                         self.stage, self.resume, self.max_steps, self.extra,
                                         self.unload_first])
        self.fields.margins = (0, 0, 0, 0)
        self.outer.addWidget(self.fields.native)
        self.config.changed.connect(self._config_changed)
        self.out.changed.connect(self._update_load_button)
        self.controls = self.add_controls(RunControls("Start training", self.start))
        self.load_button = QPushButton("Load the trained bundle")
        self.load_button.setToolTip("load RUN/bundle as this viewer's model (replaces the "
                                    "model panel's)")
        self.load_button.clicked.connect(self.load_bundle)
        self.load_button.setEnabled(False)
        self.outer.addWidget(self.load_button)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(2000)
        self.outer.addWidget(self.log, 1)
        self.process: QProcess | None = None
        self._job: _ProcessJob | None = None
        self._pbar = None
        self._poll = QTimer(self)
        self._poll.setInterval(POLL_MS)
        self._poll.timeout.connect(self._update_progress)
        self._tail = ""
        self._last_line = ""
        self._line_label = ""
        self._cancelled = False
        self._run: dict = {}
        self._load_as: dict = {}

    # ------------------------------------------------------------------------- form
    def form_values(self) -> dict:
        """The form as plain values: paths as typed (stripped), '' when empty."""
        config = self.config.value
        if config == OTHER_CONFIG:
            config = self.config_file.line_edit.value.strip()
        return {"cohort": self.cohort.line_edit.value.strip(),
                "out": self.out.line_edit.value.strip(), "config": config,
                "stage": self.stage.value, "resume": bool(self.resume.value),
                "max_steps": int(self.max_steps.value), "extra": self.extra.value.strip()}

    def problem(self) -> str | None:
        """Why the form cannot start a run, in words, or None."""
        v = self.form_values()
        if not v["cohort"]:
            return "choose the cohort: a BIDS-like folder or a CSV of scans"
        if not Path(v["cohort"]).expanduser().exists():
            return f"cohort not found: {v['cohort']}"
        if not v["out"]:
            return "choose a run folder: checkpoints, logs and the bundle are written there"
        out = Path(v["out"]).expanduser()
        if out.exists() and not out.is_dir():
            return f"the run folder {v['out']} is a file"
        if not v["config"]:
            return "choose a config file (YAML), or one of the shipped configs"
        if self.config.value == OTHER_CONFIG and not Path(v["config"]).expanduser().is_file():
            return f"config file not found: {v['config']}"
        if not v["resume"] and (done := existing_runs(out, selected_stages(v["stage"]))):
            return (f"{v['out']} already holds a run of the {', '.join(done)} stage"
                    f"{'s' if len(done) > 1 else ''}: tick resume to continue it, or choose "
                    "another run folder")
        try:
            shlex.split(v["extra"])
        except ValueError as err:
            return f"extra args: {err}"
        return None

    def command(self) -> list[str]:
        """The trainer's command line (``napari-ldae train …``, its own process)."""
        v = self.form_values()
        cmd = [*trainer_program(), "train", v["stage"], "--config", v["config"],
               "--data", v["cohort"], "--out", v["out"]]
        if v["resume"]:
            cmd.append("--resume")
        if v["max_steps"] > 0:
            cmd += ["--max-steps", str(v["max_steps"])]
        return cmd + shlex.split(v["extra"])

    def _config_changed(self, value: str) -> None:
        self.config_file.visible = value == OTHER_CONFIG

    def bundle_path(self) -> Path | None:
        """``RUN/bundle`` when the run folder holds a finished bundle."""
        out = self.out.line_edit.value.strip()
        bundle = Path(out).expanduser() / "bundle" if out else None
        return bundle if bundle is not None and (bundle / "config.json").is_file() else None

    def _update_load_button(self, *_) -> None:
        self.load_button.setEnabled(self.process is None and self.bundle_path() is not None)

    # ------------------------------------------------------------------------- process
    def start(self) -> None:
        if self.process is not None:
            return
        if (problem := self.problem()) is not None:
            self.fail(self.controls, problem)
            return
        session = self.state.session
        if session is not None:
            self._load_as = {"device": session.device, "precision": session.precision}
            if self.unload_first.value and session.device.startswith("cuda"):
                session.unload()
                self.state.set_session(None)
        v = self.form_values()
        cmd = self.command()
        self.log.appendPlainText("$ " + shlex.join(cmd))
        proc = QProcess(self)
        env = QProcessEnvironment.systemEnvironment()
        env.insert("PYTHONUNBUFFERED", "1")  # stream the output as it comes
        proc.setProcessEnvironment(env)
        proc.setProcessChannelMode(QProcess.MergedChannels)
        proc.readyReadStandardOutput.connect(self._read)
        proc.finished.connect(self._finished)
        proc.errorOccurred.connect(self._error)
        self.process, self._cancelled, self._tail, self._line_label = proc, False, "", ""
        self._run = {"out": Path(v["out"]).expanduser().resolve(),
                     "stages": selected_stages(v["stage"]), "skipped": set(),
                     "since": time.time() - 1.0}  # file times may be rounded to a second
        self._job = _ProcessJob(self)
        self.controls.started(self._job)  # type: ignore[arg-type]
        self.load_button.setEnabled(False)
        self._open_activity_bar()
        self._update_progress()
        self._poll.start()
        proc.start(cmd[0], cmd[1:])

    def cancel(self) -> None:
        """Terminate the trainer; kill it if it is still running after a few seconds."""
        proc = self.process
        if proc is None or self._cancelled:
            return
        self._cancelled = True
        self.controls.say("stopping the trainer…")
        proc.terminate()
        QTimer.singleShot(KILL_AFTER_MS, lambda: self._kill(proc))

    def _kill(self, proc: QProcess) -> None:
        if self.process is proc and proc.state() != QProcess.NotRunning:
            proc.kill()

    def _read(self) -> None:
        if self.process is None:
            return
        text = self._tail + bytes(self.process.readAllStandardOutput()).decode(errors="replace")
        parts = re.split(r"(\r|\n)", text)
        self._tail = parts[-1]
        for line, sep in zip(parts[0:-1:2], parts[1:-1:2], strict=True):
            self._line(line, final=sep == "\n")

    def _line(self, line: str, final: bool) -> None:
        if not line.strip():
            return
        fraction, label = parse_progress(line)
        if fraction is not None or label is not None:
            self._line_label = " ".join(
                x for x in (label, f"{round(fraction * 100)}%" if fraction is not None else "")
                if x)
        if final:
            self.log.appendPlainText(line)
            self._last_line = line
            if (stage := skipped_stage(line)) and self._run:
                self._run["skipped"].add(stage)
        # every line, not only the poll: a stage shorter than POLL_MS is still named
        self._update_progress()

    # ------------------------------------------------------------------------- progress
    def _update_progress(self) -> None:
        """Bar and activity bar: finished stages of this run, the running one named."""
        run = self._run
        if not run or self._job is None:
            return
        stages = run["stages"]
        done = [s in run["skipped"] or stage_finished(run["out"], s, run["since"])
                for s in stages]
        finished = sum(done)
        current = next((i for i, d in enumerate(done) if not d), None)
        text = "finishing" if current is None else \
            f"{stages[current]} ({current + 1}/{len(stages)})"
        if self._line_label and current is not None:
            text += f" · {self._line_label}"
        bar = self.controls.bar
        bar.setRange(0, len(stages))
        bar.setValue(finished)
        bar.setFormat(text)
        if self._pbar is not None:
            self._pbar.total = len(stages)
            self._pbar.n = finished
            self._pbar.set_description(f"Training: {text}")
            if not self._pbar.disable:
                self._pbar.update(0)

    def _open_activity_bar(self) -> None:
        from napari_ldae.gui._jobs import _JobProgress

        self._pbar = _JobProgress(total=len(self._run["stages"]), desc="Training",
                                  cancel_callback=self.cancel)

    def _close_activity_bar(self) -> None:
        if self._pbar is not None:
            pbar, self._pbar = self._pbar, None
            pbar.close()

    # ------------------------------------------------------------------------- the end
    def _finished(self, code: int, _status=None) -> None:
        self._read()
        if self._tail.strip():
            self._line(self._tail, final=True)
        if self._cancelled:
            message, error = ("training cancelled; tick resume and start again to continue "
                              "it"), False
        elif code == 0:
            message, error = "training finished", False
            if "probe" not in self._run.get("stages", ()):
                message += "; train the remaining stages for a bundle"
            elif self.bundle_path() is not None:
                message += f": the bundle is in {self.bundle_path()}"
        else:
            message, error = f"training failed (exit {code}): {self._last_line}", True
        self._done(message, error)

    def _error(self, err) -> None:
        if err == QProcess.FailedToStart and self.process is not None:
            self._done(f"the trainer could not start: {self.process.errorString()}", True)

    def _done(self, message: str, error: bool) -> None:
        if self._job is None:
            return
        job, self._job = self._job, None
        job.running = False
        self._poll.stop()
        self._close_activity_bar()
        self.process = None
        self.controls.finished(job)  # type: ignore[arg-type]
        self.controls.say(message, error=error)
        self._update_load_button()
        if error:
            from napari.utils.notifications import show_error

            show_error(message)

    # ------------------------------------------------------------------------- bundle
    def load_bundle(self) -> None:
        """Load ``RUN/bundle`` as this viewer's model (what the model panel's Load does)."""
        from napari_ldae.core.progress import Progress
        from napari_ldae.session import Session

        bundle = self.bundle_path()
        if bundle is None:
            self.fail(self.controls, "no bundle in the run folder yet: train the probe stage "
                      "(or all) first")
            return
        old = self.state.session
        options = {**self._load_as}
        if old is not None:
            options = {"device": old.device, "precision": old.precision}
        cache_dir = self.state.cache_dir
        if old is not None:
            old.unload()
            self.state.set_session(None)

        def work():
            yield Progress(0, 1, "loading")
            return Session(bundle, cache_dir=cache_dir, **options)

        def loaded(session) -> None:
            self.state.cache_dir = session.cache_dir
            self.state.set_session(session)
            self.controls.say(f"loaded the trained bundle {bundle} on {session.device}")

        self.run_job(self.controls, work, "Load the trained bundle", loaded)
