"""Progress reporting shared by every long loop.

Long computations are generators that yield :class:`Progress` after each unit of work and
``return`` their result. The GUI runs them in napari thread workers (cancelling between two
yields), the CLI wraps them in a tqdm bar, and plain functions drain them with :func:`drain`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """One unit of work done: ``step`` of ``total`` (1-based), with a short message."""

    step: int
    total: int
    message: str = ""


ProgressGen = Generator[Progress, None, T]


def drain(gen: ProgressGen[T], callback: Callable[[Progress], None] | None = None) -> T:
    """Run a progress generator to the end and return its result."""
    while True:
        try:
            progress = next(gen)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(progress)
