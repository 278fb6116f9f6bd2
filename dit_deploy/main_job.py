"""``dit-deploy``: the main job in one command.

bundled model -> ONNX (split + fused, validated) -> FP16 and INT8 graphs, and BF16 where
OpenVINO and a BF16 CPU are present (verified on the CPU) -> TensorRT engines (where a GPU
exists) -> dit-bench table -> gallery of predictions.
Each step also runs on its own (``dit-deploy run --only STEP``), and
re-running reuses what is built and valid (hash checks), rebuilding what is stale.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from .atomic import write_text_atomic
from .cli_types import HelpFormatter, positive_float, positive_int, positive_int_list
from .errors import ArtifactError, DITError
from .hints import command

STEPS = ("export", "quantize", "engines", "bench", "gallery")
DEFAULT_MODEL = "dit-tiny-synthetic"


EPILOG = """examples:
  dit-deploy                                  # every step, on the bundled model
  dit-deploy run --only bench --budget 10     # one step
  dit-deploy run --only export,quantize       # several steps
  dit-deploy run --eval-size 20 --calib-size 16   # a quick run
"""


def _steps(text: str) -> tuple[str, ...]:
    steps = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in steps if s not in STEPS]
    if unknown or not steps:
        raise argparse.ArgumentTypeError(
            f"unknown step(s) {unknown or text!r}; choose from {','.join(STEPS)}"
        )
    return steps


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The main job's options (all checked by argparse before any work starts)."""
    p.add_argument(
        "--only",
        type=_steps,
        default=STEPS,
        metavar="STEP[,STEP]",
        help=f"run only these steps, in order (default: all: {','.join(STEPS)})",
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help="bundled model name or model dir")
    p.add_argument(
        "--out", type=Path, default=Path("runs") / "dit-deploy", help="working directory"
    )
    p.add_argument("--eval-size", type=positive_int, default=100, help="evaluation pairs")
    p.add_argument("--calib-size", type=positive_int, default=64, help="INT8 calibration pairs")
    p.add_argument(
        "--batch", type=positive_int_list, default="1,4", help="batch sizes to benchmark"
    )
    p.add_argument(
        "--budget", type=positive_float, default=3.0, help="seconds per latency measurement"
    )
    p.add_argument("--gallery-size", type=positive_int, default=6, help="examples per gallery")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: all)")


def register(subparsers) -> None:
    """``dit-deploy run``: the main job (also what ``dit-deploy`` alone runs)."""
    p = subparsers.add_parser(
        "run",
        help="the main job: export, quantize, engines, bench, gallery (the default verb)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(handler=run_from_args)


class Job:
    """Paths and shared state of one main-job run."""

    def __init__(self, args: argparse.Namespace, log: Callable[[str], None] = print) -> None:
        self.args, self.log = args, log
        self.out: Path = args.out
        self.export_dir = self.out / "export"
        self.report_dir = self.out / "report"
        self.data_dir = self.out / "data"

    # -- data ------------------------------------------------------------------------
    def data(self) -> Path:
        """The bundled evaluation set: synthetic scenes, train split for calibration."""
        from .data.synthetic import generate
        from .model.dit_model import DITModel

        marker = self.data_dir / "synthetic" / "instances.json"
        wanted = f"{self.args.calib_size}-{self.args.eval_size}"
        stamp = self.data_dir / "sizes.txt"
        if marker.is_file() and stamp.is_file() and stamp.read_text() == wanted:
            return self.data_dir
        from .model.checkpoint import read_pretrained_config

        size = read_pretrained_config(DITModel.resolve_pretrained(self.args.model)).input_size
        self.log(
            f"generating evaluation data ({self.args.eval_size} val, "
            f"{self.args.calib_size} calibration scenes) in {self.data_dir}"
        )
        generate(
            self.data_dir,
            n_train=self.args.calib_size,
            n_val=self.args.eval_size,
            seed=2024,
            size=size,
            overwrite=True,
        )
        write_text_atomic(stamp, wanted)
        return self.data_dir

    # -- steps -----------------------------------------------------------------------
    def export(self) -> None:
        from .exporters.onnx_export import export_pretrained

        if not export_pretrained(self.args.model, self.export_dir, self.log):
            self.log(f"export: up to date ({self.export_dir})")

    def quantize(self) -> None:
        from .precision.cli import format_table
        from .precision.pipeline import QuantizeOptions, run_quantize
        from .precision.reuse import stale_reason
        from .precision.samples import PairSource
        from .runtime.backends.table import backend_row, default_backend, derived_precisions

        if not (self.export_dir / "manifest.json").is_file():  # before generating any data
            raise ArtifactError(
                f"{self.export_dir} holds no export yet: run the export step first ("
                + command("run", "--only", "export,quantize", "--out", self.args.out)
                + ")"
            )
        data = self.data()
        for precision in derived_precisions():
            skip = backend_row(default_backend(precision)).unavailable_reason(precision)
            if skip:
                self.log(f"quantize {precision}: skipped, {skip}")
                continue
            calib = PairSource(data, "train", self.args.calib_size) if precision == "int8" else None
            reason = stale_reason(self.export_dir, precision, calib)
            if reason is None:
                self.log(f"quantize {precision}: up to date")
                continue
            self.log(f"quantize {precision}: {reason}; building")
            opts = QuantizeOptions(
                precision=precision,
                calib=calib,
                eval=PairSource(data, "val", min(self.args.eval_size, 64), seed=1),
                threads=self.args.threads,
                # INT8 keeps its most sensitive nodes at higher precision until the masks
                # agree with FP32 (>= 0.99 IoU); the plan lands in precision_plan.json
                auto=precision == "int8",
            )
            self.log(format_table(run_quantize(self.export_dir, opts, self.log)))

    def engines(self) -> None:
        from .engines import EngineOptions, build_engines
        from .runtime.backends.table import backend_row
        from .runtime.devices import gpu_unavailable_reason

        engine_precisions = backend_row("tensorrt").precisions
        reason = gpu_unavailable_reason()
        if reason is not None:
            self.log(
                f"engines: skipped, TensorRT needs an NVIDIA GPU ({reason}). On a GPU "
                "machine: " + command("engines", self.export_dir, "--precision", *engine_precisions)
            )
            return
        build_engines(EngineOptions(self.export_dir, engine_precisions), log=self.log)

    def bench(self) -> None:
        from .bench.report import print_table, write_reports
        from .bench.run import BenchOptions, run_bench

        opts = BenchOptions(
            export_dir=self.export_dir,
            all=True,
            data=self.data(),
            split="val",
            limit=self.args.eval_size,
            batch=self.args.batch,
            budget=self.args.budget,
            pretrained=self.args.model,
            report_dir=self.report_dir,
            threads=self.args.threads,
        )
        report = run_bench(opts, self.log)
        write_reports(report, self.report_dir)
        print_table(report)
        failed = [c for c in report["cells"] if c["result"]["status"] == "failed"]
        if failed:
            raise DITError(
                "dit-bench cells failed: "
                + "; ".join(f"{c['label']}: {c['result'].get('reason')}" for c in failed)
            )

    def gallery(self) -> None:
        """Predictions beside ground truth for PyTorch and every ONNX precision: the best,
        median and worst pairs of the evaluation set (by FP32 IoU), the same pairs for all."""
        from .data import open_dataset
        from .gallery import Example, write_gallery
        from .metrics import mask_iou
        from .model.dit_model import DITModel
        from .runtime import Export, Predictor
        from .runtime.backends.table import default_backend

        dataset = open_dataset(self.data(), "val")
        pool = [dataset[i] for i in range(min(len(dataset), self.args.eval_size))]
        with Predictor(Export.open(self.export_dir), layout="fused") as fp32:
            ranked = fp32.predict_batch([(str(s.image_path), s.sentence) for s in pool])
        order = sorted(range(len(pool)), key=lambda i: -mask_iou(ranked[i].mask, pool[i].mask())[0])
        samples = [pool[i] for i in _best_median_worst(order, self.args.gallery_size)]
        pairs = [(str(s.image_path), s.sentence) for s in samples]
        predictors: dict[str, Callable] = {
            "pytorch fp32": DITModel.from_pretrained(self.args.model).predict_batch
        }
        export = Export.open(self.export_dir)
        for precision in export.precisions:
            backend = default_backend(precision)
            predictors[f"{backend} {precision}"] = Predictor(
                export, backend=backend, precision=precision, layout="fused"
            ).predict_batch
        for label, predict in predictors.items():
            results = predict(pairs)
            examples = [
                Example(s.load_image(), s.sentence, s.mask(), r.mask)
                for s, r in zip(samples, results, strict=True)
            ]
            path = write_gallery(
                examples,
                f"{self.args.model}: {label} (best, median, worst fp32 IoU)",
                self.report_dir / f"gallery_{label.replace(' ', '_')}.png",
            )
            self.log(f"gallery: {path}")


def _best_median_worst(order: list[int], k: int) -> list[int]:
    """``k`` indices of a best-first ranking: a third from the top, the middle, the bottom."""
    if k >= len(order):
        return list(order)
    top = max(1, k // 3)
    bottom = max(1, k // 3)
    middle = k - top - bottom
    mid_start = max(top, len(order) // 2 - middle // 2)
    picked = order[:top] + order[mid_start : mid_start + middle] + order[len(order) - bottom :]
    return list(dict.fromkeys(picked))


def run_job(args: argparse.Namespace, log: Callable[[str], None] = print) -> int:
    """Run the selected steps; a typed error names the step that failed."""
    job = Job(args, log)
    timings = []
    for step in args.only:
        job.log(f"== {step} ==")
        start = time.perf_counter()
        try:
            getattr(job, step)()
        except DITError as exc:
            raise type(exc)(f"step {step}: {exc}") from exc
        timings.append((step, time.perf_counter() - start))
    job.log("== summary ==")
    for step, seconds in timings:
        job.log(f"  {step:<9} {seconds:7.1f} s")
    job.log(
        f"  export: {job.export_dir}\n  report: {job.report_dir} (report.md, report.json, "
        "latency_vs_batch.png, accuracy_vs_latency.png, gallery_*.png)"
    )
    return 0


def run_from_args(args: argparse.Namespace) -> int:
    return run_job(args)
