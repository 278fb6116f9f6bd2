"""An engine (or a lower-precision graph) against the FP32 graph in ONNX Runtime (CPU), through
Polygraphy's comparator: per-output tolerances, max/mean errors, pass/fail per graph.

The inputs are real model inputs: the bundled sample images with referring expressions,
prepared by the export's own preprocessing; a split graph's inputs are the FP32 outputs of
the graphs before it. ``candidate="tensorrt"`` runs ``<role>.<precision>.engine`` with
Polygraphy's ``TrtRunner`` (GPU); ``candidate="onnxruntime"`` runs the precision's graph on
the CPU, which is how this module is tested without a GPU. ``scripts/gpu_check.sh`` runs it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..cli_types import OneLineParser
from ..errors import BackendUnavailableError, ConfigError, DITError
from ..runtime.engine_sidecar import PRECISIONS, engine_file
from ..runtime.manifest import LAYOUT_ROLES

# default |candidate - fp32| tolerance on each output, per precision (logits are O(10))
ATOL = {"fp32": 1e-2, "fp16": 0.15, "int8": 2.0}
SAMPLE_TEXTS = ("the cat on the left", "a cup of coffee", "the animal", "the round object")


@dataclass(frozen=True)
class CompareOptions:
    export_dir: Path
    precision: str = "fp32"
    layout: str = "fused"
    candidate: str = "tensorrt"  # or "onnxruntime"
    batch: int = 2
    atol: float | None = None  # default: ATOL[precision]

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision: choose one of {PRECISIONS}")
        if self.layout not in LAYOUT_ROLES:
            raise ConfigError(f"--layout: choose one of {', '.join(LAYOUT_ROLES)}")
        if self.candidate not in ("tensorrt", "onnxruntime"):
            raise ConfigError("--candidate: choose tensorrt or onnxruntime")
        if self.batch < 1:
            raise ConfigError("--batch must be >= 1")


@dataclass(frozen=True)
class GraphComparison:
    role: str
    passed: bool
    max_abs: dict[str, float]  # per output
    mean_abs: dict[str, float]
    atol: float


def _feeds(export_dir: Path, batch: int) -> dict[str, np.ndarray]:
    """Model inputs (image, input_ids, attention_mask) for ``batch`` sample pairs."""
    from ..runtime import Predictor

    samples = sorted((Path(__file__).resolve().parents[1] / "assets" / "samples").glob("*.jpg"))
    images = [str(samples[i % len(samples)]) for i in range(batch)]
    texts = [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(batch)]
    feeds, _ = Predictor(export_dir).prepare(images, texts)
    return feeds


def compare_graphs(
    options: CompareOptions, log: Callable[[str], None] = print, verbose: bool = False
) -> list[GraphComparison]:
    """Compare every graph of ``options.layout``; raise nothing on a mismatch (see
    ``passed``), typed errors for what is missing. ``verbose``: Polygraphy's own report
    (error histograms, per-output statistics) on stdout."""
    try:
        from polygraphy import comparator
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
        from polygraphy.comparator import Comparator
        from polygraphy.logger import G_LOGGER
    except ImportError as exc:
        raise BackendUnavailableError(
            "polygraphy is not installed: pip install 'dit-deploy[gpu]' (or polygraphy)"
        ) from exc
    G_LOGGER.module_severity = G_LOGGER.INFO if verbose else G_LOGGER.ERROR
    # SimpleCompareFunc from Polygraphy 0.53; CompareFunc.simple before (deprecated since)
    simple = getattr(comparator, "SimpleCompareFunc", None) or comparator.CompareFunc.simple
    from ..runtime.backends.onnxruntime import OnnxRuntimeBackend
    from ..runtime.export import Export

    export_dir = options.export_dir
    manifest = Export.open(export_dir).manifest
    roles = list(LAYOUT_ROLES[options.layout])
    atol = options.atol if options.atol is not None else ATOL[options.precision]
    tensors = dict(_feeds(export_dir, options.batch))
    results = []
    for role in roles:
        fp32 = manifest.graph(role, "fp32")
        spec = manifest.graph(role, options.precision)
        feeds = {t.name: tensors[t.name] for t in fp32.inputs}
        # the next graphs' inputs: this graph's FP32 outputs
        tensors.update(OnnxRuntimeBackend(export_dir / fp32.file).run(feeds))
        reference = OnnxrtRunner(
            SessionFromOnnx(BytesFromPath(str(export_dir / fp32.file)), providers=["cpu"]),
            name="onnxruntime-fp32",
        )
        if options.candidate == "tensorrt":
            from polygraphy.backend.trt import EngineFromBytes, TrtRunner

            engine = export_dir / engine_file(spec.file)
            if not engine.is_file():
                raise BackendUnavailableError(
                    f"no engine {engine}; build it: dit-deploy engines {export_dir} "
                    f"--precision {options.precision}"
                )
            candidate = TrtRunner(
                EngineFromBytes(BytesFromPath(str(engine))), name=f"tensorrt-{options.precision}"
            )
        else:
            candidate = OnnxrtRunner(
                SessionFromOnnx(BytesFromPath(str(export_dir / spec.file)), providers=["cpu"]),
                name=f"onnxruntime-{options.precision}",
            )
        run = Comparator.run([reference, candidate], data_loader=[feeds])
        accuracy = Comparator.compare_accuracy(
            run, compare_func=simple(atol={"": atol}, rtol={"": 0.0})
        )
        # one (reference, candidate) pair, one iteration; Polygraphy >= 0.53 wraps the
        # AccuracyResult dict in a list (``lst``)
        [per_pair] = getattr(accuracy, "lst", [accuracy])
        [iterations] = per_pair.values()
        [outputs] = iterations
        results.append(
            GraphComparison(
                role=role,
                passed=bool(accuracy),
                max_abs={k: float(v.max_absdiff) for k, v in outputs.items()},
                mean_abs={k: float(v.mean_absdiff) for k, v in outputs.items()},
                atol=atol,
            )
        )
        log(f"{role}: {'pass' if results[-1].passed else 'FAIL'} {results[-1].max_abs}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dit_deploy.engines.compare EXPORT_DIR``: exit 0 all pass, 1 a mismatch,
    2 a user error."""
    p = OneLineParser(
        prog="python -m dit_deploy.engines.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: python -m dit_deploy.engines.compare runs/x/export --precision fp16 "
        "--layout split --json",
    )
    p.add_argument("export_dir", type=Path)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--layout", choices=tuple(LAYOUT_ROLES), default="fused")
    p.add_argument("--candidate", choices=["tensorrt", "onnxruntime"], default="tensorrt")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--atol", type=float, help=f"default per precision: {ATOL}")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--verbose", action="store_true", help="Polygraphy's full comparison report")
    args = p.parse_args(argv)
    try:
        options = CompareOptions(
            args.export_dir, args.precision, args.layout, args.candidate, args.batch, args.atol
        )
        results = compare_graphs(
            options, log=lambda m: print(m, file=sys.stderr), verbose=args.verbose
        )
    except DITError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        for r in results:
            worst = max(r.max_abs.values())
            print(f"{r.role:<13} {'pass' if r.passed else 'FAIL':<5} max |d| {worst:.4g} "
                  f"(atol {r.atol})")  # fmt: skip
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
