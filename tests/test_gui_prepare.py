"""The encode panel's prepare choice and its QC layers, headless (pytest-xvfb), on a tiny random
bundle. The raw scan is the skull-stripped ICBM152 brain moved off the MNI position (so only
the registration runs: no skull stripping), written like a scanner's file."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_ldae.data.mni import template
from napari_ldae.data.synthetic_head import motion
from napari_ldae.gui import _jobs
from napari_ldae.gui._state import get_state
from napari_ldae.gui.encode_widget import TEMPLATE_LAYER, EncodeWidget

pytestmark = [pytest.mark.filterwarnings("ignore:System theme detection"),
              pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture
def viewer(make_napari_viewer, session, monkeypatch):
    monkeypatch.setenv(_jobs.SYNC_ENV, "1")
    v = make_napari_viewer()
    get_state(v).set_session(session)
    get_state(v).set_steps({"encode": 1, "decode": 1, "preview": 1, "carry": 1})
    return v


@pytest.fixture(scope="module")
def raw_file(tmp_path_factory):
    """The template brain at 3 mm after the subject moved (8° pitch, 10 mm)."""
    t1, _, affine = template(3.0)
    world = motion((8.0, 0.0, 4.0), (10.0, -6.0, 5.0))
    m = np.linalg.inv(affine) @ np.linalg.inv(world) @ affine
    data = ndi.affine_transform(t1, m[:3, :3], m[:3, 3], output_shape=t1.shape, order=1)
    path = tmp_path_factory.mktemp("raw") / "sub-01_T1w.nii.gz"
    nib.save(nib.Nifti1Image((data * 900.0).astype(np.float32), affine), path)
    return path


def _encode(viewer, layer, choice: str) -> EncodeWidget:
    enc = EncodeWidget(viewer)
    viewer.window.add_dock_widget(enc)
    enc.layer_combo.select(layer.name)
    enc.prepare.setCurrentText(choice)
    enc.controls.button.click()
    return enc


def test_the_choice_is_offered(viewer) -> None:
    enc = EncodeWidget(viewer)
    choices = [enc.prepare.itemText(i) for i in range(enc.prepare.count())]
    assert choices == ["auto", "yes", "no"] and enc.prepare.currentText() == "auto"
    assert "MNI" in enc.prepare.toolTip()


@pytest.mark.slow
def test_auto_prepares_a_raw_scan_shows_its_qc_and_exports_back(viewer, raw_file,
                                                                 tmp_path) -> None:
    from napari.layers import Image, Labels

    from napari_ldae.gui.export_widget import ExportWidget
    from napari_ldae.gui.manipulate_widget import ManipulateWidget

    raw = viewer.open(str(raw_file), plugin="napari-ldae")[0]
    enc = _encode(viewer, raw, "auto")
    status = enc.controls.status.text()
    assert "prepared (auto: the brain's centre is" in status and "encoded" in status
    assert enc.codes is not None and enc.preparation.ran
    mask = viewer.layers[f"{raw.name} [brain mask]"]
    assert isinstance(mask, Labels) and mask.contour == 1
    assert mask.data.shape == raw.data.shape and mask.data.any()
    np.testing.assert_allclose(mask.scale, raw.scale)
    np.testing.assert_allclose(mask.translate, raw.translate)
    prepared, tpl = viewer.layers[f"{raw.name} [prepared]"], viewer.layers[TEMPLATE_LAYER]
    assert isinstance(prepared, Image) and prepared.data.shape == (32, 32, 32)
    assert prepared.blending == "additive" and prepared.colormap.name == "magenta"
    names = [ly.name for ly in viewer.layers]
    assert names.index(TEMPLATE_LAYER) < names.index(prepared.name)  # brain over template
    np.testing.assert_allclose(prepared.scale, (6.0, 6.0, 6.0))
    assert tpl.data.shape == template(2.0)[0].shape and tpl.colormap.name == "green"

    # the prepared brain is the model's input: its edit exports onto the raw scan's voxels
    manip = ManipulateWidget(viewer)
    manip.layer_combo.select(prepared.name)
    manip.slider.setValue(2.0)
    manip.render_full()
    exp = ExportWidget(viewer)
    exp.folder.setText(str(tmp_path))
    exp.select([f"{prepared.name} [edit]"])
    exp.controls.button.click()
    [path] = exp.written
    src, out = nib.load(raw_file), nib.load(path)
    assert out.shape == src.shape and np.allclose(out.affine, src.affine)
    inside = enc.preparation.prepared.mask
    before, after = src.get_fdata(dtype=np.float32), out.get_fdata(dtype=np.float32)
    assert np.array_equal(after[~inside], before[~inside])
    assert not np.allclose(after[inside], before[inside])

    again = _encode(viewer, prepared, "auto")  # the prepared brain is recognised
    assert "already prepared, from sub-01_T1w.nii.gz" in again.controls.status.text()


def test_no_encodes_as_it_is_without_qc_layers(viewer, raw_file) -> None:
    raw = viewer.open(str(raw_file), plugin="napari-ldae")[0]
    enc = _encode(viewer, raw, "no")
    assert "used as it is (prepare no); encoded" in enc.controls.status.text()
    assert [ly.name for ly in viewer.layers] == [raw.name] and not enc.preparation.ran
