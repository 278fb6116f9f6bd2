"""``dit-deploy demo [EXPORT]``: a page to try referring segmentation in a browser.

Upload an image (or pick a bundled sample), type one expression per line, see each mask as
an overlay with its score and the latency; the backend and precision are chosen among those
the export has. The page talks to this process, which runs the in-process Predictor, or with
``--server URL`` forwards every pair to a running ``dit-deploy serve`` (its Triton client).
Served by aiohttp on 127.0.0.1. A bad upload gets the API's one-line error, shown on the
page (HTTP 400).

API (what the page uses): ``GET /api/info`` -> the export's backends, precisions and the
samples; ``POST /api/segment`` (multipart: ``image`` file or ``sample`` name, ``texts``
one per line, ``backend``, ``precision``) -> ``{"ms", "results": [{"text", "score",
"area", "overlay_png" (base64), "mask_rle" (COCO RLE)}]}``.
"""

from __future__ import annotations

import argparse
import base64
import json
import time
from importlib import resources
from pathlib import Path
from typing import Any

from .cli_types import HelpFormatter, port
from .errors import ConfigError, DITError, InputError, TextError

SAMPLES = ("coffee.jpg", "chelsea.jpg")
MAX_UPLOAD = 32 * 2**20
# expressions per request: each returns an overlay PNG of the image's size (8.5 MB of JSON
# at 4096 x 4096), so one request's response and memory stay bounded
MAX_EXPRESSIONS = 16

EPILOG = """examples:
  dit-deploy demo                                  # the main job's export, or the bundled model
  dit-deploy demo exports/refcoco_vit_b --port 7860
  dit-deploy demo --server http://127.0.0.1:8000   # through a running dit-deploy serve
then open http://127.0.0.1:7860 in a browser.
"""


class Segmenter:
    """One (image, expressions) request -> results, through Predictors or a server."""

    def __init__(self, export: Path, server: str | None = None) -> None:
        from .runtime import Export

        self.export, self.server = export, server
        self._export = Export.open(export)
        self.manifest = self._export.manifest
        self._predictors: dict[tuple[str, str], Any] = {}

    def info(self) -> dict[str, Any]:
        from .runtime.backends import backend_names, backend_row

        cpu = [b for b in backend_names() if "cpu" in backend_row(b).devices]
        backends = ["server"] if self.server else cpu
        return {
            "export": str(self.export),
            "server": self.server,
            "backends": backends,
            # through a server, the precision is the one it serves
            "precisions": ["served"] if self.server else list(self._export.precisions),
            "samples": list(SAMPLES),
        }

    def _predictor(self, backend: str, precision: str):
        from .runtime import Predictor

        key = (backend, precision)
        if key not in self._predictors:
            self._predictors[key] = Predictor(self._export, backend=backend, precision=precision)
        return self._predictors[key]

    def run(self, image: bytes, texts: list[str], backend: str, precision: str) -> dict:
        from PIL import Image

        from .mask_codec import rle_json
        from .segment import overlay_png_bytes
        from .serving import contract as c

        texts = [t.strip() for t in texts if t.strip()]
        if not texts:
            raise InputError("no expression: type one per line, e.g. 'the cup on the left'")
        if len(texts) > MAX_EXPRESSIONS:
            raise InputError(
                f"{len(texts)} expressions in one request, more than {MAX_EXPRESSIONS}; send "
                "them in several requests"
            )
        if any("\ufffd" in t for t in texts):  # what a form decoder makes of invalid UTF-8
            raise TextError("the expressions are not valid UTF-8; send UTF-8 text")
        rgb = c.decode_image(image, c.SERVE_MAX_PIXELS, self.manifest.input_size)
        start = time.perf_counter()
        if self.server:
            from .serving.client import DITClient

            results = DITClient(self.server).predict_batch([(image, t) for t in texts])
        else:
            predictor = self._predictor(backend, precision)
            results = predictor.predict_batch([(Image.fromarray(rgb), t) for t in texts])
        ms = (time.perf_counter() - start) * 1e3
        out = []
        for text, result in zip(texts, results, strict=True):
            png = overlay_png_bytes(rgb, result.mask)
            out.append({
                "text": text, "score": float(result.score), "area": float(result.mask.mean()),
                "overlay_png": base64.b64encode(png).decode("ascii"),
                "mask_rle": json.loads(rle_json(result.mask)),
            })  # fmt: skip
        return {"ms": round(ms, 1), "results": out}


def make_app(segmenter: Segmenter):
    """The aiohttp application: the page, /api/info and /api/segment."""
    from aiohttp import web

    page = resources.files("dit_deploy") / "assets" / "demo.html"
    samples = resources.files("dit_deploy") / "assets" / "samples"

    async def index(_request):
        return web.Response(text=page.read_text(encoding="utf-8"), content_type="text/html")

    async def info(_request):
        return web.json_response(segmenter.info())

    async def sample(request):
        name = request.match_info["name"]
        if name not in SAMPLES:
            raise web.HTTPNotFound(text=f"no sample {name}")
        return web.Response(body=(samples / name).read_bytes(), content_type="image/jpeg")

    async def segment(request):
        try:
            try:
                form = await request.post()
            except (ValueError, LookupError) as exc:  # malformed multipart, charset, UTF-8
                reason = " ".join(str(exc).split())[:200]
                raise InputError(
                    f"the request body is not a readable form ({type(exc).__name__}: {reason}); "
                    "send multipart/form-data with UTF-8 text fields"
                ) from None
            upload = form.get("image")
            if getattr(upload, "file", None) is not None:
                image = upload.file.read()
            elif upload is not None:
                raise InputError("image must be an uploaded file (a file field), not text")
            elif form.get("sample") in SAMPLES:
                image = (samples / str(form["sample"])).read_bytes()
            else:
                raise InputError("no image: upload one, or pick a sample")
            if getattr(form.get("texts"), "file", None) is not None:
                raise InputError("texts must be a text field (one expression per line), not a file")
            texts = str(form.get("texts", "")).splitlines()
            backend = str(form.get("backend") or "onnxruntime")
            precision = str(form.get("precision") or "fp32")
            result = await _in_thread(segmenter.run, image, texts, backend, precision)
        except DITError as exc:  # the API's one-line error, for the page to show
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(result)

    app = web.Application(client_max_size=MAX_UPLOAD)
    app.add_routes([
        web.get("/", index), web.get("/api/info", info),
        web.get("/samples/{name}", sample), web.post("/api/segment", segment),
    ])  # fmt: skip
    return app


async def _in_thread(fn, *args):
    import asyncio

    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="a web page to try it: upload an image, type expressions, see the masks",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "export",
        type=Path,
        nargs="?",
        default=None,
        metavar="EXPORT",
        help="export directory (None: the main job's, else the bundled model's)",
    )
    p.add_argument("--server", default=None, help="a running dit-deploy serve (http://...)")
    p.add_argument("--port", type=port, default=7860, help="the page's port on 127.0.0.1")
    p.set_defaults(handler=run)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    import sys

    from .segment import default_export

    try:
        from aiohttp import web
    except ModuleNotFoundError:
        raise ConfigError("the demo needs aiohttp: pip install 'dit-deploy[demo]'") from None
    export = args.export or default_export(lambda line: print(line, file=sys.stderr))
    segmenter = Segmenter(export, args.server)
    via = f", via {args.server}" if args.server else ""
    print(f"dit-deploy demo: http://127.0.0.1:{args.port} ({export}{via}); Ctrl-C stops",
          flush=True)  # fmt: skip
    web.run_app(make_app(segmenter), host="127.0.0.1", port=args.port, print=None)
    return 0
