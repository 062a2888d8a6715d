"""A model-space result on the scan the user gave, at that scan's own resolution, and the region
volumes of a result's inputs and outputs.

:func:`iter_onto_scan` carries each volume's change, ``volume − reconstruction`` at the same
step counts, onto the input scan (:func:`napari_ldae.data.transfer.carry`, ``warp`` or
``intensity``) inside its brain mask only; a prepared input is warped on its ORIGINAL voxels
through the preprocessing transform composed with the model-grid change. Its :class:`OnScan`
record is what :func:`napari_ldae.operations.export` writes with the input's header and affine.
Which input a volume is carried onto:

- an edit: the scan edited; a prediction: the latest visit (the reconstruction it is taken to);
- an interpolation: visit A for α ≤ 0.5, visit B for α > 0.5, each against its own
  reconstruction, so that α = 0 gives A and α = 1 gives B exactly.

:func:`iter_region_volumes` measures the regions of :mod:`napari_ldae.data.regions` on a record's
inputs and volumes, one volume per step, and each volume's change of the ventricles and the
hippocampal region from its reconstruction by the deformation between them
(:func:`changes_by_deformation`); measurements are remembered by content, so an input is
measured once however many results it has.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_ldae._files import nifti_stem
from napari_ldae.core.progress import Progress, ProgressGen
from napari_ldae.data.io import remembered
from napari_ldae.data.transfer import DEFAULT_TRANSFER, TRANSFERS
from napari_ldae.errors import LDAEError

if TYPE_CHECKING:
    from napari_ldae.data.io import Scan
    from napari_ldae.operations import Result
    from napari_ldae.operations_prepare import Preparation

ONTO = ("scan", "model")
DEFAULT_ONTO = "scan"
#: How many region measurements are remembered (each is a few numbers, keyed by content), and
#: how many brain masks of scans used as they are and blurred scans (for the warp).
REMEMBERED, REMEMBERED_MASKS = 64, 4


@dataclass(frozen=True, eq=False)
class OnScan:
    """A result carried onto its input scan(s): ``volumes[j]`` on the grid and in the units of
    the input ``result.preparations[inputs[j]]`` (:attr:`scans`), ``log_jacobians[j]`` for
    ``warp`` (else None); ``result`` is the model-space result it comes from."""

    result: Result
    volumes: tuple[np.ndarray, ...]
    inputs: tuple[int, ...]
    method: str
    log_jacobians: tuple[np.ndarray, ...] | None = None

    @property
    def scans(self) -> tuple[Scan, ...]:
        """The scan each volume lies on (the raw input of a prepared one)."""
        return tuple(input_scan(self.result.preparations[k]) for k in self.inputs)

    @property
    def provenance(self) -> dict[str, Any]:
        return {**self.result.provenance, "onto": "scan", "transfer": self.method}

    def item(self, index: int) -> OnScan:
        """The ``index``-th volume alone, with its own strength/α in the provenance."""
        if len(self.volumes) == 1:
            return self
        jac = None if self.log_jacobians is None else (self.log_jacobians[index],)
        return replace(self, result=self.result.item(index), volumes=(self.volumes[index],),
                       inputs=(self.inputs[index],), log_jacobians=jac)

    def on_scan(self, kind: str) -> tuple[np.ndarray, Scan]:
        """What :func:`~napari_ldae.operations.export` writes for ``kind`` ("image",
        "difference": the volume minus its input, "log_jacobian"), ``(X, Y, Z)`` or ``(N, X,
        Y, Z)``, and the scan whose header and affine it takes."""
        if len(set(self.inputs)) > 1:
            raise LDAEError("these volumes lie on different scans; export them one at a time")
        if kind == "log_jacobian" and self.log_jacobians is None:
            raise LDAEError(f"the {self.method} transfer has no log-Jacobian; only warp has one")
        scan = self.scans[0]
        vols = {"image": self.volumes, "log_jacobian": self.log_jacobians,
                "difference": tuple(v - scan.data for v in self.volumes)}[kind]
        return (vols[0] if len(vols) == 1 else np.stack(vols)), scan


def full_steps(steps: Mapping[str, int], onto: str) -> int:
    """DDIM steps of a full-quality result shown on the scan (``carry``: only the change's
    geometry is carried, docs/method.md) or on the model grid (``decode``)."""
    return int(steps["carry"] if onto == "scan" else steps["decode"])


def iter_onto_scan(result: Result, method: str = DEFAULT_TRANSFER) -> ProgressGen[OnScan]:
    """Carry every volume of ``result`` onto its input scan by ``method`` (see the module
    docstring); one :class:`Progress` per volume."""
    from napari_ldae.data.transfer import carry

    if method not in TRANSFERS:
        raise LDAEError(f"unknown transfer {method!r}; choose one of {', '.join(TRANSFERS)}")
    if not result.references or not result.preparations:
        raise LDAEError(f"a {result.provenance.get('operation', 'result')} without its "
                        "reconstruction cannot be carried onto the scan: decode it with its "
                        "reference")
    volumes = result.volumes if result.volumes.ndim == 4 else result.volumes[None]
    refs = [_reference(result, j) for j in range(len(volumes))]
    inputs = [len(result.preparations) - 1 if len(result.references) == 1 else k
              for k in refs]  # a prediction's reference is its latest visit's
    geometry: dict[int, _Geometry] = {}
    out, jacobians = [], []
    for j, (volume, k, i) in enumerate(zip(volumes, refs, inputs, strict=True)):
        prep = result.preparations[i]
        yield Progress(j, len(volumes), f"{method} onto {prep.name}")
        if i not in geometry:
            geometry[i] = _geometry(result, prep)
        g = geometry[i]
        carried = carry(method, g.scan.data, g.scan_to_model, result.references[k], volume,
                        scale=g.scale, inside=g.inside,
                        blur=scan_blur(g.scan) if method == "warp" else None,
                        grid_to_mni=g.grid_to_mni)
        out.append(carried.data)
        jacobians.append(carried.log_jacobian)
    yield Progress(len(volumes), len(volumes), f"{method} onto the scan")
    return OnScan(result, tuple(out), tuple(inputs), method,
                  tuple(jacobians) if method == "warp" else None)


def input_scan(prep: Preparation) -> Scan:
    """The scan results of an input lie on: the raw scan of a prepared one, else the input."""
    return prep.prepared.scan if prep.prepared is not None else prep.input


def brain_mask(scan: Scan) -> np.ndarray:
    """The brain of a scan used as it is (skull-stripped): every voxel above its background
    (the minimum), holes filled; remembered by content (read-only)."""
    from scipy import ndimage as ndi

    from napari_ldae.data.io import content_key

    def mask() -> np.ndarray:
        out = ndi.binary_fill_holes(scan.data > scan.data.min())
        out.setflags(write=False)
        return out

    return remembered(_MASKS, content_key(scan), mask, REMEMBERED_MASKS)


def scan_blur(scan: Scan) -> np.ndarray:
    """The scan's :func:`~napari_ldae.data.transfer.blurred`, which every warp of it moves;
    remembered by content (read-only)."""
    from napari_ldae.data.io import content_key
    from napari_ldae.data.transfer import blurred

    def blur() -> np.ndarray:
        out = blurred(scan.data)
        out.setflags(write=False)
        return out

    return remembered(_BLURS, content_key(scan), blur, REMEMBERED_MASKS)


@dataclass(frozen=True, eq=False)
class _Geometry:
    """One input as a transfer needs it: the scan, scan voxel → model voxel (4×4), scan units
    per model unit, the brain mask and model voxel → MNI mm (4×4)."""

    scan: Scan
    scan_to_model: np.ndarray
    scale: float
    inside: np.ndarray
    grid_to_mni: np.ndarray


def _geometry(result: Result, prep: Preparation) -> _Geometry:
    from napari_ldae.data.preprocess import model_affine

    model = prep.model_scan
    grid = model_affine(model, result.contract)  # model voxel → MNI mm (the model scan's world)
    to_grid = np.linalg.inv(grid)
    lo, hi = model.intensity_range
    if prep.prepared is None:
        return _Geometry(prep.input, to_grid @ prep.input.affine, hi - lo,
                         brain_mask(prep.input), grid)
    matrix = to_grid @ model.affine @ prep.prepared.transform.input_to_prepared_voxels()
    return _Geometry(prep.prepared.scan, matrix, hi - lo, prep.prepared.mask, grid)


def _reference(result: Result, index: int) -> int:
    """The reference volume ``index`` is carried with: an interpolation's nearer visit (B for
    α > 0.5), else the one reference."""
    if len(result.references) == 1:
        return 0
    alpha = result.provenance["alpha"]
    alpha = alpha[index] if isinstance(alpha, list) else alpha
    return int(float(alpha) > 0.5)


# ----------------------------------------------------------------------------- region volumes
def iter_region_volumes(record: Result | OnScan, names: Sequence[str] = (),
                        indices: Sequence[int] | None = None, *,
                        inputs: bool = True) -> ProgressGen[dict[str, dict[str, float]]]:
    """Region → ml of the record's inputs (``inputs``; named by their files) and of its volumes
    ``indices`` (all when None; named by ``names``, one per index): ``{name: {region: ml}}``,
    in each input's own world. A :class:`OnScan` is measured on the scan's grid, a model-space
    :class:`Result` on the model grid; a volume with a reference also gets its
    :func:`changes_by_deformation`. One :class:`Progress` per measurement; every measurement is
    remembered by content."""
    on_scan = isinstance(record, OnScan)
    result = record.result if on_scan else record
    n = len(record.volumes) if on_scan else (1 if result.volumes.ndim == 3 else
                                             len(result.volumes))
    indices = list(range(n)) if indices is None else [int(i) for i in indices]
    if len(names) != len(indices):
        raise LDAEError(f"{len(indices)} volume(s) to measure but {len(names)} name(s)")
    todo = [(_input_name(p, result), *_on_input(p, input_scan(p).data))
            for p in result.preparations] if inputs else []
    for name, j in zip(names, indices, strict=True):
        todo.append((name, *(_on_input(result.preparations[record.inputs[j]],
                                       record.volumes[j]) if on_scan
                             else _model_volume(result, j))))
    outputs = list(zip(names, indices, strict=True)) if result.references else []
    total, rows = len(todo) + len(outputs), {}
    for step, (name, volume, affine, to_mni) in enumerate(todo):
        yield Progress(step, total, f"region volumes: {name}")
        rows[name] = measured(volume, affine, to_mni)
    for step, (name, j) in enumerate(outputs, len(todo)):
        yield Progress(step, total, f"change by deformation: {name}")
        rows[name] = rows[name] | changes_by_deformation(result, j)
    yield Progress(total, total, "region volumes")
    return rows


def changes_by_deformation(result: Result, index: int) -> dict[str, float]:
    """The ventricles' and hippocampal region's change from volume ``index``'s reference to it,
    read from the deformation between them on the model grid (:mod:`napari_ldae.data.tbm`), in
    ml of the input's world, under the keys of :data:`~napari_ldae.data.regions.
    CHANGE_BY_DEFORMATION`; empty without a reference or off the template. Remembered."""
    from napari_ldae.data.io import digest
    from napari_ldae.data.preprocess import model_affine
    from napari_ldae.data.tbm import structure_changes

    if not result.references:
        return {}
    volume = result.volumes if result.volumes.ndim == 3 else result.volumes[index]
    reference = result.references[_reference(result, index)]
    grid = model_affine(result.scan, result.contract)  # in MNI: the model scan's world
    world_ml = 1.0 if result.prepared is None else 1.0 / abs(float(np.linalg.det(
        result.prepared.transform.input_to_template[:3, :3])))
    try:
        changes = remembered(_CHANGES, digest(reference, volume, grid),
                              lambda: structure_changes(reference, volume, grid), REMEMBERED)
    except ValueError:  # the grid does not cover the template's structures
        return {}
    return {f"{name}_change_by_deformation": ml * world_ml for name, ml in changes.items()}


def measured(volume: np.ndarray, affine: np.ndarray,
             to_mni: np.ndarray | None = None) -> dict[str, float]:
    """:func:`napari_ldae.data.regions.region_volumes`, remembered by content."""
    from napari_ldae.data.io import digest
    from napari_ldae.data.regions import region_volumes

    key = digest(volume, np.shape(volume), affine, np.eye(4) if to_mni is None else to_mni)
    return dict(remembered(_MEASURED, key,
                            lambda: region_volumes(volume, affine, to_mni=to_mni), REMEMBERED))


_MEASURED: OrderedDict[str, dict[str, float]] = OrderedDict()
_CHANGES: OrderedDict[str, dict[str, float]] = OrderedDict()
_MASKS: OrderedDict[str, np.ndarray] = OrderedDict()
_BLURS: OrderedDict[str, np.ndarray] = OrderedDict()


def _input_name(prep: Preparation, result: Result) -> str:
    """An input's row name: its file's stem (numbered when two inputs share it)."""
    stems = [_stem(p) for p in result.preparations]
    name = _stem(prep)
    return name if stems.count(name) == 1 else f"{name} ({result.preparations.index(prep) + 1})"


def _stem(prep: Preparation) -> str:
    path = input_scan(prep).path
    return nifti_stem(path) if path else "input"


def _on_input(prep: Preparation, data: np.ndarray):
    """A volume on an input's grid as the regions are measured: the brain only (a prepared
    input's mask; a scan used as it is is a brain), its affine and its world → MNI."""
    scan = input_scan(prep)
    if prep.prepared is None:
        return data, scan.affine, None
    return (np.where(prep.prepared.mask, data, np.float32(0)), scan.affine,
            prep.prepared.transform.input_to_template)


def _model_volume(result: Result, j: int):
    """A model-grid volume, its grid in the input's world and that world → MNI."""
    from napari_ldae.data.preprocess import model_affine

    volume = result.volumes if result.volumes.ndim == 3 else result.volumes[j]
    grid = model_affine(result.scan, result.contract)
    if result.prepared is None:
        return volume, grid, None
    t = result.prepared.transform
    return volume, t.template_to_input @ grid, t.input_to_template
