"""The transform file of a prepared scan: plain JSON, no pickle (``<stem>_transform.json``).

It holds everything needed to go from the input scan to the model's grid and back:

- ``template_to_input``: 4×4 matrix, RAS+ millimetres: a point ``p`` of the template (MNI) world
  lies at ``template_to_input @ [p, 1]`` in the input scan's world (``input_to_template`` is its
  inverse, for convenience);
- ``input``: the input's file name, voxel grid (``shape``, ``affine``: voxel → world) and the
  sha256 of its voxels (float32, file order);
- ``prepared``: the model grid (``shape``, ``affine``: voxel → MNI world);
- ``steps``: what ran (skull stripping or why it was skipped, registration, reference visit);
- ``intensity_max``: the clip applied to the brain's brightest voxels.

A prepared voxel ``v`` shows the input at ``inv(input.affine) @ template_to_input @
prepared.affine @ v``; an input voxel ``u`` maps to prepared voxel ``inv(prepared.affine) @
input_to_template @ input.affine @ u``. ITK/ANTs use LPS: ``F @ M @ F``, ``F = diag(-1,-1,1,1)``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_ldae._files import atomic_write
from napari_ldae.errors import ScanError

FORMAT = "napari-ldae-transform"
VERSION = 1


@dataclass(frozen=True, eq=False)
class BrainTransform:
    """The geometry of one prepared scan (see the module docstring for the file)."""

    template_to_input: np.ndarray
    input_shape: tuple[int, int, int]
    input_affine: np.ndarray
    prepared_shape: tuple[int, int, int]
    prepared_affine: np.ndarray
    input_name: str | None = None
    input_sha256: str | None = None
    intensity_max: float | None = None
    steps: dict[str, Any] = field(default_factory=dict)

    @property
    def input_to_template(self) -> np.ndarray:
        return np.linalg.inv(self.template_to_input)

    def prepared_to_input_voxels(self) -> np.ndarray:
        """Prepared voxel → input voxel (4×4)."""
        return np.linalg.inv(self.input_affine) @ self.template_to_input @ self.prepared_affine

    def input_to_prepared_voxels(self) -> np.ndarray:
        """Input voxel → prepared voxel (4×4)."""
        return np.linalg.inv(self.prepared_to_input_voxels())

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "convention": "4x4 matrices in RAS+ millimetres; template_to_input maps template "
                          "(MNI) world points to the input scan's world points",
            "template": _template_info(),
            "template_to_input": _rows(self.template_to_input),
            "input_to_template": _rows(self.input_to_template),
            "input": {"name": self.input_name, "shape": list(self.input_shape),
                      "affine": _rows(self.input_affine), "sha256": self.input_sha256},
            "prepared": {"shape": list(self.prepared_shape),
                         "affine": _rows(self.prepared_affine)},
            "intensity_max": self.intensity_max,
            "steps": dict(self.steps),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], name: str = "transform") -> BrainTransform:
        if d.get("format") != FORMAT:
            raise ScanError(f"{name}: not a napari-ldae transform file "
                            f"(format {d.get('format')!r})")
        if int(d.get("version", 0)) > VERSION:
            raise ScanError(f"{name}: transform format version {d['version']} is newer than "
                            f"this napari-ldae reads ({VERSION}); update napari-ldae")
        try:
            return cls(
                template_to_input=_matrix(d["template_to_input"]),
                input_shape=tuple(int(s) for s in d["input"]["shape"]),  # type: ignore[arg-type]
                input_affine=_matrix(d["input"]["affine"]),
                prepared_shape=tuple(int(s) for s in d["prepared"]["shape"]),  # type: ignore
                prepared_affine=_matrix(d["prepared"]["affine"]),
                input_name=d["input"].get("name"),
                input_sha256=d["input"].get("sha256"),
                intensity_max=d.get("intensity_max"),
                steps=dict(d.get("steps", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ScanError(f"{name}: malformed transform file ({exc!r})") from exc

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
        return atomic_write(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> BrainTransform:
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise ScanError(f"{p.name}: cannot read the transform file ({exc})") from exc
        return cls.from_dict(d, p.name)


def _rows(m: np.ndarray) -> list[list[float]]:
    return [[float(v) for v in row] for row in np.asarray(m, dtype=np.float64)]


def _matrix(rows) -> np.ndarray:
    m = np.asarray(rows, dtype=np.float64)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)) or abs(np.linalg.det(m)) < 1e-9:
        raise ValueError(f"not an invertible 4×4 matrix: {rows!r}")
    return m


def _template_info() -> dict[str, str]:
    from napari_ldae.data.mni import TEMPLATE_NAME, TEMPLATE_SPACE

    return {"name": TEMPLATE_NAME, "space": TEMPLATE_SPACE}
