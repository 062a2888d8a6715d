"""prepare: raw T1 heads → skull-stripped brains on the model's MNI grid, with the way back."""

from __future__ import annotations

import argparse
import sys

from napari_ldae.cli._common import bundle_option, command, inputs, progress
from napari_ldae.errors import LDAEError


def add_prepare(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub, "prepare", run_prepare,
        help="skull-strip and register raw T1 scans to MNI for the model, with QC",
        description="Skull-strip each T1 scan (deepbet; skipped when it is already a brain), "
        "register it rigidly then affinely to the ICBM152 2009a template (SimpleITK) and "
        "resample it onto the bundle's model grid. Writes per input: <stem>_prepared.nii.gz "
        "(model space), <stem>_brainmask.nii.gz (input space), <stem>_transform.json (4x4 "
        "matrices, see docs/preparation.md), <stem>_qc.png and <stem>_qc.json. Nothing is "
        "downloaded.",
    )
    p.add_argument("inputs", nargs="+", metavar="IN", help="T1-weighted NIfTI scans")
    p.add_argument("-o", "--out", required=True, metavar="OUTDIR",
                   help="output folder (created if missing)")
    bundle_option(p)
    p.add_argument("--strip", choices=("auto", "yes", "no"), default="auto",
                   help="skull stripping: auto (unless the scan is already skull-stripped), "
                   "yes, or no (default auto)")
    p.add_argument("--visits", action="store_true",
                   help="the inputs are visits of one subject: register the others rigidly to "
                   "the first and give them its affine, so they differ by anatomy only")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs (otherwise an existing output is an error)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def run_prepare(a: argparse.Namespace) -> None:
    from pathlib import Path

    from napari_ldae._files import nifti_stem
    from napari_ldae.data.io import read_scan
    from napari_ldae.data.prepare import iter_prepare, missing_packages
    from napari_ldae.data.prepare_qc import output_paths

    missing = missing_packages()
    if missing:
        raise LDAEError(f"prepare needs {', '.join(missing)}: "
                        "pip install 'napari-ldae[prepare]'")
    paths = inputs(a.inputs)
    out = Path(a.out).expanduser()
    if out.exists() and not out.is_dir():
        raise LDAEError(f"--out {out} is a file; give a folder")
    if not a.overwrite:  # refuse before any work
        for p in paths:
            for target in output_paths(out, nifti_stem(p)).values():
                if target.exists():
                    raise FileExistsError(f"{target} already exists; pass --overwrite to "
                                          "replace it")
    contract = _contract(a.bundle)
    reference, failed = None, []
    for path in paths:
        try:
            scan = read_scan(path)
            prep = progress(iter_prepare(scan, contract, strip=a.strip, reference=reference),
                            f"prepare {path.name}", a.quiet)
            written = _write(prep, out, nifti_stem(path), a.overwrite)
        except LDAEError as err:
            if a.visits and reference is None:
                raise
            print(f"napari-ldae prepare: {err}", file=sys.stderr)
            failed.append(path.name)
            continue
        if a.visits and reference is None:
            reference = prep
        for warning in prep.warnings:
            print(f"napari-ldae prepare: warning: {warning} ({written['png']})", file=sys.stderr)
        if not a.quiet:
            print(f"{path.name}: {prep.transform.steps['skull_strip']}; Dice with the template "
                  f"{prep.qc['dice_template']:.3f}, correlation "
                  f"{prep.qc['correlation_template']:.3f}")
            for p in written.values():
                print(f"wrote {p}")
    if failed:
        raise LDAEError(f"{len(failed)} of {len(paths)} scans could not be prepared: "
                        + ", ".join(failed))


def _contract(bundle):
    from napari_ldae.core.bundle import load_bundle
    from napari_ldae.data.preprocess import PreprocessContract
    from napari_ldae.session import default_bundle_path

    config = load_bundle(bundle if bundle is not None else default_bundle_path()).config
    return PreprocessContract.from_dict(config["preprocessing"])


def _write(prep, out, stem, overwrite):
    from napari_ldae.data.prepare_qc import write_outputs

    return write_outputs(prep, out, stem, overwrite=overwrite)
