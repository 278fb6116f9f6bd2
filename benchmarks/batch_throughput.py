"""Rows/s of ``dit-deploy batch`` against a plain ``Predictor.predict_batch`` loop, one run.

The same rows (the synthetic val split, every expression) through:

- a loop: ``Predictor(export, threads=T, max_batch=B).predict_batch`` chunk by chunk, in
  this process (decode, letterbox, tokenize, model, post-process: what a script would do);
- ``run_batch`` with 1 and with 2 workers (1 thread each) on one embedded Ray started once.

rows/s = rows / (model load + work): the loop's Predictor construction, the pool's start are
inside; the embedded Ray's start (once per command) is measured apart. Usage::

    python benchmarks/batch_throughput.py --out runs/batch-bench --scenes 200
"""

from __future__ import annotations

import os

# numpy's BLAS (post-processing matmuls) in one thread, as Ray sets it in its workers: the
# loop and the pipeline then differ in their structure only, not in BLAS threading (which
# on a loaded 2-core machine alone changed the loop's post-processing time 50x)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs") / "batch-bench")
    parser.add_argument("--model", default="dit-tiny-synthetic")
    parser.add_argument("--scenes", type=int, default=200, help="synthetic val scenes")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    from dit_deploy.batch import BatchOptions, run_batch
    from dit_deploy.batch.cluster import connect
    from dit_deploy.data import open_dataset
    from dit_deploy.data.synthetic import generate
    from dit_deploy.exporters.onnx_export import export_pretrained
    from dit_deploy.model.checkpoint import read_pretrained_config
    from dit_deploy.model.dit_model import DITModel
    from dit_deploy.runtime import Predictor

    export = args.out / "export"
    export_pretrained(args.model, export, log=lambda _: None)
    size = read_pretrained_config(DITModel.resolve_pretrained(args.model)).input_size
    data = args.out / "data"
    generate(data, n_train=0, n_val=args.scenes, seed=11, size=size, overwrite=True)
    samples = list(open_dataset(data, "val"))
    pairs = [(str(s.image_path), s.sentence) for s in samples]
    rows = args.out / "rows.jsonl"
    rows.write_text(
        "".join(
            json.dumps({"id": str(i), "image": image, "text": text}) + "\n"
            for i, (image, text) in enumerate(pairs)
        )
    )
    print(f"{len(pairs)} rows, {args.model}, batch {args.batch_size}, load {_load()}")

    results = []
    for threads in (1, 2):
        t0 = time.perf_counter()
        predictor = Predictor(export, threads=threads, max_batch=args.batch_size)
        t1 = time.perf_counter()
        for start in range(0, len(pairs), args.batch_size):
            predictor.predict_batch(pairs[start : start + args.batch_size])
        t2 = time.perf_counter()
        results.append(
            {
                "what": f"Predictor.predict_batch loop, {threads} thread(s)",
                "rows_per_s": len(pairs) / (t2 - t0),
                "fixed_s": t1 - t0,
                "wall_s": t2 - t0,
            }
        )
        print(results[-1], "load", _load())

    t0 = time.perf_counter()
    with connect(None, num_cpus=3) as info:
        print(f"Ray: {info.line()}, up in {time.perf_counter() - t0:.1f} s")
        for workers in (1, 2):
            out = args.out / f"batch-{workers}"
            shutil.rmtree(out, ignore_errors=True)
            summary = run_batch(
                BatchOptions(
                    str(rows), out, export, num_workers=workers, batch_size=args.batch_size
                ),
                log=lambda _: None,
            )
            assert summary["ok"] == len(pairs), summary
            results.append(
                {
                    "what": f"dit-deploy batch, {workers} worker(s) x 1 thread",
                    "rows_per_s": summary["rows_per_s"],
                    "fixed_s": summary["first_result_s"],
                    "wall_s": summary["wall_s"],
                }
            )
            print(results[-1], "load", _load())
    print(
        "\n| what | rows/s | Predictor built / first result after (s) | wall s |\n|---|---|---|---|"
    )
    for r in results:
        print(f"| {r['what']} | {r['rows_per_s']:.1f} | {r['fixed_s']:.2f} | {r['wall_s']:.1f} |")
    print(f"load average after: {_load()}")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
