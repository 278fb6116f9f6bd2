"""``run_quantize``: FP16/INT8 graphs for an export, verified, and only then written into it.

BF16 is an execution precision, not a graph: the FP32 graphs run in BF16 by OpenVINO on a
CPU with BF16 units. It is verified the same way (against the FP32 graphs in ONNX Runtime,
same floors) and recorded in the manifest as a ``bf16`` precision whose graphs are the FP32
files with ``execution: "openvino-bf16"``; no file is written but ``manifest.json``.

Graphs are produced in a temporary directory inside the export; each is checked
structurally (:mod:`.graph_checks`) and every layout is verified against FP32 on held-out
pairs (:mod:`.verify`). Below the floor, a :class:`~dit_deploy.errors.ValidationError` is
raised and the export is left exactly as it was. Otherwise the graphs are moved in as
``<role>.<precision>.onnx`` and ``manifest.json`` is replaced atomically with one that lists
them under ``precisions``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..artifact_dir import clean_inner_leftovers
from ..errors import ArtifactError, ConfigError, ValidationError
from ..exporters.onnx_io import save_onnx
from ..hashing import sha256_file
from ..runtime.backends import EXECUTIONS, open_backend
from ..runtime.graph_chain import GraphChain, layout_of
from ..runtime.manifest import MANIFEST_FILE, GraphSpec, Manifest, read_manifest, verify_files
from .chain import PairInputs, chains
from .fp16 import DEFAULT_FP32_OPS, convert_fp16
from .graph_checks import fp16_problems, int8_problems
from .int8 import (
    Int8Options,
    Int8Result,
    StreamingCalibrationReader,
    cache_file,
    default_cache_dir,
    quantize_int8,
    unknown_nodes,
)
from .samples import PairSource
from .verify import DEFAULT_FLOORS, Floor, LayoutReport, chain_latency_ms, compare_layout

ProgressFactory = Callable[[str, int], Callable[[int], None]]
# precisions that run the FP32 graph files at another precision: precision -> the
# manifest's ``execution`` value (its backend: ``EXECUTIONS[execution][0]``)
EXECUTION_PRECISIONS = {mode: name for name, (_backend, mode) in EXECUTIONS.items()}


def _no_progress(_desc: str, _total: int) -> Callable[[int], None]:
    return lambda _n: None


@dataclass
class QuantizeOptions:
    """Everything ``export/quantize.py`` can set."""

    precision: str
    calib: PairSource | None = None
    eval: PairSource | None = None
    keep_fp32: tuple[str, ...] = ()
    int8: Int8Options = field(default_factory=Int8Options)
    fp32_ops: tuple[str, ...] = DEFAULT_FP32_OPS
    fp32_nodes: tuple[str, ...] = ()
    floor: Floor | None = None
    cache_dir: Path | None = None
    threads: int | None = None
    latency_runs: int = 10
    eval_batch: int = 4

    def resolved_floor(self) -> Floor:
        return self.floor or DEFAULT_FLOORS[self.precision]


@dataclass
class GraphOutcome:
    role: str
    file: str
    precision: str
    seconds: float
    size_bytes: int
    fp32_size_bytes: int
    detail: dict[str, object] = field(default_factory=dict)


@dataclass
class QuantizeResult:
    export_dir: Path
    precision: str
    graphs: list[GraphOutcome]
    layouts: list[LayoutReport]
    floor: Floor
    written: bool = False

    def to_dict(self) -> dict[str, object]:
        return {
            "export_dir": str(self.export_dir),
            "precision": self.precision,
            "written": self.written,
            "floor": vars(self.floor),
            "graphs": [vars(g) for g in self.graphs],
            "layouts": [r.to_dict() for r in self.layouts],
        }


def _check_options(manifest: Manifest, opts: QuantizeOptions) -> list[str]:
    if opts.precision not in DEFAULT_FLOORS:
        raise ConfigError(f"precision {opts.precision!r}: choose one of {sorted(DEFAULT_FLOORS)}")
    unknown = [r for r in opts.keep_fp32 if r not in manifest.graphs]
    if unknown:
        raise ConfigError(
            f"--keep-fp32 {unknown}: this export's graphs are {list(manifest.graphs)}"
        )
    roles = [r for r in manifest.graphs if r not in opts.keep_fp32]
    if not roles:
        raise ConfigError("every graph is kept FP32 (--keep-fp32): nothing to convert")
    if opts.eval is None:
        raise ConfigError("no evaluation pairs: set QuantizeOptions.eval")
    return roles


def _stamp(model, base: dict[str, str], extra: dict[str, str]) -> None:
    del model.metadata_props[:]
    for key, value in sorted({**base, **extra}.items()):
        model.metadata_props.add(key=key, value=value)


def _tool_versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    versions = {"dit_deploy": __version__, "onnx": onnx.__version__}
    versions["onnxruntime"] = onnxruntime.__version__
    try:
        import onnxconverter_common

        versions["onnxconverter_common"] = onnxconverter_common.__version__
    except ImportError:
        pass
    return versions


def _convert_one(
    role: str,
    src: Path,
    out: Path,
    spec: GraphSpec,
    opts: QuantizeOptions,
    prepare: PairInputs,
    fp32: dict[str, GraphChain],
    progress: ProgressFactory,
) -> dict[str, object]:
    """Write ``out`` (``role`` at ``opts.precision``); returns what was done, for the report."""
    import onnx

    base = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    stamp = {
        "dit.precision": opts.precision,
        "dit.source_graph_sha256": spec.sha256 or sha256_file(src),
        "dit.precision_tools": json.dumps(_tool_versions(), sort_keys=True),
    }
    if opts.precision == "fp16":
        model = convert_fp16(onnx.load(str(src)), opts.fp32_ops, opts.fp32_nodes)
        detail: dict[str, object] = {
            "fp32_ops": list(opts.fp32_ops),
            "fp32_nodes": list(opts.fp32_nodes),
        }
        problems = fp16_problems(model, opts.fp32_ops)
    else:
        assert opts.calib is not None
        cache = cache_file(
            opts.cache_dir or default_cache_dir(),
            role,
            stamp["dit.source_graph_sha256"],
            opts.calib,
            opts.int8,
        )
        names = [n.name for n in onnx.load(str(src), load_external_data=False).graph.node]
        excluded = [n for n in opts.int8.exclude if n in set(names)]
        int8 = Int8Options(**{**vars(opts.int8), "exclude": tuple(excluded)})
        bar = progress(f"calibrate {role}", len(opts.calib))
        reader = StreamingCalibrationReader(opts.calib, role, prepare, fp32, bar)
        result: Int8Result = quantize_int8(src, out, role, reader, cache, int8)
        model = onnx.load(str(out))
        detail = {
            "method": int8.method,
            "calibration": opts.calib.describe(),
            "calibration_cache": str(result.cache),
            "cache_hit": result.cache_hit,
            "op_types": list(int8.op_types),
            "excluded": excluded,
            "dequantize_nodes": result.quantized_nodes,
        }
        problems = int8_problems(model)
    if problems:
        raise ValidationError(
            f"{role}: the {opts.precision} graph is not what TensorRT needs:\n  "
            + "\n  ".join(problems[:20])
        )
    _stamp(model, base, {**stamp, "dit.precision_recipe": json.dumps(detail, sort_keys=True)})
    save_onnx(model, out)
    onnx.checker.check_model(str(out))
    return detail


def run_quantize(
    export_dir: str | Path,
    opts: QuantizeOptions,
    log: Callable[[str], None] = print,
    progress: ProgressFactory = _no_progress,
) -> QuantizeResult:
    """Produce, check and verify ``opts.precision`` graphs; write them only if all pass."""
    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    verify_files(export_dir, manifest, list(manifest.graphs), "fp32")
    roles = _check_options(manifest, opts)
    if opts.precision == "int8" and opts.calib is None:
        raise ConfigError("INT8 needs calibration pairs (--calib-data, or generated scenes)")
    if opts.precision == "int8" and opts.int8.exclude:
        import onnx

        names = [
            n.name
            for r in roles
            for n in onnx.load(
                str(export_dir / manifest.graphs[r].file), load_external_data=False
            ).graph.node
        ]
        missing = unknown_nodes(names, opts.int8.exclude)
        if missing:
            raise ConfigError(
                f"--exclude {missing}: no such node in {roles}; list names with "
                "python -c \"import onnx; print([n.name for n in onnx.load('G.onnx').graph.node])\""
            )
    floor = opts.resolved_floor()
    prepare = PairInputs(export_dir, manifest)
    fp32 = chains(manifest.graph_files(export_dir), opts.threads)
    clean_inner_leftovers(export_dir, log)
    tmp = Path(
        tempfile.mkdtemp(prefix=f".quantize.{opts.precision}-{os.getpid()}-", dir=export_dir)
    )
    try:
        files = dict(manifest.graph_files(export_dir))
        if opts.precision in EXECUTION_PRECISIONS:
            candidate, outcomes = _execution_candidate(export_dir, manifest, roles, opts, log)
        else:
            outcomes = _convert_all(
                export_dir, manifest, roles, opts, prepare, fp32, tmp, files, log, progress
            )
            candidate = chains(files, opts.threads)
        reports = []
        for layout in manifest.layouts:
            bar = progress(f"verify {layout}", len(opts.eval))
            report = compare_layout(
                layout,
                fp32[layout],
                candidate[layout],
                prepare,
                opts.eval,
                manifest.mask_threshold,
                opts.eval_batch,
                bar,
            )
            if opts.latency_runs > 0:
                feeds, _ = prepare([next(iter(opts.eval))])
                report.latency_fp32_ms = chain_latency_ms(fp32[layout], feeds, opts.latency_runs)
                report.latency_ms = chain_latency_ms(candidate[layout], feeds, opts.latency_runs)
            reports.append(report.check(floor))
        result = QuantizeResult(export_dir, opts.precision, outcomes, reports, floor)
        failed = [r for r in reports if not r.ok]
        if failed:
            raise QuantizeFailed(
                result,
                f"{opts.precision} graphs below the accuracy floor; nothing written to "
                f"{export_dir}:\n  "
                + "\n  ".join(f"{r.layout}: {'; '.join(r.failures)}" for r in failed),
            )
        _install(export_dir, manifest, tmp, files, roles, opts.precision)
        result.written = True
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _convert_all(
    export_dir: Path,
    manifest: Manifest,
    roles: Sequence[str],
    opts: QuantizeOptions,
    prepare: PairInputs,
    fp32: dict[str, GraphChain],
    tmp: Path,
    files: dict[str, Path],
    log: Callable[[str], None],
    progress: ProgressFactory,
) -> list[GraphOutcome]:
    """Write each role's graph at ``opts.precision`` into ``tmp`` (``files`` points at them)."""
    outcomes = []
    for role in roles:
        spec = manifest.graphs[role]
        src = export_dir / spec.file
        out = tmp / f"{role}.{opts.precision}.onnx"
        start = time.perf_counter()
        detail = _convert_one(role, src, out, spec, opts, prepare, fp32, progress)
        outcomes.append(
            GraphOutcome(
                role,
                out.name,
                opts.precision,
                time.perf_counter() - start,
                out.stat().st_size,
                src.stat().st_size,
                detail,
            )
        )
        files[role] = out
        o = outcomes[-1]
        log(
            f"{role:<13} -> {o.file:<26} {o.seconds:6.1f} s "
            f"{o.size_bytes / 1e6:8.2f} MB (fp32 {o.fp32_size_bytes / 1e6:.2f} MB)"
        )
    return outcomes


def _execution_candidate(
    export_dir: Path,
    manifest: Manifest,
    roles: Sequence[str],
    opts: QuantizeOptions,
    log: Callable[[str], None],
) -> tuple[dict[str, GraphChain], list[GraphOutcome]]:
    """The FP32 graphs opened at an execution precision (``roles``; the rest as they are)."""
    execution = EXECUTION_PRECISIONS[opts.precision]
    backend = EXECUTIONS[execution][0]
    files = manifest.graph_files(export_dir)

    def opener(role: str, path: Path):
        mode = execution if role in roles else ""
        return open_backend(backend, path, threads=opts.threads, execution=mode, cache_dir=False)

    candidate = chains(files, opts.threads, opener)
    outcomes = []
    for role in roles:
        start = time.perf_counter()
        candidate[layout_of(role)].backend(role)  # compiles now: a CPU without BF16 is refused here
        size = files[role].stat().st_size
        outcomes.append(
            GraphOutcome(
                role,
                manifest.graphs[role].file,
                opts.precision,
                time.perf_counter() - start,
                size,
                size,
                {"execution": execution, "backend": backend},
            )
        )
        log(f"{role:<13} -> {files[role].name} run as {execution} (no new file)")
    return candidate, outcomes


class QuantizeFailed(ValidationError):
    """Below the accuracy floor; carries the full result for the table/JSON."""

    def __init__(self, result: QuantizeResult, message: str) -> None:
        super().__init__(message)
        self.result = result


def _install(
    export_dir: Path,
    manifest: Manifest,
    tmp: Path,
    files: dict[str, Path],
    roles: Sequence[str],
    precision: str,
) -> None:
    """Move the new graphs in and replace the manifest atomically (graphs first)."""
    table: dict[str, GraphSpec] = {}
    for role, spec in manifest.graphs.items():
        if role in roles and precision in EXECUTION_PRECISIONS:
            execution = EXECUTION_PRECISIONS[precision]
            table[role] = GraphSpec(
                spec.file, spec.inputs, spec.outputs, spec.sha256, precision, execution
            )
        elif role in roles:
            name = files[role].name
            for extra in tmp.glob(name + "*"):  # the graph and any external-data file
                os.replace(extra, export_dir / extra.name)
            table[role] = GraphSpec(
                name, spec.inputs, spec.outputs, sha256_file(export_dir / name), precision
            )
        else:
            table[role] = spec  # kept FP32: the same file
    updated = Manifest(
        **{**manifest.__dict__, "precisions": {**manifest.precisions, precision: table}}
    )
    updated.write(export_dir)
    if read_manifest(export_dir).precisions.get(precision) is None:
        raise ArtifactError(f"{export_dir / MANIFEST_FILE} did not take the {precision} graphs")


def stale_reason(
    export_dir: str | Path, precision: str, calib: PairSource | None = None
) -> str | None:
    """Why the export's ``precision`` graphs cannot be reused (None: present, hash-valid,
    and, for INT8 with ``calib``, calibrated on the same pairs)."""
    import onnx

    from ..errors import DITError
    from ..runtime.manifest import verify_files

    export_dir = Path(export_dir)
    try:
        manifest = read_manifest(export_dir)
        if precision not in manifest.precisions:
            return f"no {precision} graphs"
        verify_files(export_dir, manifest, list(manifest.precisions[precision]), precision)
        if calib is None:
            return None
        for role, spec in manifest.precisions[precision].items():
            if spec.precision != precision:
                continue  # a role kept FP32
            props = {
                p.key: p.value
                for p in onnx.load(
                    str(export_dir / spec.file), load_external_data=False
                ).metadata_props
            }
            recipe = json.loads(props.get("dit.precision_recipe", "{}"))
            used, wanted = recipe.get("calibration"), calib.describe()
            if used != wanted:
                return f"{role} was calibrated on {used!r}, not {wanted!r}"
    except DITError as exc:
        return str(exc)
    return None
