"""``dit-deploy serve | client | triton-repo | perf-data``: the serving verbs."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..atomic import write_bytes_atomic
from ..cli_types import HelpFormatter, non_negative_int, port, positive_float, positive_int
from ..errors import ConfigError
from ..runtime.backends import backend_names, backend_row, precisions
from ..runtime.manifest import LAYOUT_ROLES
from . import contract as c

SERVE_EPILOG = """examples:
  dit-deploy serve runs/dit-deploy/export                                # fp32, ONNX Runtime, CPU
  dit-deploy serve runs/dit-deploy/export --precision int8 --backend openvino
  dit-deploy serve EXPORT --device cuda:1 --backend tensorrt --precision fp16
  dit-deploy serve EXPORT --host 0.0.0.0 --api-token "$SECRET"          # a public bind
then:
  curl -s http://127.0.0.1:8000/v2/health/ready && curl -s http://127.0.0.1:8002/metrics
  curl -s http://127.0.0.1:8000/v2/models/dit/stats                      # Triton's statistics
  dit-deploy client http://127.0.0.1:8000 horse.jpg "gray horse with blue halter" --out mask.png
  dit-deploy perf-data load.json horse.jpg "the horse" && \
    perf_analyzer -m dit -u 127.0.0.1:8001 -i grpc --input-data load.json --concurrency-range 1:8
batching (defaults per device, measured in docs/benchmarks.md): CPU: one instance per core
with 1 thread, no queue delay (for one stream of requests on a big model, --instances 1 uses
every core per request); GPU: 2 instances, 2 ms delay. --instances, --threads and
--max-queue-delay-us override it.
"""

CLIENT_EPILOG = """examples:
  dit-deploy client http://127.0.0.1:8000 horse.jpg "gray horse with blue halter" --out mask.png
  dit-deploy client grpc://127.0.0.1:8001 horse.jpg "the horse" --rle mask.json --json
"""

REPO_EPILOG = """examples:
  dit-deploy triton-repo runs/dit-deploy/export models/ --backend onnxruntime --kind cpu
  dit-deploy triton-repo runs/dit-deploy/export models/ --backend tensorrt --precision fp16
  dit-deploy triton-repo runs/dit-deploy/export models/ --backend python --runtime openvino \\
      --kind cpu                               # one python model, what 'dit-deploy serve' runs
then, on a GPU machine (the python models need dit-deploy inside the container):
  docker run --gpus all --rm -p 8000-8002:8000-8002 -v $PWD/models:/models -v $PWD:/src \\
    nvcr.io/nvidia/tritonserver:24.10-py3 \\
    sh -c "pip install /src 'numpy<2' && tritonserver --model-repository=/models"
"""


PERF_EPILOG = """examples:
  dit-deploy perf-data load.json horse.jpg "the gray horse" cat.png "the cat on the left"
  dit-deploy perf-data load.json --bundled          # the bundled sample photographs
then:
  perf_analyzer -m dit -u 127.0.0.1:8001 -i grpc --input-data load.json \\
      --concurrency-range 1:8:2 --measurement-interval 5000
"""


def _model_options(p: argparse.ArgumentParser, instances_default: int | None = 1) -> None:
    p.add_argument("export_dir", type=Path, metavar="EXPORT_DIR", help="an export directory")
    p.add_argument(
        "--precision", default="fp32", choices=precisions(), help="precision of the export"
    )
    p.add_argument("--max-batch", type=positive_int, default=8, help="largest batch Triton forms")
    p.add_argument(
        "--instances",
        type=positive_int,
        default=instances_default,
        help="model instances"
        + (
            " (None: the device's batching policy)" if instances_default is None else ""
        ),  # fmt: skip
    )
    p.add_argument(
        "--max-pixels",
        type=positive_int,
        default=c.SERVE_MAX_PIXELS,
        help="per-request budget: refuse a request whose images have more pixels together "
        "(read from the headers, before decoding)",
    )
    p.add_argument(
        "--max-image-bytes",
        type=positive_int,
        default=c.MAX_IMAGE_BYTES,
        help="per-request budget: refuse a request whose encoded images have more bytes together",
    )


def register(subparsers) -> None:
    """Add ``serve``, ``client`` and ``triton-repo``."""
    _register_serve(subparsers)
    _register_client(subparsers)
    _register_triton_repo(subparsers)
    _register_perf_data(subparsers)


def _register_serve(subparsers) -> None:
    """Add ``serve``: an export behind Triton Inference Server."""
    p = subparsers.add_parser(
        "serve",
        help="serve an export behind Triton Inference Server",
        description=(
            "Serve model 'dit' (IMAGE + TEXT bytes -> MASK_PNG, MASK_RLE, SCORE) on Triton "
            "Inference Server (the tritonserver PyTriton bundles, running the repository of "
            "'triton-repo --backend python'): KServe v2 HTTP and gRPC, dynamic batching, "
            "Prometheus metrics, the statistics API, strict readiness. A bad request is "
            "Triton's 400 / INVALID_ARGUMENT for that request alone. SIGTERM drains."
        ),
        epilog=SERVE_EPILOG,
        formatter_class=HelpFormatter,
    )
    _model_options(p, instances_default=None)
    p.add_argument(
        "--backend", default="onnxruntime", choices=backend_names(), help="runtime backend"
    )
    p.add_argument(
        "--device", default=None, help="cpu, cuda or cuda:N (default: the backend's first device)"
    )
    p.add_argument(
        "--layout", choices=tuple(LAYOUT_ROLES), default=None, help="graphs (None: fused if any)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all)")
    p.add_argument("--http-port", type=port, default=8000, help="KServe v2 HTTP")
    p.add_argument("--grpc-port", type=port, default=8001, help="KServe v2 gRPC")
    p.add_argument("--metrics-port", type=port, default=8002, help="Prometheus /metrics")
    p.add_argument(
        "--max-queue-delay-us",
        type=non_negative_int,
        default=None,
        help="how long Triton waits to fill a batch (None: the device's batching policy)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads per instance (None: cores / instances)",
    )
    p.add_argument("--drain-s", type=positive_int, default=20, help="SIGTERM: wait for in-flight")
    p.add_argument(
        "--log-file", type=Path, default=None, help="tritonserver's log (None: a temp file)"
    )
    p.add_argument(
        "--api-token",
        default=None,
        help="restrict the statistics, repository, trace and logging APIs to requests with "
        "header dit-api-token: TOKEN (for a public --host; None: open)",
    )
    p.set_defaults(handler=run_serve)


def _register_client(subparsers) -> None:
    """Add ``client``: one image and expression to a DIT Triton server."""
    p = subparsers.add_parser(
        "client",
        help="ask a DIT Triton server for one mask",
        description="Send one image and expression to model 'dit'; write the mask.",
        epilog=CLIENT_EPILOG,
        formatter_class=HelpFormatter,
    )
    p.add_argument("url", metavar="URL", help="http://HOST:PORT or grpc://HOST:PORT")
    p.add_argument("image", type=Path, metavar="IMAGE", help="an image file (JPEG, PNG, ...)")
    p.add_argument("text", metavar="TEXT", help="the referring expression")
    p.add_argument("--out", type=Path, default=Path("mask.png"), help="mask PNG to write")
    p.add_argument("--rle", type=Path, default=None, help="also write COCO RLE JSON here")
    p.add_argument("--timeout", type=positive_float, default=60.0, help="seconds")
    p.add_argument("--json", action="store_true", help="print JSON instead of a line")
    p.set_defaults(handler=run_client)


def _register_triton_repo(subparsers) -> None:
    """Add ``triton-repo``: a model repository for a standalone tritonserver."""
    p = subparsers.add_parser(
        "triton-repo",
        help="write a Triton model repository for a standalone tritonserver",
        description=(
            "Write model 'dit' with the contract of 'serve': with --backend onnxruntime or "
            "tensorrt an ensemble dit_preprocess (python) -> dit_model (Triton's backend) -> "
            "dit_postprocess (python); with --backend python one python model running the "
            "Predictor on --runtime (what 'serve' runs)."
        ),
        epilog=REPO_EPILOG,
        formatter_class=HelpFormatter,
    )
    _model_options(p)
    p.add_argument("out", type=Path, metavar="OUT", help="the repository directory to write")
    p.add_argument(
        "--backend",
        default="onnxruntime",
        choices=("onnxruntime", "tensorrt", "python"),
        help="Triton backend of the model (python: the Predictor on --runtime)",
    )
    p.add_argument("--kind", default="gpu", choices=("gpu", "cpu"), help="instance kind")
    p.add_argument(
        "--max-queue-delay-us",
        type=non_negative_int,
        default=2000,
        help="how long Triton waits to fill a batch",
    )
    p.add_argument(
        "--runtime",
        default="onnxruntime",
        choices=backend_names(),
        help="--backend python: runtime",
    )
    p.add_argument(
        "--layout",
        choices=tuple(LAYOUT_ROLES),
        default=None,
        help="--backend python: graphs (None: fused if exported)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="--backend python: CPU threads per instance (None: the runtime's default)",
    )
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(handler=run_triton_repo)


def _register_perf_data(subparsers) -> None:
    """Add ``perf-data``: perf_analyzer's --input-data file."""
    p = subparsers.add_parser(
        "perf-data",
        help="write perf_analyzer's --input-data file from images and expressions",
        description=(
            "Write real input data for NVIDIA's perf_analyzer against model 'dit' "
            "(IMAGE and TEXT as length-prefixed BYTES, base64, shape [1]); each pair is "
            "checked as the server would check it."
        ),
        epilog=PERF_EPILOG,
        formatter_class=HelpFormatter,
    )
    p.add_argument("out", type=Path, metavar="OUT", help="the JSON file to write")
    p.add_argument("pairs", nargs="*", metavar="IMAGE TEXT", help="image files and expressions")
    p.add_argument("--bundled", action="store_true", help="add the bundled sample pairs")
    p.set_defaults(handler=run_perf_data)


def run_serve(args: argparse.Namespace) -> int:
    from .server import ServeOptions, serve

    return serve(
        ServeOptions(
            export_dir=args.export_dir,
            backend=args.backend,
            precision=args.precision,
            device=args.device or backend_row(args.backend).default_device,
            layout=args.layout,
            host=args.host,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            max_batch=args.max_batch,
            max_queue_delay_us=args.max_queue_delay_us,
            instances=args.instances,
            threads=args.threads,
            max_pixels=args.max_pixels,
            max_image_bytes=args.max_image_bytes,
            drain_s=args.drain_s,
            log_file=args.log_file,
            api_token=args.api_token,
        ),
        log=lambda line: print(line, flush=True),
    )


def run_client(args: argparse.Namespace) -> int:
    from ..mask_codec import encode_png, rle_json
    from ..preprocess import DEFAULT_MAX_PIXELS
    from .client import DITClient, image_bytes

    if args.timeout <= 0:
        raise ConfigError(f"--timeout must be > 0; got {args.timeout}")
    # what any server would refuse is named here, before connecting (the pixel budget is the
    # server's own: only Pillow's limit applies locally)
    data = image_bytes(args.image)
    c.decode_text(args.text.encode("utf-8", "surrogateescape"))
    c.decode_image(data, DEFAULT_MAX_PIXELS, input_size=16, max_bytes=len(data) or 1)
    client = DITClient(args.url, timeout_s=args.timeout)
    start = time.perf_counter()
    result = client.predict(data, args.text)
    ms = (time.perf_counter() - start) * 1e3
    _write(args.out, encode_png(result.mask))
    if args.rle:
        _write(args.rle, rle_json(result.mask).encode("ascii"))
    h, w = result.mask.shape
    record = {
        "url": client.url,
        "image": str(args.image),
        "text": args.text,
        "height": h,
        "width": w,
        "foreground": float(result.mask.mean()),
        "score": result.score,
        "mask_png": str(args.out),
        "mask_rle": str(args.rle) if args.rle else None,
        "latency_ms": round(ms, 2),
    }
    if args.json:
        print(json.dumps(record))
    else:
        print(
            f"mask {h}x{w}, {record['foreground']:.1%} foreground, score {result.score:.3f} "
            f"-> {args.out} ({ms:.0f} ms, {client.url})"
        )
    return 0


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data)


def run_triton_repo(args: argparse.Namespace) -> int:
    from .triton_repo import RepoOptions, write_repository

    opts = RepoOptions(
        export_dir=args.export_dir,
        out=args.out,
        backend=args.backend,
        precision=args.precision,
        max_batch=args.max_batch,
        instances=args.instances,
        kind=args.kind,
        max_queue_delay_us=args.max_queue_delay_us,
        max_pixels=args.max_pixels,
        max_image_bytes=args.max_image_bytes,
        runtime=args.runtime,
        layout=args.layout,
        threads=args.threads,
        force=args.force,
    )
    write_repository(opts, log=print)
    return 0


def run_perf_data(args: argparse.Namespace) -> int:
    from .perf_data import write_perf_input_data

    if len(args.pairs) % 2:
        raise ConfigError("pairs come as IMAGE TEXT; the last IMAGE has no TEXT")
    pairs = []
    for image, text in zip(args.pairs[::2], args.pairs[1::2], strict=True):
        path = Path(image)
        if not path.is_file():
            raise ConfigError(f"no image file {path}")
        pairs.append((path.read_bytes(), text))
    if args.bundled:
        from ..bench.server_load import bundled_pairs

        pairs += bundled_pairs()
    out = write_perf_input_data(pairs, args.out)
    print(
        f"perf-data: {len(pairs)} pair(s) -> {out}; run: perf_analyzer -m {c.MODEL_NAME} "
        f"-u 127.0.0.1:8001 -i grpc --input-data {out} --concurrency-range 1:8"
    )
    return 0
