"""The `napari-ldae` command: every GUI action, headless.

One module per group of sub-commands, each declaring its parsers (``add_*``) and a thin
``run`` over the library; heavy imports happen inside the handlers so that
`napari-ldae --help` is instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from napari_ldae import __version__
from napari_ldae.cli import demo, evaluate, info, model, predict, prepare, train
from napari_ldae.errors import LDAEError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-ldae",
        description="Latent Diffusion Autoencoders for brain MRI: encode, manipulate, "
        "interpolate, export, train and evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"napari-ldae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        train.add_import_official,
        train.add_make_cohort,
        train.add_train,
        info.add_info,
        prepare.add_prepare,
        model.add_encode,
        model.add_reconstruct,
        model.add_manipulate,
        model.add_interpolate,
        predict.add_predict,
        demo.add_demo,
        evaluate.add_evaluate,
    ):
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
