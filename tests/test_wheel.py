"""The wheel carries what a checkout has: the package, its napari manifest, the training configs
and the demo bundle (resources/ shipped as ``napari_ldae.resources``).

Builds a wheel, installs it into a fresh virtual environment and runs the installed
``napari-ldae`` from a folder outside the source tree. The dependencies are not installed again
(minutes, and the registry): a ``.pth`` file lends the fresh environment this one's
site-packages, *after* its own, and ``.pth`` files inside a lent folder are not run — so this
environment's editable install of napari-ldae is invisible there and only the wheel's copy can
be imported. ``LDAE_WHEEL_FULL=1`` installs the dependencies for real instead (torch first,
then the wheel with its requirements).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _run(cmd: list, cwd: Path, env: dict, timeout: int = 600) -> str:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NAPARI_LDAE_BUNDLE")}
    env["NAPARI_LDAE_CACHE"] = str(tmp / "cache")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", tmp / "dist", REPO], cwd=tmp, env=env)
    wheel = next((tmp / "dist").glob("napari_ldae-*.whl"))
    venv.EnvBuilder(with_pip=False).create(tmp / "env")
    py = tmp / "env" / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                     cwd=tmp, env=env).strip())
    pip = [sys.executable, "-m", "pip", "--python", py, "install", "-q"]
    if os.environ.get("LDAE_WHEEL_FULL"):
        _run([*pip, "torch==2.13.0"], cwd=tmp, env=env, timeout=3600)
        _run([*pip, wheel], cwd=tmp, env=env, timeout=3600)
    else:
        (site / "_lent_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
        _run([*pip, "--no-deps", wheel], cwd=tmp, env=env)
    return tmp, env


def test_wheel_ships_resources(installed: tuple[Path, dict]) -> None:
    tmp, env = installed
    work = tmp / "work"
    work.mkdir(exist_ok=True)
    where = _run([tmp / "env" / "bin" / "python", "-c",
                  "import json, napari_ldae, napari_ldae.session as s, napari_ldae.train.run as r;"
                  "print(json.dumps([napari_ldae.__file__, str(s.default_bundle_path()),"
                  " str(r.config_path('tiny'))]))"], cwd=work, env=env)
    package, bundle, config = (Path(p) for p in json.loads(where))
    env_dir = (tmp / "env").resolve()
    for path in (package, bundle, config):  # the wheel's copies, not the source tree's
        assert env_dir in path.resolve().parents, path
    assert (bundle / "config.json").is_file() and config.is_file()
    assert (package.parent / "napari.yaml").is_file()


def test_installed_cli_info_and_reconstruct(installed: tuple[Path, dict]) -> None:
    tmp, env = installed
    work = tmp / "work"
    work.mkdir(exist_ok=True)
    cli = tmp / "env" / "bin" / "napari-ldae"
    info = _run([cli, "info"], cwd=work, env=env)
    assert "sha256" in info and str(REPO) not in info
    rng = np.random.default_rng(0)
    volume = np.zeros((40, 48, 40), np.float32)
    volume[8:32, 8:40, 8:32] = 0.5 + 0.1 * rng.random((24, 32, 24), dtype=np.float32)
    nib.save(nib.Nifti1Image(volume, np.diag([4.0, 4.0, 4.0, 1.0])), work / "scan.nii.gz")
    _run([cli, "reconstruct", "scan.nii.gz", "-o", "out", "--steps", "2", "--device", "cpu",
          "-q"], cwd=work, env=env)
    assert (work / "out" / "scan_recon.nii.gz").is_file()
