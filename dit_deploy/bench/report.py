"""Benchmark reports: the terminal table (rich), JSON, Markdown and PNG plots."""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic
from ..runtime.devices import cuda_device_count

COLUMNS = [
    "backend / precision",
    "size MB",
    "mIoU",
    "oIoU",
    "P@0.5",
    "max err",
    "mask agr.",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "pairs/s",
    "speed-up",
    "x floor",
    "spread",
    "peak MB",
    "status",
]


def environment(threads: int | None) -> dict[str, Any]:
    from ..runtime.cpu_numerics import this_machine

    machine = this_machine()
    cpu = machine.cpu or platform.processor() or platform.machine()
    versions = {}
    for pkg in (
        "dit-deploy",
        "numpy",
        "torch",
        "onnxruntime",
        "onnxruntime-gpu",
        "openvino",
        "tensorrt",
    ):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpu": cpu,
        # the ISA family and the flags that change INT8/BF16 numerics and speed
        "cpu_kernels": machine.describe(),
        "cores": os.cpu_count(),
        "threads": threads or os.cpu_count(),
        "gpus": cuda_device_count(),
        "python": platform.python_version(),
        "os": platform.platform(),
        "versions": versions,
    }


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def row(cell: dict[str, Any], batch: str, short_status: bool = False) -> list[str]:
    r = cell.get("result", {})
    acc = r.get("accuracy", {})
    lat = r.get("latency", {}).get(batch, {})
    parity = cell.get("parity", {})
    status = r.get("status", "unavailable")
    if status != "ok" and not short_status:
        status = f"{status}: {r.get('reason', cell.get('reason', ''))}"
    if status == "ok" and lat.get("noisy"):
        status = "ok, NOISY" if short_status else "ok, NOISY: " + "; ".join(lat["noisy"])
    speedup = lat.get("speedup", {})
    # the spread of what the row is read for: the speed-up, or (baseline) its own latency
    spread = speedup.get("spread", lat.get("round_spread"))
    pct = lambda v: None if v is None else 100 * v  # noqa: E731
    return [
        cell["label"],
        _fmt(cell.get("size_mb"), ".1f"),
        _fmt(pct(acc.get("mIoU")), ".2f"),
        _fmt(pct(acc.get("oIoU")), ".2f"),
        _fmt(pct(acc.get("prec@0.5")), ".2f"),
        _fmt(parity.get("max_abs"), ".1e"),
        _fmt(parity.get("mask_agreement"), ".4f"),
        _fmt(lat.get("p50"), ".1f"),
        _fmt(lat.get("p90"), ".1f"),
        _fmt(lat.get("p99"), ".1f"),
        _fmt(lat.get("pairs_per_s"), ".2f"),
        "-" if not speedup else f"{speedup['median']:.2f}x",
        _fmt(lat.get("x_floor"), ".1f"),
        "-" if spread is None else f"±{100 * spread / 2:.0f}%",
        _fmt(r.get("peak_rss_mb"), ".0f"),
        status,
    ]


# the columns a narrow terminal keeps, most wanted first (the full table is in report.md)
KEEP_ORDER = [
    "backend / precision", "status", "p50 ms", "speed-up", "mask agr.", "mIoU", "pairs/s",
    "x floor", "spread", "max err", "p90 ms", "oIoU", "P@0.5", "p99 ms", "size MB", "peak MB",
]  # fmt: skip


def fitting_columns(rows: list[list[str]], width: int) -> list[int]:
    """Indexes of :data:`COLUMNS` that fit ``width`` terminal columns: a rich table cell
    costs its text plus 3 (padding and its border), the table 1 more; columns are left out
    in reverse :data:`KEEP_ORDER` until the rest fits (the label and status always stay)."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) + 3 for i, h in enumerate(COLUMNS)]
    kept = [COLUMNS.index(c) for c in KEEP_ORDER]
    while len(kept) > 2 and 1 + sum(widths[i] for i in kept) > width:
        kept.pop()
    return sorted(kept)


def print_table(report: dict[str, Any], console=None) -> None:
    """The table at the terminal's width (``COLUMNS`` where not a terminal, else 120), with
    the columns that do not fit left out and named; ``report.md`` has them all."""
    import shutil

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    if console is None:
        width = None if sys.stdout.isatty() else shutil.get_terminal_size((120, 24)).columns
        console = Console(width=width)
    batch = str(report["batches"][0])
    notes, rows = [], []
    for cell in report["cells"]:
        values = row(cell, batch, short_status=True)
        result = cell.get("result", {})
        noisy = result.get("latency", {}).get(batch, {}).get("noisy")
        if result.get("status") != "ok" or noisy:
            reason = result.get("reason") or "; ".join(noisy)
            notes.append(f"[{len(notes) + 1}] {cell['label']}: {reason}")
            values[-1] += f" [{len(notes)}]"
        rows.append(values)
    kept = fitting_columns(rows, console.width)
    table = Table(
        title=f"dit-bench: {report['model']} on {report['data']['name']} "
        f"({report['data']['pairs']} pairs), batch {batch}\n{machine_line(report)}",
        show_lines=False,
    )
    for i in kept:
        col = COLUMNS[i]
        table.add_column(
            col, justify="left" if col in ("backend / precision", "status") else "right"
        )
    for values in rows:
        table.add_row(*(escape(values[i]) for i in kept))
    console.print(table)
    left_out = [c for i, c in enumerate(COLUMNS) if i not in kept]
    if left_out:
        console.print(
            f"(to fit {console.width} columns, left out: {', '.join(left_out)}; report.md has "
            "every column)",
            highlight=False,
            markup=False,
        )
    for note in notes:  # reasons hold "pip install 'dit-deploy[gpu]'": not rich markup
        console.print(note, highlight=False, markup=False)
    console.print(how_measured(report), highlight=False, markup=False)
    env = report["environment"]
    console.print(
        f"[dim]{env['cpu']}, {env['cores']} cores, {env['threads']} threads, "
        f"{env['gpus']} GPU(s); CPU kind {env.get('cpu_kernels', '?')}; "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
        + "[/dim]"
    )


def how_measured(report: dict[str, Any]) -> str:
    """How to read the latency columns, and the machine's load when the run started."""
    from .machine import describe

    env = report["environment"]
    text = (
        f"Latency: whole predict_batch calls, {report.get('rounds', '?')} interleaved rounds "
        "(every cell one slice per round). speed-up: median over rounds of the per-round ratio "
        f"to {report.get('baseline') or 'no baseline (no PyTorch cell ran)'}; spread: half the "
        "inter-quartile range over rounds, of the speed-up (of the latency for the baseline); "
        f"NOISY: a spread (IQR/median) above {report.get('noise_limit', 0.1):.0%}."
    )
    if "load_at_start" in env:
        text += "\nMachine at start: " + describe(env["load_at_start"])
    if "floors" in report:
        from .floors import describe as describe_floors

        text += "\n" + describe_floors(report["floors"])
    return text


MARKERS = "osD^v<>PX*"  # 10 markers x tab20's 20 colours, walked so no two cells share both


def plot_styles(n: int) -> list[tuple[tuple[float, ...], str]]:
    """(colour, marker) of ``n`` plotted cells, each pair different from every other."""
    from matplotlib import colormaps

    colours = colormaps["tab20"].colors
    return [
        (colours[i % len(colours)], MARKERS[(i // 2 + i // len(colours)) % len(MARKERS)])
        for i in range(n)
    ]


def machine_line(report: dict[str, Any]) -> str:
    """The CPU, its ISA family (what decides INT8/BF16 speed and numerics) and its cores."""
    env = report["environment"]
    isa = env.get("cpu_kernels", "?").split(" ")[0]
    return f"{env['cpu']}, ISA family {isa}, {env['cores']} cores, {env['threads']} threads"


def markdown(report: dict[str, Any]) -> str:
    batch = str(report["batches"][0])
    lines = [
        f"# dit-bench report: {report['model']}",
        "",
        f"Machine: {machine_line(report)}",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Data: {report['data']['name']}, {report['data']['pairs']} pairs. "
        f"Batch {batch} in the table; "
        "accuracy in %, parity against the PyTorch FP32 reference on the same pairs.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for cell in report["cells"]:
        lines.append("| " + " | ".join(c.replace("|", "/") for c in row(cell, batch)) + " |")
    lines += [
        "",
        "## Latency over the batch sweep (p50 ms, pairs/s)",
        "",
        "| cell | " + " | ".join(f"batch {b}" for b in report["batches"]) + " |",
        "|---|" + "---|" * len(report["batches"]),
    ]
    for cell in report["cells"]:
        lat = cell.get("result", {}).get("latency")
        if lat:
            lines.append(
                f"| {cell['label']} | "
                + " | ".join(
                    f"{lat[str(b)]['p50']:.1f} ms, {lat[str(b)]['pairs_per_s']:.2f}/s"
                    for b in report["batches"]
                )
                + " |"
            )
    lines += [
        "",
        how_measured(report).replace("\n", "\n\n"),
        "",
        "## Per-stage split (batch 1, p50 ms) and cold start",
        "",
        "Each stage timed alone; 'rest' = the whole call's p50 minus the stages' sum (Python "
        "glue, allocation, and the different cache state of stages run back to back).",
        "",
    ]
    for cell in report["cells"]:
        r = cell.get("result", {})
        if r.get("stages_ms"):
            parts = ", ".join(f"{k} {v:.2f}" for k, v in r["stages_ms"].items())
            whole = r.get("latency", {}).get("1", {}).get("p50")
            total = sum(r["stages_ms"].values())
            if whole is not None and whole >= total:
                parts += f"; whole call {whole:.2f}, rest {whole - total:.2f}"
            elif whole is not None:  # the stages were timed apart: no negative "rest"
                parts += (
                    f"; whole call {whole:.2f}, less than the stages' sum {total:.2f} (timed "
                    "apart, before the rounds: read the split as proportions)"
                )
            lines.append(f"- {cell['label']}: {parts}; cold start {r['cold_start_s']:.2f} s")
    env = report["environment"]
    lines += [
        "",
        "## Environment",
        "",
        f"- CPU: {env['cpu']} ({env['cores']} cores, {env['threads']} threads)",
        f"- CPU kind: {env.get('cpu_kernels', 'not recorded')}",
        f"- GPUs: {env['gpus']}",
        f"- OS: {env['os']}, Python {env['python']}",
        "- " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
        "",
    ]
    return "\n".join(lines)


def plots(report: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [c for c in report["cells"] if c.get("result", {}).get("status") == "ok"]
    styles = plot_styles(len(ok))
    paths = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for cell, (colour, marker) in zip(ok, styles, strict=True):
        lat = cell["result"]["latency"]
        xs = [int(b) for b in lat]
        ax.plot(xs, [lat[str(b)]["p50"] for b in xs], marker=marker, color=colour,
                label=cell["label"])  # fmt: skip
    ax.set_xticks(report["batches"])
    ax.set_xlabel("batch (image, expression) pairs")
    ax.set_ylabel("p50 latency per call (ms)")
    ax.set_title(f"Latency vs batch: {report['model']}")
    ax.grid(alpha=0.3)
    if ok:
        ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / "latency_vs_batch.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    batch = str(report["batches"][0])
    for cell, (colour, marker) in zip(ok, styles, strict=True):
        r = cell["result"]
        ax.scatter(
            r["latency"][batch]["p50"],
            100 * r["accuracy"]["mIoU"],
            s=60,
            marker=marker,
            color=colour,
            label=cell["label"],
        )
    if ok:
        ax.legend(fontsize=8)
    ax.set_xlabel(f"p50 latency at batch {batch} (ms)")
    ax.set_ylabel("mIoU (%)")
    ax.set_title("Accuracy vs latency")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(out_dir / "accuracy_vs_latency.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def write_reports(report: dict[str, Any], out_dir: Path, log=print) -> list[Path]:
    """report.json, report.md and the plots. A run in which no cell succeeded never
    replaces an earlier report: it is written as ``report.partial.*`` beside it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    any_ok = any(c.get("result", {}).get("status") == "ok" for c in report["cells"])
    stem = "report"
    if not any_ok and (out_dir / "report.json").exists():
        stem = "report.partial"
        log(f"no cell ran: keeping {out_dir / 'report.json'}; this run is in {stem}.json")
    files = [
        write_text_atomic(out_dir / f"{stem}.json", json.dumps(report, indent=2) + "\n"),
        write_text_atomic(out_dir / f"{stem}.md", markdown(report)),
    ]
    if not any_ok:
        return files
    try:
        return [*files, *plots(report, out_dir)]
    except ModuleNotFoundError as exc:
        if exc.name != "matplotlib":
            raise
        log("plots skipped: pip install 'dit-deploy[plots]' (matplotlib) to draw them")
        return files
