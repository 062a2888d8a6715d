"""Results sit exactly on their source scan in napari's world (RAS mm), oblique or not."""

from __future__ import annotations

import numpy as np
import pytest
from nifti_factory import make_affine, rotation

from napari_ldae.data.io import Scan
from napari_ldae.gui._change import show_difference
from napari_ldae.gui._layers import ResultGeometry, scan_from_layer, show_image
from napari_ldae.napari_io import scan_layer_data

pytestmark = pytest.mark.filterwarnings("ignore:System theme detection")

GEOMETRIES = {
    "lps_offset": make_affine((6.0, 6.0, 6.0), flips=(-1, -1, 1), origin=(70.0, 60.0, -75.0)),
    "permuted": make_affine((6.0, 5.0, 6.5), flips=(1, -1, 1), perm=(2, 0, 1),
                            origin=(-80.0, 70.0, -60.0)),
    "oblique": make_affine((6.0, 6.0, 6.0), rot=rotation(12, -6, 18),
                           origin=(-70.0, -80.0, -60.0)),
}


def _blob_scan(affine: np.ndarray, shape=(28, 30, 26)) -> Scan:
    """A Gaussian blob away from the centre of the grid (its world position is the test)."""
    idx = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    centre = np.array(shape) * np.array([0.35, 0.6, 0.45])
    r2 = sum((i - c) ** 2 for i, c in zip(idx, centre, strict=True))
    return Scan.from_array((1000 * np.exp(-r2 / 8.0) + 50).astype(np.float32), affine)


def _world_centroid(layer) -> np.ndarray:
    data = np.asarray(layer.data, float)
    w = np.clip(data - np.percentile(data, 50), 0, None)
    idx = np.indices(data.shape).reshape(3, -1)
    centroid = (idx * w.reshape(-1)).sum(axis=1) / w.sum()
    return np.asarray(layer.data_to_world(centroid))


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_result_voxels_land_on_the_source(make_napari_viewer, session, name):
    scan = _blob_scan(GEOMETRIES[name])
    viewer = make_napari_viewer()
    data, kwargs, _ = scan_layer_data(scan, name="src")
    source = viewer.add_image(data, **kwargs)
    geometry = ResultGeometry.of(session, scan_from_layer(source))
    assert geometry.space == ("scan" if name == "oblique" else "model")
    model_input = session.prepare(scan)[0, 0].numpy()  # what an identity decode would give
    meta = geometry.result_metadata("image", _record(geometry, {}), "src")
    result = show_image(viewer, "result", geometry.units(geometry.place(model_input)),
                        geometry, source, meta)
    np.testing.assert_allclose(_world_centroid(result), _world_centroid(source), atol=1.0)
    if geometry.space == "model":  # every voxel at the model grid's true world position
        affine = session.model_affine(scan)
        for v in ([0, 0, 0], [5, 17, 30], [31, 31, 31]):
            np.testing.assert_allclose(result.data_to_world(v), (affine @ [*v, 1])[:3])
    else:  # resampled onto the scan grid: the source's own placement
        assert result.data.shape == source.data.shape
        np.testing.assert_allclose(result.scale, source.scale)
        np.testing.assert_allclose(result.translate, source.translate)
    assert tuple(result.contrast_limits) == pytest.approx(tuple(source.contrast_limits))


def test_difference_layers_and_in_place_updates(make_napari_viewer, session):
    scan = _blob_scan(GEOMETRIES["lps_offset"])
    viewer = make_napari_viewer()
    data, kwargs, _ = scan_layer_data(scan, name="src")
    source = viewer.add_image(data, **kwargs)
    geometry = ResultGeometry.of(session, scan)
    meta = geometry.result_metadata("difference", _record(geometry, {"strength": 1.0}), "src")
    diff = np.zeros((32, 32, 32), np.float32)
    diff[3, 4, 5], diff[6, 7, 8] = 0.2, -0.1
    layer = show_difference(viewer, "Δ", geometry.units(diff, difference=True), geometry, meta)
    lo, hi = layer.contrast_limits
    assert lo == -hi and hi == pytest.approx(0.2 * (scan.intensity_range[1] - 50.0), rel=0.01)
    assert layer.blending == "translucent" and layer.rendering == "translucent"
    cmap = layer.colormap
    assert cmap.map(np.array([0.5]))[0, 3] == 0.0  # zero change is transparent
    again = show_difference(viewer, "Δ", -diff, geometry, meta)
    assert again is layer and len(viewer.layers) == 2 and layer.data[3, 4, 5] == -0.2
    assert source.name == "src"


@pytest.mark.parametrize("name", ["oblique", "lps_offset"])
def test_blending_displayed_anchors_equals_displaying_the_blend(session, name):
    """The live preview blends anchors placed in the worker: placing is linear, so it is exact."""
    from napari_ldae.gui._preview import Anchors, blend_anchors

    geometry = ResultGeometry.of(session, _blob_scan(GEOMETRIES[name]))
    rng = np.random.default_rng(0)
    values = np.array([-2.0, 0.0, 2.0])
    volumes = rng.random((3, 32, 32, 32), dtype=np.float32)
    anchors = Anchors(("k",), values, geometry.for_display(volumes, volumes[1]))
    image, diff = anchors.shown_at(0.7)
    expected = geometry.for_display(blend_anchors(values, volumes, 0.7), volumes[1])
    np.testing.assert_allclose(image, expected[0], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(diff, expected[1], rtol=1e-5, atol=1e-3)


def _record(geometry, provenance: dict):
    """A model-space result record of the geometry's scan (what result layers carry)."""
    from napari_ldae.operations import Result

    volume = np.zeros(geometry.session.contract.shape, np.float32)
    return Result(volume, (volume,), geometry.scan, geometry.session.contract, provenance)
