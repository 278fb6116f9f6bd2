"""The one table of runtime backends: what each is, runs, needs and opens (no heavy imports).

One row per backend. Every ``--backend``/``--precision`` choice list, device default, "can it
run here" answer, "install the X extra" message, the benchmark's plan and the Predictor's
open read it; adding a backend is its module (with an ``open_graph(GraphRequest)``) plus one
row here (or :func:`register` at run time). ``tests/fixtures/backend_table.json`` is the
same table for the C++ runtime's ``cpp/src/backends.hpp`` (the rows both runtimes share).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import BackendUnavailableError, InputError, PrecisionUnavailableError
from ..manifest import GRAPH_PRECISIONS

if TYPE_CHECKING:
    from ..manifest import GraphSpec, TensorSpec
    from .base import Backend

# what a row opens: the manifest's graph file, or an engine built per machine beside it
ARTIFACT_LABELS = {"onnx": "ONNX graph", "engine": "TensorRT engine"}


@dataclass(frozen=True)
class GraphRequest:
    """What a runtime asks of a backend for one graph.

    ``path``: the artifact (an ``.onnx`` file, or an engine for ``artifact="engine"`` rows);
    ``precision``: the graph's precision as the manifest records it (None: not known, e.g. a
    bare file); ``execution``: the backend's own mode of an execution precision (``bf16`` for
    ``openvino-bf16``; "" = the graph's own types); ``inputs``: the manifest's input specs
    (batch profiles); ``options``: backend-specific keywords (``streams``, ``cache_dir``...).
    """

    path: Path
    device: str = "cpu"
    threads: int | None = None
    precision: str | None = None
    execution: str = ""
    max_batch: int = 8
    inputs: tuple[TensorSpec, ...] | None = None
    source_sha256: str = ""
    cuda_graph: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Execution:
    """An execution precision: an unchanged graph file run by one backend at ``precision``
    (the manifest records it as ``execution: name``)."""

    precision: str  # what users pass: "bf16"
    name: str  # the manifest's execution field: "openvino-bf16"


@dataclass(frozen=True)
class BackendRow:
    """One runtime backend.

    ``opener``/``probe``: ``"module:function"`` (resolved on use, so the table imports
    nothing heavy): ``opener(GraphRequest) -> Backend``; ``probe(precision, device_kind) ->
    reason | None`` for what only the installed package can tell (providers, CPU units).
    ``devices``: device kinds (``runtime.devices.DEVICE_KINDS``), the first is the default.
    ``precisions``: what it runs, in report order (graph precisions and its executions).
    ``artifact``: ``onnx`` (the manifest's graph file) or ``engine`` (built per machine
    beside it). ``cpu_numerics``: its CPU kernels decide the numerics, so a CPU precision
    is checked against the machine it was verified on. ``bench``: the extra cells of
    ``dit-bench --all`` off the CPU, as ``(device, precisions)``.
    """

    name: str
    opener: str
    package: str
    extra: str
    devices: tuple[str, ...]
    precisions: tuple[str, ...]
    executions: tuple[Execution, ...] = ()
    artifact: str = "onnx"
    cpu_numerics: bool = False
    probe: str = ""
    bench: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def artifact_label(self) -> str:
        return ARTIFACT_LABELS[self.artifact]

    @property
    def default_device(self) -> str:
        return self.devices[0]

    def install_hint(self) -> str:
        return f"pip install 'dit-deploy[{self.extra}]'"

    def execution_of(self, precision: str) -> Execution | None:
        return next((e for e in self.executions if e.precision == precision), None)

    def unavailable_reason(self, precision: str = "fp32", device: str = "") -> str | None:
        """None when this backend can run ``precision`` on ``device`` here, else why not
        (the fix named). ``device``: a device string; "" = the default device."""
        from ..devices import parse_device

        kind = parse_device(device or self.default_device)[0]
        if precision not in self.precisions:
            return (
                f"the {self.name} backend does not run {precision} "
                f"(runs: {', '.join(self.precisions)}); {_who_runs(precision)}"
            )
        if kind not in self.devices:
            return (
                f"the {self.name} backend runs on {' or '.join(self.devices)}, not {kind}; "
                f"{_who_runs_on(kind)}"
            )
        reasons = []
        if kind != "cpu":
            from ..devices import NO_GPU, cuda_device_count

            if cuda_device_count() == 0:
                reasons.append(NO_GPU)
        if importlib.util.find_spec(self.package) is None:
            reasons.append(f"{self.package} is not installed: {self.install_hint()}")
        elif self.probe:
            reasons.append(_resolve(self.probe)(precision, kind))
        return "; ".join(r for r in reasons if r) or None

    def artifact_path(self, export_dir: Path, spec: GraphSpec) -> Path:
        """The file this backend opens for ``spec`` of an export in ``export_dir``."""
        if self.artifact == "engine":
            from ..engine_sidecar import engine_file

            return export_dir / engine_file(spec.file)
        return export_dir / spec.file

    def open(self, request: GraphRequest) -> Backend:
        """Open one graph (the backend's own typed errors for what it cannot do)."""
        try:
            return _resolve(self.opener)(request)
        except TypeError as exc:  # an option the backend does not take: the caller's mistake
            unknown = [k for k in request.options if f"argument '{k}'" in str(exc)]
            if not unknown:
                raise
            raise InputError(
                f"backend_options {unknown}: the {self.name} backend takes no such option ({exc})"
            ) from None


def _resolve(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module, __package__), name)


TABLE: dict[str, BackendRow] = {
    row.name: row
    for row in (
        BackendRow(
            name="onnxruntime",
            opener=".onnxruntime:open_graph",
            package="onnxruntime",
            extra="cpu",
            devices=("cpu", "cuda", "tensorrt"),
            precisions=GRAPH_PRECISIONS,
            cpu_numerics=True,
            probe=".onnxruntime:unavailable_reason",
            bench=(("cuda", ("fp32",)), ("tensorrt", ("fp32",))),
        ),
        BackendRow(
            name="openvino",
            opener=".openvino:open_graph",
            package="openvino",
            extra="openvino",
            devices=("cpu",),
            precisions=("fp32", "bf16", "int8"),
            executions=(Execution("bf16", "openvino-bf16"),),
            cpu_numerics=True,
            probe=".openvino:unavailable_reason",
        ),
        BackendRow(
            name="tensorrt",
            opener=".tensorrt:open_graph",
            package="tensorrt",
            extra="gpu",
            devices=("cuda",),
            precisions=GRAPH_PRECISIONS,
            artifact="engine",
            probe=".tensorrt:unavailable_reason",
            bench=(("cuda", GRAPH_PRECISIONS),),
        ),
    )
}


def register(row: BackendRow) -> None:
    """Add (or replace) a backend row at run time: a plug-in's one edit."""
    TABLE[row.name] = row


def unregister(name: str) -> None:
    TABLE.pop(name, None)


def backend_names() -> tuple[str, ...]:
    """Every backend, in table order (the ``--backend`` choices)."""
    return tuple(TABLE)


def backend_row(name: str) -> BackendRow:
    """The row of ``name`` (typed error naming the choices)."""
    row = TABLE.get(name) if isinstance(name, str) else None
    if row is None:
        raise BackendUnavailableError(
            f"unknown backend {name!r}; available: {', '.join(backend_names())}"
        )
    return row


def precisions() -> tuple[str, ...]:
    """Every precision a graph can run at: the graph precisions, then each execution."""
    execs = [e.precision for row in TABLE.values() for e in row.executions]
    return GRAPH_PRECISIONS + tuple(dict.fromkeys(p for p in execs if p not in GRAPH_PRECISIONS))


def derived_precisions() -> tuple[str, ...]:
    """What ``quantize``/``verify`` make from the FP32 export (every precision but fp32)."""
    return precisions()[1:]


def executions() -> dict[str, tuple[str, str]]:
    """Manifest execution name -> (backend, precision): ``openvino-bf16`` -> (openvino, bf16)."""
    return {e.name: (row.name, e.precision) for row in TABLE.values() for e in row.executions}


def execution_for(precision: str) -> tuple[str, Execution] | None:
    """(backend, execution) of an execution precision (``bf16``), None for graph precisions."""
    for row in TABLE.values():
        found = row.execution_of(precision)
        if found is not None:
            return row.name, found
    return None


def default_backend(precision: str) -> str:
    """The backend a precision runs on unless told: an execution's own backend, else ONNX
    Runtime (the reference CPU runtime, which quantize verifies graph precisions with)."""
    found = execution_for(precision)
    return found[0] if found else "onnxruntime"


def cpu_numerics_backends() -> tuple[str, ...]:
    """Backends whose CPU kernels decide the numerics (the verified-on rule applies)."""
    return tuple(name for name, row in TABLE.items() if row.cpu_numerics)


def extra_of_package(top: str) -> str | None:
    """The pip extra that installs a backend's package (for missing-import messages)."""
    return next((row.extra for row in TABLE.values() if row.package == top), None)


def check_execution(name: str, execution: str) -> str:
    """The backend mode of manifest ``execution`` for backend ``name`` ("" = the graph's own
    types); typed error for an execution the table does not know or another backend runs."""
    if not execution:
        return ""
    known = executions()
    if execution not in known:
        raise PrecisionUnavailableError(
            f"execution precision {execution!r} is unknown to this dit-deploy "
            f"(knows: {', '.join(known)}); upgrade dit-deploy"
        )
    wanted, precision = known[execution]
    if wanted != name:
        raise PrecisionUnavailableError(
            f"this precision is an execution mode of {wanted} ({execution}): open it with "
            f"--backend {wanted} (Python: backend={wanted!r}), or choose precision "
            f"{'/'.join(backend_row(name).precisions)} for {name}"
        )
    return precision


def _who_runs(precision: str) -> str:
    runs = [n for n, row in TABLE.items() if precision in row.precisions]
    return f"use backend {' or '.join(runs)}" if runs else "no backend here runs it"


def _who_runs_on(kind: str) -> str:
    runs = [n for n, row in TABLE.items() if kind in row.devices]
    return f"use backend {' or '.join(runs)} for {kind}" if runs else f"no backend runs on {kind}"
