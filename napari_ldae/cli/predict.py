"""predict: a subject's brain at any date from two or more of its visits, in the latest visit's
space (a thin command over :func:`napari_ldae.operations.iter_predict`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_ldae.cli._common import (
    SUFFIXES,
    check_transfer,
    decode_steps,
    export_kinds,
    inputs,
    model_options,
    on_target,
    outputs,
    progress,
    say,
    session,
    stem,
    transfer_options,
    volume_rows,
    write_results,
    write_volumes,
)
from napari_ldae.cli._prepare import check_prepare, finish, prepare_option, qc_names


def add_predict(sub: argparse._SubParsersAction) -> None:
    from napari_ldae.core import DEFAULT_X_T_RULE, DEFAULT_Y_RULE, X_T_RULES, Y_RULES

    p = sub.add_parser(
        "predict", help="predict a later visit from two or more earlier ones (by date)",
        description="Encode two or more visits of one subject, fit their trajectory in code "
        "space (semantic y: --y-rule, on the least-squares line's slope over all visits; "
        "stochastic x_T: --x-t-rule) and decode it at each date given with --months (months "
        "from baseline). A date past the last visit is a prediction, one between visits an "
        "interpolation. The visits' dates come from BIDS names (ses-M06) or a sessions.tsv "
        "(`months` column), else from --dates. Writes OUTDIR/<stem>_predict-M<months>.nii.gz in "
        "the space of the latest visit (<stem>), with the visits, dates, rules and fit residual "
        "in the JSON sidecar: the prediction's change from that visit's reconstruction carried "
        "onto the visit at its own resolution (--onto scan, the default), or the decoded "
        "prediction (--onto model). Visits that look like different subjects and dates far "
        "outside the visits' span are warned about.",
    )
    p.add_argument("visits", nargs="+", metavar="VISIT",
                   help="two or more visits of one subject (NIfTI), in any order")
    p.add_argument("--months", type=float, nargs="+", required=True, metavar="T",
                   help="dates to predict, in months from baseline (e.g. 36 48)")
    p.add_argument("--dates", type=float, nargs="+", metavar="M",
                   help="the visits' own dates in months, one per VISIT in the same order "
                   "(default: from BIDS names / sessions.tsv)")
    p.add_argument("--y-rule", choices=Y_RULES, default=DEFAULT_Y_RULE,
                   help="semantic code at a date: anchored (default): through every visit, "
                   "the lerp between visits, past the last (before the first) visit that "
                   "visit's plus the least-squares slope; line: the least-squares line over "
                   "all visits at every date")
    p.add_argument("--x-t-rule", choices=X_T_RULES, default=DEFAULT_X_T_RULE,
                   help="stochastic code at a date: hold (default): slerp between visits, the "
                   "latest visit's past them; slerp: continued past the visits; latest: the "
                   "latest visit's at every date")
    p.add_argument("--difference", action="store_true",
                   help="also write the signed difference (<stem>_predict-M<months>_diff.nii.gz)"
                   ": the output − the latest visit (--onto scan), or prediction − its "
                   "reconstruction (--onto model)")
    transfer_options(p)
    model_options(p)
    prepare_option(p)
    p.set_defaults(func=run_predict)


def run_predict(a: argparse.Namespace) -> None:
    from napari_ldae.errors import LDAEError
    from napari_ldae.operations import visit_months
    from napari_ldae.operations_predict import check_visits

    paths = inputs(a.visits, unique=a.save_codes or a.prepare != "no")
    check_prepare(a)
    check_transfer(a)
    if a.dates is not None and len(a.dates) != len(paths):
        raise LDAEError(f"--dates gives {len(a.dates)} date(s) for {len(paths)} visit(s): one "
                        "per VISIT, in the same order")
    months = visit_months(paths, a.dates)
    targets = list(dict.fromkeys(a.months))
    shown = set(check_visits([str(p) for p in paths], months, targets))
    for message in shown:
        warn(message)
    latest = paths[max(range(len(paths)), key=lambda i: months[i])]
    tags = [f"M{t:g}" for t in targets]
    names = [f"{stem(latest)}_predict-{t}{SUFFIXES[k]}.nii.gz"
             for k in export_kinds(a) for t in tags]
    names += [f"{stem(p)}_codes.safetensors" for p in paths] * a.save_codes
    names += [n for p in paths for n in qc_names(p, a.prepare)]
    outs = outputs(a.out, names, a.overwrite)
    s, result = _predict(a, paths, months, targets, shown)
    _write_all(a, s, result, on_target(a, result, "predict"), outs, len(targets), paths)


def _predict(a: argparse.Namespace, paths: list[Path], months: list[float],
             targets: list[float], shown: set[str]):
    """Run the prediction, printing the warnings not shown yet (those from the codes)."""
    import warnings

    from napari_ldae.data.io import read_scan
    from napari_ldae.operations_predict import PredictionWarning

    s = session(a)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PredictionWarning)
        result = progress(s.iter_predict(
            [read_scan(p) for p in paths], months, targets, decode_steps(a, s), a.steps,
            x_T_rule=a.x_t_rule, y_rule=a.y_rule, reference=a.difference or a.onto == "scan",
            names=[str(p) for p in paths],
            prepare=a.prepare),
            f"predict ×{len(targets)} from {len(paths)} visits", a.quiet)
    for w in caught:
        if issubclass(w.category, PredictionWarning) and str(w.message) not in shown:
            warn(str(w.message))
        elif not issubclass(w.category, PredictionWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return s, result


def _write_all(a: argparse.Namespace, s, result, record, outs: list[Path], n: int,
               paths: list[Path]) -> None:
    """Every output of ``record`` (``result`` as written), or none: a failure removes what this
    run wrote."""
    from napari_ldae.data.io import is_nifti_path, sidecar_path
    from napari_ldae.operations import write_codes

    written: list[Path] = []
    done = n * len(export_kinds(a))
    visits = result.provenance["visits"]  # by date; ``paths`` in the given order
    order = [visits.index(str(p)) for p in paths]
    preps = [result.preparations[i] for i in order]
    try:
        for path in write_results(a, record, outs[:done]):
            written.append(path)
        if a.save_codes:
            steps = result.provenance["encode_steps"]
            for out, path, i, prep in zip(outs[done:done + len(paths)], paths, order, preps,
                                          strict=True):
                written.append(write_codes(out, result.codes[i], s, path, steps, prep))
            done += len(paths)
        qc = [outs[done + 2 * k:done + 2 * k + 2] for k in range(len(paths))] \
            if a.prepare != "no" else [[]] * len(paths)
        written += finish(a, preps, qc)
        write_volumes(a, volume_rows(a, record, outs[:n]))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
            if is_nifti_path(path):
                sidecar_path(path).unlink(missing_ok=True)
        raise
    for path in written:
        say(a, path)


def warn(message: str) -> None:
    print(f"napari-ldae predict: warning: {message}", file=sys.stderr)
