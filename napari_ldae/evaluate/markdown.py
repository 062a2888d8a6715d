"""The evaluation report as Markdown tables, with the paper's numbers beside ours."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

_DASH = "—"


def render(report: Mapping[str, Any], paper: Mapping[str, float]) -> str:
    """The whole report as Markdown (``paper``: dotted key → the paper's number)."""
    parts = [
        _header(report),
        _reconstruction(report, paper),
        _probes(report, paper),
        _interpolation(report, paper),
        _extrapolation(report),
        _manipulation(report),
        _code_use(report),
        _notes(report),
    ]
    return "\n\n".join(p for p in parts if p) + "\n"


def _get(report: Mapping[str, Any], dotted: str) -> Any:
    node: Any = report
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return _DASH
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def _percent(value: Any) -> str:
    return _DASH if value is None else f"{100 * value:.0f} %"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _header(report: Mapping[str, Any]) -> str:
    meta = report.get("meta", {})
    bundle, cohort, ev = meta.get("bundle", {}), meta.get("cohort", {}), meta.get("evaluated", {})
    sha = (bundle.get("sha256") or "")[:12]
    lines = [
        "# LDAE evaluation report",
        "",
        f"- bundle: `{bundle.get('path')}` ({bundle.get('name')}, sha256 {sha}…, trained: "
        f"{_fmt(bundle.get('trained'))})",
        f"- cohort: `{cohort.get('path')}` ({cohort.get('n_subjects')} subjects, "
        f"{cohort.get('n_scans')} scans); evaluated: split `{ev.get('split')}`, "
        f"{ev.get('n_subjects')} subjects, {ev.get('n_scans')} scans",
        f"- device {meta.get('device')}, {meta.get('precision')}; napari-ldae "
        f"{meta.get('napari_ldae_version')}; {meta.get('started')}; "
        f"{_fmt(meta.get('seconds'), 3)} s",
        f"- command: `{meta.get('command') or 'napari_ldae.evaluate.report.evaluate'}`",
        "",
        "All image metrics are computed in model space (the bundle's preprocessing contract, "
        f"intensities in [0, 1]); SSIM is 3D, data range 1, window "
        f"{_get(meta, 'ssim.kernel_size')} (the reference code's).",
    ]
    return "\n".join(lines)


def _reconstruction(report: Mapping[str, Any], paper: Mapping[str, float]) -> str:
    rec = report.get("reconstruction", {})
    if rec.get("skipped"):
        return f"## Reconstruction\n\n_{rec['skipped']}_"
    ours_metrics = ("ssim", "ssim_head", "mse", "lpips")
    rows = [["autoencoder (ceiling)", _DASH,
             *(_get(report, f"autoencoder.{m}") for m in ours_metrics), _DASH,
             *(paper.get(f"autoencoder.{m}") for m in ("ssim", "mse", "lpips"))]]
    for T in rec.get("steps", []) or []:
        ours = [_get(rec, f"{m}.T{T}") if isinstance(rec.get(m), Mapping) else None
                for m in ours_metrics]
        rows.append(["LDAE, inverted x_T", T, *ours, _get(rec, f"seconds_per_scan.T{T}"),
                     *(paper.get(f"reconstruction.{m}.T{T}") for m in ("ssim", "mse", "lpips"))])
    sem = report.get("semantic_only", {})
    T = sem.get("steps")
    rows.append(["semantic only, random x_T", T, sem.get("ssim"), None, sem.get("mse"),
                 sem.get("lpips"), _DASH,
                 *(paper.get(f"semantic_only.{m}.T{T}") for m in ("ssim", "mse", "lpips"))])
    return "## Reconstruction\n\n" + _table(
        ["decoding", "T", "SSIM", "SSIM in the head", "MSE", "LPIPS", "s/scan", "paper SSIM",
         "paper MSE", "paper LPIPS"], rows) + (
        "\n\nSSIM in the head: the same SSIM map averaged over the voxels where the input "
        "is above 0 only, so that a clean background cannot lift it.")


def _probes(report: Mapping[str, Any], paper: Mapping[str, float]) -> str:
    probe = report.get("probe", {})
    if probe.get("skipped"):
        return f"## Linear probes on standardised y\n\n_{probe['skipped']}_"
    keys = [f"ad_vs_cn.{m}" for m in ("accuracy", "precision", "recall", "f1", "mcc", "roc_auc")]
    keys += ["age.mae", "age.rmse"]
    rows = [[key.replace("ad_vs_cn.", "AD vs CN ").replace("age.", "age (years) "),
             _get(probe, key), _get(probe, f"latent.{key}"), _get(probe, f"ceiling.{key}"),
             paper.get(f"probe.{key}"),
             paper.get(f"dae.probe.{key}"), paper.get(f"supervised.probe.{key}")]
            for key in keys]
    features = _get(probe, "ceiling.features")
    text = ["## Linear probes on standardised y", "", f"Protocol: {probe.get('protocol', _DASH)}."
            f" Positive class: {_get(probe, 'ad_vs_cn.positive_class') or _DASH} (the paper's "
            "reference code used CN: compare precision/recall/F1 with care). "
            f"{_probe_fit(probe)}", "",
            _table(["metric", "ours", "latent read", "ceiling (true measures)", "paper LDAE",
                    "paper voxel DAE", "paper supervised"], rows), "",
            "Ceiling: the same probes on the same folds, fitted on the cohort's true measures "
            f"instead of y ({', '.join(f'`{f}`' for f in features) if features else 'none'}). "
            f"Latent read: the same probes fitted on {_get(probe, 'latent.features') or _DASH}; "
            "y near it means no linear map of the latent reads more than the encoder does."]
    volumes = probe.get("volumes")
    if volumes and volumes.get("skipped"):
        text += ["", f"The probes on the structure network's volumes: _{volumes['skipped']}_."]
    elif volumes:
        reads = "; ".join(f"{label}: ROC-AUC {_fmt(_get(volumes, f'{source}.ad_vs_cn.roc_auc'))}, "
                          f"age {_fmt(_get(volumes, f'{source}.age.mae'))} years"
                          for source, label in (("scan", "measured on the scans"),
                                                ("autoencoder", "on their autoencoder "
                                                                "reconstructions")))
        text += ["", "The same probes on the structure network's volumes (" + ", ".join(
            f"`{f}`" for f in volumes.get("features", [])) + f"): {reads}. On the "
            "reconstructions they say what the latent holds of them as the decoder renders it."]
    if probe.get("semantic_spread") is not None:
        text += ["", f"Spread of y between scans: {_fmt(probe['semantic_spread'])} (std across "
                 "scans over mean |y|; near 0 means the encoder gives every brain the same code "
                 "and the decoder cannot follow an edit)."]
    directions = probe.get("bundle_directions") or {}
    if directions:
        drows = [[name, d.get("meaning"), d.get("roc_auc"), d.get("pearson_r_with_age"),
                  d.get("n")] for name, d in directions.items()]
        text += ["", "The bundle's own directions on the evaluated scans (no refitting):", "",
                 _table(["direction", "meaning", "ROC-AUC", "r with age", "n"], drows)]
    return "\n".join(text)


def _probe_fit(probe: Mapping[str, Any]) -> str:
    """How the probes were fitted, in one sentence."""
    hp = probe.get("hyperparameters") or {}
    if hp.get("fit") != "regularised":
        return "Fits: the trainer's probes (unregularised, fixed steps; `--probe-fit paper`)."
    chosen = {k: sorted({f.get("penalty") for f in probe.get(k, {}).get("folds", [])} - {None})
              for k in ("ad_vs_cn", "age")}
    return ("Fits: L2 logistic regression (AD vs CN) and ridge regression (age), the penalty "
            f"chosen in each fold from {hp.get('penalties')} by subject-grouped "
            f"{hp.get('inner_folds')}-fold inner cross-validation, or "
            f"{hp.get('fallback_penalty')} where a fold has too few subjects for it "
            f"(`--probe-fit regularised`; chosen: AD vs CN {chosen['ad_vs_cn']}, age "
            f"{chosen['age']}).")


def _interpolation(report: Mapping[str, Any], paper: Mapping[str, float]) -> str:
    it = report.get("interpolation", {})
    if it.get("skipped"):
        return f"## Interpolation between visits\n\n_{it['skipped']}_"
    text = ["## Interpolation between visits", "",
            f"{_fmt(it.get('n_triplets'))} triplets from {_fmt(it.get('n_subjects'))} subjects; "
            f"reference: {it.get('reference', _DASH)}; copy baseline: "
            f"{it.get('copy_baseline', _DASH)}; carried: {it.get('carried', _DASH)}. Pixel "
            "metrics reward \"no change\": the interpolation is only useful where it beats "
            f"copying (the decode does on {_percent(it.get('beats_copy_fraction'))} of the "
            f"triplets, carried on {_percent(it.get('carried_beats_copy_fraction'))}).", "",
            _table(["", "SSIM", "MSE", "carried SSIM", "carried MSE", "copy SSIM", "copy MSE",
                    "n"],
                   [["all triplets", it.get("ssim_mean"), it.get("mse_mean"),
                     it.get("carried_ssim_mean"), it.get("carried_mse_mean"),
                     it.get("copy_baseline_ssim_mean"), it.get("copy_baseline_mse_mean"),
                     it.get("n_triplets")]])]
    if it.get("carried_ventricle_abs_error_ml_mean") is not None:
        text += ["", "Ventricle volume against the truth, mean absolute error (bias) in ml; "
                 f"linear: {it.get('linear_baseline', _DASH)}:", "",
                 _table(["decode", "carried", "copy", "linear"],
                        [[f"{_fmt(it.get(f'{k}abs_error_ml_mean'))} "
                          f"({_fmt(it.get(f'{k}bias_ml'))})"
                          for k in ("ventricle_", "carried_ventricle_", "copy_ventricle_",
                                    "linear_ventricle_")]])]
    for gap, title in (("time_gap", "time gap end − start"),
                       ("prediction_gap", "prediction gap target − start")):
        table = it.get(f"by_{gap}") or {}
        if not table:
            continue
        rows = [[g, t.get("n"), t.get("ssim_mean"), t.get("carried_ssim_mean"),
                 t.get("copy_baseline_ssim_mean"), t.get("mse_mean"),
                 t.get("copy_baseline_mse_mean"),
                 t.get("carried_ventricle_abs_error_ml_mean"),
                 t.get("copy_ventricle_abs_error_ml_mean"),
                 paper.get(f"interpolation.by_{gap}.{g}.ssim_mean")] for g, t in table.items()]
        text += ["", f"By {title} (months):", "",
                 _table(["months", "n", "SSIM", "carried SSIM", "copy SSIM", "MSE", "copy MSE",
                         "carried ventricle error (ml)", "copy ventricle error (ml)",
                         "paper SSIM"], rows)]
    return "\n".join(text)


def _extrapolation(report: Mapping[str, Any]) -> str:
    """Later visits predicted from earlier ones: image metrics and ventricle errors by
    horizon."""
    ex = report.get("extrapolation") or {}
    title = "## Extrapolation: later visits predicted from earlier ones"
    if not ex:
        return ""
    if ex.get("skipped"):
        return f"{title}\n\n_{ex['skipped']}_"
    groups = {"all": ex, **(ex.get("by_horizon") or {})}
    rules = ex.get("y_rules")
    said = f"y rules {', '.join(rules or [])} (default {ex.get('default_y_rule')}; x_T rule " \
        f"{ex.get('x_T_rule')})"
    if rules is None:  # a report from before the y rules compared its x_T rules
        rules = ex.get("x_T_rules") or []
        said = f"x_T rules {', '.join(rules)} (default {ex.get('default_x_T_rule')})"
    image = [[g, t.get("n"), *(t.get(f"{r}_ssim_mean") for r in rules), t.get("copy_ssim_mean"),
              *(t.get(f"{r}_mse_mean") for r in rules), t.get("copy_mse_mean")]
             for g, t in groups.items()]
    text = [title, "", f"{ex.get('n_predictions')} held-out visits of {ex.get('n_subjects')} "
            f"subjects ({ex.get('held_out')}), decoded with {ex.get('steps')} DDIM steps; "
            f"{said}. Reference: "
            f"{ex.get('reference')}; copy: {ex.get('copy_baseline')}.", "",
            _table(["horizon (months)", "n", *(f"SSIM {r}" for r in rules), "SSIM copy",
                    *(f"MSE {r}" for r in rules), "MSE copy"], image)]
    if ex.get("copy_ventricle_abs_error_ml_mean") is not None:
        names = [*rules, *(f"{r}_change" for r in rules), "copy", "linear", "ceiling"]
        vent = [[g, t.get("n"), t.get("true_change_ml_mean"),
                 *(t.get(f"{n}_ventricle_abs_error_ml_mean") for n in names)]
                for g, t in groups.items()]
        text += ["", "Ventricle volume, mean absolute error against the truth (ml); "
                 f"`_change`: {ex.get('change')}; linear: {ex.get('linear_baseline')}; "
                 f"ceiling: {ex.get('ceiling')}.", "",
                 _table(["horizon (months)", "n", "true change", *names], vent)]
    return "\n".join(text)


_STRUCTURES = (("ventricle", "segmentation_validation", "ventricle_ml", "rise"),
               ("hippocampus", "hippocampus_validation", "hippocampus_ml", "fall"))


def _manipulation(report: Mapping[str, Any]) -> str:
    man = report.get("manipulation", {})
    title = "## Manipulation toward AD: ventricles, hippocampi, identity"
    if man.get("skipped"):
        return f"{title}\n\n_{man['skipped']}_"
    text = [title, ""]
    for name, key, column, _ in _STRUCTURES:
        val = man.get(key) or {}
        if not val:
            continue
        rows = [[on, _get(val, f"{on}.pearson_r"), _get(val, f"{on}.mae_ml"),
                 _get(val, f"{on}.mean_relative_error"), _get(val, f"{on}.bias_ml"),
                 _get(val, f"{on}.n")] for on in ("scans", "autoencoder", "cohort_grid")]
        spacing = ", ".join(f"{v:g}" for v in val.get("cohort_spacing_mm") or []) or "?"
        text += [f"{name.capitalize()} measurement against the cohort's `{column}`, on the "
                 "real scans (model grid), on their autoencoder reconstructions and on the "
                 f"cohort's files at their own resolution ({spacing} mm) (method: "
                 f"{val.get('method')}):", "",
                 _table(["measured on", "r", "MAE (ml)", "mean rel. error", "bias (ml)", "n"],
                        rows), ""]
    by_strength = {name: man.get(f"{name}_ml_by_strength") or {} for name, *_ in _STRUCTURES}
    strengths = sorted({s for v in by_strength.values() for s in v}, key=float)
    if strengths:
        text += [f"Direction `{man.get('direction')}`, baseline scans edited with "
                 f"{man.get('steps')} DDIM steps:", "",
                 _table(["strength", "mean measured ventricles (ml)",
                         "mean measured hippocampi (ml)"],
                        [[s, by_strength["ventricle"].get(s), by_strength["hippocampus"].get(s)]
                         for s in strengths]), ""]
    rows = [[name, expected, man.get(f"{name}_monotonic_fraction"),
             man.get(f"{name}_change_ml_per_unit")] for name, _, _, expected in _STRUCTURES]
    text += [_table(["structure", "expected", "monotonic (fraction of subjects)",
                     "mean slope (ml per unit)"], rows), "", *_deformation(man), *_known(man),
             f"Identity kept at strength {_fmt(man.get('identity_strength'))}: "
             f"{_percent(man.get('identity_kept_fraction'))} of the edits are closer (MSE) to "
             "their own subject's reconstruction than to any other evaluated subject's (mean MSE "
             f"to their own {_fmt(man.get('identity_mse_own_mean'))}, to the nearest other "
             f"{_fmt(man.get('identity_mse_nearest_other_mean'))})."]
    return "\n".join(text)


def _deformation(man: Mapping[str, Any]) -> list[str]:
    """The change by deformation: validated on real visits, then on the edits."""
    names = [(name, expected) for name, *_, expected in _STRUCTURES
             if man.get(f"{name}_deformation_validation")]
    if not names:
        return []
    check = [[name, _get(man, f"{name}_deformation_validation.n"),
              _get(man, f"{name}_deformation_validation.mean_true_change_ml"),
              _get(man, f"{name}_deformation_validation.mean_measured_change_ml"),
              _get(man, f"{name}_deformation_validation.pearson_r"),
              _percent(_get(man, f"{name}_deformation_validation.same_sign_fraction"))]
             for name, _ in names]
    edits = [[name, expected, man.get(f"{name}_deformation_monotonic_fraction"),
              man.get(f"{name}_deformation_change_ml_per_unit")] for name, expected in names]
    method = _get(man, f"{names[0][0]}_deformation_validation.method")
    return [f"Change by deformation (method: {method}), from each subject's first real "
            "visit to its last, against the true change:", "",
            _table(["structure", "subjects", "mean true change (ml)",
                    "mean measured change (ml)", "r", "same sign"], check), "",
            "The same from the strength-0 decode to each edit:", "",
            _table(["structure", "expected", "monotonic (fraction of subjects)",
                    "mean slope (ml per unit)"], edits), ""]


def _known(man: Mapping[str, Any]) -> list[str]:
    """The known enlargement on the scans and on their autoencoder reconstructions."""
    known = man.get("ventricle_known_change")
    if not known:
        return []
    return [f"Known change ({known['method']}; {known['n']} subjects): the ventricles grow by "
            f"{_fmt(known['scan_change_ml_mean'])} ml on the scans and by "
            f"{_fmt(known['autoencoder_change_ml_mean'])} ml on their autoencoder "
            f"reconstructions: the autoencoder keeps {_fmt(known['autoencoder_kept_fraction'])} "
            f"of the change ({_fmt(known['autoencoder_kept_min'])}–"
            f"{_fmt(known['autoencoder_kept_max'])}).", ""]


def _code_use(report: Mapping[str, Any]) -> str:
    cu = report.get("code_use", {})
    title = "## Code use: does the decoder follow y?"
    if cu.get("skipped"):
        return f"{title}\n\n_{cu['skipped']}_"
    return "\n".join([
        title, "",
        "One subject's x_T decoded with another subject's y, against the same x_T with its own "
        "y: ‖decode(x_T_a, y_b) − decode(x_T_a, y_a)‖ / ‖decode(x_T_b, y_b) − decode(x_T_a, "
        "y_a)‖ (0: y is ignored; 1: y alone carries the whole difference between the subjects).",
        "", _table(["swap fraction, mean", "min", "max", "pairs", "T"],
                   [[cu.get("swap_fraction_mean"), cu.get("swap_fraction_min"),
                     cu.get("swap_fraction_max"), cu.get("n_pairs"), cu.get("steps")]])])


def _notes(report: Mapping[str, Any]) -> str:
    notes = report.get("notes") or {}
    if not notes:
        return ""
    return "## Notes (why a value is missing)\n\n" + "\n".join(
        f"- `{k}`: {v}" for k, v in sorted(notes.items()))
