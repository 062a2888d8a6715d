"""Skull stripping offline with deepbet, and the checks that come before it.

deepbet (MIT) ships its two TorchScript networks inside its wheel (``data/models``): a coarse
one finds the brain's bounding box, a fine one segments it; nothing is downloaded. The scan is
given to it in the closest RAS axis order (as deepbet's own command does) and the mask comes
back in the file's order. :func:`looks_skull_stripped` recognises a scan that is already a
brain (background exactly constant, foreground of brain size) so the step can be skipped, and
:func:`check_field_of_view` refuses a mask cut by the edge of the scan.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage as ndi

from napari_ldae.data.io import Scan
from napari_ldae.errors import ScanError

#: deepbet's grid sizes: the coarse (bounding-box) network and the fine network's crop.
COARSE, FINE = 128, 192
#: A skull-stripped brain (cerebrum, cerebellum, brainstem) is at most this big; a head is more.
MAX_BRAIN_ML = 2300.0
MIN_BRAIN_ML = 500.0
#: Largest share of the brain mask that may touch the scan's outer faces.
MAX_EDGE_FRACTION = 0.01


def deepbet_version() -> str:
    from importlib.metadata import version

    return f"deepbet {version('deepbet')}"


@functools.lru_cache(maxsize=1)
def _extractor():
    try:
        from deepbet import BrainExtraction
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ScanError("skull stripping needs deepbet: pip install 'napari-ldae[prepare]'"
                        ) from exc
    return BrainExtraction(no_gpu=True)


def strip_skull(scan: Scan, *, fine: int = FINE, coarse: int = COARSE) -> np.ndarray:
    """The brain mask (bool, the file's axis order) of a head scan, by deepbet."""
    import torch

    bet = _extractor()
    x = scan.display_data.astype(np.float32, copy=True)
    with torch.no_grad(), torch.jit.optimized_execution(False):
        prob = bet.run_model(x, small_shape=(coarse,) * 3, shape=(fine,) * 3)
    mask = prob > 0.5
    if not mask.any():
        raise ScanError(_name(scan) + ": no brain found (the skull stripper's mask is empty); "
                        "is this a T1-weighted head scan?")
    mask = bet.postprocess(mask)
    return scan.display.from_display(mask.astype(bool))


def looks_skull_stripped(scan: Scan) -> np.ndarray | None:
    """The brain mask of a scan that is already skull-stripped, else ``None``.

    Already stripped: most voxels outside the foreground hold exactly the minimum, and the
    foreground (holes filled, largest component) has the volume of a brain, not a head.
    """
    data = scan.data
    lo = float(data.min())
    at_min = data == lo
    hi = float(np.percentile(data[~at_min], 99.5)) if (~at_min).any() else lo
    fg = data > lo + 0.02 * (hi - lo)
    labels, n = ndi.label(fg)
    if n == 0:
        return None
    largest = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    largest = ndi.binary_fill_holes(largest)
    ml = largest.sum() * float(np.prod(scan.zooms)) / 1000.0
    outside = ~largest
    constant = at_min[outside].mean() if outside.any() else 0.0
    if constant >= 0.9 and MIN_BRAIN_ML <= ml <= MAX_BRAIN_ML:
        return largest
    return None


def check_field_of_view(scan: Scan, mask: np.ndarray) -> float:
    """The share of the mask on the scan's outer faces; a partial brain is a :class:`ScanError`."""
    edge = np.zeros(mask.shape, dtype=bool)
    edge[[0, -1], :, :] = edge[:, [0, -1], :] = edge[:, :, [0, -1]] = True
    share = float(mask[edge].sum()) / max(int(mask.sum()), 1)
    if share > MAX_EDGE_FRACTION:
        raise ScanError(
            f"{_name(scan)}: partial field of view: the brain reaches the edge of the scan "
            f"({share:.1%} of its mask lies on the outer faces). The model needs the whole "
            "brain; use a scan that covers it."
        )
    return share


def _name(scan: Scan) -> str:
    return scan.path.name if scan.path else "scan"
