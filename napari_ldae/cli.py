"""The `napari-ldae` command: every GUI action, headless.

Each sub-command is declared by one `_add_*` function and runs one function of the library;
heavy imports happen inside the handlers so that `napari-ldae --help` is instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from napari_ldae import __version__
from napari_ldae.errors import LDAEError

if TYPE_CHECKING:
    from napari_ldae.core.model import Codes
    from napari_ldae.core.progress import ProgressGen
    from napari_ldae.data.io import Scan
    from napari_ldae.session import Session

T = TypeVar("T")


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
    p.add_argument("--variety", choices=("realistic", "template"), default="realistic",
                   help="between-subject anatomy: realistic (head size, ventricle and "
                        "hippocampal size, cortical thickness, asymmetry; default) or template "
                        "(every subject the template with small warps, generator v1)")

    def run(a: argparse.Namespace) -> None:
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

    p.set_defaults(func=run)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a stage (autoencoder, latent, representation, probe) or all four",
        description="Train LDAE on a cohort with PyTorch Lightning: one GPU, several (DDP) or "
        "several nodes (torchrun / SLURM). Each stage reads the previous one's outputs under "
        "--out; `all` runs the four in order and ends with a model bundle in OUT/bundle. "
        "See docs/training.md.",
    )
    p.add_argument("stage", choices=["autoencoder", "latent", "representation", "probe", "all"])
    p.add_argument("--config", required=True,
                   help="YAML config, or the name of a shipped one: paper, demo, tiny")
    p.add_argument("--data", help="cohort: BIDS-like folder or CSV (overrides data.cohort)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, caches, bundle)")
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

    def run(a: argparse.Namespace) -> None:
        from napari_ldae.train.config import STAGES
        from napari_ldae.train.run import resolve, train

        stages = STAGES if a.stage == "all" else (a.stage,)
        config = resolve(a.config, a.data, a.overrides, devices=a.devices,
                         accelerator=a.accelerator, num_nodes=a.num_nodes,
                         max_steps=a.max_steps, stages=stages)
        bundle = train(a.stage, config, a.out, resume=a.resume)
        if bundle is not None:
            print(f"bundle: {bundle}")

    p.__class__ = _TrainParser  # KEY=VALUE overrides may also follow the options
    p.set_defaults(func=run)


class _TrainParser(argparse.ArgumentParser):
    """Collects ``KEY=VALUE`` words left over after the options as config overrides
    (argparse alone only takes positionals that come before the options)."""

    def parse_known_args(self, args=None, namespace=None):
        ns, extras = super().parse_known_args(args, namespace)
        late = [e for e in extras if "=" in e and not e.startswith("-")]
        ns.overrides = [*(ns.overrides or []), *late]
        return ns, [e for e in extras if e not in late]


# ------------------------------------------------------------------ model commands (Session)
# encode / reconstruct / manipulate / interpolate / info: the GUI's actions, headless. Inputs
# and outputs are checked before the model loads; results are NIfTI in the INPUT's space.

_CODES_FORMAT = "napari-ldae-codes"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _model_options(p: argparse.ArgumentParser, *, save_codes: bool = True) -> None:
    """Options shared by the commands that run the model."""
    p.add_argument("-o", "--out", required=True, metavar="OUTDIR",
                   help="output folder (created if missing)")
    p.add_argument("--bundle", metavar="B",
                   help="model bundle folder or .ldae file (default: $NAPARI_LDAE_BUNDLE, "
                   "else the demo bundle)")
    p.add_argument("--steps", type=_positive_int, metavar="N",
                   help="DDIM steps of encoding and decoding (default: the bundle's)")
    p.add_argument("--device", metavar="D",
                   help="cpu, cuda, cuda:1 or mps (default: the first available)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="network precision; bf16/fp16 on CUDA only (default fp32)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs (otherwise an existing output is an error)")
    if save_codes:
        p.add_argument("--save-codes", action="store_true",
                       help="also write each input's codes as <stem>_codes.safetensors")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _num(value: float, sign: bool = False) -> str:
    """2 → '2.0', 0.25 → '0.25' (with '+' for positive values when ``sign``)."""
    text = f"{value:.1f}" if round(value, 1) == value else f"{value:g}"
    return f"+{text}" if sign and not text.startswith("-") else text


def _inputs(paths: Sequence[str], unique: bool = True) -> list[Path]:
    """Input scans, checked before any model is loaded (``unique``: distinct names)."""
    from napari_ldae.data.io import is_nifti_path
    from napari_ldae.errors import ScanError

    out = [Path(p).expanduser().resolve() for p in paths]
    for p in out:
        if not p.is_file():
            raise ScanError(f"{p}: no such file")
        if not is_nifti_path(p):
            raise ScanError(f"{p.name}: not a NIfTI file (expected .nii or .nii.gz)")
    stems = [_stem(p) for p in out]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice and unique:
        raise LDAEError(f"several inputs are named {twice[0]!r}: their outputs would collide; "
                        "run them into different --out folders")
    return out


def _outputs(out: str, names: Sequence[str], overwrite: bool) -> list[Path]:
    """``OUTDIR/name`` for each name; an existing output (or its JSON sidecar) is an error
    unless ``overwrite``."""
    from napari_ldae.data.io import is_nifti_path, sidecar_path

    folder = Path(out).expanduser()
    if folder.exists() and not folder.is_dir():
        raise LDAEError(f"--out {folder} is a file; give a folder")
    paths = [folder / n for n in names]
    if not overwrite:
        for p in paths:
            for target in (p, sidecar_path(p)) if is_nifti_path(p) else (p,):
                if target.exists():
                    raise FileExistsError(f"{target} already exists; pass --overwrite to "
                                          "replace it")
    folder.mkdir(parents=True, exist_ok=True)
    return paths


def _session(a: argparse.Namespace) -> Session:
    from napari_ldae.session import Session

    return Session(a.bundle, device=a.device, precision=getattr(a, "precision", "fp32"))


def _progress(gen: ProgressGen[T], desc: str, quiet: bool) -> T:
    """Run a progress generator under a tqdm bar (on stderr) and return its result."""
    from tqdm import tqdm

    from napari_ldae.core.progress import drain

    with tqdm(desc=desc, unit="step", disable=quiet, dynamic_ncols=True) as bar:
        def update(p) -> None:
            if bar.total != p.total:
                bar.total = p.total
            bar.update(p.step - bar.n)

        result = drain(gen, update)
        if bar.n == 0:
            bar.set_postfix_str("cached")
        return result


def _steps(s: Session, a: argparse.Namespace) -> dict[str, int]:
    return {"encode": a.steps or s.steps["encode"], "decode": a.steps or s.steps["decode"]}


def _encode(s: Session, path: Path, steps: dict[str, int],
            a: argparse.Namespace) -> tuple[Scan, Codes]:
    """Read one input and encode it (cached per scan, bundle and steps); (scan, codes)."""
    from napari_ldae.data.io import read_scan

    scan = read_scan(path)
    codes = _progress(s.iter_encode(scan, steps["encode"]), f"{path.name}: encode", a.quiet)
    return scan, codes


def _write_codes(path: Path, codes: Codes, s: Session, source: Path, steps: int) -> Path:
    """Codes as safetensors (``y`` (1, d), ``x_T`` (1, C, x, y, z)) with their provenance in
    the metadata; written atomically."""
    import os
    import tempfile

    from safetensors.torch import save_file

    meta = {"format": _CODES_FORMAT, "format_version": "1", "steps": str(steps),
            "bundle": s.bundle.name, "bundle_sha256": s.bundle.sha256,
            "source": str(source), "napari_ldae_version": __version__}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        save_file({"y": codes.y.detach().cpu().contiguous(),
                   "x_T": codes.x_T.detach().cpu().contiguous()}, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def _say(a: argparse.Namespace, path: Path) -> None:
    if not a.quiet:
        print(f"wrote {path}")


def _add_encode(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "encode", help="encode scans into LDAE codes (<stem>_codes.safetensors)",
        description="Encode each scan into its LDAE codes: semantic y and stochastic x_T (DDIM "
        "inversion). Each goes to OUTDIR/<stem>_codes.safetensors with the steps, the bundle "
        "hash and the source path in its metadata.",
    )
    p.add_argument("inputs", nargs="+", metavar="IN", help="NIfTI scans (.nii, .nii.gz)")
    _model_options(p, save_codes=False)

    def run(a: argparse.Namespace) -> None:
        inputs = _inputs(a.inputs)
        outs = _outputs(a.out, [f"{_stem(i)}_codes.safetensors" for i in inputs], a.overwrite)
        s = _session(a)
        steps = _steps(s, a)
        for path, out in zip(inputs, outs, strict=True):
            _, codes = _encode(s, path, steps, a)
            _say(a, _write_codes(out, codes, s, path, steps["encode"]))

    p.set_defaults(func=run)


def _add_reconstruct(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reconstruct", help="encode and decode scans (<stem>_recon.nii.gz)",
        description="Encode each scan and decode its codes: OUTDIR/<stem>_recon.nii.gz, in the "
        "input's space, header and intensity units, with a JSON sidecar.",
    )
    p.add_argument("inputs", nargs="+", metavar="IN", help="NIfTI scans (.nii, .nii.gz)")
    _model_options(p)

    def run(a: argparse.Namespace) -> None:
        inputs = _inputs(a.inputs)
        names = [[f"{_stem(i)}_recon.nii.gz"] for i in inputs]
        if a.save_codes:
            names = [[*n, f"{_stem(i)}_codes.safetensors"] for n, i in zip(names, inputs,
                                                                         strict=True)]
        outs = _outputs(a.out, [n for group in names for n in group], a.overwrite)
        s = _session(a)
        steps = _steps(s, a)
        per_input = len(names[0])
        for k, path in enumerate(inputs):
            out = outs[k * per_input: (k + 1) * per_input]
            scan, codes = _encode(s, path, steps, a)
            volume = _progress(s.iter_reconstruction(codes, steps["decode"]),
                               f"{path.name}: decode", a.quiet)
            prov = {"operation": "reconstruct", "steps": steps["decode"],
                    "encode_steps": steps["encode"]}
            _say(a, s.export(out[0], volume, scan, prov, overwrite=a.overwrite))
            if a.save_codes:
                _say(a, _write_codes(out[1], codes, s, path, steps["encode"]))

    p.set_defaults(func=run)


def _add_manipulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "manipulate", help="edit scans along a named direction (<stem>_<DIR><±S>.nii.gz)",
        description="Move each scan's semantic code along a direction of the bundle (see "
        "`napari-ldae info`) by each strength and decode, all strengths in one batch: "
        "OUTDIR/<stem>_<DIR><±S>.nii.gz per input and strength (e.g. scan_AD+2.0.nii.gz), in "
        "the input's space. Strength 0 is the reconstruction.",
    )
    p.add_argument("inputs", nargs="+", metavar="IN", help="NIfTI scans (.nii, .nii.gz)")
    p.add_argument("--direction", required=True, metavar="NAME",
                   help="direction name, e.g. AD (listed by `napari-ldae info`)")
    p.add_argument("--strength", required=True, type=float, nargs="+", metavar="S",
                   help="one or more strengths, in standard deviations of the semantic space "
                   "(negative: the opposite way)")
    p.add_argument("--difference", action="store_true",
                   help="also write the signed difference edit − reconstruction "
                   "(<stem>_<DIR><±S>_diff.nii.gz)")
    _model_options(p)

    def run(a: argparse.Namespace) -> None:
        inputs = _inputs(a.inputs)
        strengths = list(dict.fromkeys(a.strength))
        tags = [f"{a.direction}{_num(v, sign=True)}" for v in strengths]
        names: list[list[str]] = []
        for i in inputs:
            group = [f"{_stem(i)}_{t}.nii.gz" for t in tags]
            if a.difference:
                group += [f"{_stem(i)}_{t}_diff.nii.gz" for t in tags]
            if a.save_codes:
                group.append(f"{_stem(i)}_codes.safetensors")
            names.append(group)
        outs = _outputs(a.out, [n for group in names for n in group], a.overwrite)
        s = _session(a)
        if a.direction not in s.directions:
            known = ", ".join(f"{k} ({v})" for k, v in s.directions.items()) or "none"
            raise LDAEError(f"unknown direction {a.direction!r}; this bundle has: {known}")
        steps = _steps(s, a)
        n, per_input = len(strengths), len(names[0])
        for k, path in enumerate(inputs):
            out = outs[k * per_input: (k + 1) * per_input]
            scan, codes = _encode(s, path, steps, a)
            edited = _progress(s.iter_manipulate(codes, a.direction, strengths, steps["decode"]),
                               f"{path.name}: {a.direction} ×{n}", a.quiet)
            if a.difference:
                recon = _progress(s.iter_reconstruction(codes, steps["decode"]),
                                  f"{path.name}: reconstruction", a.quiet)
            for j, strength in enumerate(strengths):
                prov = {"operation": "manipulate", "direction": a.direction,
                        "meaning": s.directions[a.direction], "strength": strength,
                        "steps": steps["decode"], "encode_steps": steps["encode"]}
                _say(a, s.export(out[j], edited[j], scan, prov, overwrite=a.overwrite))
                if a.difference:
                    _say(a, s.export(out[n + j], edited[j] - recon, scan,
                                     {**prov, "reference": "reconstruction"},
                                     overwrite=a.overwrite, difference=True))
            if a.save_codes:
                _say(a, _write_codes(out[-1], codes, s, path, steps["encode"]))

    p.set_defaults(func=run)


def _add_interpolate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "interpolate", help="interpolate between two visits (by α or by date)",
        description="Encode two visits A and B of one subject and decode their interpolation "
        "(lerp of y, slerp of x_T) at each α (0 = A, 1 = B) or each date in months from "
        "baseline. The visits' dates come from BIDS names (ses-M06) or a sessions.tsv "
        "(`months` column), else from --months-a/--months-b. Writes "
        "OUTDIR/<stemA>_interp-a<α>.nii.gz or <stemA>_interp-M<months>.nii.gz in A's space.",
    )
    p.add_argument("a", metavar="A", help="first visit (NIfTI); outputs are in its space")
    p.add_argument("b", metavar="B", help="second visit (NIfTI)")
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--alpha", type=float, nargs="+", metavar="ALPHA",
                      help="interpolation weights in [0, 1] (0 = A, 1 = B)")
    when.add_argument("--months", type=float, nargs="+", metavar="T",
                      help="dates in months from baseline, between the two visits' dates")
    p.add_argument("--months-a", type=float, metavar="T",
                   help="date of A in months (overrides its BIDS name / sessions.tsv)")
    p.add_argument("--months-b", type=float, metavar="T",
                   help="date of B in months (overrides its BIDS name / sessions.tsv)")
    p.add_argument("--extrapolate", action="store_true",
                   help="allow α outside [0, 1] (dates before A or after B)")
    _model_options(p)

    def run(a: argparse.Namespace) -> None:
        from napari_ldae.session import alpha_from_months, months_from_bids

        path_a, path_b = _inputs([a.a, a.b], unique=a.save_codes)
        if a.months is not None:
            dates = []
            for path, given, flag in ((path_a, a.months_a, "--months-a"),
                                      (path_b, a.months_b, "--months-b")):
                t = given if given is not None else months_from_bids(path)
                if t is None:
                    raise LDAEError(f"cannot tell the date of {path.name}: no ses-M<months> in "
                                    f"its name and no sessions.tsv with a months column; give "
                                    f"{flag} (and the other visit's) in months")
                dates.append(t)
            if dates[0] == dates[1]:
                raise LDAEError(f"both visits are dated month {_num(dates[0])}; interpolation "
                                "needs two dates (check --months-a/--months-b)")
            alphas = [alpha_from_months(dates[0], dates[1], t) for t in a.months]
            tags = [f"M{t:g}" for t in a.months]
        else:
            dates, alphas, tags = [None, None], list(a.alpha), [f"a{x:g}" for x in a.alpha]
        outside = [x for x in alphas if not 0.0 <= x <= 1.0]
        if outside and not a.extrapolate:
            what = "dates outside the visits'" if a.months is not None else "α outside [0, 1]"
            raise LDAEError(f"{what} (α = {_num(outside[0])}); pass --extrapolate to allow it")
        names = [f"{_stem(path_a)}_interp-{t}.nii.gz" for t in tags]
        if a.save_codes:
            names += [f"{_stem(p)}_codes.safetensors" for p in (path_a, path_b)]
        outs = _outputs(a.out, names, a.overwrite)
        s = _session(a)
        steps = _steps(s, a)
        scan_a, codes_a = _encode(s, path_a, steps, a)
        _, codes_b = _encode(s, path_b, steps, a)
        volumes = _progress(s.iter_interpolate(codes_a, codes_b, alphas, steps["decode"]),
                            f"interpolate ×{len(alphas)}", a.quiet)
        for j, alpha in enumerate(alphas):
            prov = {"operation": "interpolate", "alpha": alpha,
                    "months": a.months[j] if a.months is not None else None,
                    "visit_a": str(path_a), "visit_b": str(path_b), "months_a": dates[0],
                    "months_b": dates[1], "steps": steps["decode"],
                    "encode_steps": steps["encode"]}
            _say(a, s.export(outs[j], volumes[j], scan_a, prov, overwrite=a.overwrite))
        if a.save_codes:
            for out, path, codes in zip(outs[-2:], (path_a, path_b), (codes_a, codes_b),
                                        strict=True):
                _say(a, _write_codes(out, codes, s, path, steps["encode"]))

    p.set_defaults(func=run)


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info", help="print a model bundle's facts (architecture, preprocessing, directions)",
        description="Print a bundle's facts: architecture sizes, preprocessing contract, "
        "default steps, directions and their meanings, metrics, provenance and content hash.",
    )
    p.add_argument("--bundle", metavar="B",
                   help="model bundle folder or .ldae file (default: $NAPARI_LDAE_BUNDLE, "
                   "else the demo bundle)")
    p.add_argument("--device", metavar="D", help="device to load it on (default: the first "
                   "available)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")

    def run(a: argparse.Namespace) -> None:
        import json

        s = _session(a)
        info, config = s.info(), s.bundle.config
        ae, unet, enc = config["autoencoder"], config["unet"], config["encoder"]
        info["architecture"] = {
            "autoencoder": {"channels": ae["channels"],
                            "latent_channels": ae["latent_channels"],
                            "latent_shape": list(s.model.latent_shape),
                            "scale_factor": config["scale_factor"]},
            "unet": {k: unet[k] for k in ("base_channels", "channel_mult", "num_res_blocks",
                                          "attention_resolutions") if k in unet},
            "encoder": {k: enc[k] for k in ("backbone", "emb_dim", "num_slices") if k in enc},
        }
        info["preprocessing"] = s.contract.to_dict()
        info["provenance"] = config.get("provenance", {})
        if a.json:
            print(json.dumps(info, indent=2, default=str))
            return
        arch = info["architecture"]
        lines = [
            f"bundle       {info['name']}  ({info['path']})",
            f"sha256       {info['bundle_sha256']}",
            f"trained      {'yes' if info['trained'] else 'NO (random weights)'}",
            f"parameters   {info['parameters'] or 0:,}",
            f"autoencoder  channels {arch['autoencoder']['channels']}, latent "
            f"{'×'.join(map(str, arch['autoencoder']['latent_shape']))}, scale factor "
            f"{arch['autoencoder']['scale_factor']}",
            "unet         " + ", ".join(f"{k} {v}" for k, v in arch["unet"].items()),
            "encoder      " + ", ".join(f"{k} {v}" for k, v in arch["encoder"].items()),
            f"input        {'×'.join(map(str, info['input_shape']))} voxels at "
            f"{'×'.join(_num(v) for v in info['spacing'])} mm, {info['orientation']}, "
            f"intensity {info['preprocessing']['intensity']}",
            "steps        " + ", ".join(f"{k} {v}" for k, v in info["steps"].items()),
            "directions",
        ]
        for name, d in info["directions"].items() or [("(none)", {})]:
            extra = "; ".join(str(x) for x in (d.get("source"), d.get("metrics")) if x)
            lines.append(f"  {name:<10} {d.get('meaning', '')}" + (f"  [{extra}]" if extra
                                                                     else ""))
        lines.append("metrics" + ("" if info["metrics"] else "      none recorded"))
        lines += [f"  {k:<10} {v}" for k, v in info["metrics"].items()]
        print("\n".join(lines))

    p.set_defaults(func=run)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="open napari with the demo bundle, a synthetic subject and the LDAE widgets "
        "(without a display: save screenshots instead)",
    )
    p.add_argument("--bundle", help="model bundle (default: $NAPARI_LDAE_BUNDLE, else the "
                   "demo bundle in resources/demo)")
    p.add_argument("--device", help="cpu, cuda:0, mps (default: the first that works)")
    p.add_argument("--screenshot", metavar="DIR", help="drive the demo headless, save PNGs "
                   "(2D edit with its difference map, 3D view, interpolation sweep) and exit")

    def run(a: argparse.Namespace) -> None:
        import os

        if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            _rerun_under_xvfb(a)
            return
        from napari_ldae.gui.demo import run_demo

        for path in run_demo(a.bundle, a.screenshot, a.device):
            print(f"wrote {path}")

    p.set_defaults(func=run)


def _rerun_under_xvfb(a: argparse.Namespace) -> None:
    """No display: run the screenshot demo again under ``xvfb-run -a`` (or say how)."""
    import shutil
    import subprocess

    out = a.screenshot or "ldae-demo-screenshots"
    xvfb = shutil.which("xvfb-run")
    if xvfb is None:
        raise LDAEError("no display (DISPLAY and WAYLAND_DISPLAY are unset) and no xvfb-run: "
                        "install it (apt-get install xvfb xauth) or run on a desktop; then "
                        f"`xvfb-run -a napari-ldae demo --screenshot {out}`")
    argv = [xvfb, "-a", "-s", "-screen 0 1600x1000x24", sys.executable, "-m",
            "napari_ldae.cli", "demo", "--screenshot", out]
    for flag, value in (("--bundle", a.bundle), ("--device", a.device)):
        if value:
            argv += [flag, value]
    print(f"no display: running the demo under xvfb-run; screenshots go to {out}",
          file=sys.stderr)
    code = subprocess.call(argv)
    if code:
        raise SystemExit(code)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    from napari_ldae.evaluate import SECTIONS

    p = sub.add_parser(
        "evaluate", help="reproduce the paper's evaluations on a cohort (JSON/Markdown report)",
        description="Reconstruction at several DDIM step counts against the autoencoder "
        "ceiling, semantic-only decoding, linear probes (AD vs CN, age), interpolation of visit "
        "triplets against a copy-the-nearest-visit baseline and, when the cohort has "
        "ventricle_ml, ventricle volume under edits toward AD. See "
        "docs/reproducing-the-paper.md.",
    )
    p.add_argument("--bundle", required=True, metavar="B", help="model bundle (folder or .ldae)")
    p.add_argument("--cohort", required=True, metavar="DIR",
                   help="BIDS-like cohort folder or CSV (with months, diagnosis, age)")
    p.add_argument("--out", required=True, metavar="REPORT.json", help="JSON report to write")
    p.add_argument("--markdown", metavar="REPORT.md", help="also write the report as Markdown")
    p.add_argument("--steps", type=_positive_int, nargs="+", default=[10, 20, 50, 100],
                   metavar="T", help="DDIM steps of the reconstruction table (default 10 20 50 "
                   "100)")
    p.add_argument("--task-steps", type=_positive_int, metavar="T",
                   help="DDIM steps of semantic-only decoding, interpolation and edits "
                   "(default: the largest --steps)")
    p.add_argument("--split", choices=("test", "all"), default="test",
                   help="test: the held-out subjects of the subject-grouped split (as the "
                   "trainer's, same seed and fractions); all: every subject (probes by "
                   "subject-grouped cross-validation). Default test")
    p.add_argument("--seed", type=int, help="split and random x_T seed (default: the bundle's "
                   "training split seed, else 0)")
    p.add_argument("--val-fraction", type=float,
                   help="default: the bundle's training split, else 0.1")
    p.add_argument("--test-fraction", type=float,
                   help="default: the bundle's training split, else 0.1")
    p.add_argument("--max-subjects", type=_positive_int, metavar="N",
                   help="at most N subjects per split, diagnoses kept balanced")
    p.add_argument("--strengths", type=float, nargs="+", default=[0.0, 1.0, 2.0, 3.0],
                   metavar="S", help="edit strengths toward AD (default 0 1 2 3)")
    p.add_argument("--direction", help="direction to edit along (default: the one meaning "
                   "'toward AD')")
    p.add_argument("--lpips-weights", metavar="FILE", help="local LPIPS-SqueezeNet weights "
                   "(state dict of lpips.LPIPS(net='squeeze')); LPIPS is skipped without them")
    p.add_argument("--probe-steps", type=_positive_int, metavar="N",
                   help="optimizer steps of each linear probe (default: the trainer's, 2000)")
    p.add_argument("--skip", nargs="+", choices=SECTIONS, default=[], metavar="SECTION",
                   help=f"sections to leave out: {', '.join(SECTIONS)}")
    p.add_argument("--device", metavar="D", help="cpu, cuda, cuda:1 or mps (default: the "
                   "first available)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="network precision; bf16/fp16 on CUDA only (default fp32)")
    p.add_argument("--overwrite", action="store_true", help="replace existing reports")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    def run(a: argparse.Namespace) -> None:
        from napari_ldae.evaluate.report import (
            EvaluateOptions,
            iter_evaluate,
            write_json,
            write_markdown,
        )

        outs = [Path(x).expanduser() for x in (a.out, a.markdown) if x]
        for out in outs if not a.overwrite else ():
            if out.exists():
                raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
        options = EvaluateOptions(
            steps=tuple(a.steps), task_steps=a.task_steps, split=a.split, seed=a.seed,
            val_fraction=a.val_fraction, test_fraction=a.test_fraction,
            max_subjects=a.max_subjects, strengths=tuple(a.strengths), direction=a.direction,
            lpips_weights=a.lpips_weights, probe_steps=a.probe_steps, skip=tuple(a.skip),
            device=a.device,
            precision=a.precision, command=_evaluate_command(a))
        report = _evaluate_progress(iter_evaluate(a.bundle, a.cohort, options), a.quiet)
        _say(a, write_json(report, a.out))
        if a.markdown:
            _say(a, write_markdown(report, a.markdown))

    p.set_defaults(func=run)


def _evaluate_command(a: argparse.Namespace) -> str:
    """The command line that reproduces this evaluation (every option spelled out)."""
    import shlex

    words = ["napari-ldae", "evaluate"]
    for name in ("bundle", "cohort", "out", "markdown", "steps", "task_steps", "split", "seed",
                 "val_fraction", "test_fraction", "max_subjects", "strengths", "direction",
                 "lpips_weights", "probe_steps", "skip", "device", "precision"):
        value = getattr(a, name)
        if value is None or value == []:
            continue
        values = value if isinstance(value, list) else [value]
        words += [f"--{name.replace('_', '-')}", *map(str, values)]
    return shlex.join(words)


def _evaluate_progress(gen: ProgressGen[T], quiet: bool) -> T:
    """Drain a generator whose tasks change: one tqdm bar, reset at each new task."""
    from tqdm import tqdm

    from napari_ldae.core.progress import drain

    if quiet:
        return drain(gen)
    with tqdm(unit="step", dynamic_ncols=True, leave=False) as bar:
        def update(p) -> None:
            if p.message != bar.desc or p.total != bar.total:
                bar.reset(total=p.total)
                bar.set_description_str(p.message)
            bar.update(p.step - bar.n)

        return drain(gen, update)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-ldae",
        description="Latent Diffusion Autoencoders for brain MRI: encode, manipulate, "
        "interpolate, export, train and evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"napari-ldae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_import_official,
        _add_make_cohort,
        _add_train,
        _add_info,
        _add_encode,
        _add_reconstruct,
        _add_manipulate,
        _add_interpolate,
        _add_demo,
        _add_evaluate,
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


if __name__ == "__main__":
    sys.exit(main())
