"""``dit-deploy perf-data OUT.json IMAGE TEXT [...]``: real input data for perf_analyzer.

perf_analyzer (NVIDIA's load generator) sends random bytes to BYTES inputs unless it is given
``--input-data FILE``: a JSON ``{"data": [{INPUT: ...}, ...]}`` that it plays back round-robin.
A BYTES element is serialized as Triton does it, a little-endian uint32 length followed by the
bytes, and the whole tensor given base64-encoded with its shape::

    {"data": [{"IMAGE": {"content": {"b64": "..."}, "shape": [1]},
               "TEXT":  {"content": {"b64": "..."}, "shape": [1]}}, ...]}

Then::

    perf_analyzer -m dit -u 127.0.0.1:8001 -i grpc --input-data OUT.json \\
        --concurrency-range 1:8:2 --measurement-interval 5000
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Sequence
from pathlib import Path

from ..atomic import write_text_atomic
from ..errors import InputError
from . import contract as c


def _bytes_tensor(value: bytes) -> dict:
    """One BYTES element of shape [1] in perf_analyzer's base64 form (length-prefixed)."""
    raw = struct.pack("<I", len(value)) + value
    return {"content": {"b64": base64.b64encode(raw).decode("ascii")}, "shape": [1]}


def perf_input_data(pairs: Sequence[tuple[bytes, str]]) -> dict:
    """``{"data": [...]}`` for ``pairs`` of (encoded image file, expression), in order.

    Raises:
        InputError: no pairs, or a pair the server would refuse (checked here with the
            contract's own decoders, so a load test never measures error responses).
    """
    if not pairs:
        raise InputError("no (IMAGE, TEXT) pairs given; pass IMAGE TEXT [IMAGE TEXT ...]")
    data = []
    for i, (image, text) in enumerate(pairs):
        try:
            c.decode_text(text)
            c.decode_image(image, c.SERVE_MAX_PIXELS, input_size=16)
        except InputError as exc:
            raise InputError(f"pair {i}: {exc}") from None
        data.append({c.IMAGE: _bytes_tensor(image), c.TEXT: _bytes_tensor(text.encode("utf-8"))})
    return {"data": data}


def write_perf_input_data(pairs: Sequence[tuple[bytes, str]], out: Path) -> Path:
    """Write :func:`perf_input_data` to ``out`` (atomically); return ``out``."""
    write_text_atomic(out, json.dumps(perf_input_data(pairs)))
    return out
