"""One loaded model and everything done with it, shared by the napari widgets and the CLI.

A :class:`Session` owns a bundle, its :class:`~napari_ldae.core.model.LDAEModel` on a device,
the preprocessing contract and caches: codes per (scan content hash, bundle hash, steps) in
memory and on disk (safetensors under the cache dir), and reconstructions per (codes, steps).
Long operations are progress generators (``iter_*``, see :mod:`napari_ldae.core.progress`)
that yield :class:`~napari_ldae.core.progress.Progress` and return their result; model-space
volumes come back as float32 ``(N, X, Y, Z)`` arrays in [0, 1].

No Qt and no napari here: the GUI runs these generators in thread workers, the CLI in a
progress bar.
"""

from __future__ import annotations

import gc
import hashlib
import os
import tempfile
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from napari_ldae import __version__, operations
from napari_ldae._files import atomic_write
from napari_ldae._resources import resource_path
from napari_ldae.core.bundle import Bundle, bundle_steps, load_bundle
from napari_ldae.core.device import is_out_of_memory
from napari_ldae.core.model import Codes, LDAEModel
from napari_ldae.core.progress import ProgressGen, drain
from napari_ldae.errors import BundleError, LDAEError
from napari_ldae.operations import Result

if TYPE_CHECKING:
    from napari_ldae.data.io import Scan
    from napari_ldae.data.preprocess import PreprocessContract

BUNDLE_ENV = "NAPARI_LDAE_BUNDLE"
CACHE_ENV = "NAPARI_LDAE_CACHE"
DEMO_BUNDLE = resource_path("demo")
OOM_HINT = "out of memory: try fewer steps, CPU, or a smaller batch"



# ----------------------------------------------------------------------------- defaults
def default_bundle_path() -> Path:
    """``$NAPARI_LDAE_BUNDLE``, else the demo bundle shipped in ``resources/demo``."""
    env = os.environ.get(BUNDLE_ENV)
    if env:
        return Path(env).expanduser()
    if not DEMO_BUNDLE.exists():
        raise BundleError(
            f"no model bundle given and the demo bundle is missing ({DEMO_BUNDLE}); pass "
            f"--bundle PATH (GUI: the bundle field), set {BUNDLE_ENV}=PATH, or train the demo "
            "bundle with the recipe in resources/configs/ (`napari-ldae train ...`)"
        )
    return DEMO_BUNDLE


def default_cache_dir() -> Path:
    """``$NAPARI_LDAE_CACHE``, else ``~/.cache/napari-ldae``; a temp dir if not writable."""
    env = os.environ.get(CACHE_ENV)
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "napari-ldae"
    return writable_dir(path)


def writable_dir(path: Path) -> Path:
    """``path`` if it can be created and written, else a per-user temp dir (with a warning)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
        return path
    except OSError as err:
        fallback = Path(tempfile.gettempdir()) / f"napari-ldae-cache-{os.getuid()}"
        fallback.mkdir(parents=True, exist_ok=True)
        warnings.warn(f"cache dir {path} is not writable ({err}); using {fallback}. Set "
                      f"{CACHE_ENV} to choose another.", stacklevel=2)
        return fallback


def describe_error(err: BaseException) -> str:
    """A one-line message for users, with what to try (out of memory included)."""
    if is_out_of_memory(err):
        return OOM_HINT
    if isinstance(err, LDAEError | FileExistsError | FileNotFoundError):
        return str(err)
    return f"{type(err).__name__}: {err}"


# ----------------------------------------------------------------------------- dates
def alpha_from_months(t_start: float, t_end: float, t_target: float) -> float:
    """Interpolation weight of ``t_target`` between two visits (0 at start, 1 at end)."""
    if t_end == t_start:
        raise ValueError("the two visits have the same date; interpolation needs two dates")
    return (float(t_target) - float(t_start)) / (float(t_end) - float(t_start))


# ----------------------------------------------------------------------------- hashing
def codes_hash(codes: Codes) -> str:
    h = hashlib.sha256()
    for t in (codes.y, codes.x_T):
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


class _LRU(OrderedDict):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get_item(self, key):
        if key in self:
            self.move_to_end(key)
            return self[key]
        return None

    def put(self, key, value) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


# ----------------------------------------------------------------------------- session
class Session:
    """A bundle loaded on a device, with code and reconstruction caches.

    ``bundle`` None uses :func:`default_bundle_path`; ``device`` and ``precision`` go through
    :func:`~napari_ldae.core.device.resolve`. The use cases (``iter_reconstruct``,
    ``iter_edit``, ``iter_interpolate_visits``) are :mod:`napari_ldae.operations`.
    """

    def __init__(self, bundle: str | Path | None = None, device: str | None = None,
                 precision: str = "fp32", cache_dir: Path | None = None,
                 max_batch: int = 8) -> None:
        from napari_ldae.core.device import resolve
        from napari_ldae.data.preprocess import PreprocessContract

        self.bundle: Bundle = load_bundle(bundle if bundle is not None else default_bundle_path())
        self.device, precision = resolve(device, precision)
        self.precision = precision
        self.max_batch = int(max_batch)
        self.cache_dir = writable_dir(Path(cache_dir)) if cache_dir else default_cache_dir()
        self.contract: PreprocessContract = PreprocessContract.from_dict(
            self.bundle.config["preprocessing"])
        self.steps: dict[str, int] = bundle_steps(self.bundle.config)
        self._model: LDAEModel | None = None
        self._lock = threading.RLock()
        self._codes: _LRU = _LRU(16)
        self._recon: _LRU = _LRU(4)
        self.load()

    # ------------------------------------------------------------------------- model
    def load(self) -> LDAEModel:
        """Load the model (again, after :meth:`unload`)."""
        with self._lock:
            if self._model is None:
                self._model = self.bundle.load_model(self.device, self.precision,
                                                     self.max_batch)
            return self._model

    @property
    def model(self) -> LDAEModel:
        return self._model if self._model is not None else self.load()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def unload(self) -> None:
        """Free the model's memory (CPU and GPU); caches of results are kept."""
        with self._lock:
            self._model = None
            self._recon.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def info(self) -> dict[str, Any]:
        """Model facts for the model panel and ``napari-ldae info``."""
        config = self.bundle.config
        model = self._model
        n_params = None if model is None else sum(
            p.numel() for m in (model.autoencoder, model.unet, model.encoder)
            for p in m.parameters())
        return {
            "name": self.bundle.name,
            "path": str(self.bundle.path),
            "parameters": n_params,
            "input_shape": list(self.contract.shape),
            "spacing": list(self.contract.spacing),
            "orientation": self.contract.orientation,
            "directions": {k: dict(v) for k, v in config.get("directions", {}).items()},
            "device": self.device,
            "precision": self.precision,
            "steps": dict(self.steps),
            "bundle_sha256": self.bundle.sha256,
            "trained": config.get("provenance", {}).get("trained", True),
            "metrics": config.get("metrics", {}),
            "loaded": model is not None,
        }

    @property
    def directions(self) -> dict[str, str]:
        """Direction names → meanings, in the bundle's order."""
        return {k: v.get("meaning", k) for k, v in self.bundle.config["directions"].items()}

    def years(self, direction: str, strength: float) -> float | None:
        """The strength in years of the training cohort's own change along the direction.

        ``None`` when the bundle has no calibration for it, or its codes did not move along it
        measurably (train/calibration.py).
        """
        info = self.bundle.config["directions"].get(direction, {})
        per_unit = info.get("calibration", {}).get("years_per_unit")
        return None if per_unit is None else strength * per_unit

    def years_text(self, direction: str, strength: float) -> str:
        """"≈ N years of AD-like change", or why no number is given."""
        info = self.bundle.config["directions"].get(direction, {})
        if "calibration" not in info:
            return "no calibration in years in this bundle"
        years = self.years(direction, strength)
        if years is None:
            return ("no calibration in years: the training cohort's codes do not move "
                    "measurably along this direction between visits")
        change = "AD-like change" if direction == "AD" else f"change {info.get('meaning', '')}"
        return f"≈ {years:+.1f} years of {change.strip()}"

    # ------------------------------------------------------------------------- encode
    def prepare(self, scan: Scan) -> torch.Tensor:
        """The model input of a scan, ``(1, 1, X, Y, Z)`` in [0, 1] (per the contract)."""
        from napari_ldae.data.preprocess import preprocess

        return torch.from_numpy(preprocess(scan, self.contract))[None, None]

    def iter_encode(self, scan: Scan, steps: int | None = None) -> ProgressGen[Codes]:
        """Codes of a scan; a cache hit (memory or disk) yields nothing and returns at once."""
        from napari_ldae.data.io import content_key

        steps = int(steps or self.steps["encode"])
        key = (content_key(scan), self.bundle.sha256, steps)
        cached = self._cached_codes(key)
        if cached is not None:
            return cached
        codes = yield from self.model.iter_encode(self.prepare(scan), steps)
        codes = codes.cpu()
        with self._lock:
            self._codes.put(key, codes)
        self._save_codes(key, codes)
        return codes

    def encode(self, scan: Scan, steps: int | None = None) -> Codes:
        return drain(self.iter_encode(scan, steps))

    def _cache_file(self, key: tuple[str, str, int]) -> Path:
        return self.cache_dir / "codes" / key[1][:16] / f"{key[0][:32]}_s{key[2]}.safetensors"

    def _cached_codes(self, key: tuple[str, str, int]) -> Codes | None:
        with self._lock:
            codes = self._codes.get_item(key)
        if codes is not None:
            return codes
        path = self._cache_file(key)
        if not path.is_file():
            return None
        from safetensors.torch import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("scan") != key[0] or meta.get("bundle") != key[1]:
                    return None
                codes = Codes(f.get_tensor("y"), f.get_tensor("x_T"), int(meta["steps"]))
        except Exception as err:  # a corrupt cache file is only a miss
            warnings.warn(f"ignoring unreadable cache file {path} ({err})", stacklevel=2)
            return None
        with self._lock:
            self._codes.put(key, codes)
        return codes

    def _save_codes(self, key: tuple[str, str, int], codes: Codes) -> None:
        from safetensors.torch import save_file

        path = self._cache_file(key)
        tensors = {"y": codes.y.contiguous(), "x_T": codes.x_T.contiguous()}
        meta = {"scan": key[0], "bundle": key[1], "steps": str(key[2])}
        try:
            atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
        except OSError as err:
            warnings.warn(f"could not write the codes cache {path} ({err})", stacklevel=2)

    # ------------------------------------------------------------------------- decode
    def iter_decode(self, codes: Codes, steps: int | None = None) -> ProgressGen[np.ndarray]:
        """Model-space volumes ``(N, X, Y, Z)`` decoded from codes."""
        out = yield from self.model.iter_decode(codes, int(steps or self.steps["decode"]))
        return _numpy(out)

    def iter_manipulate(self, codes: Codes, direction: str, strengths: Sequence[float],
                        steps: int | None = None) -> ProgressGen[np.ndarray]:
        """One volume per strength along ``direction`` (code-major for several codes)."""
        out = yield from self.model.iter_manipulate(
            codes, direction, [float(s) for s in strengths], int(steps or self.steps["decode"]))
        return _numpy(out)

    def iter_interpolate(self, codes_a: Codes, codes_b: Codes, alphas: Sequence[float],
                         steps: int | None = None) -> ProgressGen[np.ndarray]:
        """One volume per α between two single codes (0: ``codes_a``, 1: ``codes_b``)."""
        out = yield from self.model.iter_interpolate(
            codes_a, codes_b, [float(a) for a in alphas], int(steps or self.steps["decode"]))
        return _numpy(out)

    def iter_reconstruction(self, codes: Codes,
                            steps: int | None = None) -> ProgressGen[np.ndarray]:
        """The plain decode of one code ``(X, Y, Z)``, cached: the reference of difference
        maps (edit − reconstruction removes the autoencoder's blur from the difference)."""
        steps = int(steps or self.steps["decode"])
        key = (codes_hash(codes), self.bundle.sha256, steps)
        with self._lock:
            hit = self._recon.get_item(key)
        if hit is not None:
            return hit
        volume = (yield from self.iter_decode(codes[0:1], steps))[0]
        with self._lock:
            self._recon.put(key, volume)
        return volume

    def reconstruction(self, codes: Codes, steps: int | None = None) -> np.ndarray:
        return drain(self.iter_reconstruction(codes, steps))

    # ------------------------------------------------------------------------- geometry
    def model_affine(self, scan: Scan) -> np.ndarray:
        """Voxel-to-world affine of the model grid for ``scan``."""
        from napari_ldae.data.preprocess import model_affine

        return model_affine(scan, self.contract)

    def to_scan_space(self, volume_model, scan: Scan) -> np.ndarray:
        """Model-space volume(s) resampled onto the scan's voxel grid (file order, [0, 1])."""
        from napari_ldae.data.preprocess import to_scan_space

        return to_scan_space(volume_model, scan, self.contract)

    # ------------------------------------------------------------------------- use cases
    def iter_reconstruct(self, scan: Scan, steps: int | None = None,
                         encode_steps: int | None = None) -> ProgressGen[Result]:
        """See :func:`napari_ldae.operations.iter_reconstruct`."""
        return (yield from operations.iter_reconstruct(self, scan, steps, encode_steps))

    def iter_edit(self, scan: Scan, direction: str, strengths: Sequence[float],
                  steps: int | None = None, encode_steps: int | None = None,
                  **kwargs: Any) -> ProgressGen[Result]:
        """See :func:`napari_ldae.operations.iter_edit`."""
        return (yield from operations.iter_edit(self, scan, direction, strengths, steps,
                                                encode_steps, **kwargs))

    def iter_interpolate_visits(self, scan_a: Scan, scan_b: Scan, alphas: Sequence[float],
                                steps: int | None = None, encode_steps: int | None = None,
                                **kwargs: Any) -> ProgressGen[Result]:
        """See :func:`napari_ldae.operations.iter_interpolate`."""
        return (yield from operations.iter_interpolate(self, scan_a, scan_b, alphas, steps,
                                                       encode_steps, **kwargs))

    def iter_predict(self, scans: Sequence[Scan], months: Sequence[float],
                     targets: Sequence[float], steps: int | None = None,
                     encode_steps: int | None = None, **kwargs: Any) -> ProgressGen[Result]:
        """See :func:`napari_ldae.operations_predict.iter_predict`."""
        return (yield from operations.iter_predict(self, scans, months, targets, steps,
                                                   encode_steps, **kwargs))

    def export(self, path: str | os.PathLike, volume_model, scan: Scan, provenance: dict,
               overwrite: bool = False, *, difference: bool = False) -> Path:
        """Write model-space volume(s) of ``scan`` (``difference``: signed, already taken)
        through :func:`operations.export`, with the bundle and version in the provenance."""
        meta = {"bundle": self.bundle.name, "bundle_sha256": self.bundle.sha256,
                "napari_ldae_version": __version__, **dict(provenance)}
        result = Result(np.asarray(volume_model, np.float32), (np.float32(0),) * difference,
                        scan, self.contract, meta)
        return operations.export(path, result, "difference" if difference else "image",
                                 overwrite=overwrite)

def _numpy(volumes: torch.Tensor) -> np.ndarray:
    """``(N, 1, X, Y, Z)`` tensor → float32 ``(N, X, Y, Z)`` array."""
    return volumes.detach().to("cpu", torch.float32)[:, 0].numpy()
