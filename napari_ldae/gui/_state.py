"""One LDAE state per napari viewer, shared by every widget (like micro-sam's state).

The model panel creates the :class:`~napari_ldae.session.Session`; the other widgets read it
from here and listen to ``session_changed``. Step counts edited in the panel live in
``steps``; ``cache_dir`` is where codes are cached on disk.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from psygnal import Signal

from napari_ldae.core.bundle import DEFAULT_STEPS, bundle_steps
from napari_ldae.errors import LDAEError

if TYPE_CHECKING:
    from napari_ldae.session import Session

_STATES: dict[int, LDAEState] = {}


class LDAEState:
    """Model, settings and cross-widget events of one viewer."""

    session_changed = Signal(object)  # the Session, or None after Unload
    steps_changed = Signal(dict)

    def __init__(self) -> None:
        self.session: Session | None = None
        self.steps: dict[str, int] = bundle_steps({"steps": DEFAULT_STEPS})
        self.cache_dir: Path | None = None
        self.ndisplay_hooked = False  # difference layers restyled on 2D/3D switches

    def set_session(self, session: Session | None) -> None:
        self.session = session
        if session is not None:
            self.set_steps(session.steps)
        self.session_changed.emit(session)

    def set_steps(self, steps: dict[str, int]) -> None:
        self.steps = {**self.steps, **{k: int(v) for k, v in steps.items()}}
        self.steps_changed.emit(dict(self.steps))

    def require_session(self) -> Session:
        """The loaded session, or a clear error telling the user to load a model."""
        if self.session is None:
            raise LDAEError("no model loaded: choose a bundle in the LDAE model panel and "
                            "press Load")
        return self.session


def get_state(viewer) -> LDAEState:
    """The state of ``viewer`` (created on first use, dropped with the viewer).

    napari hands plugin widgets a proxy of the viewer; the key is the viewer behind it.
    """
    viewer = getattr(viewer, "__wrapped__", viewer)
    key = id(viewer)
    state = _STATES.get(key)
    if state is None:
        state = _STATES[key] = LDAEState()
        weakref.finalize(viewer, _STATES.pop, key, None)
    return state
