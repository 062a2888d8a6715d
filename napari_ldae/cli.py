"""The `napari-ldae` command: every GUI action, headless.

Each sub-command is declared by one `_add_*` function and runs one function of the library;
heavy imports happen inside the handlers so that `napari-ldae --help` is instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from napari_ldae import __version__
from napari_ldae.errors import LDAEError


def _add_import_official(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-official",
        help="convert the official LDAE release files (pickled .pth/.ckpt) into a bundle",
    )
    p.add_argument("--unet", required=True, help="ShiftUNet state dict (decoder.pth)")
    p.add_argument("--encoder", required=True, help="semantic encoder state dict (encoder.pth)")
    p.add_argument("--autoencoder", required=True, help="GenerativeModels AutoencoderKL weights")
    p.add_argument("--semantic-mean", required=True, help="semantic_mean.pt")
    p.add_argument("--semantic-std", required=True, help="semantic_std.pt")
    p.add_argument("--classifier", help="disease_classifier.ckpt (Linear(768,1), positive = CN)")
    p.add_argument("--scale-factor", type=float, default=0.8730,
                   help="latent scale factor the weights were trained with (reference: 0.8730)")
    p.add_argument("--config", help="bundle config JSON describing the architectures and the "
                   "preprocessing (default: the paper's)")
    p.add_argument("-o", "--out", required=True, help="bundle directory (or .ldae file) to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")

    def run(a: argparse.Namespace) -> None:
        import json
        from pathlib import Path

        from napari_ldae.core.bundle import import_official

        config = json.loads(Path(a.config).read_text()) if a.config else None
        path = import_official(
            unet=a.unet, encoder=a.encoder, autoencoder=a.autoencoder,
            semantic_mean=a.semantic_mean, semantic_std=a.semantic_std,
            classifier=a.classifier, scale_factor=a.scale_factor,
            config=config, out=a.out, overwrite=a.overwrite,
        )
        print(f"wrote bundle {path}")

    p.set_defaults(func=run)


def _add_make_cohort(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "make-cohort",
        help="write a synthetic longitudinal cohort (ICBM152-based, known ground truth)",
        description="Write a BIDS-like synthetic longitudinal cohort built on the ICBM152 2009a "
        "template: per-subject anatomy, CN/AD (and optionally MCI) atrophy over ADNI-like "
        "visits, with the true ventricular and hippocampal volumes of every scan.",
    )
    p.add_argument("--out", required=True, help="folder to write (must be empty or new)")
    p.add_argument("--subjects", type=int, required=True, help="number of subjects")
    p.add_argument("--seed", type=int, required=True, help="random seed (same seed, same bytes)")
    p.add_argument("--spacing", type=float, default=3.0,
                   help="voxel size in mm (default 3: 64x80x64; 1.5 gives 128x160x128)")
    p.add_argument("--visits", type=int, nargs=2, default=(3, 6), metavar=("MIN", "MAX"),
                   help="visits per subject, drawn uniformly in [MIN, MAX] (default 3 6)")
    p.add_argument("--mci", action="store_true", help="include MCI subjects (CN/MCI/AD 1:1:1)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a synthetic cohort already in --out")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")

    def run(a: argparse.Namespace) -> None:
        from tqdm import tqdm

        from napari_ldae.data.synthetic import make_cohort

        with tqdm(total=a.subjects, unit="subject", desc="make-cohort") as bar:
            path = make_cohort(
                a.out, a.subjects, a.seed, spacing=a.spacing, visits=tuple(a.visits),
                mci=a.mci, overwrite=a.overwrite, workers=a.workers,
                progress=lambda done, total: bar.update(done - bar.n),
            )
        print(f"wrote synthetic cohort {path}")

    p.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-ldae",
        description="Latent Diffusion Autoencoders for brain MRI: encode, manipulate, "
        "interpolate, export, train and evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"napari-ldae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_import_official, _add_make_cohort):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (LDAEError, FileNotFoundError, FileExistsError) as err:
        print(f"napari-ldae {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-ldae {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
