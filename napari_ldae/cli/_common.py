"""What the commands share: their declaration, options, input and output checks, the session
and progress bars. Inputs and outputs are checked before the model loads."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from napari_ldae._files import nifti_stem as stem  # the commands' name for it
from napari_ldae.errors import LDAEError

if TYPE_CHECKING:
    from napari_ldae.core.progress import ProgressGen
    from napari_ldae.session import Session

T = TypeVar("T")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def command(sub: argparse._SubParsersAction, name: str,
            run: Callable[[argparse.Namespace], None], *, help: str,
            description: str | None = None) -> argparse.ArgumentParser:
    """The parser of sub-command ``name``, whose handler is ``run``."""
    p = sub.add_parser(name, help=help, description=description)
    p.set_defaults(func=run)
    return p


def scans_argument(p: argparse.ArgumentParser) -> None:
    """The input scans of the model commands (``IN ...``)."""
    p.add_argument("inputs", nargs="+", metavar="IN", help="NIfTI scans (.nii, .nii.gz)")


def bundle_option(p: argparse.ArgumentParser) -> None:
    """``--bundle``, defaulting to ``$NAPARI_LDAE_BUNDLE``, else the demo bundle."""
    p.add_argument("--bundle", metavar="B",
                   help="model bundle folder or .ldae file (default: $NAPARI_LDAE_BUNDLE, "
                   "else the demo bundle)")


def device_options(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--precision``, resolved by :func:`napari_ldae.core.device.resolve`."""
    p.add_argument("--device", metavar="D",
                   help="cpu, cuda, cuda:1 or mps (default: the first available)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="network precision; bf16/fp16 on CUDA only (default fp32)")


def model_options(p: argparse.ArgumentParser, *, save_codes: bool = True) -> None:
    """Options shared by the commands that run the model."""
    p.add_argument("-o", "--out", required=True, metavar="OUTDIR",
                   help="output folder (created if missing)")
    bundle_option(p)
    p.add_argument("--steps", type=positive_int, metavar="N",
                   help="DDIM steps of encoding and decoding (default: the bundle's; with --onto "
                   "scan, its carry steps for decoding)")
    device_options(p)
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs (otherwise an existing output is an error)")
    if save_codes:
        p.add_argument("--save-codes", action="store_true",
                       help="also write each input's codes as <stem>_codes.safetensors")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def inputs(paths: Sequence[str], unique: bool = True) -> list[Path]:
    """Input scans, checked before any model is loaded (``unique``: distinct names)."""
    from napari_ldae.data.io import is_nifti_path
    from napari_ldae.errors import ScanError

    out = [Path(p).expanduser().resolve() for p in paths]
    for p in out:
        if not p.is_file():
            raise ScanError(f"{p}: no such file")
        if not is_nifti_path(p):
            raise ScanError(f"{p.name}: not a NIfTI file (expected .nii or .nii.gz)")
    stems = [stem(p) for p in out]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice and unique:
        raise LDAEError(f"several inputs are named {twice[0]!r}: their outputs would collide; "
                        "run them into different --out folders")
    return out


def outputs(out: str, names: Sequence[str], overwrite: bool) -> list[Path]:
    """``OUTDIR/name`` for each name; an existing output (or its JSON sidecar) is an error
    unless ``overwrite``. A NIfTI ``out`` is the output file itself when the run writes exactly
    one NIfTI file; otherwise ``-o`` must be a folder."""
    from napari_ldae.data.io import is_nifti_path, sidecar_path

    target = Path(out).expanduser()
    if is_nifti_path(target) and not target.is_dir():
        if len(names) != 1 or not is_nifti_path(Path(names[0])):
            raise LDAEError(f"-o {out} names a NIfTI file, but this run writes {len(names)} "
                            f"file(s) ({', '.join(names[:3])}{', …' if len(names) > 3 else ''})"
                            "; -o is an output folder: give a folder (e.g. -o results/)")
        folder, paths = target.parent, [target]
    else:
        if target.exists() and not target.is_dir():
            raise LDAEError(f"--out {target} is a file; give a folder")
        folder, paths = target, [target / n for n in names]
    if not overwrite:
        for p in paths:
            for existing in (p, sidecar_path(p)) if is_nifti_path(p) else (p,):
                if existing.exists():
                    raise FileExistsError(f"{existing} already exists; pass --overwrite to "
                                          "replace it")
    folder.mkdir(parents=True, exist_ok=True)
    return paths


def session(a: argparse.Namespace) -> Session:
    from napari_ldae.session import Session

    return Session(a.bundle, device=a.device, precision=getattr(a, "precision", "fp32"))


def progress(gen: ProgressGen[T], desc: str, quiet: bool) -> T:
    """Run a progress generator under a tqdm bar (on stderr) and return its result."""
    from tqdm import tqdm

    from napari_ldae.core.progress import drain

    with tqdm(desc=desc, unit="step", disable=quiet, dynamic_ncols=True) as bar:
        def update(p) -> None:  # a use case runs several loops: one bar, reset per loop
            if bar.total != p.total or p.step < bar.n:
                bar.reset(total=p.total)
            bar.update(p.step - bar.n)

        result = drain(gen, update)
        if bar.n == 0:
            bar.set_postfix_str("cached")
        return result


def say(a: argparse.Namespace, path: Path) -> None:
    if not a.quiet:
        print(f"wrote {path}")


# ----------------------------------------------------------------------------- onto the scan
#: What each export kind adds to an output's file name.
SUFFIXES = {"image": "", "difference": "_diff", "log_jacobian": "_logjac"}


def transfer_options(p: argparse.ArgumentParser) -> None:
    """``--onto``, ``--transfer``, ``--jacobian`` and ``--volumes``: results on the input scan
    at its own resolution, their change map and their region volumes."""
    from napari_ldae.data.transfer import DEFAULT_TRANSFER, TRANSFERS
    from napari_ldae.operations_transfer import DEFAULT_ONTO, ONTO

    p.add_argument("--onto", choices=ONTO, default=DEFAULT_ONTO,
                   help="scan (default): the model's change (result − reconstruction) carried "
                   "onto the input scan at its own resolution, inside its brain mask (strength "
                   "0, α 0 or 1 give the input exactly); model: the model's own decoded volume, "
                   "resampled onto the input's grid")
    p.add_argument("--transfer", choices=TRANSFERS, default=DEFAULT_TRANSFER,
                   help=f"how --onto scan carries the change (default {DEFAULT_TRANSFER}): "
                   "warp moves the scan's tissue by a deformation estimated from the "
                   "reconstruction to the result; intensity adds the resampled intensity change")
    p.add_argument("--jacobian", action="store_true",
                   help="also write the warp's log-Jacobian (> 0 where tissue expands, < 0 "
                   "where it shrinks) as <output>_logjac.nii.gz (--onto scan --transfer warp)")
    p.add_argument("--volumes", metavar="FILE.tsv",
                   help="also write region volumes (ml) of the inputs and of every output: one "
                   "row each, the regions as columns (and each output's change of the "
                   "ventricles and hippocampal region by deformation), and FILE.json "
                   "describing them")


def check_transfer(a: argparse.Namespace) -> None:
    """The transfer options, checked before the model loads."""
    if a.jacobian and (a.onto, a.transfer) != ("scan", "warp"):
        raise LDAEError("--jacobian needs --onto scan --transfer warp: only the warp has one")
    if a.volumes is None:
        return
    path = Path(a.volumes).expanduser()
    if path.suffix.lower() != ".tsv":
        raise LDAEError(f"--volumes {a.volumes}: the table's name must end in .tsv")
    for existing in (path, path.with_suffix(".json")):
        if existing.exists() and not a.overwrite:
            raise FileExistsError(f"{existing} already exists; pass --overwrite to replace it")


def export_kinds(a: argparse.Namespace) -> list[str]:
    """What is written per volume: the image, then (if asked) its difference and log-Jacobian."""
    return ["image", *["difference"] * getattr(a, "difference", False),
            *["log_jacobian"] * a.jacobian]


def decode_steps(a: argparse.Namespace, session) -> int:
    """``--steps``, else the bundle's decode steps (its ``carry`` steps with ``--onto scan``)."""
    from napari_ldae.operations_transfer import full_steps

    return a.steps or full_steps(session.steps, a.onto)


def on_target(a: argparse.Namespace, result, desc: str):
    """The result as it is written: carried onto the input scan (``--onto scan``, under a
    progress bar) or the model's own (``--onto model``)."""
    from napari_ldae.operations_transfer import iter_onto_scan

    if a.onto == "model":
        return result.with_provenance(onto="model", transfer=None)
    return progress(iter_onto_scan(result, a.transfer), f"{desc}: {a.transfer} onto the scan",
                    a.quiet)


def write_results(a: argparse.Namespace, record, paths: Sequence[Path]) -> Iterator[Path]:
    """Write every volume of ``record`` in each of :func:`export_kinds`, ``paths[i * n + j]``
    holding kind ``i`` of volume ``j``; yields each file once written."""
    from napari_ldae.operations import export

    kinds = export_kinds(a)
    n = len(paths) // len(kinds)
    for i, kind in enumerate(kinds):
        for j in range(n):
            yield export(paths[i * n + j], record.item(j), kind, overwrite=a.overwrite)


def volume_rows(a: argparse.Namespace, record, paths: Sequence[Path]) -> dict:
    """``--volumes``: the rows of the record's inputs and of its images (named by ``paths``'
    stems), under a progress bar; no rows without ``--volumes``."""
    from napari_ldae.operations_transfer import iter_region_volumes

    if a.volumes is None:
        return {}
    return progress(iter_region_volumes(record, [stem(p) for p in paths]), "region volumes",
                    a.quiet)


def write_volumes(a: argparse.Namespace, rows: dict) -> None:
    """The ``--volumes`` table (atomic; replaced only with ``--overwrite``)."""
    from napari_ldae.data.regions import write_volumes_tsv

    if a.volumes is not None:
        say(a, write_volumes_tsv(Path(a.volumes).expanduser(), rows, overwrite=a.overwrite))
