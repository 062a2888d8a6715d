"""Region volumes in the widgets, headless (pytest-xvfb): the table of a result carried onto a
synthetic 6 mm subject (tiny random bundle), its changes, and the plot of a sweep against
strength or date."""

from __future__ import annotations

import math

import pytest

from napari_ldae.data.io import write_scan
from napari_ldae.data.regions import REGIONS
from napari_ldae.gui import _jobs
from napari_ldae.gui._state import get_state
from napari_ldae.gui._volumes import COLUMNS
from napari_ldae.gui.interpolate_widget import InterpolateWidget
from napari_ldae.gui.manipulate_widget import ManipulateWidget

pytestmark = pytest.mark.filterwarnings("ignore:System theme detection")


@pytest.fixture(scope="module")
def visit_files(tmp_path_factory):
    """Two visits of a synthetic subject at 6 mm (the tiny bundle's grid), BIDS-named."""
    from napari_ldae.data.io import Scan
    from napari_ldae.data.synthetic import make_subject

    folder = tmp_path_factory.mktemp("subject")
    subject = make_subject(seed=3, spacing=6.0, n_visits=2)
    return [write_scan(folder / f"sub-03_{v.session}_T1w.nii.gz", v.data,
                       like=Scan.from_array(v.data, v.affine)) for v in subject.visits]


@pytest.fixture
def viewer(make_napari_viewer, session, visit_files, monkeypatch):
    monkeypatch.setenv(_jobs.SYNC_ENV, "1")
    v = make_napari_viewer()
    get_state(v).set_session(session)
    get_state(v).set_steps({"encode": 1, "decode": 1, "preview": 1, "carry": 1})
    for path in visit_files:
        v.open(str(path), plugin="napari-ldae")
    return v


def _table(panel) -> list[list[str]]:
    t = panel.table
    return [[t.item(i, j).text() for j in range(t.columnCount())] for i in range(t.rowCount())]


def test_the_table_shows_the_regions_and_their_changes(viewer):
    manip = ManipulateWidget(viewer)
    viewer.window.add_dock_widget(manip, name="manipulate")
    manip.render_full()  # strength 0: the scan itself
    panel = manip.volumes
    panel.measure()
    rows = _table(panel)
    header = [panel.table.horizontalHeaderItem(j).text().replace("\n", " ")
              for j in range(len(COLUMNS))]
    assert header == list(COLUMNS)
    assert [r[0] for r in rows] == list(REGIONS)
    assert all(r[3] == "+0.00" and r[4] == "+0.00" for r in rows)  # the input, exactly
    assert [r[5] for r in rows] == ["+0.00", "+0.00", "", "", "", ""]  # by deformation: none
    assert panel.baseline == manip.layer_combo.currentText()  # named by its file

    manip.slider.blockSignals(True)
    manip.slider.setValue(5.0)
    manip.slider.blockSignals(False)
    manip.volumes.auto.setChecked(True)  # measured after the render
    manip.render_full()
    values = panel.values()
    rows = _table(panel)
    assert [r[0] for r in rows] == list(REGIONS)
    for (region, a, b, change, percent, deformed), row in zip(values, rows, strict=True):
        assert row[0] == region
        assert change == pytest.approx(b - a) and row[3] == f"{change:+.2f}"
        assert percent == pytest.approx(100 * (b - a) / a) and row[1] == f"{a:.1f}"
        if region in ("lateral_ventricles", "hippocampal_region"):  # read from the deformation
            assert math.isfinite(deformed) and row[5] == f"{deformed:+.2f}"
        else:
            assert math.isnan(deformed) and row[5] == ""
    assert any(abs(v[3]) > 0 for v in values)  # the edit changes some volume
    assert "AD +5.00" in panel.frame.currentText() and not panel.plot.isVisible()
    assert panel.caption.text().startswith(f"original: {panel.baseline}; results carried")

    manip.target.onto.setCurrentText("model")  # shown again, and measured on the model grid
    assert panel.caption.text().startswith("original: the model's reconstruction of ")
    assert [r[0] for r in _table(panel)] == list(REGIONS)


def test_a_sweep_plots_each_volume_against_strength_and_date(viewer):
    manip = ManipulateWidget(viewer)
    viewer.window.add_dock_widget(manip, name="manipulate")
    manip.volumes.auto.setChecked(True)
    manip.sweep_from.setValue(-4.0)
    manip.sweep_to.setValue(4.0)
    manip.sweep_frames.setValue(2)
    manip.sweep()
    panel = manip.volumes
    assert panel.plot.isVisibleTo(manip) and panel.frame.isVisibleTo(manip)
    assert panel.plot.x == [-4.0, 4.0] and panel.plot.axis == "strength"
    assert list(panel.plot.series) == list(REGIONS)
    assert all(len(ys) == 2 for ys in panel.plot.series.values())
    assert [panel.frame.itemText(i) for i in range(2)] == ["AD -4", "AD +4"]
    panel.frame.setCurrentIndex(0)  # the table follows the chosen frame
    assert _table(panel)[0][3] == f"{panel.values('AD -4')[0][3]:+.2f}"

    visits = InterpolateWidget(viewer)
    viewer.window.add_dock_widget(visits, name="visits")
    visits.volumes.auto.setChecked(True)
    visits.sweep_to.setValue(24.0)
    visits.frames.setValue(2)
    visits.sweep()
    plot = visits.volumes.plot
    assert plot.x == [0.0, 24.0] and plot.axis == "months"
    latest = visits.table.visits()[-1][0].name
    assert visits.volumes.baseline == latest  # carried onto the latest visit
