"""The DIT trainer: DDP, AMP, EMA, warm-up + cosine, clipping, accumulation, resume, eval.

    result = train(TrainConfig.from_yaml("training/configs/tiny_synthetic.yaml"))

Run one process directly, or one per device under ``torchrun`` (see ``training/train.py``).
Output directory::

    <output_dir>/last/    save_pretrained dir (config.json, model.safetensors, vocab.txt)
                          + train_state.pt (model, optimiser, scheduler, EMA, scaler, RNG of
                          every rank, epoch, step, best metric; tensors and containers only,
                          readable with torch.load(weights_only=True))
    <output_dir>/best/    the same for the epoch with the best val mIoU
    <output_dir>/metrics.csv, steps.csv, train_config.yaml, tensorboard/ (if installed)

``model.safetensors`` holds the EMA weights when EMA is on (what is evaluated is what ships).
The loss is the authors': BCE with logits of the x4-upsampled low-res logits against the
letterboxed mask at input resolution. Evaluation runs the inference path: low-res logits ->
``postprocess_batch`` (crop, resize to the original size, threshold) -> :class:`RISMetrics`.
"""

from __future__ import annotations

import contextlib
import csv
import json
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from ..data import open_dataset
from ..errors import CheckpointError, ConfigError
from ..metrics import RISMetrics
from ..model.checkpoint import save_pretrained
from ..model.dit import DIT, upsample_logits
from ..model.dit_model import DITModel
from ..postprocess import postprocess_batch
from .config import TrainConfig
from .dataset import ReferTorchDataset, collate_eval, collate_train
from .distributed import (
    DistInfo,
    all_gather_objects,
    barrier,
    cleanup_distributed,
    init_distributed,
    mean_over_ranks,
)
from .ema import ModelEMA
from .schedule import WarmupCosineScheduler

STATE_FILE = "train_state.pt"


@dataclass
class TrainResult:
    """What :func:`train` returns (on every rank)."""

    network: DIT  # the trained (unwrapped) network, raw weights
    eval_network: nn.Module  # what is evaluated and saved: the EMA copy, or ``network``
    losses: list[float] = field(default_factory=list)  # per optimiser step, mean over ranks
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch
    best_miou: float = -1.0
    output_dir: Path | None = None


# ---------------------------------------------------------------------------- helpers


def bce_loss(low_res_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE with logits of ``upsample_logits(low_res)`` (B,1,S,S) against target (B,1,S,S)."""
    return F.binary_cross_entropy_with_logits(upsample_logits(low_res_logits.float()), target)


def apply_freeze(network: nn.Module, prefixes: list[str]) -> list[str]:
    """Set ``requires_grad=False`` on parameters under each module prefix; return their names.

    Raises:
        ConfigError: a prefix matches no parameter (a typo would silently train everything).
    """
    frozen: list[str] = []
    for prefix in prefixes:
        hits = [
            (n, p)
            for n, p in network.named_parameters()
            if n == prefix or n.startswith(prefix.rstrip(".") + ".")
        ]
        if not hits:
            tops = sorted({n.split(".")[0] for n, _ in network.named_parameters()})
            raise ConfigError(f"freeze: {prefix!r} matches no parameter; modules: {tops}")
        for n, p in hits:
            p.requires_grad_(False)
            frozen.append(n)
    return frozen


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full precision (the default on CPUs)."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors / plain containers (weights_only-loadable)."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "python": _python_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(_numpy_state_from_plain(state["numpy"]))
    random.setstate(_python_state_from_plain(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state_to_plain(s: tuple) -> dict[str, Any]:
    return {
        "keys": torch.from_numpy(s[1].astype(np.int64)),
        "pos": int(s[2]),
        "has_gauss": int(s[3]),
        "gauss": float(s[4]),
    }


def _numpy_state_from_plain(d: dict[str, Any]) -> tuple:
    return ("MT19937", d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["gauss"])


def _python_state_to_plain(s: tuple) -> dict[str, Any]:
    return {"version": s[0], "state": torch.tensor(s[1], dtype=torch.int64), "gauss": s[2]}


def _python_state_from_plain(d: dict[str, Any]) -> tuple:
    return (d["version"], tuple(int(v) for v in d["state"].tolist()), d["gauss"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class _Logger:
    """Rank-0 CSV + optional TensorBoard."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self.out = out
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except ImportError:  # tensorboard is optional (the `train` extra)
                self.tb = None

    def _append(self, name: str, row: dict[str, Any]) -> None:
        path = self.out / name
        new = not path.exists()
        with path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)

    def step(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._append("steps.csv", row)
        if self.tb is not None:
            for k in ("loss", "lr", "grad_norm"):
                if k in row:
                    self.tb.add_scalar(f"train/{k}", row[k], row["step"])

    def epoch(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._append("metrics.csv", row)
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("epoch", "step") and isinstance(v, (int, float)):
                    self.tb.add_scalar(k.replace(":", "/"), v, row["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ---------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(
    network: nn.Module,
    dataset: ReferTorchDataset,
    info: DistInfo,
    batch_size: int,
    threshold: float,
    num_workers: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """RIS metrics of ``network`` on ``dataset`` at the ORIGINAL resolution.

    Each rank scores a strided shard; the accumulators are merged on every rank.
    """
    was_training = network.training
    network.eval()
    indices = list(range(info.rank, len(dataset), info.world_size))
    loader = DataLoader(
        torch.utils.data.Subset(dataset, indices),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_eval,
    )
    metrics = RISMetrics()
    dev = next(network.parameters()).device
    for batch in _progress(loader, progress and info.is_main, "eval"):
        out = network(
            batch["image"].to(dev), batch["input_ids"].to(dev), batch["attention_mask"].to(dev)
        )
        low_res = out.low_res_logits.float().cpu().numpy()
        for res, gt in zip(
            postprocess_batch(low_res, batch["letterbox"], threshold), batch["gt_mask"], strict=True
        ):
            metrics.update(res.mask, gt)
    merged = RISMetrics()
    for part in all_gather_objects(info, metrics):
        merged.merge(part)
    network.train(was_training)
    return merged.compute()


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, dynamic_ncols=True, leave=False)


# ---------------------------------------------------------------------------- checkpoints


def save_checkpoint(
    out: Path,
    eval_network: nn.Module,
    vocab_file: Path | None,
    state: dict[str, Any],
) -> None:
    """``save_pretrained`` dir + ``train_state.pt`` (written to a temp dir, then renamed)."""
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_pretrained(eval_network, tmp, vocab_file)  # type: ignore[arg-type]
    torch.save(state, tmp / STATE_FILE)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def load_train_state(path: str | Path) -> dict[str, Any]:
    """Read ``train_state.pt`` (a checkpoint dir or the file itself) with weights_only=True."""
    p = Path(path)
    f = p / STATE_FILE if p.is_dir() else p
    if not f.is_file():
        raise CheckpointError(f"cannot resume: {f} does not exist")
    return torch.load(f, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------- training


def _build_model(cfg: TrainConfig) -> DITModel:
    if cfg.init_from is not None:
        model = DITModel.from_pretrained(cfg.init_from)
        if cfg.model_overrides:
            raise ConfigError("model_overrides cannot change a model loaded with init_from")
        return model
    if cfg.text_encoder is None:
        raise ConfigError(
            "no text encoder: set text_encoder (a Hugging Face BERT directory with vocab.txt; "
            "--text-encoder) or init_from (a dit-deploy model directory)"
        )
    return DITModel.from_sam(
        cfg.sam_checkpoint, cfg.model, text_encoder=cfg.text_encoder, **cfg.model_overrides
    )


def _set_threads(cfg: TrainConfig, info: DistInfo) -> None:
    if cfg.cpu_threads and info.device.type == "cpu":
        torch.set_num_threads(max(1, cfg.cpu_threads // max(1, info.local_world_size)))


def train(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) a training; returns the trained network and the loss/metric history.

    Call inside an initialised process group or alone; see :func:`main_worker`.
    """
    info = init_distributed(cfg.device)
    _set_threads(cfg, info)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if cfg.data.path is None:
        raise ConfigError("no data: set data.path (--data)")
    _seed_everything(cfg.seed)  # same initialisation on every rank
    model = _build_model(cfg)
    network = model.network.to(info.device).train()
    mcfg = network.config
    frozen = apply_freeze(network, cfg.optim.freeze)
    out = Path(cfg.output_dir)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    o = cfg.optim
    per_rank, rem = divmod(o.global_batch_size, info.world_size * o.grad_accum)
    if rem or per_rank < 1:
        raise ConfigError(
            f"global_batch_size {o.global_batch_size} is not divisible by world size "
            f"{info.world_size} x grad_accum {o.grad_accum}"
        )

    train_refer = open_dataset(cfg.data.path, cfg.data.train_split, cfg.data.dataset)
    train_ds = ReferTorchDataset(
        train_refer,
        model.tokenizer,
        mcfg.input_size,
        train=True,
        augment=cfg.augment,
        mean=mcfg.pixel_mean,
        std=mcfg.pixel_std,
        seed=cfg.seed,
        constant_text=cfg.data.constant_text,
        max_samples=cfg.data.max_train_samples,
    )
    val_sets = {
        split: ReferTorchDataset(
            open_dataset(cfg.data.path, split, cfg.data.dataset),
            model.tokenizer,
            mcfg.input_size,
            train=False,
            mean=mcfg.pixel_mean,
            std=mcfg.pixel_std,
            constant_text=cfg.data.constant_text,
            max_samples=cfg.data.max_val_samples,
        )
        for split in cfg.data.val_splits
    }
    sampler = DistributedSampler(
        train_ds,
        num_replicas=info.world_size,
        rank=info.rank,
        shuffle=True,
        seed=cfg.seed,
        drop_last=True,
    )
    loader = DataLoader(
        train_ds,
        batch_size=per_rank,
        sampler=sampler,
        drop_last=True,
        num_workers=cfg.data.num_workers,
        collate_fn=collate_train,
        pin_memory=info.device.type == "cuda",
        persistent_workers=False,
    )
    steps_per_epoch = len(loader) // o.grad_accum
    if steps_per_epoch < 1:
        raise ConfigError(
            f"{len(train_ds)} training samples make no optimiser step of {o.global_batch_size}"
        )

    params = [p for p in network.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(
        params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay
    )
    scheduler = WarmupCosineScheduler(
        optimizer,
        o.epochs * steps_per_epoch,
        round(o.warmup_epochs * steps_per_epoch),
        o.lr,
        o.min_lr,
        o.warmup_start_factor,
    )
    ema = ModelEMA(network, o.ema_decay, o.ema_warmup) if o.ema else None
    amp_dtype = resolve_amp(o.amp, info.device)
    scaler = torch.amp.GradScaler(info.device.type, enabled=amp_dtype == torch.float16)

    start_epoch, step, best = 0, 0, -1.0
    if cfg.resume:
        state = load_train_state(cfg.resume)
        network.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        start_epoch, step, best = state["epoch"] + 1, state["step"], state["best_miou"]
        rngs = state["rng"]
        if len(rngs) == info.world_size:
            set_rng_state(rngs[info.rank])
        else:  # a different world size cannot continue bit-identically anyway
            _seed_everything(cfg.seed + 1000 * start_epoch + info.rank)
    else:
        # dropout differs per rank; the weights stay identical (DDP averages gradients)
        torch.manual_seed(cfg.seed + info.rank)

    ddp: nn.Module = network
    if info.distributed:
        ddp = DistributedDataParallel(
            network,
            device_ids=[info.local_rank] if info.device.type == "cuda" else None,
            find_unused_parameters=True,  # SAM's IoU head and point embeddings get no gradient
        )
    log = _Logger(out, info.is_main, cfg.tensorboard)
    result = TrainResult(network, ema.module if ema else network, output_dir=out, best_miou=best)
    if info.is_main and cfg.progress:
        n_train = sum(p.numel() for p in params)
        print(
            f"[dit-train] {mcfg.name}: {len(train_ds)} train samples, {info.world_size} "
            f"process(es) on {info.device.type}, batch {o.global_batch_size} "
            f"({per_rank}/rank x {o.grad_accum} accum), {steps_per_epoch} steps/epoch, "
            f"{n_train / 1e6:.2f}M trainable params ({len(frozen)} frozen tensors), "
            f"amp={amp_dtype}, ema={o.ema}",
            flush=True,
        )

    t_start = time.perf_counter()
    end_epoch = o.epochs
    if cfg.stop_after_epochs is not None:
        end_epoch = min(end_epoch, start_epoch + cfg.stop_after_epochs)
    for epoch in range(start_epoch, end_epoch):
        sampler.set_epoch(epoch)
        train_ds.set_epoch(epoch)
        ddp.train()
        epoch_losses: list[float] = []
        it = iter(loader)
        bar = _progress(range(steps_per_epoch), info.is_main and cfg.progress, f"epoch {epoch}")
        for _ in bar:
            loss_sum, grad_norm = 0.0, float("nan")
            for micro in range(o.grad_accum):
                batch = next(it)
                sync = micro == o.grad_accum - 1 or not info.distributed
                ctx = contextlib.nullcontext() if sync else ddp.no_sync()  # type: ignore[operator]
                with (
                    ctx,
                    torch.autocast(
                        info.device.type,
                        dtype=amp_dtype or torch.float32,
                        enabled=amp_dtype is not None,
                    ),
                ):
                    out_ = ddp(
                        batch["image"].to(info.device, non_blocking=True),
                        batch["input_ids"].to(info.device, non_blocking=True),
                        batch["attention_mask"].to(info.device, non_blocking=True),
                    )
                    loss = bce_loss(out_.low_res_logits, batch["target"].to(info.device))
                    scaler.scale(loss / o.grad_accum).backward()
                loss_sum += float(loss.detach()) / o.grad_accum
            if o.clip_grad_norm is not None:
                scaler.unscale_(optimizer)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, o.clip_grad_norm))
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            if ema is not None:
                ema.update(network)
            step += 1
            mean_loss = mean_over_ranks(info, loss_sum)
            result.losses.append(mean_loss)
            epoch_losses.append(mean_loss)
            if info.is_main and cfg.progress and hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
            if step % cfg.log_every == 0:
                log.step(
                    {
                        "step": step,
                        "epoch": epoch,
                        "loss": mean_loss,
                        "lr": lr,
                        "grad_norm": grad_norm,
                    }
                )

        row: dict[str, Any] = {
            "epoch": epoch,
            "step": step,
            "train_loss": float(np.mean(epoch_losses)),
            "lr": optimizer.param_groups[0]["lr"],
            "elapsed_s": time.perf_counter() - t_start,
        }
        eval_net = ema.module if ema is not None else network
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == o.epochs:
            for split, ds in val_sets.items():
                m = evaluate(
                    eval_net,
                    ds,
                    info,
                    max(1, per_rank),
                    mcfg.mask_threshold,
                    cfg.data.num_workers,
                    cfg.progress,
                )
                row.update({f"{split}:{k}": v for k, v in m.items()})
        key = f"{cfg.data.val_splits[0]}:mIoU" if cfg.data.val_splits else None
        miou = row.get(key, -1.0) if key else -1.0
        improved = miou > best
        best = max(best, miou)
        result.best_miou = best
        result.history.append(row)
        rngs = all_gather_objects(info, rng_state())
        if info.is_main:
            state = {
                "model": network.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "scaler": scaler.state_dict(),
                "rng": rngs,
                "epoch": epoch,
                "step": step,
                "best_miou": best,
                "world_size": info.world_size,
                "config": json.loads(json.dumps(cfg.to_dict())),
            }
            save_checkpoint(out / "last", eval_net, model.vocab_file, state)
            if improved:
                if (out / "best").exists():
                    shutil.rmtree(out / "best")
                shutil.copytree(out / "last", out / "best")
            log.epoch(row)
            if cfg.progress:
                shown = {
                    k: (round(v, 4) if isinstance(v, float) else v)
                    for k, v in row.items()
                    if not re.search(r"prec@0\.[6-9]|count", k)
                }
                print(f"[dit-train] {shown}", flush=True)
        barrier(info)
    log.close()
    return result


def main_worker(cfg: TrainConfig) -> TrainResult:
    """``train`` with process-group clean-up: the body of ``training/train.py``."""
    try:
        return train(cfg)
    finally:
        cleanup_distributed()
