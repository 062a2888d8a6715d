"""A training run as the Train widget follows it, without Qt: the ``napari-ldae train`` command
of this environment, the stages a choice runs, the files that mark a stage finished or already
trained in a run folder, and the progress read from the trainer's output lines.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from napari_ldae.train.config import NETWORK_STAGES, STAGES

STAGE_CHOICES = ("all", *STAGES)
_PERCENT = re.compile(r"(\d{1,3})%\|")
_FRACTION = re.compile(r"(?:\||step\s*)\s*(\d+)\s*/\s*(\d+)", re.IGNORECASE)
_EPOCH = re.compile(r"epoch\s*(\d+)(?:\s*/\s*(\d+))?", re.IGNORECASE)
_TQDM_DESC = re.compile(r"^\s*([^|:]{1,60}?):\s+\d{1,3}%\|")
_SKIPPED = re.compile(r"^(\w+): (?:already trained in |off \()")


def parse_progress(line: str) -> tuple[float | None, str | None]:
    """(fraction done in [0, 1] or None, a short label or None) from one output line."""
    fraction = None
    if m := _PERCENT.search(line):
        fraction = min(int(m.group(1)), 100) / 100
    elif (m := _FRACTION.search(line)) and int(m.group(2)) > 0:
        fraction = min(int(m.group(1)) / int(m.group(2)), 1.0)
    label = None
    if m := _EPOCH.search(line):
        label = f"epoch {m.group(1)}" + (f"/{m.group(2)}" if m.group(2) else "")
    elif m := _TQDM_DESC.search(line):
        label = m.group(1).strip()
    return fraction, label


def skipped_stage(line: str) -> str | None:
    """The stage the trainer says it skips (already trained, on ``--resume``; or switched
    off by its config), or None."""
    m = _SKIPPED.match(line)
    return m.group(1) if m else None


def selected_stages(stage: str) -> tuple[str, ...]:
    """The stages a choice of the form runs, in order (``all``: every stage)."""
    return STAGES if stage == "all" else (stage,)


def stage_finished(out: Path, stage: str, since: float) -> bool:
    """Whether ``stage`` wrote its end-of-stage file in ``out`` at or after ``since``."""
    marker = out / stage / f"{stage}.json" if stage in NETWORK_STAGES \
        else out / "probe" / "metrics.json"
    try:
        return marker.stat().st_mtime >= since
    except OSError:
        return False


def existing_runs(out: Path, stages) -> list[str]:
    """The stages among ``stages`` that already have checkpoints in ``out`` (the trainer
    refuses to overwrite them without ``--resume``)."""
    return [s for s in stages
            if s in NETWORK_STAGES and (out / s / "checkpoints" / "last.ckpt").is_file()]


def shipped_configs() -> list[str]:
    """Names of the configs shipped with napari-ldae (``--config tiny``)."""
    try:
        from napari_ldae.train.config import CONFIG_DIR

        names = sorted(p.stem for p in Path(CONFIG_DIR).glob("*.yaml"))
    except (ImportError, AttributeError, OSError):
        names = []
    order = {"tiny": 0, "demo": 1, "paper": 2}
    return sorted(names or list(order), key=lambda n: (order.get(n, 3), n))


def trainer_program() -> list[str]:
    """The ``napari-ldae`` command of this Python environment (its module as a fallback)."""
    script = shutil.which("napari-ldae", path=str(Path(sys.executable).parent)) \
        or shutil.which("napari-ldae")
    return [script] if script else [sys.executable, "-m", "napari_ldae.cli"]
