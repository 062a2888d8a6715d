"""What the commands share: their declaration, options, input and output checks, the session
and progress bars. Inputs and outputs are checked before the model loads."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
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
                   help="DDIM steps of encoding and decoding (default: the bundle's)")
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
