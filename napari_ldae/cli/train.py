"""import-official / make-cohort / train: the commands that make bundles and cohorts."""

from __future__ import annotations

import argparse

from napari_ldae.cli._common import command
from napari_ldae.core import REFERENCE_SCALE_FACTOR


def add_import_official(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub, "import-official", run_import_official,
        help="convert the official LDAE release files (pickled .pth/.ckpt) into a bundle",
    )
    p.add_argument("--unet", required=True, help="ShiftUNet state dict (decoder.pth)")
    p.add_argument("--encoder", required=True, help="semantic encoder state dict (encoder.pth)")
    p.add_argument("--autoencoder", required=True, help="GenerativeModels AutoencoderKL weights")
    p.add_argument("--semantic-mean", required=True, help="semantic_mean.pt")
    p.add_argument("--semantic-std", required=True, help="semantic_std.pt")
    p.add_argument("--classifier", help="disease_classifier.ckpt (Linear(768,1), positive = CN)")
    p.add_argument("--scale-factor", type=float, default=REFERENCE_SCALE_FACTOR,
                   help="latent scale factor the weights were trained with (reference: "
                   f"{REFERENCE_SCALE_FACTOR:.4f})")
    p.add_argument("--config", help="bundle config JSON describing the architectures and the "
                   "preprocessing (default: the paper's)")
    p.add_argument("-o", "--out", required=True, help="bundle directory (or .ldae file) to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")


def run_import_official(a: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    from napari_ldae.core.reference import import_official

    config = json.loads(Path(a.config).read_text()) if a.config else None
    path = import_official(
        unet=a.unet, encoder=a.encoder, autoencoder=a.autoencoder,
        semantic_mean=a.semantic_mean, semantic_std=a.semantic_std,
        classifier=a.classifier, scale_factor=a.scale_factor,
        config=config, out=a.out, overwrite=a.overwrite,
    )
    print(f"wrote bundle {path}")


def add_make_cohort(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub, "make-cohort", run_make_cohort,
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
    p.add_argument("--variety", choices=("realistic", "registered", "template"),
                   default="realistic",
                   help="between-subject anatomy: realistic (head size, ventricle and "
                        "hippocampal size, cortical thickness, asymmetry; default), registered "
                        "(the same subjects with their size taken out, as after an affine "
                        "registration to MNI) or template "
                        "(every subject the template with small warps, generator v1)")


def run_make_cohort(a: argparse.Namespace) -> None:
    from tqdm import tqdm

    from napari_ldae.data.synthetic import make_cohort

    bars: list[tqdm] = []  # opened at the first report, once the arguments are checked

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="subject", desc="make-cohort"))
        bars[0].update(done - bars[0].n)

    try:
        path = make_cohort(
            a.out, a.subjects, a.seed, spacing=a.spacing, visits=tuple(a.visits),
            mci=a.mci, overwrite=a.overwrite, workers=a.workers, progress=progress,
            variety=a.variety,
        )
    finally:
        for bar in bars:
            bar.close()
    print(f"wrote synthetic cohort {path}")


def add_train(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub, "train", run_train,
        help="train a stage (autoencoder, decoder, latent, representation, probe) or all",
        description="Train LDAE on a cohort with PyTorch Lightning: one GPU, several (DDP) or "
        "several nodes (torchrun / SLURM). Each stage reads the previous one's outputs under "
        "--out; `all` runs them in order and ends with a model bundle in OUT/bundle (the optional "
        "decoder stage runs when decoder.max_steps > 0). "
        "See docs/training.md.",
    )
    p.add_argument("stage", choices=["autoencoder", "decoder", "latent", "representation",
                                     "probe", "all"])
    p.add_argument("--config", required=True,
                   help="YAML config, or the name of a shipped one: paper, demo, tiny")
    p.add_argument("--data", help="cohort: BIDS-like folder or CSV (overrides data.cohort)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, caches, bundle)")
    p.add_argument("--bundle", help="decoder stage: refine this bundle's decoder and write "
                   "OUT/bundle, the same bundle with it (sets decoder.bundle)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoints; skip stages already finished")
    p.add_argument("--devices", type=int, help="devices per node (overrides trainer.devices)")
    p.add_argument("--num-nodes", type=int, help="nodes (overrides trainer.num_nodes)")
    p.add_argument("--accelerator", choices=["cpu", "gpu", "auto"],
                   help="overrides trainer.accelerator")
    p.add_argument("--max-steps", type=int,
                   help="optimizer steps of each network stage run (overrides <stage>.max_steps)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. latent.lr=1e-4 trainer.precision=bf16-mixed")
    p.__class__ = _TrainParser  # KEY=VALUE overrides may also follow the options

def run_train(a: argparse.Namespace) -> None:
    from napari_ldae.train.config import STAGES
    from napari_ldae.train.run import resolve, train

    stages = STAGES if a.stage == "all" else (a.stage,)
    overrides = [*a.overrides, *([f"decoder.bundle={a.bundle}"] if a.bundle else [])]
    config = resolve(a.config, a.data, overrides, devices=a.devices,
                     accelerator=a.accelerator, num_nodes=a.num_nodes,
                     max_steps=a.max_steps, stages=stages)
    bundle = train(a.stage, config, a.out, resume=a.resume)
    if bundle is not None:
        print(f"bundle: {bundle}")


class _TrainParser(argparse.ArgumentParser):
    """Collects ``KEY=VALUE`` words left over after the options as config overrides
    (argparse alone only takes positionals that come before the options)."""

    def parse_known_args(self, args=None, namespace=None):
        ns, extras = super().parse_known_args(args, namespace)
        late = [e for e in extras if "=" in e and not e.startswith("-")]
        ns.overrides = [*(ns.overrides or []), *late]
        return ns, [e for e in extras if e not in late]
