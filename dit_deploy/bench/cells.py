"""The benchmark matrix: backend x precision x layout, with a reason for every cell that
cannot run here."""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..hints import command
from ..runtime.devices import gpu_unavailable_reason

JEMALLOC = Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")


@dataclass
class Cell:
    label: str
    backend: str  # pytorch | onnxruntime | tensorrt
    precision: str  # fp32 | fp16 | int8
    device: str = "cpu"
    layout: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    reason: str | None = None  # set when the cell cannot run here

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ort_providers() -> list[str]:
    if importlib.util.find_spec("onnxruntime") is None:
        return []
    import onnxruntime

    return onnxruntime.get_available_providers()


def tuned_torch_env() -> tuple[dict[str, str], str]:
    """jemalloc if installed (large attention buffers otherwise hit glibc's mmap threshold)."""
    if JEMALLOC.is_file():
        return {"LD_PRELOAD": str(JEMALLOC)}, "jemalloc"
    return {
        "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=33554432"
        ":glibc.malloc.trim_threshold=1073741824"
    }, "glibc tuned"


def plan_cells(
    export_dir: Path, *, torch_source: dict | None, all_cells: bool, engine: str | None
) -> list[Cell]:
    """Every cell the user asked for; unavailable ones carry their reason."""
    if engine:
        return [_engine_cell(export_dir, engine)]
    cells: list[Cell] = []
    no_torch = None if importlib.util.find_spec("torch") else "torch is not installed"
    no_source = (
        None
        if torch_source
        else ("the export does not name its PyTorch source; pass --pretrained or --checkpoint")
    )
    env, allocator = tuned_torch_env()
    cells.append(
        Cell(
            "pytorch (as users run it)",
            "pytorch",
            "fp32",
            options={"sdpa": False},
            reason=no_torch or no_source,
        )
    )
    cells.append(
        Cell(
            f"pytorch (tuned: SDPA, {allocator})",
            "pytorch",
            "fp32",
            options={"sdpa": True},
            env=env,
            reason=no_torch or no_source,
        )
    )
    layouts = ["fused", "split"] if all_cells else ["fused"]
    providers = _ort_providers()
    for precision in ("fp32", "fp16", "int8"):
        for layout in layouts:
            cells.append(
                Cell(
                    f"onnxruntime cpu {precision} ({layout})",
                    "onnxruntime",
                    precision,
                    layout=layout,
                    reason=None if providers else "onnxruntime is not installed",
                )
            )
    if all_cells:
        for device, provider in (
            ("cuda", "CUDAExecutionProvider"),
            ("tensorrt", "TensorrtExecutionProvider"),
        ):
            reason = (
                None
                if provider in providers
                else (
                    f"ONNX Runtime here has no {provider} (needs onnxruntime-gpu and an NVIDIA GPU)"
                )
            )
            cells.append(
                Cell(
                    f"onnxruntime {device} fp32 (fused)",
                    "onnxruntime",
                    "fp32",
                    device=device,
                    layout="fused",
                    reason=reason,
                )
            )
        for precision in ("fp32", "fp16", "int8"):
            cells.append(_engine_cell(export_dir, precision))
    return cells


def _engine_cell(export_dir: Path, precision: str) -> Cell:
    reason = gpu_unavailable_reason()
    if reason is not None:
        reason = (
            f"TensorRT needs an NVIDIA GPU: {reason}. On a GPU machine run: "
            f"{command('engines', export_dir, '--precision', precision)} && "
            f"{command('bench', export_dir, '--engine', precision)}"
        )
    return Cell(
        f"tensorrt {precision} (engine)",
        "tensorrt",
        precision,
        device="cuda",
        layout="fused",
        reason=reason,
    )
