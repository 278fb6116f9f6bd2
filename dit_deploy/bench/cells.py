"""The benchmark matrix: backend x precision x layout, with a reason for every cell that
cannot run here."""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..hints import command
from ..runtime.backends.table import TABLE, BackendRow, backend_row
from ..runtime.export import preferred_layouts


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
    """Every cell the user asked for; unavailable ones carry their reason. The runtime cells
    are the backend table's rows: each CPU precision x layout, then (``all_cells``) each
    row's GPU cells."""
    if engine:
        return [_engine_cell(export_dir, engine)]
    cells = _pytorch_cells(torch_source)
    layouts = preferred_layouts() if all_cells else preferred_layouts()[:1]
    rows = [row for row in TABLE.values() if "cpu" in row.devices]
    for row in rows:
        for precision in row.precisions:
            reason = row.unavailable_reason(precision, "cpu")
            for layout in layouts:
                label = f"{row.name} cpu {precision} ({layout})"
                cells.append(Cell(label, row.name, precision, layout=layout, reason=reason))
    if all_cells:
        for row in TABLE.values():
            for device, precisions in row.bench:
                for precision in precisions:
                    cells.append(_gpu_cell(export_dir, row, device, precision))
    return cells


def _pytorch_cells(torch_source: dict | None) -> list[Cell]:
    """PyTorch as users run it (the baseline), and its best measured CPU configuration."""
    no_torch = None if importlib.util.find_spec("torch") else "torch is not installed"
    no_source = (
        None
        if torch_source
        else ("the export does not name its PyTorch source; pass --pretrained or --checkpoint")
    )
    # the best PyTorch configuration measured on a CPU (docs/benchmarks.md): BF16 autocast
    # (1.75x at ViT-B on AVX512-BF16); SDPA and jemalloc measured slower, so not used
    return [
        Cell(
            "pytorch (as users run it)",
            "pytorch",
            "fp32",
            options={"sdpa": False},
            reason=no_torch or no_source,
        ),
        Cell(
            "pytorch (tuned: bf16 autocast)",
            "pytorch",
            "bf16",
            options={"sdpa": False, "autocast": "bf16"},
            reason=no_torch or no_source or cpu_bf16_reason(),
        ),
    ]


def _gpu_cell(export_dir: Path, row: BackendRow, device: str, precision: str) -> Cell:
    """A cell of ``dit-bench --all`` off the CPU; a per-machine artifact (an engine) is a
    fused-graph cell labelled by it, with the commands that build and run it."""
    if row.artifact == "engine":
        return _engine_cell(export_dir, precision, row)
    return Cell(
        f"{row.name} {device} {precision} (fused)",
        row.name,
        precision,
        device=device,
        layout="fused",
        reason=row.unavailable_reason(precision, device),
    )


def _engine_cell(export_dir: Path, precision: str, row: BackendRow | None = None) -> Cell:
    row = row or backend_row("tensorrt")
    reason = row.unavailable_reason(precision, row.default_device)
    if reason is not None:
        reason = (
            f"TensorRT needs an NVIDIA GPU: {reason}. On a GPU machine run: "
            f"{command('engines', export_dir, '--precision', precision)} && "
            f"{command('bench', export_dir, '--engine', precision)}"
        )
    return Cell(
        f"{row.name} {precision} (engine)",
        row.name,
        precision,
        device=row.default_device,
        layout="fused",
        reason=reason,
    )
