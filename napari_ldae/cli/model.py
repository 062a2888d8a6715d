"""encode / reconstruct / manipulate / interpolate: the GUI's actions, headless, each a thin
command over :mod:`napari_ldae.operations`; results are NIfTI in the INPUT's space (raw inputs
are prepared first: ``--prepare``, :mod:`napari_ldae.cli._prepare`)."""

from __future__ import annotations

import argparse

from napari_ldae.cli._common import (
    SUFFIXES,
    check_transfer,
    command,
    decode_steps,
    export_kinds,
    inputs,
    model_options,
    on_target,
    outputs,
    progress,
    say,
    scans_argument,
    session,
    stem,
    transfer_options,
    volume_rows,
    write_results,
    write_volumes,
)
from napari_ldae.cli._prepare import check_prepare, finish, prepare_option, qc_names
from napari_ldae.operations import number


def add_encode(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub, "encode", run_encode,
        help="encode scans into LDAE codes (<stem>_codes.safetensors)",
        description="Encode each scan into its LDAE codes: semantic y and stochastic x_T (DDIM "
        "inversion). Each goes to OUTDIR/<stem>_codes.safetensors with the steps, the bundle "
        "hash, the source path and what --prepare did in its metadata.",
    )
    scans_argument(p)
    model_options(p, save_codes=False)
    prepare_option(p)


def run_encode(a: argparse.Namespace) -> None:
    from napari_ldae.data.io import read_scan
    from napari_ldae.operations import write_codes
    from napari_ldae.operations_prepare import iter_encode

    paths = inputs(a.inputs)
    check_prepare(a)
    names = [[f"{stem(i)}_codes.safetensors", *qc_names(i, a.prepare)] for i in paths]
    outs = _grouped(outputs(a.out, _flat(names), a.overwrite), names)
    s = session(a)
    steps = a.steps or s.steps["encode"]
    for path, out in zip(paths, outs, strict=True):
        codes, prep = progress(iter_encode(s, read_scan(path), steps, a.prepare),
                               f"{path.name}: encode", a.quiet)
        say(a, write_codes(out[0], codes, s, path, steps, prep))
        _said(a, finish(a, [prep], [out[1:]]))


def add_reconstruct(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub, "reconstruct", run_reconstruct,
        help="encode and decode scans (<stem>_recon.nii.gz)",
        description="Encode each scan and decode its codes: OUTDIR/<stem>_recon.nii.gz, in the "
        "input's space, header and intensity units, with a JSON sidecar.",
    )
    scans_argument(p)
    model_options(p)
    prepare_option(p)


def run_reconstruct(a: argparse.Namespace) -> None:
    from napari_ldae.data.io import read_scan
    from napari_ldae.operations import export, iter_reconstruct

    paths = inputs(a.inputs)
    check_prepare(a)
    names = [[f"{stem(i)}_recon.nii.gz", *[f"{stem(i)}_codes.safetensors"] * a.save_codes,
              *qc_names(i, a.prepare)] for i in paths]
    outs = _grouped(outputs(a.out, _flat(names), a.overwrite), names)
    s = session(a)
    for path, out in zip(paths, outs, strict=True):
        result = progress(iter_reconstruct(s, read_scan(path), a.steps, a.steps,
                                           prepare=a.prepare),
                          f"{path.name}: reconstruct", a.quiet)
        say(a, export(out[0], result, overwrite=a.overwrite))
        if a.save_codes:
            _save_codes(a, s, out[1], result.codes[0], path, result)
        _said(a, finish(a, result.preparations, [out[1 + a.save_codes:]]))


def add_manipulate(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub, "manipulate", run_manipulate,
        help="edit scans along a named direction (<stem>_<DIR><±S>.nii.gz)",
        description="Move each scan's semantic code along a direction of the bundle (see "
        "`napari-ldae info`) by each strength and decode, all strengths in one batch: "
        "OUTDIR/<stem>_<DIR><±S>.nii.gz per input and strength (e.g. scan_AD+2.0.nii.gz), in "
        "the input's space: the edit's change carried onto the input at its own resolution "
        "(strength 0 is the input itself), or with --onto model the decoded edit (strength 0 is "
        "the reconstruction).",
    )
    scans_argument(p)
    p.add_argument("--direction", required=True, metavar="NAME",
                   help="direction name, e.g. AD (listed by `napari-ldae info`)")
    p.add_argument("--strength", required=True, type=float, nargs="+", metavar="S",
                   help="one or more strengths, in standard deviations of the semantic space "
                   "(negative: the opposite way); each is also printed, and recorded, in years "
                   "of the training cohort's own change when the bundle is calibrated")
    p.add_argument("--difference", action="store_true",
                   help="also write the signed difference (<stem>_<DIR><±S>_diff.nii.gz): the "
                   "output − the input (--onto scan), or edit − reconstruction (--onto model)")
    transfer_options(p)
    model_options(p)
    prepare_option(p)


def run_manipulate(a: argparse.Namespace) -> None:
    from napari_ldae.data.io import read_scan
    from napari_ldae.operations import check_direction

    paths = inputs(a.inputs)
    check_prepare(a)
    check_transfer(a)
    strengths = list(dict.fromkeys(a.strength))
    tags = [f"{a.direction}{number(v, sign=True)}" for v in strengths]
    names = [[*(f"{stem(i)}_{t}{SUFFIXES[k]}.nii.gz" for k in export_kinds(a) for t in tags),
              *[f"{stem(i)}_codes.safetensors"] * a.save_codes, *qc_names(i, a.prepare)]
             for i in paths]
    outs = _grouped(outputs(a.out, _flat(names), a.overwrite), names)
    s = session(a)
    check_direction(s, a.direction)
    for v in strengths if not a.quiet else ():
        print(f"{a.direction} {number(v, sign=True)}: {s.years_text(a.direction, v)}")
    n = len(strengths)
    done = n * len(export_kinds(a)) + a.save_codes  # the outputs before the QC files
    rows: dict = {}
    for path, out in zip(paths, outs, strict=True):
        result = progress(s.iter_edit(read_scan(path), a.direction, strengths,
                                      decode_steps(a, s), a.steps,
                                      reference=a.difference or a.onto == "scan",
                                      prepare=a.prepare),
                          f"{path.name}: {a.direction} ×{n}", a.quiet)
        record = on_target(a, result, path.name)
        _said(a, write_results(a, record, out[:done - a.save_codes]))
        rows |= volume_rows(a, record, out[:n])
        if a.save_codes:
            _save_codes(a, s, out[done - 1], result.codes[0], path, result)
        _said(a, finish(a, result.preparations, [out[done:]]))
    write_volumes(a, rows)


def add_interpolate(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub, "interpolate", run_interpolate,
        help="interpolate between two visits (by α or by date)",
        description="Encode two visits A and B of one subject and decode their interpolation "
        "(lerp of y, slerp of x_T) at each α (0 = A, 1 = B) or each date in months from "
        "baseline. The visits' dates come from BIDS names (ses-M06) or a sessions.tsv "
        "(`months` column), else from --months-a/--months-b. Writes "
        "OUTDIR/<stemA>_interp-a<α>.nii.gz or <stemA>_interp-M<months>.nii.gz in A's space; "
        "with --onto scan (the default) each is the change carried onto the nearer visit at its "
        "own resolution: A for α ≤ 0.5, B (and B's space) for α > 0.5, so that α 0 and 1 give "
        "the visits exactly.",
    )
    p.add_argument("a", metavar="A", help="first visit (NIfTI); outputs are in its space "
                   "(with --onto scan, those of α > 0.5 in B's)")
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
    transfer_options(p)
    model_options(p)
    prepare_option(p)


def run_interpolate(a: argparse.Namespace) -> None:
    from napari_ldae.data.io import read_scan
    from napari_ldae.errors import LDAEError
    from napari_ldae.operations import visit_dates, write_codes
    from napari_ldae.session import alpha_from_months

    path_a, path_b = inputs([a.a, a.b], unique=a.save_codes or a.prepare != "no")
    check_prepare(a)
    check_transfer(a)
    if a.months is not None:
        dates = visit_dates(path_a, path_b, a.months_a, a.months_b)
        alphas = [alpha_from_months(*dates, t) for t in a.months]
        tags = [f"M{t:g}" for t in a.months]
    else:
        dates, alphas, tags = (None, None), list(a.alpha), [f"a{x:g}" for x in a.alpha]
    outside = [x for x in alphas if not 0.0 <= x <= 1.0]
    if outside and not a.extrapolate:
        what = "dates outside the visits'" if a.months is not None else "α outside [0, 1]"
        raise LDAEError(f"{what} (α = {number(outside[0])}); pass --extrapolate to allow it")
    names = [f"{stem(path_a)}_interp-{t}{SUFFIXES[k]}.nii.gz"
             for k in export_kinds(a) for t in tags]
    codes_names = [f"{stem(p)}_codes.safetensors" for p in (path_a, path_b)] * a.save_codes
    qc = [qc_names(p, a.prepare) for p in (path_a, path_b)]
    outs = outputs(a.out, names + codes_names + _flat(qc), a.overwrite)
    s = session(a)
    result = progress(s.iter_interpolate_visits(
        read_scan(path_a), read_scan(path_b), alphas, decode_steps(a, s), a.steps,
        references=a.onto == "scan", prepare=a.prepare, months=a.months, visit_a=str(path_a),
        visit_b=str(path_b), months_a=dates[0], months_b=dates[1]),
        f"interpolate ×{len(alphas)}", a.quiet)
    record = on_target(a, result, "interpolate")
    _said(a, write_results(a, record, outs[:len(names)]))
    rows = volume_rows(a, record, outs[:len(alphas)])
    done = len(names) + len(codes_names)
    if a.save_codes:
        for out, path, codes, prep in zip(outs[len(names):done], (path_a, path_b),
                                          result.codes, result.preparations, strict=True):
            say(a, write_codes(out, codes, s, path, result.provenance["encode_steps"], prep))
    _said(a, finish(a, result.preparations, _grouped(outs[done:], qc)))
    write_volumes(a, rows)


def _flat(names: list[list[str]]) -> list[str]:
    return [n for group in names for n in group]


def _grouped(paths: list, names: list[list[str]]) -> list[list]:
    """The flat output list cut back into one group per input."""
    groups, start = [], 0
    for group in names:
        groups.append(paths[start:start + len(group)])
        start += len(group)
    return groups


def _save_codes(a: argparse.Namespace, s, out, codes, path, result) -> None:
    from napari_ldae.operations import write_codes

    say(a, write_codes(out, codes, s, path, result.provenance["encode_steps"],
                       result.preparations[0]))


def _said(a: argparse.Namespace, paths) -> None:
    for path in paths:
        say(a, path)
