"""``--prepare auto|yes|no`` of the model commands: the option, its checks before the model
loads, what each command says about it and the files a preparation leaves (the brain mask in
the input's space and the QC figure)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from napari_ldae._files import nifti_stem

if TYPE_CHECKING:
    from napari_ldae.operations_prepare import Preparation

QC_SUFFIXES = ("_brainmask.nii.gz", "_qc.png")


def prepare_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--prepare", choices=("auto", "yes", "no"), default="auto",
        help="skull-strip and register each input to MNI first, and map the results back onto "
        "the input's voxels (only voxels inside the brain mask change): auto (default) unless "
        "the input already looks skull-stripped and in MNI position, yes, or no. A prepared "
        "input also gets <stem>_brainmask.nii.gz and <stem>_qc.png (see `napari-ldae prepare`)")


def check_prepare(a: argparse.Namespace) -> None:
    """``--prepare yes`` without the ``prepare`` extra: a clear error before the model loads."""
    from napari_ldae.operations_prepare import require_packages

    if a.prepare == "yes":
        require_packages("--prepare yes")


def qc_names(path: Path, choice: str) -> list[str]:
    """The files a preparation of ``path`` may leave (none for ``--prepare no``)."""
    return [] if choice == "no" else [nifti_stem(path) + s for s in QC_SUFFIXES]


def finish(a: argparse.Namespace, preparations: Sequence[Preparation],
           qc_paths: Sequence[Sequence[Path]]) -> list[Path]:
    """Say what was done to each input; write the mask and QC figure of each one prepared.

    Returns the files written."""
    from napari_ldae._files import atomic_write
    from napari_ldae.data.prepare_qc import png_bytes, write_mask

    written = []
    for prep, paths in zip(preparations, qc_paths, strict=True):
        tell(a, f"{prep.name}: {prep.summary()}")
        if not prep.ran:
            continue
        mask_path, png_path = paths
        written += [write_mask(prep.prepared, mask_path),
                    atomic_write(png_path, png_bytes(prep.prepared))]
        for warning in prep.prepared.warnings:
            tell(a, f"warning: {warning} (QC figure: {png_path})")
    return written


def tell(a: argparse.Namespace, message: str) -> None:
    """A notice on stderr (shown with --quiet too: which inputs were prepared matters)."""
    print(f"napari-ldae {a.command}: {message}", file=sys.stderr)
