"""What every stage shares: EMA, checkpoints, seeding, the Lightning ``Trainer``, handoff files.

Checkpoints hold tensors and primitives only and are loaded with ``weights_only=True``; stages
hand their results to the next one through safetensors + JSON files, never pickles.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn

from napari_ldae._files import atomic_write
from napari_ldae.errors import TrainingError
from napari_ldae.train.config import resolve_accelerator, stage_precision


# ----------------------------------------------------------------------------- EMA
class EMA(nn.Module):
    """Exponential moving average of some parameters, ``ema ← d·ema + (1 − d)·p``.

    The averages are buffers (saved in checkpoints, moved with the module). ``update`` is called
    once per optimizer step by :class:`EMAUpdate`; ``num_updates`` counts the calls. ``warmup``:
    the n-th update uses ``min(d, (1 + n) / (10 + n))`` (diffusers' ``EMAModel``), so that a
    short run's average is not mostly the initialisation.
    """

    def __init__(self, named_params: Iterable[tuple[str, nn.Parameter]], decay: float,
                 warmup: bool = False) -> None:
        super().__init__()
        named = list(named_params)
        self.decay, self.warmup = float(decay), bool(warmup)
        self.names = [n for n, _ in named]
        self._live = [p for _, p in named]  # not registered: the module owns them
        for name, p in named:
            self.register_buffer(_buffer_name(name), p.detach().clone())
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def averages(self) -> list[torch.Tensor]:
        return [getattr(self, _buffer_name(n)) for n in self.names]

    @torch.no_grad()
    def update(self) -> None:
        decay = self.decay
        if self.warmup:  # (reading the count is a device sync: only when it is needed)
            n = int(self.num_updates)
            decay = min(decay, (1 + n) / (10 + n))
        for avg, p in zip(self.averages(), self._live, strict=True):
            avg.lerp_(p.detach().to(avg.dtype), 1.0 - decay)
        self.num_updates += 1

    @contextlib.contextmanager
    @torch.no_grad()
    def swapped(self) -> Iterator[None]:
        """Within the block the live parameters hold the averages (restored afterwards)."""
        saved = [p.detach().clone() for p in self._live]
        for avg, p in zip(self.averages(), self._live, strict=True):
            p.copy_(avg)
        try:
            yield
        finally:
            for old, p in zip(saved, self._live, strict=True):
                p.copy_(old)


def _buffer_name(param_name: str) -> str:
    return "avg__" + param_name.replace(".", "__")


class EMAUpdate(Callback):
    """Update ``pl_module.ema`` once per optimizer step, not once per micro-batch.

    Under gradient accumulation several batches share one optimizer step; the update happens
    after the batch whose step advanced ``trainer.global_step``.
    """

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_) -> None:
        ema: EMA = pl_module.ema
        if trainer.global_step > int(ema.num_updates):
            ema.update()


# ----------------------------------------------------------------------------- learning rate
def warmdown_factor(step: int, max_steps: int, warmdown_steps: int) -> float:
    """1 until the last ``warmdown_steps`` of ``max_steps``, then linearly down to 0."""
    if warmdown_steps <= 0:
        return 1.0
    return min(1.0, max(0.0, (max_steps - step) / warmdown_steps))


class WarmDown(Callback):
    """Set every parameter group's learning rate from the step alone: the rate the module
    configured for it (read when fitting starts, before a checkpoint's optimizer state is
    restored), falling linearly to 0 over the last ``warmdown_steps``. Stateless, so a resumed
    run follows exactly the same rates; per group, so stage 3's encoder keeps its own rate."""

    def __init__(self, max_steps: int, warmdown_steps: int) -> None:
        self.max_steps, self.warmdown = max_steps, warmdown_steps
        self.rates: list[list[float]] = []

    def on_fit_start(self, trainer: pl.Trainer, *_) -> None:
        self.rates = [[g["lr"] for g in opt.param_groups] for opt in trainer.optimizers]

    def on_train_batch_start(self, trainer: pl.Trainer, *_) -> None:
        f = warmdown_factor(trainer.global_step, self.max_steps, self.warmdown)
        for opt, rates in zip(trainer.optimizers, self.rates, strict=True):
            for group, lr in zip(opt.param_groups, rates, strict=True):
                group["lr"] = lr * f


# ----------------------------------------------------------------------------- seeding
class StepSeed(Callback):
    """Seed torch before each batch from ``(seed, global step, micro-batch, rank)``.

    Noise, timesteps and dropout then depend only on where training is, so a resumed run
    draws exactly what an uninterrupted one would.
    """

    def __init__(self, seed: int) -> None:
        self.seed, self._step, self._micro = seed, -1, 0

    def on_train_batch_start(self, trainer: pl.Trainer, *_) -> None:
        step = trainer.global_step
        self._micro = self._micro + 1 if step == self._step else 0
        self._step = step
        ss = np.random.SeedSequence([self.seed, step, self._micro, trainer.global_rank])
        torch.manual_seed(int(ss.generate_state(1, np.uint64)[0] >> 1))


# ----------------------------------------------------------------------------- checkpoints
class Checkpoints(Callback):
    """``last.ckpt`` every N optimizer steps, at the end and on interruption (Ctrl-C, SIGTERM);
    ``best.ckpt`` whenever the monitored validation metric improves."""

    def __init__(self, dirpath: Path, every_n_steps: int, monitor: str | None = None,
                 mode: str = "max") -> None:
        self.dirpath, self.every = Path(dirpath), every_n_steps
        self.monitor, self.sign = monitor, 1.0 if mode == "max" else -1.0
        self.best_score: float | None = None
        self.best_step = -1
        self._saved_step = -1

    @property
    def last(self) -> Path:
        return self.dirpath / "last.ckpt"

    @property
    def best(self) -> Path:
        return self.dirpath / "best.ckpt"

    def _save_last(self, trainer: pl.Trainer) -> None:
        if trainer.global_step != self._saved_step:
            trainer.save_checkpoint(self.last, weights_only=False)
            self._saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, *_) -> None:
        if trainer.global_step % self.every == 0 and trainer.global_step > 0:
            self._save_last(trainer)

    def on_train_end(self, trainer: pl.Trainer, *_) -> None:
        self._save_last(trainer)

    def on_exception(self, trainer: pl.Trainer, _module, exception: BaseException) -> None:
        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            self._saved_step = -1
            self._save_last(trainer)
            rank_zero_info(f"interrupted at step {trainer.global_step}: saved {self.last}; "
                           "continue with --resume")

    def on_validation_end(self, trainer: pl.Trainer, *_) -> None:
        if self.monitor is None or trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        score = float(value)
        if self.best_score is None or self.sign * (score - self.best_score) > 0:
            self.best_score, self.best_step = score, trainer.global_step
            trainer.save_checkpoint(self.best, weights_only=False)

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_step": self.best_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_score, self.best_step = state["best_score"], state["best_step"]


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A Lightning checkpoint's contents, tensors and primitives only (never arbitrary pickles)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise TrainingError(f"cannot read checkpoint {path} with weights_only=True ({err})") \
            from err


# ----------------------------------------------------------------------------- trainer
def make_trainer(config: Mapping[str, Any], stage: str, stage_dir: Path,
                 callbacks: list[Callback], monitor: str | None = None,
                 manual_optimization: bool = False) -> tuple[pl.Trainer, Checkpoints]:
    """A Lightning ``Trainer`` for one stage, with its checkpoints, logs and seeding."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from lightning.pytorch.strategies import DDPStrategy

    _quiet_lightning()
    s, t = config[stage], config["trainer"]
    accelerator = resolve_accelerator(t["accelerator"])
    strategy = DDPStrategy(**_no_buffer_sync()) if _distributed(t, accelerator) else "auto"
    precision = stage_precision(config, stage, accelerator)
    if accelerator == "gpu" and t["matmul_precision"]:
        torch.set_float32_matmul_precision(t["matmul_precision"])
    if manual_optimization and precision == "16-mixed":
        raise TrainingError(f"{stage}: 16-mixed is not supported here (two optimizers would "
                            "share one gradient scaler); use bf16-mixed or 32")
    ckpt = Checkpoints(stage_dir / "checkpoints", s["checkpoint_every_n_steps"], monitor)
    logs = stage_dir / "logs"
    accumulate = s["accumulate_grad_batches"]
    warmdown = [WarmDown(s["max_steps"], s["lr_warmdown_steps"])] \
        if s["lr_warmdown_steps"] else []  # 0: the optimizers' rates are left alone
    trainer = pl.Trainer(
        accelerator=accelerator, devices=t["devices"], num_nodes=t["num_nodes"],
        strategy=strategy, precision=precision,
        max_steps=s["max_steps"], max_epochs=-1,
        accumulate_grad_batches=1 if manual_optimization else accumulate,
        gradient_clip_val=None if manual_optimization else s["gradient_clip_val"],
        val_check_interval=s["val_every_n_steps"] * accumulate, check_val_every_n_epoch=None,
        limit_val_batches=s["limit_val_batches"], num_sanity_val_steps=t["num_sanity_val_steps"],
        log_every_n_steps=s["log_every_n_steps"] or t["log_every_n_steps"],
        callbacks=[*callbacks, ckpt, StepSeed(config["seed"]), *warmdown],
        # one TensorBoard run across resumes; one CSV file per invocation (it would be erased)
        logger=[TensorBoardLogger(logs, name="tensorboard", version=""),
                CSVLogger(logs, name="csv")],
        enable_checkpointing=False, use_distributed_sampler=False,
        enable_progress_bar=t["progress_bar"], enable_model_summary=False,
        benchmark=accelerator == "gpu",  # cuDNN picks the fastest 3D convolutions once
        default_root_dir=stage_dir,
    )
    return trainer, ckpt


def _distributed(t: Mapping[str, Any], accelerator: str) -> bool:
    devices = t["devices"]
    if devices == -1:
        devices = torch.cuda.device_count() if accelerator == "gpu" else 1
    return int(devices) * int(t["num_nodes"]) > 1 or t["strategy"] == "ddp"


def _no_buffer_sync() -> dict[str, bool]:
    """EMA averages are buffers, identical on every rank: DDP need not sync them each step."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    params = inspect.signature(DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params \
        else {"broadcast_buffers": False}


def _quiet_lightning() -> None:
    """Hide Lightning messages that say nothing about this run."""
    import logging
    import warnings

    # ShiftUNet's frozen half and the frozen autoencoder are in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoAdverts) for f in logger.filters):
        logger.addFilter(_NoAdverts())


class _NoAdverts:
    def filter(self, record) -> bool:
        return "litlogger" not in record.getMessage()


def fit(trainer: pl.Trainer, module: pl.LightningModule, data: pl.LightningDataModule,
        ckpt: Checkpoints, resume: bool) -> None:
    """``trainer.fit``, resuming from ``last.ckpt`` when asked (loaded with weights_only)."""
    ckpt_path = None
    if resume and ckpt.last.is_file():
        ckpt_path = str(ckpt.last)
        rank_zero_info(f"resuming from {ckpt.last}")
    elif resume:
        rank_zero_info(f"nothing to resume in {ckpt.dirpath}: starting from scratch")
    elif ckpt.last.is_file():
        raise TrainingError(f"{ckpt.dirpath.parent} already holds a run of this stage; pass "
                            "--resume to continue it, or choose another --out")
    try:
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:
        raise SystemExit(128 + 15) from None  # the shell's status for "killed by SIGTERM"


def load_best(module: nn.Module, ckpt: Checkpoints, last: bool = False) -> int:
    """Load ``best.ckpt`` (else, or with ``last``, ``last.ckpt``) into ``module``; returns its
    global step."""
    path = ckpt.best if ckpt.best.is_file() and not last else ckpt.last
    state = read_checkpoint(path)
    module.load_state_dict(state["state_dict"], strict=False)
    return int(state["global_step"])


# ----------------------------------------------------------------------------- handoffs
def save_safetensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(cpu, str(tmp)))


def load_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    """Tensors of a stage output; a missing or unreadable file is a :class:`TrainingError`."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"{what}: no file {path}; train the stage that writes it first")
    try:
        return load_file(str(path))
    except Exception as err:
        raise TrainingError(f"{what}: {path} is not a readable safetensors file ({err})") \
            from err


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    atomic_write(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise TrainingError(f"{what}: no file {path}; train the stage that writes it first")
    return json.loads(path.read_text())


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (Path,)):
        return str(obj)
    if isinstance(obj, (np.generic, torch.Tensor)):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def cache_dir(config: Mapping[str, Any], out: Path) -> Path:
    """Where preprocessed volumes and latents are cached (``data.cache_dir``, else OUT/cache)."""
    return Path(config["data"]["cache_dir"] or out / "cache").expanduser()


def handoff(trainer: pl.Trainer, write) -> None:
    """Rank 0 writes a stage's outputs; every rank waits until they exist."""
    if trainer.is_global_zero:
        write()
    trainer.strategy.barrier("handoff")


def is_global_zero() -> bool:
    """Whether this process is the first of the job, outside a Trainer (probe stage, run files).

    Lightning reads RANK (torchrun), SLURM_PROCID or LOCAL_RANK (its own launcher); a node
    other than the first also has NODE_RANK > 0 when Lightning launches each node itself.
    """
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    return rank_zero_only.rank == 0 and int(os.environ.get("NODE_RANK", "0")) == 0


def git_commit() -> str | None:
    """The commit of the napari-ldae checkout, when it is one."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def ema_state_dict(module: nn.Module, ema: EMA) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with the EMA averages in place of the live parameters."""
    with ema.swapped():
        return {k: v.detach().clone() for k, v in module.state_dict().items()}
