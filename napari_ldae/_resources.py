"""Files shipped with napari-ldae: the training configs and the demo bundle.

They live in ``resources/`` at the top of the repository. The wheel carries that folder as the
package ``napari_ldae.resources`` (``setup.py`` maps it), read here with
:mod:`importlib.resources`. A source tree that is not installed has no such package; there the
folder beside ``napari_ldae/`` is used.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def resource_root() -> Path:
    """The folder of the shipped resources (``configs/``, ``demo/``)."""
    try:
        root = resources.files("napari_ldae.resources")
    except ModuleNotFoundError:  # a source tree on sys.path, not installed
        return Path(__file__).resolve().parent.parent / "resources"
    # Wheels install as plain files, so this is a real folder (bundles are read from disk).
    return Path(str(root))


def resource_path(*parts: str) -> Path:
    """A shipped file or folder, e.g. ``resource_path("configs", "tiny.yaml")``."""
    return resource_root().joinpath(*parts)


def shown_path(path: str | Path) -> str:
    """How a path is written into reports and bundles: a shipped resource as
    ``napari_ldae.resources/…`` (not this machine's site-packages), anything else as given."""
    try:
        inside = Path(path).resolve().relative_to(resource_root().resolve())
    except ValueError:
        return str(path)
    return f"napari_ldae.resources/{inside.as_posix()}"


#: How the model panel and ``napari-ldae info`` name the shipped demo bundle.
BUILTIN_BUNDLE = "built-in demo bundle"


def display_path(path: str | Path) -> str:
    """How a path is shown to people: the shipped demo bundle as :data:`BUILTIN_BUNDLE`, a path
    under the home folder as ``~/…``, anything else as given."""
    p = Path(path).expanduser()
    if p.resolve() == resource_path("demo").resolve():
        return BUILTIN_BUNDLE
    try:
        inside = p.absolute().relative_to(Path.home())
    except ValueError:
        return str(path)
    return "~" if inside == Path() else f"~/{inside.as_posix()}"


def path_from_display(text: str) -> Path:
    """The path behind a :func:`display_path` text (or any path a person typed)."""
    text = text.strip()
    return resource_path("demo") if text == BUILTIN_BUNDLE else Path(text).expanduser()
