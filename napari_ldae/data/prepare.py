"""Real scans in: skull stripping, registration to MNI, the model's grid, and the exact way back.

:func:`iter_prepare` takes a raw T1 head scan through three steps, each a :class:`Progress`:

1. skull stripping (deepbet, :mod:`napari_ldae.data.skullstrip`), skipped for a scan that is
   already a brain; the brain must lie wholly inside the scan;
2. registration of the brain to the ICBM152 2009a template, rigid then affine (SimpleITK,
   :mod:`napari_ldae.data.register`); a later visit of the same subject is registered rigidly
   to the first visit instead and then shares its affine, so two visits differ by anatomy only;
3. resampling of the brain onto the model grid of the preprocessing contract (MNI space).

The result, :class:`Prepared`, keeps the transform (:class:`BrainTransform`, a JSON file) and
the brain mask in the input's space. :meth:`Prepared.restore` maps any volume on the model grid
back onto the input's voxels, inside the brain mask only: every other voxel keeps the input's
value exactly. Quality checks (:mod:`napari_ldae.data.prepare_qc`) refuse what is not a T1 of a
whole brain and warn about a poor registration.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from napari_ldae.core.progress import Progress, ProgressGen, drain
from napari_ldae.data.io import Scan
from napari_ldae.data.transform import BrainTransform
from napari_ldae.errors import ScanError

Strip = Literal["auto", "yes", "no"]
#: The brain's brightest voxels are clipped to this percentile of the brain's intensities.
CLIP_PERCENTILE = 99.9


@dataclass(eq=False)
class Prepared:
    """One prepared scan: the input, its brain mask, the transform, the brain on the model grid."""

    scan: Scan
    mask: np.ndarray
    transform: BrainTransform
    data: np.ndarray
    qc: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def prepared_scan(self) -> Scan:
        """The brain on the model grid as a :class:`Scan` (MNI world affine)."""
        return Scan.from_array(self.data, self.transform.prepared_affine)

    def mask_on_grid(self) -> np.ndarray:
        """The brain mask resampled onto the model grid (bool)."""
        from napari_ldae.data.register import resample

        t = self.transform
        return resample(self.mask.astype(np.float32), t.input_affine, t.template_to_input,
                        t.prepared_affine, t.prepared_shape) > 0.5

    def restore(self, volume, *, outside: Literal["input"] | float = "input",
                order: int = 1) -> np.ndarray:
        """A model-grid volume (in the prepared scan's units) on the input's voxel grid.

        Inside the brain mask each voxel takes the volume's value at its position; every other
        voxel (and any the model grid does not reach) keeps the input's value exactly, or
        ``outside`` when it is a number (e.g. 0 for a difference map). float32, file order.
        """
        from scipy import ndimage

        vol = np.asarray(volume, dtype=np.float32)
        t = self.transform
        if vol.shape != t.prepared_shape:
            raise ScanError(f"volume of shape {vol.shape} is not on the prepared grid "
                            f"{t.prepared_shape}")
        m = t.input_to_prepared_voxels()
        sampled = ndimage.affine_transform(vol, m[:3, :3], m[:3, 3], output_shape=t.input_shape,
                                           order=order, mode="constant", cval=np.nan,
                                           prefilter=order > 1)
        out = (self.scan.data.copy() if outside == "input"
               else np.full(t.input_shape, float(outside), dtype=np.float32))
        inside = self.mask & np.isfinite(sampled)
        out[inside] = sampled[inside]
        return out.astype(np.float32, copy=False)


def scan_sha256(scan: Scan) -> str:
    """sha256 of a scan's float32 voxels in file order."""
    return hashlib.sha256(np.ascontiguousarray(scan.data, dtype=np.float32).tobytes()).hexdigest()


def iter_prepare(scan: Scan, contract=None, *, strip: Strip = "auto",
                 mask: np.ndarray | None = None, reference: Prepared | None = None,
                 threads: int = 2, seed: int = 1) -> ProgressGen[Prepared]:
    """Prepare ``scan`` for the model of ``contract`` (see the module docstring).

    ``strip``: ``"auto"`` strips unless the scan is already a brain, ``"yes"`` always,
    ``"no"`` never (the scan's foreground is the brain); ``mask`` gives the brain mask instead.
    ``reference``: the prepared first visit of the same subject.
    """
    from napari_ldae.data import prepare_qc, skullstrip
    from napari_ldae.data.mni import model_grid, template
    from napari_ldae.data.preprocess import PreprocessContract
    from napari_ldae.data.register import register, resample

    missing = missing_packages()
    if missing:
        raise ScanError(f"preparing scans needs {', '.join(missing)}: "
                        "pip install 'napari-ldae[prepare]'")
    contract = contract or PreprocessContract()
    steps: dict[str, Any] = {}
    yield Progress(0, 3, "skull stripping")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != scan.shape:
            raise ScanError(f"brain mask shape {mask.shape} differs from the scan's {scan.shape}")
        steps["skull_strip"] = "given mask"
    else:
        found = skullstrip.looks_skull_stripped(scan) if strip != "yes" else None
        if found is not None:
            mask, steps["skull_strip"] = found, "skipped: the scan is already skull-stripped"
        elif strip == "no":
            raise ScanError(f"{_name(scan)}: --prepare without skull stripping needs a "
                            "skull-stripped scan (background at one constant value), and this "
                            "one has a head around the brain")
        else:
            mask = skullstrip.strip_skull(scan)
            steps["skull_strip"] = skullstrip.deepbet_version()
    edge_share = skullstrip.check_field_of_view(scan, mask)
    yield Progress(1, 3, "registration")
    brain, imax = _brain(scan, mask)
    if reference is None:
        t1, _, t_aff = template(2.0)
        reg = register(t1, t_aff, brain, scan.affine, threads=threads, seed=seed)
        matrix = reg.matrix
        steps["registration"] = f"rigid then affine to the template, {_sitk_version()}"
    else:
        ref_brain, _ = _brain(reference.scan, reference.mask)
        reg = register(ref_brain, reference.scan.affine, brain, scan.affine, affine=False,
                       threads=threads, seed=seed)
        matrix = reg.matrix @ reference.transform.template_to_input
        steps["registration"] = (f"rigid to the reference visit, then its affine, "
                                 f"{_sitk_version()}")
        steps["reference"] = reference.transform.input_name
    steps["metric"] = round(float(reg.metric), 4)
    yield Progress(2, 3, "resampling")
    grid_affine, grid_shape = model_grid(contract)
    data = resample(brain * np.float32(imax), scan.affine, matrix, grid_affine, grid_shape)
    transform = BrainTransform(
        template_to_input=matrix, input_shape=scan.shape, input_affine=scan.affine,
        prepared_shape=grid_shape, prepared_affine=grid_affine,
        input_name=scan.path.name if scan.path else None, input_sha256=scan_sha256(scan),
        intensity_max=imax, steps=steps)
    prep = Prepared(scan, mask, transform, np.maximum(data, 0.0))
    prep.qc = prepare_qc.measure(prep, edge_share)
    prep.warnings = prepare_qc.check(prep)
    yield Progress(3, 3, "done")
    return prep


def missing_packages() -> list[str]:
    """The packages of the ``prepare`` extra that are not installed."""
    import importlib.util

    wanted = {"deepbet": "deepbet", "SimpleITK": "simpleitk", "nilearn": "nilearn"}
    return [pip for mod, pip in wanted.items() if importlib.util.find_spec(mod) is None]


def prepare(scan: Scan, contract=None, **kwargs) -> Prepared:
    """:func:`iter_prepare`, drained."""
    return drain(iter_prepare(scan, contract, **kwargs))


def iter_prepare_visits(scans: list[Scan], contract=None,
                        **kwargs) -> ProgressGen[list[Prepared]]:
    """Visits of one subject: the first to the template, the others rigidly to the first."""
    first = yield from iter_prepare(scans[0], contract, **kwargs)
    out = [first]
    for scan in scans[1:]:
        out.append((yield from iter_prepare(scan, contract, reference=first, **kwargs)))
    return out


def prepare_visits(scans: list[Scan], contract=None, **kwargs) -> list[Prepared]:
    """:func:`iter_prepare_visits`, drained."""
    return drain(iter_prepare_visits(scans, contract, **kwargs))


def _brain(scan: Scan, mask: np.ndarray) -> tuple[np.ndarray, float]:
    """The brain (background 0) clipped to [0, clip value] and divided by it; the clip value."""
    imax = float(np.percentile(scan.data[mask], CLIP_PERCENTILE))
    if imax <= 0:
        raise ScanError(f"{_name(scan)}: the brain mask holds no positive signal")
    brain = np.where(mask, np.clip(scan.data / imax, 0.0, 1.0), 0.0)
    return brain.astype(np.float32), imax


def _sitk_version() -> str:
    from importlib.metadata import version

    return f"SimpleITK {version('simpleitk')}"


def _name(scan: Scan) -> str:
    return scan.path.name if scan.path else "scan"
