"""Tiny bundles and scans for the session and GUI tests (32³ model grid, 2 DDIM steps)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from nifti_factory import blob, make_affine

from napari_ldae.data.io import Scan

STEPS = {"encode": 2, "decode": 2, "preview": 1}


def tiny_bundle(out: Path, seed: int = 0) -> Path:
    """A random tiny bundle (32³ at 6 mm, 2-step defaults) whose decodes depend on y."""
    from napari_ldae.core.presets import save_random_bundle

    return save_random_bundle(out, "tiny", seed, steps=STEPS)


def tiny_scan(seed: int = 0, flips=(-1, 1, 1), shape=(30, 34, 28)) -> Scan:
    """A smooth blob at 6 mm in a non-RAS voxel order, near the model grid's size."""
    affine = make_affine((6.0, 6.0, 6.0), flips=flips, origin=(80.0, -90.0, -70.0))
    return Scan.from_array(blob(shape, seed=seed), affine)


def blank_cache(tmp_path: Path) -> Path:
    d = tmp_path / "cache"
    d.mkdir(exist_ok=True)
    return d


def volume_like(shape, value: float = 0.5) -> np.ndarray:
    return np.full(shape, value, dtype=np.float32)


_SHARED: dict[str, Path] = {}


def shared_tiny_bundle() -> Path:
    """One :func:`tiny_bundle` per test process (read-only: do not modify it)."""
    if "tiny" not in _SHARED:
        import atexit
        import shutil
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="ldae-tiny-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _SHARED["tiny"] = tiny_bundle(folder / "tiny")
    return _SHARED["tiny"]
