"""evaluate: the paper's evaluations on a cohort, as a JSON/Markdown report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from napari_ldae.cli._common import command, device_options, positive_int, say

if TYPE_CHECKING:
    from napari_ldae.core.progress import ProgressGen

T = TypeVar("T")


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    from napari_ldae.evaluate import PROBE_FIT_KINDS, SECTIONS

    p = command(
        sub, "evaluate", run_evaluate,
        help="reproduce the paper's evaluations on a cohort (JSON/Markdown report)",
        description="Reconstruction at several DDIM step counts against the autoencoder "
        "ceiling, semantic-only decoding, linear probes (AD vs CN, age), interpolation of visit "
        "triplets against a copy-the-nearest-visit baseline, prediction of each subject's "
        "last visit(s) from the earlier ones against copying the last visit and a line through "
        "the measured ventricle volumes, and, when the cohort has ventricle_ml, ventricle "
        "volume under edits toward AD. See "
        "docs/reproducing-the-paper.md.",
    )
    p.add_argument("--bundle", required=True, metavar="B", help="model bundle (folder or .ldae)")
    p.add_argument("--cohort", required=True, metavar="DIR",
                   help="BIDS-like cohort folder or CSV (with months, diagnosis, age)")
    p.add_argument("--out", required=True, metavar="REPORT.json", help="JSON report to write")
    p.add_argument("--markdown", metavar="REPORT.md", help="also write the report as Markdown")
    p.add_argument("--steps", type=positive_int, nargs="+", default=[10, 20, 50, 100],
                   metavar="T", help="DDIM steps of the reconstruction table (default 10 20 50 "
                   "100)")
    p.add_argument("--task-steps", type=positive_int, metavar="T",
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
    p.add_argument("--max-subjects", type=positive_int, metavar="N",
                   help="at most N subjects per split, diagnoses kept balanced")
    p.add_argument("--strengths", type=float, nargs="+", default=[0.0, 1.0, 2.0, 3.0],
                   metavar="S", help="edit strengths toward AD (default 0 1 2 3)")
    p.add_argument("--direction", help="direction to edit along (default: the one meaning "
                   "'toward AD')")
    p.add_argument("--lpips-weights", metavar="FILE", help="local LPIPS-SqueezeNet weights "
                   "(state dict of lpips.LPIPS(net='squeeze')); LPIPS is skipped without them")
    p.add_argument("--probe-steps", type=positive_int, metavar="N",
                   help="optimizer steps of each linear probe (default: the trainer's, 2000)")
    p.add_argument("--probe-fit", choices=PROBE_FIT_KINDS, default="paper",
                   help="paper: the trainer's probes (unregularised, fixed steps); regularised: "
                        "L2 logistic and ridge regression, the penalty chosen in each fold by "
                        "subject-grouped inner cross-validation (scikit-learn)")
    p.add_argument("--probe-train", metavar="COHORT",
                   help="fit the probes on every scan of this cohort (for example the "
                        "bundle's training cohort) and report them on the evaluated scans, "
                        "instead of cross-validation or the split's training part")
    p.add_argument("--probe-volumes", action="store_true",
                   help="also fit the probes on the structure network's ventricle and "
                        "hippocampal volumes of each probe scan and of its autoencoder "
                        "reconstruction: what the latent holds, as the decoder renders it (one "
                        "decode and two measurements per scan)")
    p.add_argument("--skip", nargs="+", choices=SECTIONS, default=[], metavar="SECTION",
                   help=f"sections to leave out: {', '.join(SECTIONS)}")
    device_options(p)
    p.add_argument("--overwrite", action="store_true", help="replace existing reports")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run_evaluate(a: argparse.Namespace) -> None:
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
        lpips_weights=a.lpips_weights, probe_steps=a.probe_steps, probe_fit=a.probe_fit,
        probe_train=a.probe_train, probe_volumes=a.probe_volumes, skip=tuple(a.skip),
        device=a.device,
        precision=a.precision, command=_evaluate_command(a))
    report = _evaluate_progress(iter_evaluate(a.bundle, a.cohort, options), a.quiet)
    say(a, write_json(report, a.out))
    if a.markdown:
        say(a, write_markdown(report, a.markdown))


def _evaluate_command(a: argparse.Namespace) -> str:
    """The command line that reproduces this evaluation (every option spelled out)."""
    import shlex

    words = ["napari-ldae", "evaluate"]
    for name in ("bundle", "cohort", "out", "markdown", "steps", "task_steps", "split", "seed",
                 "val_fraction", "test_fraction", "max_subjects", "strengths", "direction",
                 "lpips_weights", "probe_steps", "probe_fit", "probe_train", "probe_volumes",
                 "skip", "device", "precision"):
        value = getattr(a, name)
        if value is None or value == [] or value is False:
            continue
        if value is True:
            words.append(f"--{name.replace('_', '-')}")
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
