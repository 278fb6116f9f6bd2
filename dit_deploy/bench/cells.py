"""The benchmark matrix: backend x precision x layout, with a reason for every cell that
cannot run here."""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..hints import command
from ..runtime.devices import gpu_unavailable_reason


@dataclass
class Cell:
    label: str
    backend: str  # pytorch | onnxruntime | openvino | tensorrt
    precision: str  # fp32 | fp16 | int8 | bf16
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


def _openvino_reason() -> str | None:
    if importlib.util.find_spec("openvino") is None:
        return "openvino is not installed (pip install 'dit-deploy[openvino]')"
    return None


def cpu_bf16_reason() -> str | None:
    """None where the CPU has BF16 units (AVX512-BF16 or AMX), else why BF16 cannot pay off."""
    from ..runtime.cpu_numerics import this_machine

    machine = this_machine()
    if machine.has_bf16_units:
        return None
    return (
        f"this CPU ({machine.family}) has no BF16 units (AVX512-BF16 or AMX): BF16 would be "
        "emulated, slower"
    )


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
    cells.append(
        Cell(
            "pytorch (as users run it)",
            "pytorch",
            "fp32",
            options={"sdpa": False},
            reason=no_torch or no_source,
        )
    )
    # the best PyTorch configuration measured on a CPU (docs/benchmarks.md): BF16 autocast
    # (1.75x at ViT-B on AVX512-BF16); SDPA and jemalloc measured slower, so not used
    cells.append(
        Cell(
            "pytorch (tuned: bf16 autocast)",
            "pytorch",
            "bf16",
            options={"sdpa": False, "autocast": "bf16"},
            reason=no_torch or no_source or cpu_bf16_reason(),
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
    no_openvino = _openvino_reason()
    for precision in ("fp32", "bf16", "int8"):
        reason = no_openvino
        if reason is None and precision == "bf16":
            from ..runtime.backends.openvino import bf16_unavailable_reason

            reason = bf16_unavailable_reason()
        for layout in layouts:
            cells.append(
                Cell(
                    f"openvino cpu {precision} ({layout})",
                    "openvino",
                    precision,
                    layout=layout,
                    reason=reason,
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
