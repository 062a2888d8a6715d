"""The transfer of a model-grid change onto a full-resolution scan, ``warp`` against ``intensity``.

``python -m benchmarks.transfer [--seed 7 [8 ...]] [--scan-mm 1] [--model-mm 3] [--bundle]
[--unguided] [--json OUT]``

One synthetic AD subject per seed (with several, the summary gives each ratio's mean and range),
generated at the model's spacing and at the scan's (the same anatomy).
Three changes are carried from the model grid onto the scan, both ways:

- ``enlargement``: a known ventricle enlargement (``napari_ldae.data.known_change``: a smooth
  field pushing tissue away from the template's ventricles, up to 2 mm) applied to the
  model-grid scan; the same field applied to the full-resolution scan (cubic interpolation) is
  the true result;
- ``visits``: the first and last visits (years apart) on the model grid, smoothed by one voxel as
  a decoder would, as "reconstruction" and "edit"; the real last visit at full resolution is the
  true result (it differs from the carried one by noise, bias and contrast too);
- ``model`` (``--bundle``): the built-in demo bundle's reconstruction of the full-resolution scan
  and its edit toward AD at strength ``MODEL_STRENGTH``, decoded with the bundle's carry steps
  (those of a result shown on the scan); no true result.

For each: the lateral-ventricle change of each result (region volumes at the scan's spacing)
over the change measured on the model-grid pair, and the same for the hippocampal region;
sharpness outside the change (brain voxels over
``OUTSIDE_MM`` from the template's ventricles): mean gradient magnitude and Laplacian energy of
each result over the input's; the warp's smallest Jacobian determinant in the brain; the root
mean square difference to the true result near the ventricles; CPU and wall seconds of each
transfer with one SimpleITK thread and with two; and ``model_grid_self_check``, the registration
alone: the model-grid reconstruction warped by its own deformation to the edit, its ventricle
change over the edit's (1 when demons reproduces the change it was asked for). The warp's demons
is guided by the structures as the product's is; ``--unguided`` measures it without the guide.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

OUTSIDE_MM = 15.0  # "outside the change": brain voxels this far from the template's ventricles
MODEL_STRENGTH = 2.0


def _visits(seed: int, spacing: float):
    from napari_ldae.data.synthetic import make_subject

    visits = make_subject(seed, spacing=spacing, n_visits=4, diagnosis="AD").visits
    return visits[0], visits[-1]


def _enlargement(model_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """The known field (3, X, Y, Z; mm) on the model-spacing synthetic grid, and that grid's
    affine: pulling the image back through it enlarges the ventricles (the field of
    ``evaluate``'s ``ventricle_known_change``)."""
    from napari_ldae.data.known_change import ventricle_enlargement
    from napari_ldae.data.synthetic_template import template_grid

    grid = template_grid(model_mm)
    return ventricle_enlargement(grid.affine, grid.shape), grid.affine


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, round(time.perf_counter() - wall, 3), round(time.process_time() - cpu, 3)


def _sharpness(volume: np.ndarray, where: np.ndarray) -> dict[str, float]:
    gradient = np.sqrt(sum(g**2 for g in np.gradient(volume)))
    return {"gradient": float(gradient[where].mean()),
            "laplacian_energy": float((ndi.laplace(volume)[where] ** 2).mean())}


def _case(name: str, scan, pair, model_affine: np.ndarray, scale: float,
          truth: np.ndarray | None, masks: dict[str, np.ndarray], guided: bool) -> dict:
    """Both transfers of one model-grid pair onto ``scan``, measured."""
    import SimpleITK as sitk

    from napari_ldae.data.transfer import TRANSFERS, carry, scan_to_model_voxels

    reconstruction, edit = pair
    guide = model_affine if guided else None
    matrix = scan_to_model_voxels(scan.affine, model_affine)
    reconstruction_ml = _structures(reconstruction, model_affine)
    model_change, hippocampal_change = _structures(edit, model_affine) - reconstruction_ml
    before, hippocampus_before = _structures(scan.data, scan.affine)
    input_sharpness = _sharpness(scan.data, masks["outside"])
    out = {"case": name, "model_change_ml": model_change, "scan_ventricles_ml": before,
           "model_hippocampal_change_ml": hippocampal_change,
           "model_grid_self_check": (_self_check(reconstruction, edit, model_affine, guide)
                                     - reconstruction_ml[0]) / model_change,
           "transfers": {}}
    if truth is not None:
        out["true_change_ml"] = _structures(truth, scan.affine)[0] - before
        out["rmse_input_to_truth_near_ventricles"] = _rmse(scan.data, truth, masks["near"])
    for method in TRANSFERS:
        row: dict = {}
        for threads in (1, 2):
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
            result, wall, cpu = _timed(lambda m=method: carry(
                m, scan.data, matrix, reconstruction, edit, scale=scale, inside=masks["brain"],
                grid_to_mni=guide))
            row[f"wall_s_{threads}_threads"], row[f"cpu_s_{threads}_threads"] = wall, cpu
        change, hippocampal = _structures(result.data, scan.affine) - (before, hippocampus_before)
        sharp = _sharpness(result.data, masks["outside"])
        row |= {"change_ml": change, "change_over_model_change": change / model_change,
                "hippocampal_change_over_model_change": hippocampal / hippocampal_change,
                "sharpness_ratio": {k: v / input_sharpness[k] for k, v in sharp.items()},
                "unchanged_fraction_of_brain":
                    float((result.data == scan.data)[masks["brain"]].mean())}
        if truth is not None:
            row["rmse_to_truth_near_ventricles"] = _rmse(result.data, truth, masks["near"])
        if result.log_jacobian is not None:
            row["jacobian_min_in_brain"] = float(np.exp(result.log_jacobian[masks["brain"]].min()))
            row["log_jacobian_range"] = [float(result.log_jacobian.min()),
                                         float(result.log_jacobian.max())]
        out["transfers"][method] = row
    return out


def _self_check(reconstruction: np.ndarray, edit: np.ndarray, affine: np.ndarray,
                guide: np.ndarray | None) -> float:
    """The ventricles (ml) of the model-grid reconstruction warped by its own deformation to
    the edit: the registration alone, on the grid it was estimated on, without the 1 mm scan."""
    from napari_ldae.data.transfer import estimate_deformation, model_brain, warp_scan

    deformation = estimate_deformation(reconstruction, edit, grid_to_mni=guide)
    warped = warp_scan(reconstruction, np.eye(4), deformation,
                       inside=model_brain(reconstruction, edit))
    return float(_structures(warped.data, affine)[0])


def _structures(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """(lateral ventricles, hippocampal region) in ml, from one pass of the structure network."""
    from napari_ldae.data.regions import structure_volumes

    ml = structure_volumes(volume, affine)
    return np.array([ml["lateral_ventricles"], ml["hippocampal_region"]])


def _rmse(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    return float(np.sqrt(((a - b)[where] ** 2).mean()))


def _model_pair(scan) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray, float]:
    """The demo bundle's reconstruction and AD edit of ``scan``, the model grid's affine and
    the scan units per model unit."""
    import tempfile

    import torch

    from napari_ldae.core.progress import drain
    from napari_ldae.operations import iter_edit
    from napari_ldae.operations_transfer import full_steps
    from napari_ldae.session import Session

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as cache:
        session = Session(cache_dir=Path(cache))
        steps = full_steps(session.steps, "scan")  # what the product carries onto a scan
        result = drain(iter_edit(session, scan, "AD", [MODEL_STRENGTH], steps))
    lo, hi = scan.intensity_range
    return (result.references[0], result.volumes[0]), session.model_affine(scan), hi - lo


def run(seed: int, scan_mm: float, model_mm: float, bundle: bool, guided: bool = True) -> dict:
    from napari_ldae.data.io import Scan
    from napari_ldae.data.known_change import pulled_back
    from napari_ldae.data.synthetic_template import ventricle_mask_template

    (first, last), (scan_first, scan_last) = _visits(seed, model_mm), _visits(seed, scan_mm)
    scan = Scan.from_array(scan_first.data, scan_first.affine)
    template_ventricles = ventricle_mask_template(scan_mm) > 0.5
    distance = ndi.distance_transform_edt(~template_ventricles, sampling=scan_mm)
    brain = scan.data > 0
    masks = {"brain": brain, "outside": brain & (distance > OUTSIDE_MM),
             "near": brain & (distance <= 6.0)}
    field, field_affine = _enlargement(model_mm)
    enlarged = pulled_back(first.data, first.affine, field, field_affine, order=1)
    true_enlarged = pulled_back(scan.data, scan.affine, field, field_affine, order=3)
    smooth = [ndi.gaussian_filter(v.data, 1.0) * (v.data > 0) for v in (first, last)]
    cases = [_case("enlargement", scan, (first.data, enlarged), first.affine, 1.0,
                   true_enlarged, masks, guided),
             _case("visits", scan, smooth, first.affine, 1.0, scan_last.data, masks, guided)]
    if bundle:
        pair, model_affine, scale = _model_pair(scan)
        cases.append(_case("model", scan, pair, model_affine, scale, None, masks, guided))
    return {"seed": seed, "scan_mm": scan_mm, "model_mm": model_mm, "guided": guided,
            "scan_shape": list(scan.shape), "cases": cases}


def _summary(runs: list[dict]) -> dict:
    """Each case's carried / model change per transfer over the subjects: mean, min, max."""
    out: dict = {}
    for case in runs[0]["cases"]:
        name = case["case"]
        for method in case["transfers"]:
            ratios = [c["transfers"][method]["change_over_model_change"]
                      for r in runs for c in r["cases"] if c["case"] == name]
            out[f"{name}/{method}"] = _spread(ratios)
            out[f"{name}/{method}/hippocampal_region"] = _spread(
                [c["transfers"][method]["hippocampal_change_over_model_change"]
                 for r in runs for c in r["cases"] if c["case"] == name])
        out[f"{name}/model_grid_self_check"] = _spread(
            [c["model_grid_self_check"] for r in runs for c in r["cases"] if c["case"] == name])
    return out


def _spread(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "min": float(min(values)),
            "max": float(max(values)), "n": len(values)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.transfer", description=__doc__)
    parser.add_argument("--seed", type=int, nargs="+", default=[7])
    parser.add_argument("--scan-mm", type=float, default=1.0)
    parser.add_argument("--model-mm", type=float, default=3.0)
    parser.add_argument("--bundle", action="store_true", help="also the demo bundle's edit")
    parser.add_argument("--unguided", action="store_true",
                        help="the warp's demons without the structure guide")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    runs = [run(seed, args.scan_mm, args.model_mm, args.bundle, not args.unguided)
            for seed in args.seed]
    text = json.dumps(runs[0] if len(runs) == 1 else {"summary": _summary(runs), "runs": runs},
                      indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
