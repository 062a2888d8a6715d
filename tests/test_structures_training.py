"""The structure network's trainer (napari_ldae.train.structures): its examples are the scans
as a measurement samples them, with the truth masks on the same box, and a run resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    from napari_ldae.train.structures import make_examples

    folder = tmp_path_factory.mktemp("examples")
    make_examples(folder, subjects=1, first_seed=900001, workers=1)
    return folder


def test_examples_hold_each_grid_and_the_truth_on_the_box(examples):
    from napari_ldae.data.structures import SHAPE, SPACING_MM
    from napari_ldae.train.structures import GRIDS_MM, VISITS

    [path] = examples.glob("sub-*.npz")
    with np.load(path) as ex:
        assert ex["inputs"].shape == (VISITS * len(GRIDS_MM), *SHAPE)
        assert ex["labels"].shape == (VISITS, 2, *SHAPE)
        # the box holds both structures whole: its fractions add up to the true volumes
        ml = ex["labels"].astype(np.float64).sum((2, 3, 4)) * SPACING_MM**3 / 1000
        np.testing.assert_allclose(ml, ex["truth"], rtol=0.01)
        assert np.all(ex["inputs"].max((1, 2, 3)) > 1.0)  # normalised to the 99th percentile


def test_a_run_checkpoints_resumes_and_writes_its_weights(examples, tmp_path):
    from safetensors import safe_open

    from napari_ldae.train.structures import fit, validate

    fit(examples, tmp_path, steps=2, batch=1)
    weights = fit(examples, tmp_path, steps=3, batch=1, resume=True)
    with safe_open(weights, "pt") as f:
        info = json.loads(f.metadata()["training"])
    assert info["steps"] == 3 and info["subjects"] == 1
    import torch

    from napari_ldae.data.structures import load_network

    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == 3 and state["runs"] == [[0, 2], [2, 3]]
    assert info["runs"] == [[0, 2], [2, 3]]
    errors = validate(examples, load_network(weights))
    assert set(errors) == {"1.5 mm", "3 mm", "6 mm"}
