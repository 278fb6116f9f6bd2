"""The DIT trainer: DDP, AMP, EMA, warm-up + cosine, clipping, accumulation, resume, eval.

    result = train(TrainConfig.from_yaml("training/configs/tiny_synthetic.yaml"))

Run one process directly, or one per device under ``torchrun`` (see ``training/train.py``).
Output directory (written by rank 0 only; no other rank needs to see it)::

    <output_dir>/last/    save_pretrained dir (config.json, model.safetensors, vocab.txt)
                          + train_state.pt (model, optimiser, scheduler, EMA, scaler, AMP
                          dtype, RNG of every rank, epoch, step, best metric; tensors and
                          containers only, readable with torch.load(weights_only=True))
    <output_dir>/best/    the same for the epoch with the best mIoU on the first val split
    <output_dir>/metrics.csv, steps.csv, train_config.yaml, tensorboard/ (if installed)
    <output_dir>/test_metrics.json   the test splits, scored once at the end with best/

``model.safetensors`` holds the EMA weights when EMA is on (what is evaluated is what ships).
The loss is the authors': BCE with logits of the x4-upsampled low-res logits against the
letterboxed mask at input resolution. Evaluation runs the inference path: low-res logits ->
``postprocess_batch`` (crop, resize to the original size, threshold) -> :class:`RISMetrics`.

The steps of one run are the methods of :class:`Trainer`: :meth:`~Trainer.setup`,
:meth:`~Trainer.train_epoch`, :meth:`~Trainer.evaluate_epoch`, :meth:`~Trainer.save`,
:meth:`~Trainer.finish`. The parts they use live beside this module: :mod:`.model_setup`
(network, loss, freezing, ``--check``), :mod:`.amp`, :mod:`.rng`, :mod:`.checkpointing`
(atomic ``last/`` and ``best/``, recovery after a kill), :mod:`.scoring` (evaluation) and
:mod:`.metrics_log`; their names are importable from here too.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import CheckpointError, ConfigError
from ..model.checkpoint import WEIGHTS_FILE
from ..model.dit import DIT
from ..progress import Progress
from .amp import amp_name, eval_precision, resolve_amp, restore_scaler
from .checkpointing import (
    STATE_FILE,
    TEST_METRICS_FILE,
    copy_checkpoint,
    load_on_main,
    load_train_state,
    recover_output_dir,
    save_checkpoint,
    write_output_text,
)
from .config import TrainConfig
from .data_setup import eval_dataset, train_dataset, train_loader
from .dataset import ReferTorchDataset
from .determinism import bce_loss_matmul, enable_determinism, install_matmul_position_tables
from .distributed import (
    DistInfo,
    all_gather_objects,
    cleanup_distributed,
    init_distributed,
    wait_for_main,
)
from .ema import ModelEMA
from .metrics_log import MetricsLogger
from .model_setup import apply_freeze, bce_loss, build_model, preflight, unused_parameters
from .rng import rng_state, seed_everything, set_rng_state
from .schedule import WarmupCosineScheduler
from .scoring import evaluate

__all__ = [
    "STATE_FILE",
    "TEST_METRICS_FILE",
    "TrainResult",
    "Trainer",
    "amp_name",
    "apply_freeze",
    "bce_loss",
    "copy_checkpoint",
    "enable_determinism",
    "eval_precision",
    "evaluate",
    "load_on_main",
    "load_train_state",
    "main_worker",
    "preflight",
    "resolve_amp",
    "restore_scaler",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "train",
    "unused_parameters",
]


@dataclass
class TrainResult:
    """What :func:`train` returns (on every rank)."""

    network: DIT  # the trained (unwrapped) network, raw weights
    eval_network: nn.Module  # what is evaluated and saved: the EMA copy, or ``network``
    losses: list[float] = field(default_factory=list)  # per optimiser step, mean over ranks
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch
    best_miou: float = -1.0
    output_dir: Path | None = None
    unused_parameters: list[str] = field(default_factory=list)  # frozen: never in the graph
    test_metrics: dict[str, float] = field(default_factory=dict)  # best/ on test_splits


def _set_threads(cfg: TrainConfig, info: DistInfo) -> None:
    if cfg.cpu_threads and info.device.type == "cpu":
        torch.set_num_threads(max(1, cfg.cpu_threads // max(1, info.local_world_size)))


class Trainer:
    """One training run, step by step; :meth:`run` does them all (see :func:`train`)."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.result: TrainResult | None = None

    # -- setup ----------------------------------------------------------------------------

    def setup(self) -> None:
        """Process group, model, data, optimiser, schedule, EMA, AMP, resume, DDP, logs."""
        self._setup_process()
        self._setup_network()
        self._setup_output()
        self._setup_batch()
        self._setup_data()
        self._setup_optimizer()
        self._setup_precision()
        self.start_epoch, self.step, self.best = 0, 0, -1.0
        if self.cfg.resume:
            self._resume(self.cfg.resume)
        else:
            # dropout differs per rank; the weights stay identical (DDP averages gradients)
            torch.manual_seed(self.cfg.seed + self.info.rank)
        self._setup_ddp()
        self.log = MetricsLogger(self.out, self.info.is_main, self.cfg.tensorboard)
        self.result = TrainResult(
            self.network,
            self.ema.module if self.ema else self.network,
            output_dir=self.out,
            best_miou=self.best,
            unused_parameters=list(self.unused),
        )
        self._announce()

    def _setup_process(self) -> None:
        """Deterministic mode, the process group, threads; the same seed on every rank."""
        cfg = self.cfg
        if cfg.deterministic:
            enable_determinism()
        self.info = info = init_distributed(cfg.device, cfg.dist_timeout_min, cfg.save_timeout_min)
        _set_threads(cfg, info)
        if cfg.data.path is None:
            raise ConfigError("no data: set data.path (--data)")
        seed_everything(cfg.seed)  # same initialisation on every rank

    def _setup_network(self) -> None:
        """The model on this device; frozen and never-reached parameters stop training."""
        cfg, info = self.cfg, self.info
        self.model = build_model(cfg)
        self.network = network = self.model.network.to(info.device).train()
        self.mcfg = network.config
        self.frozen = apply_freeze(network, cfg.optim.freeze)
        self.unused = unused_parameters(network, info.device)
        for name, p in network.named_parameters():
            if name in self.unused:
                p.requires_grad_(False)  # never in the graph: DDP must not wait for them
        if cfg.activation_checkpointing:
            network.visual_encoder.checkpoint_blocks = True

    def _setup_output(self) -> None:
        """Rank 0: recover what a killed run left in the output directory, write the config."""
        cfg = self.cfg
        self.out = Path(cfg.output_dir)
        if self.info.is_main:
            recover_output_dir(self.out, self._note if cfg.progress else None)
            self.out.mkdir(parents=True, exist_ok=True)
            write_output_text(
                self.out / "train_config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False)
            )

    def _setup_batch(self) -> None:
        """The per-rank batch: the global batch over world size x accumulation steps."""
        o, info = self.cfg.optim, self.info
        self.per_rank, rem = divmod(o.global_batch_size, info.world_size * o.grad_accum)
        if rem or self.per_rank < 1:
            raise ConfigError(
                f"global_batch_size {o.global_batch_size} is not divisible by world size "
                f"{info.world_size} x grad_accum {o.grad_accum}"
            )

    def _setup_optimizer(self) -> None:
        """Adam over the trainable parameters, warm-up + cosine per step, EMA."""
        o, network = self.cfg.optim, self.network
        self.params = [p for p in network.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(
            self.params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay
        )
        self.scheduler = WarmupCosineScheduler(
            self.optimizer,
            o.epochs * self.steps_per_epoch,
            round(o.warmup_epochs * self.steps_per_epoch),
            o.lr,
            o.min_lr,
            o.warmup_start_lr / o.lr if o.lr > 0 else 1.0,
        )
        self.ema = ModelEMA(network, o.ema_decay, o.ema_warmup) if o.ema else None

    def _setup_precision(self) -> None:
        """The loss (matmul form when deterministic), autocast dtype, loss scaler, attention."""
        cfg, info = self.cfg, self.info
        self.loss_fn = bce_loss
        if cfg.deterministic:
            grid = self.mcfg.input_size // self.mcfg.encoder.patch_size
            install_matmul_position_tables(self.network.visual_encoder, grid, grid)
            self.loss_fn = bce_loss_matmul
        self.amp_dtype = resolve_amp(cfg.optim.amp, info.device)
        self.scaler = torch.amp.GradScaler(
            info.device.type, enabled=self.amp_dtype == torch.float16
        )
        self.attn_ctx = contextlib.nullcontext
        if cfg.deterministic and info.device.type == "cuda":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            # the fused kernels' backward accumulates with atomics
            self.attn_ctx = lambda: sdpa_kernel([SDPBackend.MATH])

    def _setup_ddp(self) -> None:
        """Wrap the network in DDP when there is more than one process."""
        info, network = self.info, self.network
        self.ddp: nn.Module = network
        if info.distributed:
            if any(p.dim() == 4 and tuple(p.shape[2:]) == (1, 1) for p in network.parameters()):
                # a 1x1 convolution's weight gradient (the encoder's neck) differs from its
                # weight only in the strides of its size-1 axes, which address nothing; DDP
                # compares strides literally and warns once per rank about a layout that is
                # in fact the same
                warnings.filterwarnings(
                    "ignore", message="Grad strides do not match bucket view strides"
                )
            self.ddp = DistributedDataParallel(
                network,
                device_ids=[info.local_rank] if info.device.type == "cuda" else None,
                find_unused_parameters=False,  # the unused ones are frozen above
            )

    @staticmethod
    def _note(text: str) -> None:
        print(f"[dit-train] {text}", flush=True)

    def _setup_data(self) -> None:
        """The train set and its loader (this rank's shard), the val and test sets."""
        cfg, mcfg, tok = self.cfg, self.mcfg, self.model.tokenizer
        self.train_ds = train_dataset(cfg, mcfg, tok)
        self.val_sets = {s: eval_dataset(cfg, mcfg, tok, s) for s in cfg.data.val_splits}
        self.test_sets = {s: eval_dataset(cfg, mcfg, tok, s) for s in cfg.data.test_splits}
        self.sampler, self.loader = train_loader(cfg, self.info, self.train_ds, self.per_rank)
        self.steps_per_epoch = len(self.loader) // self.cfg.optim.grad_accum
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"{len(self.train_ds)} training samples make no optimiser step of "
                f"{self.cfg.optim.global_batch_size}"
            )

    def _resume(self, path: str) -> None:
        """Rank 0 reads the checkpoint and sends it to the others (no shared disk needed)."""
        info, cfg = self.info, self.cfg
        state = load_on_main(info, lambda: load_train_state(path))
        self.network.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        note = restore_scaler(
            self.scaler, state["scaler"], state.get("amp", "off"), amp_name(self.amp_dtype)
        )
        if note and info.is_main and cfg.progress:
            print(f"[dit-train] {note}", flush=True)
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.start_epoch, self.step = state["epoch"] + 1, state["step"]
        self.best = state["best_miou"]
        rngs = state["rng"]
        if len(rngs) == info.world_size:
            set_rng_state(rngs[info.rank], info.device)
        else:  # a different world size cannot continue bit-identically anyway
            seed_everything(cfg.seed + 1000 * self.start_epoch + info.rank)

    def _announce(self) -> None:
        info, o, cfg = self.info, self.cfg.optim, self.cfg
        if not (info.is_main and cfg.progress):
            return
        n_train = sum(p.numel() for p in self.params)
        print(
            f"[dit-train] {self.mcfg.name}: {len(self.train_ds)} train samples "
            f"({cfg.data.sample_unit}s), {info.world_size} process(es) on {info.device.type}, "
            f"batch {o.global_batch_size} ({self.per_rank}/rank x {o.grad_accum} accum), "
            f"{self.steps_per_epoch} steps/epoch, {n_train / 1e6:.2f}M trainable params "
            f"({len(self.frozen)} frozen, {len(self.unused)} unused tensors frozen), "
            f"amp={amp_name(self.amp_dtype)}, ema={o.ema_decay if o.ema else 'off'}",
            flush=True,
        )

    # -- one epoch ------------------------------------------------------------------------

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One epoch of optimiser steps; returns the epoch's row (train loss, lr, time).

        Losses and gradient norms stay on the device and are read back (one all-reduce, one
        sync) every ``log_every`` steps and at the end of the epoch.
        """
        cfg, info = self.cfg, self.info
        assert self.result is not None
        self.sampler.set_epoch(epoch)
        self.train_ds.set_epoch(epoch)
        self.ddp.train()
        t0 = time.perf_counter()
        epoch_losses: list[float] = []
        pending: list[tuple[int, float, torch.Tensor, torch.Tensor]] = []
        it = iter(self.loader)
        show = info.is_main and cfg.progress
        with Progress(f"epoch {epoch}", self.steps_per_epoch, enabled=show) as bar:
            for i in range(self.steps_per_epoch):
                pending.append(self._optimizer_step(it))
                if self.step % cfg.log_every == 0 or i == self.steps_per_epoch - 1:
                    epoch_losses += self._flush(epoch, pending, bar)
                    pending = []
                bar.update(1)
        return {
            "epoch": epoch,
            "step": self.step,
            "train_loss": float(np.mean(epoch_losses)),
            "lr": self.optimizer.param_groups[0]["lr"],
            "epoch_s": time.perf_counter() - t0,
        }

    def _optimizer_step(
        self, batches: Iterator[dict[str, Any]]
    ) -> tuple[int, float, torch.Tensor, torch.Tensor]:
        """``grad_accum`` micro-batches, clip, step, schedule, EMA; returns (step, lr, loss,
        grad norm), the last two still on the device."""
        o, dev = self.cfg.optim, self.info.device
        loss_sum = torch.zeros((), device=dev)
        for micro in range(o.grad_accum):
            loss_sum += self._micro_step(next(batches), micro == o.grad_accum - 1)
        grad_norm = torch.full((), float("nan"), device=dev)
        if o.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, o.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.network)
        self.step += 1
        return self.step, lr, loss_sum, grad_norm

    def _micro_step(self, batch: dict[str, Any], sync: bool) -> torch.Tensor:
        """Forward under autocast, backward outside it; returns the detached loss / accum."""
        info, o = self.info, self.cfg.optim
        dev = info.device
        no_sync = info.distributed and not sync
        ctx = self.ddp.no_sync() if no_sync else contextlib.nullcontext()  # type: ignore[operator]
        with ctx:
            with (
                self.attn_ctx(),
                torch.autocast(
                    dev.type,
                    dtype=self.amp_dtype or torch.float32,
                    enabled=self.amp_dtype is not None,
                ),
            ):
                out = self.ddp(
                    batch["image"].to(dev, non_blocking=True),
                    batch["input_ids"].to(dev, non_blocking=True),
                    batch["attention_mask"].to(dev, non_blocking=True),
                )
                target = batch["target"].to(dev, non_blocking=True)
                loss = self.loss_fn(out.low_res_logits, target)
            self.scaler.scale(loss / o.grad_accum).backward()
        return loss.detach() / o.grad_accum

    def _flush(
        self,
        epoch: int,
        pending: list[tuple[int, float, torch.Tensor, torch.Tensor]],
        bar: Progress,
    ) -> list[float]:
        """Read back the pending steps' losses (mean over ranks) and log the last step."""
        assert self.result is not None
        losses = torch.stack([p[2] for p in pending]).double()
        if self.info.distributed:
            dist.all_reduce(losses)
            losses /= self.info.world_size
        values = losses.tolist()
        self.result.losses += values
        step, lr, _, gn = pending[-1]
        bar.describe(f"loss={values[-1]:.4f} lr={lr:.2e}")  # shown on rank 0 only
        if step % self.cfg.log_every == 0:
            self.log.step(
                {"step": step, "epoch": epoch, "loss": values[-1], "lr": lr, "grad_norm": float(gn)}
            )
        return values

    # -- evaluation and checkpoints -------------------------------------------------------

    @property
    def eval_network(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.network

    def _evaluate(self, network: nn.Module, sets: dict[str, ReferTorchDataset]) -> dict[str, float]:
        cfg, row = self.cfg, {}
        for split, ds in sets.items():
            m = evaluate(
                network,
                ds,
                self.info,
                self.per_rank,
                self.mcfg.mask_threshold,
                cfg.data.num_workers,
                cfg.progress,
                cfg.eval_precision,
                self.amp_dtype,
            )
            row.update({f"{split}:{k}": v for k, v in m.items()})
        return row

    def evaluate_epoch(self, epoch: int, row: dict[str, Any]) -> bool:
        """Score the val splits (every ``eval_every`` epochs and the last); adds them to
        ``row`` and returns whether the first split's mIoU improved."""
        cfg = self.cfg
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.optim.epochs:
            t0 = time.perf_counter()
            row.update(self._evaluate(self.eval_network, self.val_sets))
            row["eval_s"] = time.perf_counter() - t0
        key = f"{cfg.data.val_splits[0]}:mIoU" if cfg.data.val_splits else None
        miou = row.get(key, -1.0) if key else -1.0
        improved = miou > self.best
        self.best = max(self.best, miou)
        return improved

    def save(self, epoch: int, row: dict[str, Any], improved: bool) -> None:
        """Rank 0 writes ``last/`` (and ``best/``); the others wait on a long-timeout group."""
        info, cfg = self.info, self.cfg
        rngs = all_gather_objects(info, rng_state(info.device))
        if info.is_main:
            state = {
                "model": self.network.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "scaler": self.scaler.state_dict(),
                "amp": amp_name(self.amp_dtype),
                "rng": rngs,
                "epoch": epoch,
                "step": self.step,
                "best_miou": self.best,
                "world_size": info.world_size,
                "config": json.loads(json.dumps(cfg.to_dict())),
            }
            save_checkpoint(self.out / "last", self.eval_network, self.model.vocab_file, state)
            if improved:
                copy_checkpoint(self.out / "last", self.out / "best")
            self.log.epoch(row)
            if cfg.progress:
                shown = {
                    k: (round(v, 4) if isinstance(v, float) else v)
                    for k, v in row.items()
                    if not re.search(r"prec@0\.[6-9]|count", k)
                }
                print(f"[dit-train] {shown}", flush=True)
        wait_for_main(info)

    def finish(self) -> dict[str, float]:
        """Score the test splits once with the best weights (read by rank 0, broadcast)."""
        if not self.test_sets:
            return {}
        info = self.info
        best_dir = self.out / "best"

        def read_best() -> dict[str, torch.Tensor]:
            from safetensors.torch import load_file

            f = best_dir / WEIGHTS_FILE
            if not f.is_file():
                raise CheckpointError(f"no best checkpoint at {best_dir} to score the test splits")
            return load_file(str(f))

        weights = load_on_main(info, read_best)
        network = copy.deepcopy(self.eval_network)
        network.load_state_dict(weights)
        metrics = self._evaluate(network, self.test_sets)
        if info.is_main:
            write_output_text(self.out / TEST_METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
            if self.cfg.progress:
                shown = {k: round(v, 4) for k, v in metrics.items() if k.endswith("IoU")}
                print(f"[dit-train] best/ on test splits: {shown}", flush=True)
        return metrics

    # -- the whole run --------------------------------------------------------------------

    def epochs(self) -> Iterator[int]:
        end = self.cfg.optim.epochs
        if self.cfg.stop_after_epochs is not None:
            end = min(end, self.start_epoch + self.cfg.stop_after_epochs)
        return iter(range(self.start_epoch, end))

    def run(self) -> TrainResult:
        self.setup()
        assert self.result is not None
        t_start = time.perf_counter()
        last = self.start_epoch - 1
        try:
            for epoch in self.epochs():
                row = self.train_epoch(epoch)
                improved = self.evaluate_epoch(epoch, row)
                row["elapsed_s"] = time.perf_counter() - t_start
                self.result.best_miou = self.best
                self.result.history.append(row)
                self.save(epoch, row, improved)
                last = epoch
            if last + 1 == self.cfg.optim.epochs:
                self.result.test_metrics = self.finish()
        finally:
            self.log.close()
        return self.result


def train(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) a training; returns the trained network and the loss/metric history.

    Call inside an initialised process group or alone; see :func:`main_worker`.
    """
    return Trainer(cfg).run()


def main_worker(cfg: TrainConfig) -> TrainResult:
    """``train`` with process-group clean-up: the body of ``training/train.py``."""
    try:
        return train(cfg)
    finally:
        cleanup_distributed()
