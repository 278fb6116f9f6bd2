"""``dit-deploy``: the main job in one command.

bundled model -> ONNX (split + fused, validated) -> FP16 and INT8 graphs (verified on the
CPU) -> TensorRT engines (where a GPU exists) -> dit-bench table -> gallery of predictions.
Each step also runs on its own (``dit-deploy export|quantize|engines|bench|gallery``), and
re-running reuses what is built and valid (hash checks), rebuilding what is stale.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import DITError

STEPS = ("export", "quantize", "engines", "bench", "gallery")
DEFAULT_MODEL = "dit-tiny-synthetic"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dit-deploy",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__,
        epilog="examples:\n  dit-deploy                    # everything, on the bundled model\n"
        "  dit-deploy bench --budget 10  # one step\n"
        "  dit-deploy --eval-size 20 --calib-size 16   # a quick run",
    )
    p.add_argument(
        "step",
        nargs="?",
        default="run",
        choices=("run", *STEPS),
        help="run = every step in order (default)",
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help="bundled model name or model dir")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs") / "dit-deploy",
        help="working directory (default: %(default)s)",
    )
    p.add_argument("--eval-size", type=int, default=100, help="evaluation pairs (%(default)s)")
    p.add_argument(
        "--calib-size", type=int, default=64, help="INT8 calibration pairs (%(default)s)"
    )
    p.add_argument("--batch", default="1,4", help="batch sizes to benchmark (%(default)s)")
    p.add_argument("--budget", type=float, default=3.0, help="seconds per latency measurement")
    p.add_argument("--gallery-size", type=int, default=6, help="examples per gallery (%(default)s)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    return p


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
        stamp.write_text(wanted)
        return self.data_dir

    # -- steps -----------------------------------------------------------------------
    def export(self) -> None:
        from .exporters.onnx_export import export_pretrained

        if not export_pretrained(self.args.model, self.export_dir, self.log):
            self.log(f"export: up to date ({self.export_dir})")

    def quantize(self) -> None:
        from .precision.cli import main as quantize_main
        from .runtime.manifest import read_manifest

        data = self.data()
        for precision in ("fp16", "int8"):
            manifest = read_manifest(self.export_dir)
            if precision in manifest.precisions:
                self.log(f"quantize {precision}: up to date")
                continue
            argv = [
                str(self.export_dir),
                "--precision",
                precision,
                "--eval-data",
                str(data),
                "--eval-split",
                "val",
                "--eval-size",
                str(min(self.args.eval_size, 64)),
            ]
            if precision == "int8":
                argv += [
                    "--calib-data",
                    str(data),
                    "--calib-split",
                    "train",
                    "--calib-size",
                    str(self.args.calib_size),
                ]
            if self.args.threads:
                argv += ["--threads", str(self.args.threads)]
            if quantize_main(argv) != 0:
                raise DITError(
                    f"quantize {precision} failed (see above); the FP32 export is intact"
                )

    def engines(self) -> None:
        from .engines import EngineOptions, build_engines
        from .runtime.devices import gpu_unavailable_reason

        reason = gpu_unavailable_reason()
        if reason is not None:
            self.log(
                f"engines: skipped, TensorRT needs an NVIDIA GPU ({reason}). On a GPU "
                f"machine: dit-deploy engines {self.export_dir} --precision fp32 fp16 int8"
            )
            return
        build_engines(EngineOptions(self.export_dir, ("fp32", "fp16", "int8")), log=self.log)

    def bench(self) -> None:
        from .bench.cli import main as bench_main

        argv = [
            str(self.export_dir),
            "--all",
            "--data",
            str(self.data()),
            "--split",
            "val",
            "--limit",
            str(self.args.eval_size),
            "--batch",
            self.args.batch,
            "--budget",
            str(self.args.budget),
            "--pretrained",
            self.args.model,
            "--report-dir",
            str(self.report_dir),
        ]
        if self.args.threads:
            argv += ["--threads", str(self.args.threads)]
        if bench_main(argv) != 0:
            raise DITError("dit-bench reported a failed cell (see the table)")

    def gallery(self) -> None:
        """Predictions beside ground truth for PyTorch and every ONNX precision."""
        from .data import open_dataset
        from .gallery import Example, write_gallery
        from .model.dit_model import DITModel
        from .runtime import Predictor, read_manifest

        dataset = open_dataset(self.data(), "val")
        samples = [dataset[i] for i in range(min(len(dataset), self.args.gallery_size))]
        pairs = [(str(s.image_path), s.sentence) for s in samples]
        predictors: dict[str, Callable] = {
            "pytorch fp32": DITModel.from_pretrained(self.args.model).predict_batch
        }
        manifest = read_manifest(self.export_dir)
        for precision in ("fp32", *sorted(manifest.precisions)):
            predictors[f"onnxruntime {precision}"] = Predictor(
                self.export_dir, precision=precision, layout="fused"
            ).predict_batch
        for label, predict in predictors.items():
            results = predict(pairs)
            examples = [
                Example(s.load_image(), s.sentence, s.mask(), r.mask)
                for s, r in zip(samples, results, strict=True)
            ]
            path = write_gallery(
                examples,
                f"{self.args.model}: {label}",
                self.report_dir / f"gallery_{label.replace(' ', '_')}.png",
            )
            self.log(f"gallery: {path}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    job = Job(args)
    steps = STEPS if args.step == "run" else (args.step,)
    timings = []
    for step in steps:
        job.log(f"== {step} ==")
        start = time.perf_counter()
        try:
            getattr(job, step)()
        except DITError as exc:
            print(f"error in step {step}: {exc}", file=sys.stderr)
            return 1
        timings.append((step, time.perf_counter() - start))
    job.log("== summary ==")
    for step, seconds in timings:
        job.log(f"  {step:<9} {seconds:7.1f} s")
    job.log(
        f"  export: {job.export_dir}\n  report: {job.report_dir} (report.md, report.json, "
        "latency_vs_batch.png, accuracy_vs_latency.png, gallery_*.png)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
