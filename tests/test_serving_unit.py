"""Serving pieces that need no server: the per-row error design of the inference function, the
contract's encodings, URL parsing and error classification, the python-backend environment,
and the generated repository configs (parsed with Triton's ModelConfig protobuf)."""

from __future__ import annotations

import io
import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dit_deploy.errors import BackendUnavailableError, ConfigError, ImageError, TextError
from dit_deploy.mask_codec import decode_png, decode_rle
from dit_deploy.runtime import Predictor
from dit_deploy.serving import contract as c
from dit_deploy.serving.client import classify, image_bytes, parse_url
from dit_deploy.serving.errors import (
    RequestError,
    ServerError,
    ServerTimeoutError,
    ServerUnavailableError,
)
from dit_deploy.serving.server import DITInferFunc, ServeOptions, fix_python_backend_env

SAMPLES = Path(__file__).parents[1] / "dit_deploy" / "assets" / "samples"


@pytest.fixture(scope="module")
def export(tiny_model, tmp_path_factory) -> Path:
    from dit_deploy.exporters.onnx_export import run_export

    out = tmp_path_factory.mktemp("unit") / "tiny"
    run_export(tiny_model, out, layout="fused", log=lambda *_: None)
    return out


class FakeRequest(dict):
    """What PyTriton hands the inference function: inputs by name + the requested outputs."""

    def __init__(self, images, texts, requested=None):
        super().__init__(
            IMAGE=np.array([[x] for x in images], dtype=object),
            TEXT=np.array([[t.encode() if isinstance(t, str) else t] for t in texts], dtype=object),
        )
        self.requested_output_names = requested


def test_infer_function_answers_bad_rows_alone(export):
    predictor = Predictor(export)
    fn = DITInferFunc(predictor, max_pixels=300_000)
    cat = (SAMPLES / "chelsea.jpg").read_bytes()
    big = io.BytesIO()
    Image.new("RGB", (800, 800)).save(big, format="PNG")
    requests = [
        FakeRequest([cat], ["the cat"]),
        FakeRequest([b"\x89PNG broken"], ["the cat"]),
        FakeRequest([cat, cat], ["", "the cat"], requested=["MASK_RLE", "ERROR"]),
        FakeRequest([big.getvalue()], ["the cat"]),
        FakeRequest([cat], [b"\xff\xfe not utf-8"]),
    ]
    out = fn(requests)
    assert len(out) == 5
    ref = predictor.predict(SAMPLES / "chelsea.jpg", "the cat")
    for k in (0, 2):
        row = 0 if k == 0 else 1
        assert out[k]["ERROR"][row, 0] == b""
        assert np.array_equal(decode_rle(out[k]["MASK_RLE"][row, 0]), ref.mask)
        assert out[k]["SCORE"][row, 0] == np.float32(ref.score)
    assert np.array_equal(decode_png(out[0]["MASK_PNG"][0, 0]), ref.mask)
    assert out[2]["MASK_PNG"][1, 0] == b""  # not requested: not encoded
    errors = {
        1: "not an image file",
        3: "max_pixels",
        4: "not UTF-8",
    }
    for k, text in errors.items():
        assert text in out[k]["ERROR"][0, 0].decode() and np.isnan(out[k]["SCORE"][0, 0])
        assert out[k]["MASK_RLE"][0, 0] == b""
    assert "TEXT is empty" in out[2]["ERROR"][0, 0].decode()
    for response in out:
        assert all(v.shape[1] == 1 for v in response.values())


def test_infer_function_refuses_mismatched_rows(export):
    fn = DITInferFunc(Predictor(export))
    cat = (SAMPLES / "chelsea.jpg").read_bytes()
    (response,) = fn([FakeRequest([cat, cat], ["a"])])
    assert response["ERROR"].shape == (2, 1)
    assert all(b"IMAGE has 2 rows but TEXT has 1" in e for e in response["ERROR"][:, 0])


def test_decoders_name_the_problem():
    with pytest.raises(ImageError, match="IMAGE is empty"):
        c.decode_image(b"", 10**6, 96)
    with pytest.raises(ImageError, match="must be BYTES"):
        c.decode_image(3.5, 10**6, 96)
    with pytest.raises(TextError, match="more than"):
        c.decode_text(b"x" * (c.MAX_TEXT_BYTES + 1))
    assert c.decode_text(np.bytes_(b"the dog")) == "the dog"
    from dit_deploy.preprocess import load_image

    path = SAMPLES / "coffee.jpg"
    assert np.array_equal(
        c.decode_image(path.read_bytes(), 10**6, 96), load_image(path, input_size=96)
    )


def test_urls_and_error_classes():
    assert parse_url("http://127.0.0.1:8000") == ("http", "127.0.0.1:8000")
    assert parse_url("grpc://h:8001") == ("grpc", "h:8001")
    assert parse_url("localhost:8000") == ("http", "localhost:8000")
    for bad in ("ftp://h:1", "http://nohost", "grpc://:80"):
        with pytest.raises(ConfigError, match="http://HOST:PORT"):
            parse_url(bad)

    class TritonException(Exception):  # the shape of tritonclient's InferenceServerException
        def __init__(self, msg, status):
            super().__init__(msg)
            self._msg, self._status = msg, status

        def message(self):
            return self._msg

        def status(self):
            return self._status

    url = "http://h:1"
    refused = classify(TritonException("bad input", "400"), url)
    assert type(refused) is RequestError and refused.status == "400" and "bad input" in str(refused)
    grpc_bad = classify(TritonException("x", "StatusCode.INVALID_ARGUMENT"), url)
    assert type(grpc_bad) is RequestError
    assert type(classify(ConnectionRefusedError(111, "refused"), url)) is ServerUnavailableError
    assert type(classify(TritonException("", "StatusCode.UNAVAILABLE"), url)) is (
        ServerUnavailableError
    )
    assert type(classify(TimeoutError("timed out"), url)) is ServerTimeoutError
    assert type(classify(TritonException("Deadline Exceeded", None), url)) is ServerTimeoutError
    other = classify(TritonException("model crashed", "500"), url)
    assert type(other) is ServerError and "500" in str(other) and url in str(other)


def test_image_bytes_is_lossless():
    path = SAMPLES / "chelsea.jpg"
    assert image_bytes(path) == path.read_bytes()
    array = np.arange(12 * 10 * 3, dtype=np.uint8).reshape(12, 10, 3)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(image_bytes(array)))), array)
    with pytest.raises(ImageError, match="not found"):
        image_bytes(SAMPLES / "nope.jpg")


def test_python_backend_environment(monkeypatch):
    env = {"LD_LIBRARY_PATH": "/a:/b"}
    libdir = fix_python_backend_env(env)
    real = sysconfig.get_config_var("LIBDIR")
    if libdir is None:  # the system Python, or no shared libpython: nothing to change
        assert env == {"LD_LIBRARY_PATH": "/a:/b"}
    else:
        assert libdir == real and env["LD_LIBRARY_PATH"] == f"{real}:/a:/b"
        fix_python_backend_env(env)  # idempotent: once, first
        assert env["LD_LIBRARY_PATH"] == f"{real}:/a:/b"
    import dit_deploy.serving.server as server

    monkeypatch.setattr(server.np, "__version__", "2.1.0")
    with pytest.raises(BackendUnavailableError, match="numpy<2"):
        server.check_python_backend()


def test_serve_options_are_checked():
    ServeOptions(Path("x")).check()
    for kw, text in (
        ({"grpc_port": 8000}, "ports must differ"),
        ({"max_batch": 0}, "--max-batch"),
        ({"drain_s": 60}, "--drain-s"),
        ({"max_queue_delay_us": -1}, "--max-queue-delay-us"),
    ):
        with pytest.raises(ConfigError, match=text):
            ServeOptions(Path("x"), **kw).check()


def test_repository_configs_parse_and_match_the_export(export, tmp_path):
    pytest.importorskip("tritonclient.grpc")
    from dit_deploy.runtime import read_manifest
    from dit_deploy.serving.triton_repo import RepoOptions, parse_config, write_repository

    repo = write_repository(
        RepoOptions(export, tmp_path / "repo", backend="python", kind="cpu"), log=lambda *_: None
    )
    configs = {p.parent.name: parse_config(p.read_text()) for p in repo.glob("*/config.pbtxt")}
    m = read_manifest(export)
    pre = configs["dit_preprocess"]
    dims = {o.name: list(o.dims) for o in pre.output}
    assert dims == {
        "image": [3, m.input_size, m.input_size],
        "input_ids": [m.max_tokens],
        "attention_mask": [m.max_tokens],
        "LETTERBOX": [7],
    }
    post = configs["dit_postprocess"]
    assert float(post.parameters["mask_threshold"].string_value) == m.mask_threshold
    # the python dit_model's copy is a valid export: the Predictor opens it
    copy = repo / "dit_model" / "1" / "export"
    assert json.loads((copy / "manifest.json").read_text())["graphs"].keys() == {"dit_fused"}
    Predictor(copy).predict(SAMPLES / "chelsea.jpg", "the cat")
    for model in ("dit_preprocess", "dit_postprocess", "dit_model"):
        text = (repo / model / "1" / "model.py").read_text()
        assert "from dit_deploy.serving.triton_models import" in text
    with pytest.raises(Exception, match="does not parse"):
        parse_config('name: "x"\nmax_batch_size: "eight"\n')


def test_a_silent_server_is_a_time_out_naming_the_url():
    pytest.importorskip("tritonclient.grpc")
    import socket
    import time

    from dit_deploy.serving.client import DITClient

    with socket.socket() as listener:  # accepts connections (the kernel does), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        for url in (f"http://127.0.0.1:{port}", f"grpc://127.0.0.1:{port}"):
            start = time.monotonic()
            with pytest.raises(ServerTimeoutError, match=f"127.0.0.1:{port}"):
                DITClient(url, timeout_s=1.0).predict(SAMPLES / "chelsea.jpg", "the cat")
            assert time.monotonic() - start < 6


def test_load_test_waits_for_the_server_counters_to_cover_the_answered_requests():
    """Triton counts a request after sending its answer: the last read may lag a few."""
    from dit_deploy.bench.server_load import _settled_metrics

    reads = iter([{"count": 244.0}, {"count": 246.0}, {"count": 248.0}, {"count": 250.0}])
    calls = []

    def read(url):
        calls.append(url)
        return next(reads)

    after = _settled_metrics(read, "m", {"count": 0.0}, 248, sleep=lambda _s: None)
    assert after == {"count": 248.0} and len(calls) == 3
    # a server that never catches up is read until the wait runs out, then taken as it is
    lagging = _settled_metrics(lambda _u: {"count": 10.0}, "m", {}, 20, wait_s=0.0)
    assert lagging == {"count": 10.0}
