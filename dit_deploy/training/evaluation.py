"""Score a model or an export on a dataset split: mIoU, oIoU, Prec@X (``training/evaluate.py``).

    report = evaluate_model(EvalOptions(model="runs/x/best", data="data/refcoco",
                                        dataset="refcoco", split="val", device="cuda"))
    report = evaluate_model(EvalOptions(model="exports/x", backend="onnxruntime", ...))

A model directory (or bundled name) runs in PyTorch, batched on ``device`` with optional
autocast/TF32, through the training evaluation path (letterbox -> network ->
``postprocess_batch`` -> :class:`RISMetrics`). An export directory (``manifest.json``) runs
through the torch-free runtime :class:`~dit_deploy.runtime.Predictor` (ONNX Runtime or
TensorRT, any graph precision of the export), with the same pre/post-processing and the
same metrics code, so the numbers of both are comparable expression by expression.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import open_dataset
from ..errors import ArtifactError, BackendUnavailableError, ConfigError
from ..metrics import RISMetrics
from ..progress import Progress


def backends() -> tuple[str, ...]:
    """``--backend`` choices: auto, PyTorch, then every runtime backend of the table."""
    from ..runtime.backends.table import backend_names

    return ("auto", "torch", *backend_names())


TORCH_PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


@dataclass
class EvalOptions:
    """What :func:`evaluate_model` scores, and how."""

    model: str  # model directory / bundled name (torch) or export directory (runtime)
    data: str
    dataset: str | None = None
    split: str = "val"
    backend: str = "auto"  # auto | torch | onnxruntime | tensorrt
    device: str = "auto"
    precision: str = "fp32"  # torch: autocast/TF32; runtime: the export's graph precision
    layout: str | None = None  # runtime: split | fused
    batch_size: int = 32
    workers: int = 2
    threads: int | None = None
    max_samples: int | None = None
    text_blind: str | None = None
    progress: bool = False


def is_export(path: str | Path) -> bool:
    return (Path(path) / "manifest.json").is_file()


def evaluate_model(opts: EvalOptions) -> dict[str, Any]:
    """The metrics of ``opts.model`` on the split, with what ran them and how long it took.

    Raises:
        ConfigError: options that do not fit together (a torch backend for an export, ...).
        ArtifactError, CheckpointError, DatasetError, BackendUnavailableError: from loading.
    """
    if opts.backend not in backends():
        raise ConfigError(f"--backend must be one of {'|'.join(backends())}, got {opts.backend!r}")
    if opts.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {opts.batch_size}")
    export = is_export(opts.model)
    backend = opts.backend if opts.backend != "auto" else "onnxruntime" if export else "torch"
    if backend == "torch" and export:
        raise ConfigError(
            f"{opts.model} is an export (manifest.json); evaluate it with --backend "
            f"{' or '.join(backends()[2:])}, or pass the PyTorch model directory"
        )
    if backend != "torch" and not export:
        raise ArtifactError(
            f"{opts.model} is not an export directory (no manifest.json); --backend {backend} "
            "runs exports only (make one with dit-deploy export), or use --backend torch"
        )
    refer = open_dataset(opts.data, opts.split, opts.dataset)
    t0 = time.perf_counter()
    if backend == "torch":
        device, metrics = _evaluate_torch(opts, refer)
    else:
        device, metrics = _evaluate_runtime(opts, refer, backend)
    return {
        "model": str(opts.model),
        "backend": backend,
        "device": device,
        "precision": opts.precision,
        "split": opts.split,
        "seconds": round(time.perf_counter() - t0, 3),
        **metrics,
    }


def _evaluate_torch(opts: EvalOptions, refer) -> tuple[str, dict[str, float]]:
    import torch

    from ..model.dit_model import DITModel
    from .dataset import ReferTorchDataset
    from .distributed import DistInfo
    from .scoring import evaluate

    if opts.precision not in TORCH_PRECISIONS:
        raise ConfigError(
            f"--precision for PyTorch must be one of {'|'.join(TORCH_PRECISIONS)}, "
            f"got {opts.precision!r} (graph precisions are for exports)"
        )
    name = opts.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"--device {opts.device!r} is not a torch device: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError("--device cuda: PyTorch sees no CUDA GPU here")
    if opts.threads:
        torch.set_num_threads(opts.threads)
    model = DITModel.from_pretrained(opts.model)
    cfg = model.config
    ds = ReferTorchDataset(
        refer,
        model.tokenizer,
        cfg.input_size,
        train=False,
        mean=cfg.pixel_mean,
        std=cfg.pixel_std,
        constant_text=opts.text_blind,
        max_samples=opts.max_samples,
    )
    network = model.network.to(device).eval()
    info = DistInfo(0, 0, 1, 1, device)
    metrics = evaluate(
        network,
        ds,
        info,
        opts.batch_size,
        cfg.mask_threshold,
        num_workers=opts.workers,
        progress=opts.progress,
        precision=opts.precision,
    )
    return str(device), metrics


def _evaluate_runtime(opts: EvalOptions, refer, backend: str) -> tuple[str, dict[str, float]]:
    from ..runtime import Predictor

    device = None if opts.device == "auto" else opts.device  # None: the backend's default
    predictor = Predictor(
        opts.model,
        backend=backend,
        device=device,
        layout=opts.layout,
        threads=opts.threads,
        max_batch=opts.batch_size,
        precision=opts.precision,
    )
    n = len(refer) if opts.max_samples is None else min(len(refer), opts.max_samples)
    metrics = RISMetrics()

    def load(i: int):
        s = refer[i]
        text = opts.text_blind if opts.text_blind is not None else s.sentence
        return s.load_image(), text, s.mask()

    chunks = [range(i, min(i + opts.batch_size, n)) for i in range(0, n, opts.batch_size)]
    bar = Progress("eval", len(chunks), enabled=opts.progress)
    with ThreadPoolExecutor(max(1, opts.workers)) as pool, bar:
        for chunk in chunks:
            items = list(pool.map(load, chunk))
            results = predictor.predict_batch([(img, text) for img, text, _ in items])
            for res, (_, _, gt) in zip(results, items, strict=True):
                metrics.update(res.mask, gt)
            bar.update(1)
    return device, metrics.compute()


def format_table(report: dict[str, Any]) -> str:
    """The report as a two-column table (metrics as percentages)."""
    rows = []
    for k, v in report.items():
        if k in ("mIoU", "oIoU") or k.startswith("prec@"):
            rows.append((k, f"{100 * v:.2f}"))
        else:
            rows.append((k, str(v)))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


__all__ = ["EvalOptions", "evaluate_model", "format_table", "is_export"]
