"""Region volumes (napari_ldae.data.regions) on the template itself, the ventricle and
hippocampal measurements against the synthetic ground truth on the model grids (6 mm and 3 mm),
what is not a brain, and the volume table."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest

from napari_ldae.data.regions import (
    MIN_MATCH,
    REGIONS,
    measure_regions,
    read_volumes_tsv,
    write_volumes_tsv,
)
from napari_ldae.errors import LDAEError

SPACING = 6.0


@pytest.fixture(scope="module")
def template():
    """The ICBM152 T1 at 6 mm (anti-aliased, on its own MNI grid) and its affine."""
    from napari_ldae.data.mni import template as mni_template

    t1, _, affine = mni_template(SPACING)
    return np.array(t1), affine


@pytest.fixture(scope="module")
def template_volumes(template):
    return measure_regions(*template)


def test_the_template_measures_as_its_own_regions(template_volumes):
    """The template measures as its own regions: lateral ventricles 13.9 ml and the hippocampal
    region 6.1 ml at 1 mm (docs/synthetic-cohort.md; the ventricles' partial-volume curve is
    calibrated on the template, so they read within 5 % of it at 1.5–6 mm), a brain of about
    1.9 l that the tissues partition."""
    ml = template_volumes.ml
    assert set(ml) == set(REGIONS) and template_volumes.match > 0.95
    assert ml["lateral_ventricles"] == pytest.approx(13.9, rel=0.06)
    assert ml["hippocampal_region"] == pytest.approx(6.1, rel=0.15)
    tissues = ml["grey_matter"] + ml["white_matter"] + ml["csf"]
    assert tissues == pytest.approx(ml["whole_brain"], rel=1e-4)
    assert 1700 < ml["whole_brain"] < 2000 and ml["grey_matter"] > ml["white_matter"] > ml["csf"]


def test_a_larger_world_scales_every_volume(template, template_volumes):
    """The same voxels 10 % larger in each direction, with their map back to MNI: every
    volume is 1.1³ times the template's (the registration sees the same images)."""
    volume, affine = template
    scale = np.diag([1.1, 1.1, 1.1, 1.0])
    larger = measure_regions(volume, scale @ affine, to_mni=np.linalg.inv(scale))
    for name, ml in template_volumes.ml.items():
        assert larger.ml[name] == pytest.approx(1.1**3 * ml, rel=1e-4), name


@functools.lru_cache(maxsize=2)
def _model_space_subjects(spacing: float, shape: tuple[int, int, int],
                          subjects: int) -> list[tuple[np.ndarray, np.ndarray, dict]]:
    """Baseline scans of subjects the synthetic generator makes (various ages, diagnoses and
    constitutions), on the model grid after preprocessing: (volume, affine, truth). The truth is
    the 3 mm generator's: at 6 mm the generator's own truth reads about 20 % low
    (docs/synthetic-cohort.md)."""
    from napari_ldae.data.io import Scan
    from napari_ldae.data.preprocess import PreprocessContract, model_affine, preprocess
    from napari_ldae.data.synthetic import make_subject

    contract = PreprocessContract(spacing=(spacing,) * 3, shape=shape)
    out = []
    for seed in range(100, 100 + subjects):
        visit = make_subject(seed, spacing=spacing, n_visits=1).visits[0]
        truth = visit.truth if spacing == 3.0 else make_subject(seed, 3.0, 1).visits[0].truth
        scan = Scan.from_array(visit.data, visit.affine)
        out.append((preprocess(scan, contract), model_affine(scan, contract), truth))
    return out


#: (spacing, grid, subjects, (mean, max) relative error bound of the ventricles, of the
#: hippocampal region): the tiny preset's grid, then the demo preset's.
GRIDS = [(6.0, (32, 32, 32), 8, (0.08, 0.2), (0.12, 0.35)),
         (3.0, (64, 80, 64), 5, (0.05, 0.1), (0.1, 0.25))]


@pytest.mark.parametrize(("spacing", "shape", "subjects", "ventricles", "hippocampi"), GRIDS)
def test_structures_track_truth_on_the_model_grid(spacing, shape, subjects, ventricles,
                                                  hippocampi):
    """Measured on the model grid after preprocessing (min-max units, cropped), against the
    true volumes of subjects the structure network never saw (its training seeds start at
    500000)."""
    from napari_ldae.data.regions import structure_volumes

    truth, measured = [], []
    for volume, affine, true in _model_space_subjects(spacing, shape, subjects):
        ml = structure_volumes(volume, affine)
        truth.append([true["ventricle_ml"], true["hippocampus_ml"]])
        measured.append([ml["lateral_ventricles"], ml["hippocampal_region"]])
    truth_arr, measured_arr = np.asarray(truth), np.asarray(measured)
    relative = np.abs(measured_arr / truth_arr - 1.0)
    assert np.corrcoef(truth_arr[:, 0], measured_arr[:, 0])[0, 1] > 0.95
    for k, (mean, largest) in enumerate((ventricles, hippocampi)):
        assert relative[:, k].mean() < mean and relative[:, k].max() < largest


def test_structure_network_sees_its_box(template):
    """The box is sampled where MNI says, normalised to its 99th percentile; a volume that
    misses the box is an error."""
    from napari_ldae.data.structures import SHAPE, box_input, structures_ml

    volume, affine = template
    x = box_input(volume, affine)
    assert x.shape == SHAPE and np.percentile(x, 99) == pytest.approx(1.0, abs=1e-6)
    far = affine.copy()
    far[:3, 3] += 500.0
    with pytest.raises(LDAEError, match="MNI152"):
        structures_ml(volume, far)


def test_shipped_structure_network_says_how_it_was_trained():
    from safetensors import safe_open

    from napari_ldae._resources import resource_path
    from napari_ldae.data.structures import WEIGHTS

    with safe_open(resource_path(*WEIGHTS.split("/")), "np") as f:
        info = json.loads(f.metadata()["training"])
    assert info["steps"] > 0 and info["grids_mm"] == [1.5, 3.0, 6.0] and info["subjects"] > 100


def test_a_fine_volume_is_measured_on_a_coarser_grid():
    """A 1 mm volume is measured at MEASURE_MM (1.5 mm): the same world box, its mean kept."""
    from napari_ldae.data.regions import MEASURE_MM, _measurable

    rng = np.random.default_rng(0)
    fine = rng.random((30, 33, 30)).astype(np.float32)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (-10.0, 5.0, 2.0)
    coarse, coarse_affine = _measurable(fine, affine)
    assert coarse.shape == (20, 22, 20)
    np.testing.assert_allclose(np.linalg.norm(coarse_affine[:3, :3], axis=0), MEASURE_MM)
    np.testing.assert_allclose(coarse_affine[:3, 3], affine[:3, 3])
    assert coarse[2:-2, 2:-2, 2:-2].mean() == pytest.approx(fine.mean(), abs=0.01)
    assert np.array_equal(_measurable(fine, np.diag([2.0, 2.0, 2.0, 1.0]))[0], fine)


def test_what_is_not_a_brain(template):
    volume, affine = template
    noise = np.random.default_rng(0).random(volume.shape).astype(np.float32)
    measured = measure_regions(noise, affine)
    assert measured.match < MIN_MATCH and all(math.isnan(v) for v in measured.ml.values())
    with pytest.raises(LDAEError, match="MNI152"):
        measure_regions(np.zeros_like(volume), affine)
    far = affine.copy()
    far[:3, 3] += 500.0
    with pytest.raises(LDAEError, match="MNI152"):
        measure_regions(volume, far)
    with pytest.raises(LDAEError, match="3D"):
        measure_regions(volume[0], affine)
    with pytest.raises(LDAEError, match="invertible"):
        measure_regions(volume, affine, to_mni=np.zeros((4, 4)))


def test_volume_table_round_trip(tmp_path):
    rows = {"sub-01_T1w": {name: 10.0 + i for i, name in enumerate(REGIONS)},
            "sub-01_edit-AD_strength-2": {**dict.fromkeys(REGIONS, 1.25),
                                          "hippocampal_region": math.nan}}
    path = write_volumes_tsv(tmp_path / "volumes.tsv", rows)
    header = path.read_text().splitlines()[0].split("\t")
    assert header == ["output", *REGIONS]
    assert "n/a" in path.read_text()
    back = read_volumes_tsv(path)
    assert list(back) == list(rows)
    assert back["sub-01_T1w"] == rows["sub-01_T1w"]
    assert math.isnan(back["sub-01_edit-AD_strength-2"]["hippocampal_region"])
    sidecar = json.loads((tmp_path / "volumes.json").read_text())
    assert all(sidecar[name]["Units"] == "mL" for name in REGIONS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["volumes.json", "volumes.tsv"]
    with pytest.raises(FileExistsError):
        write_volumes_tsv(path, rows)
    write_volumes_tsv(path, {"one": rows["sub-01_T1w"]}, overwrite=True)
    assert list(read_volumes_tsv(path)) == ["one"]
    with pytest.raises(LDAEError, match="no volumes"):
        write_volumes_tsv(tmp_path / "empty.tsv", {})


def test_volume_table_with_changes_by_deformation(tmp_path):
    """The change-by-deformation columns follow the regions when some row has them."""
    from napari_ldae.data.regions import CHANGE_BY_DEFORMATION

    rows = {"input": dict.fromkeys(REGIONS, 2.0),
            "edit": {**dict.fromkeys(REGIONS, 3.0),
                     "hippocampal_region_change_by_deformation": -0.25}}
    path = write_volumes_tsv(tmp_path / "volumes.tsv", rows)
    assert path.read_text().splitlines()[0].split("\t") == ["output", *REGIONS,
                                                            *CHANGE_BY_DEFORMATION]
    back = read_volumes_tsv(path)
    assert back["edit"]["hippocampal_region_change_by_deformation"] == -0.25
    assert math.isnan(back["input"]["hippocampal_region_change_by_deformation"])
    assert math.isnan(back["edit"]["lateral_ventricles_change_by_deformation"])
    sidecar = json.loads((tmp_path / "volumes.json").read_text())
    assert "deformation" in sidecar["hippocampal_region_change_by_deformation"]["Description"]
