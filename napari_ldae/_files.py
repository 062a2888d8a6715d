"""File helpers every layer shares: atomic writes and NIfTI name stems (import-light)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def nifti_stem(path: str | os.PathLike) -> str:
    """A file name without its extension: ``scan.nii.gz`` → ``scan``, ``scan.nii`` → ``scan``."""
    name = Path(path).name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else Path(name).stem


def atomic_write(path: str | os.PathLike,
                 content: bytes | str | Callable[[Path], object]) -> Path:
    """Write ``path`` whole or not at all: into a temporary file beside it, moved into place.

    ``content`` is bytes, text, or a function that writes the file at the path it is given (the
    temporary name keeps the target's extension, for writers that go by it). The folder is
    created if missing; the file gets mode 0644.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        if isinstance(content, bytes):
            tmp.write_bytes(content)
        elif isinstance(content, str):
            tmp.write_text(content)
        else:
            content(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates it private
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
