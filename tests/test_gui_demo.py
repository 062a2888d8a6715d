"""The demo: its headless screenshot steps (in-process) and the command's no-display path."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from ldae_factory import shared_tiny_bundle, tiny_scan

from napari_ldae import cli
from napari_ldae.gui import _jobs, demo
from napari_ldae.gui._state import get_state
from napari_ldae.session import Session

pytestmark = pytest.mark.filterwarnings("ignore:System theme detection")


def _small_subject(seed=0, spacing=6.0, n_visits=4):
    """Stands in for the template-based generator (its own tests cover it)."""
    visits = [SimpleNamespace(data=tiny_scan(seed=i).data, affine=np.diag([6, 6, 6, 1.0]),
                              session=f"ses-M{6 * i:02d}", months=6 * i)
              for i in range(n_visits)]
    return SimpleNamespace(subject=f"sub-s{seed}", diagnosis="CN", visits=visits)


def test_demo_screenshot_steps(make_napari_viewer, tmp_path, monkeypatch):
    from napari_ldae.data import synthetic

    monkeypatch.setattr(synthetic, "make_subject", _small_subject)
    monkeypatch.setenv(_jobs.SYNC_ENV, "1")
    session = Session(shared_tiny_bundle(), device="cpu", cache_dir=tmp_path / "c")
    viewer = make_napari_viewer()
    get_state(viewer).set_session(session)
    get_state(viewer).set_steps({"encode": 1, "decode": 1, "preview": 1, "carry": 1})
    visits = demo.open_subject(viewer, spacing=6.0)
    widgets = demo.dock_widgets(viewer)
    paths = demo.screenshots(viewer, widgets, visits, tmp_path / "shots")
    assert [p.name for p in paths] == list(demo.SCREENSHOTS)
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    sweep = viewer.layers[f"{visits[-1].name} [sweep over time]"]
    assert sweep.data.shape[0] == 5  # (the last picture is the sweep of the volume table)
    assert viewer.dims.axis_labels[0] == "sweep frame"
    prov = sweep.metadata["ldae_provenance"]  # the last sweep runs as far past the last visit
    assert prov["months"] == [0.0, 9.0, 18.0, 27.0, 36.0]  # as the visits span (0 … 18)
    assert prov["prediction"] == [False, False, False, True, True]
    assert "prediction: 18 months past the last visit" in widgets["interpolate"].kind.text()


def test_demo_without_display_or_xvfb_says_how(monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert cli.main(["demo", "--screenshot", "shots"]) == 2
    assert "xvfb-run -a napari-ldae demo --screenshot shots" in capsys.readouterr().err
