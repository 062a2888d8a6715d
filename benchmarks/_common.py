"""What every section shares: run modes, interleaved timing, FLOP counting, result records."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mode:
    """How much each section measures."""

    name: str  # "full", "quick" or "tiny"
    preset: str  # model preset of every section
    steps: tuple[int, ...]  # DDIM steps at which LDAE and the voxel-space DAE are compared
    dae_steps: int  # steps of the timed DAE decode (its time is exactly linear in the steps)
    reps: int  # interleaved rounds of each measurement
    sampler_steps: int  # DDIM steps of the sampler comparison
    strengths: tuple[int, ...]  # numbers of strengths decoded together
    moves: tuple[int, int]  # slider moves before the first and the second memory reading
    sweep_frames: int
    matmul_n: int


MODES = {
    "full": Mode("full", "demo", (5, 10, 20), 2, 5, 10, (1, 3, 5), (10, 200), 7, 2048),
    "quick": Mode("quick", "demo", (5, 10, 20), 1, 3, 5, (1, 3, 5), (5, 20), 7, 2048),
    "tiny": Mode("tiny", "tiny", (2,), 1, 1, 1, (2,), (1, 2), 2, 256),
}


@dataclass
class Section:
    """One section's results: a table, targets met or missed, and notes."""

    title: str
    about: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None  # why the section did not run

    def target(self, name: str, measured: float, goal: float, *, at_most: bool = False,
               unit: str = "") -> None:
        met = measured <= goal if at_most else measured >= goal
        self.targets.append({"target": name, "goal": f"{'≤' if at_most else '≥'} {goal:g}{unit}",
                             "measured": round(measured, 3), "unit": unit, "met": bool(met)})

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "about": self.about, "rows": self.rows,
                "targets": self.targets, "notes": self.notes, "skipped": self.skipped}


# ----------------------------------------------------------------------------- timing
def interleaved(cases: dict[str, Callable[[], Any]], reps: int,
                warmup: int = 0) -> dict[str, list[float]]:
    """Wall-clock seconds of each case over ``reps`` rounds; every round runs each case once,
    in an order rotated by the round, so that slow phases of a busy machine hit all cases."""
    names = list(cases)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + reps):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            cases[name]()
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def ratio(slow: list[float], fast: list[float]) -> dict[str, float]:
    """Median of the per-round ratios ``slow / fast``, with their range (the noise)."""
    per_round = [s / f for s, f in zip(slow, fast, strict=True)]
    return {"median": median(per_round), "min": min(per_round), "max": max(per_round)}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- FLOPs
def _mkldnn_conv_flop(x_shape, w_shape, *_args, out_shape=None, **_kwargs) -> int:
    from torch.utils.flop_counter import conv_flop_count

    return conv_flop_count(x_shape, w_shape, out_shape)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of the matrix products and convolutions ``fn`` runs (``FlopCounterMode``, taught
    the oneDNN convolution that :class:`~napari_ldae.core.device.OneDNNConv3d` calls)."""
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {torch.ops.aten.mkldnn_convolution: _mkldnn_conv_flop}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return int(counter.get_total_flops())


# ----------------------------------------------------------------------------- models
def random_model(mode: Mode, device: str = "cpu"):
    """The mode's preset with random weights (weights do not change the speed)."""
    from napari_ldae.core.presets import random_model as build

    return build(mode.preset, device=device)[0]


def random_codes(model, n: int = 1, seed: int = 0):
    from napari_ldae.core.model import Codes

    gen = torch.Generator().manual_seed(seed)
    y = torch.randn((n, model.semantic_dim), generator=gen)
    x_T = torch.randn((n, *model.latent_shape), generator=gen)
    return Codes(y, x_T).to(model.device)


# ----------------------------------------------------------------------------- machine
def machine_facts() -> dict[str, Any]:
    """CPU, cores, threads, versions, commit, date and load (the measurements depend on it)."""
    facts = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "commit": _commit(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return facts


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "--no-optional-locks", *args], cwd=ROOT, text=True,
                              capture_output=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        return f"{commit}+dirty" if commit and git("status", "--porcelain") else commit
    except (OSError, subprocess.SubprocessError):
        return "unknown"
