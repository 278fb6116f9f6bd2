"""Serving pieces that need no server: the per-request error design of the python model, the
contract's encodings, URL parsing and error classification, the python-backend environment,
and the generated repository configs (parsed with Triton's ModelConfig protobuf)."""

from __future__ import annotations

import io
import json
import os
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
from dit_deploy.serving.server import ServeOptions, batching_policy
from dit_deploy.serving.triton_repo import fix_python_backend_env

SAMPLES = Path(__file__).parents[1] / "dit_deploy" / "assets" / "samples"


@pytest.fixture(scope="module")
def export(tiny_model, tmp_path_factory) -> Path:
    from dit_deploy.exporters.onnx_export import run_export

    out = tmp_path_factory.mktemp("unit") / "tiny"
    run_export(tiny_model, out, layout="fused", log=lambda *_: None)
    return out


class FakePb:
    """The parts of Triton's ``triton_python_backend_utils`` the python models use."""

    class TritonError(Exception):
        INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

        def __init__(self, message, code="UNKNOWN"):
            super().__init__(message)
            self.message, self.code = message, code

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array

        def as_numpy(self):
            return self.array

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self.outputs = {t.name: t.array for t in output_tensors}
            self.error = error

    @staticmethod
    def get_input_tensor_by_name(request, name):
        return FakePb.Tensor(name, request.inputs[name])


class FakeRequest:
    """A python-backend request: inputs by name + the requested outputs."""

    def __init__(self, images, texts, requested=()):
        self.inputs = {
            "IMAGE": np.array([[x] for x in images], dtype=object),
            "TEXT": np.array([[t.encode() if isinstance(t, str) else t] for t in texts],
                             dtype=object),
        }  # fmt: skip
        self.requested = list(requested)

    def requested_output_names(self):
        return self.requested


def _pipeline(export: Path, monkeypatch, **params: str):
    import sys

    from dit_deploy.serving.triton_models import Pipeline

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", FakePb)
    model_dir = export.parent / "repo-dit" / "1"
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "export.path").write_text(str(export))
    config = {"parameters": {k: {"string_value": v} for k, v in params.items()}}
    pipeline = Pipeline()
    pipeline.initialize({"model_config": json.dumps(config), "model_version": "1",
                         "model_repository": str(model_dir.parent)})  # fmt: skip
    return pipeline


def test_pipeline_answers_bad_requests_alone_as_invalid_argument(export, monkeypatch):
    pipeline = _pipeline(export, monkeypatch, max_pixels="300000", threads="1")
    predictor = Predictor(export)
    cat = (SAMPLES / "chelsea.jpg").read_bytes()
    big = io.BytesIO()
    Image.new("RGB", (800, 800)).save(big, format="PNG")
    requests = [
        FakeRequest([cat], ["the cat"]),
        FakeRequest([b"\x89PNG broken"], ["the cat"]),
        FakeRequest([cat, cat], ["the cat", "the cat"], requested=["MASK_RLE"]),
        FakeRequest([big.getvalue()], ["the cat"]),
        FakeRequest([cat], [b"\xff\xfe not utf-8"]),
        FakeRequest([cat, cat], ["", "the cat"]),
        FakeRequest([cat, cat], ["a"]),
    ]
    out = pipeline.execute(requests)
    assert len(out) == 7
    ref = predictor.predict(SAMPLES / "chelsea.jpg", "the cat")
    assert out[0].error is None and out[2].error is None
    assert np.array_equal(decode_png(out[0].outputs["MASK_PNG"][0, 0]), ref.mask)
    assert out[0].outputs["SCORE"][0, 0] == np.float32(ref.score)
    assert set(out[2].outputs) == {"MASK_RLE"}  # only what was asked for is encoded
    for row in (0, 1):
        assert np.array_equal(decode_rle(out[2].outputs["MASK_RLE"][row, 0]), ref.mask)
    errors = {
        1: "not an image file",
        3: "max_pixels",
        4: "not UTF-8",
        5: "row 0: TEXT is empty",
        6: "IMAGE has 2 rows but TEXT has 1",
    }
    for k, text in errors.items():
        assert out[k].outputs == {} and out[k].error.code == "INVALID_ARG", k
        assert text in out[k].error.message, (k, out[k].error.message)


def test_pipeline_refuses_an_oversized_file_before_decoding(export, monkeypatch):
    pipeline = _pipeline(export, monkeypatch, max_image_bytes="1000")
    cat = (SAMPLES / "chelsea.jpg").read_bytes()
    (response,) = pipeline.execute([FakeRequest([cat], ["the cat"])])
    assert response.error.code == "INVALID_ARG"
    assert f"IMAGE has {len(cat)} bytes, more than this server's 1000" in response.error.message


def test_pipeline_backend_failure_is_internal_for_the_batch(export, monkeypatch):
    pipeline = _pipeline(export, monkeypatch)

    def broken(pairs):
        raise RuntimeError("session lost")

    monkeypatch.setattr(pipeline.predictor, "predict_batch", broken)
    cat = (SAMPLES / "chelsea.jpg").read_bytes()
    out = pipeline.execute([FakeRequest([cat], ["the cat"]), FakeRequest([b""], ["x"])])
    assert [r.error.code for r in out] == ["INTERNAL", "INTERNAL"]
    assert "inference failed: session lost" in out[0].error.message


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
    try:  # a server that closes the connection without answering (killed, stopping)
        try:
            raise ConnectionResetError(104, "Connection reset by peer")
        except ConnectionResetError as reset:
            raise TritonException("connection closed.", None) from reset
    except TritonException as closed:
        assert type(classify(closed, url)) is ServerUnavailableError
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
        ({"drain_s": 0}, "--drain-s"),
        ({"max_queue_delay_us": -1}, "--max-queue-delay-us"),
        ({"backend": "tensorrt"}, "add --device cuda"),
        ({"device": "tensorrt"}, "the backend picks TensorRT"),
        ({"backend": "nope"}, "--backend must be one of"),
        ({"api_token": " "}, "--api-token is empty"),
    ):
        with pytest.raises(ConfigError, match=text):
            ServeOptions(Path("x"), **kw).check()


def test_repository_configs_parse_and_match_the_export(export, tmp_path):
    pytest.importorskip("tritonclient.grpc")
    from dit_deploy.runtime import read_manifest
    from dit_deploy.serving.triton_repo import RepoOptions, parse_config, write_repository

    m = read_manifest(export)
    # --backend python: one model with the served contract, its export copied and valid
    repo = write_repository(
        RepoOptions(export, tmp_path / "repo", backend="python", kind="cpu", runtime="openvino"),
        log=lambda *_: None,
    )
    configs = {p.parent.name: parse_config(p.read_text()) for p in repo.glob("*/config.pbtxt")}
    assert set(configs) == {"dit", "dit_pipeline"} and configs["dit"].platform == "ensemble"
    dit = configs["dit_pipeline"]
    assert dit.backend == "python" and [o.name for o in dit.output] == list(c.OUTPUTS)
    params = {k: v.string_value for k, v in dit.parameters.items()}
    assert params["runtime"] == "openvino" and params["device"] == "cpu"
    assert int(params["max_pixels"]) == c.SERVE_MAX_PIXELS
    assert int(params["max_image_bytes"]) == c.MAX_IMAGE_BYTES
    copy = repo / "dit_pipeline" / "1" / "export"
    assert json.loads((copy / "manifest.json").read_text())["graphs"].keys() == {"dit_fused"}
    Predictor(copy).predict(SAMPLES / "chelsea.jpg", "the cat")
    model_py = (repo / "dit_pipeline" / "1" / "model.py").read_text()
    assert "import Pipeline as TritonPythonModel" in model_py
    # the ensemble over ONNX Runtime: pre- and post-processing carry the manifest's values
    ens = write_repository(
        RepoOptions(export, tmp_path / "ens", backend="onnxruntime", kind="cpu"),
        log=lambda *_: None,
    )
    configs = {p.parent.name: parse_config(p.read_text()) for p in ens.glob("*/config.pbtxt")}
    pre = configs["dit_preprocess"]
    dims = {o.name: list(o.dims) for o in pre.output}
    assert dims == {
        "image": [3, m.input_size, m.input_size],
        "input_ids": [m.max_tokens],
        "attention_mask": [m.max_tokens],
        "LETTERBOX": [7],
    }
    assert int(pre.parameters["max_pixels"].string_value) == c.SERVE_MAX_PIXELS
    post = configs["dit_postprocess"]
    assert float(post.parameters["mask_threshold"].string_value) == m.mask_threshold
    for model in ("dit_preprocess", "dit_postprocess"):
        text = (ens / model / "1" / "model.py").read_text()
        assert "from dit_deploy.serving.triton_models import" in text
    with pytest.raises(Exception, match="does not parse"):
        parse_config('name: "x"\nmax_batch_size: "eight"\n')


def test_batching_policy_per_device():
    cpu = batching_policy("cpu", cores=4)
    assert (cpu.instances, cpu.threads, cpu.max_queue_delay_us) == (4, 1, 0)
    gpu = batching_policy("cuda")
    assert (gpu.instances, gpu.max_queue_delay_us) == (2, 2000) and "not yet measured" in gpu.why
    own = ServeOptions(Path("x"), instances=1).policy()
    assert own.instances == 1 and own.why == "from the command line"
    assert own.threads >= 1 and own.max_queue_delay_us == 0


def test_serve_runs_tritonserver_with_open_statistics_unless_a_token_is_set(tmp_path):
    from dit_deploy.serving.server import tritonserver_args

    args = tritonserver_args(ServeOptions(Path("x")), tmp_path / "repo", tmp_path / "log")
    assert f"--model-repository={tmp_path / 'repo'}" in args
    assert "--strict-readiness=true" in args and "--http-address=127.0.0.1" in args
    assert not any("restricted" in a for a in args)  # perf_analyzer needs no secret
    prefix = f"dit_deploy_serve_{os.getpid()}_"  # its shared memory is named after this process
    assert f"--backend-config=python,shm-region-prefix-name={prefix}" in args
    args = tritonserver_args(
        ServeOptions(Path("x"), host="0.0.0.0", api_token="s3"), tmp_path, tmp_path / "l"
    )
    apis = "model-repository,statistics,trace,logging"
    assert f"--http-restricted-api={apis}:dit-api-token=s3" in args
    assert f"--grpc-restricted-protocol={apis}:dit-api-token=s3" in args


def test_perf_data_is_what_tritonclient_serializes(tmp_path):
    import base64

    from tritonclient.utils import deserialize_bytes_tensor

    from dit_deploy.errors import InputError
    from dit_deploy.serving.perf_data import write_perf_input_data

    cat = (SAMPLES / "chelsea.jpg").read_bytes()
    out = write_perf_input_data([(cat, "the cat"), (cat, "café")], tmp_path / "load.json")
    data = json.loads(out.read_text())["data"]
    assert len(data) == 2
    for entry, text in zip(data, ("the cat", "café"), strict=True):
        assert entry["IMAGE"]["shape"] == [1] and entry["TEXT"]["shape"] == [1]
        image = deserialize_bytes_tensor(base64.b64decode(entry["IMAGE"]["content"]["b64"]))
        assert list(image) == [cat]
        words = deserialize_bytes_tensor(base64.b64decode(entry["TEXT"]["content"]["b64"]))
        assert list(words) == [text.encode()]
    with pytest.raises(InputError, match="pair 1: IMAGE"):
        write_perf_input_data([(cat, "a"), (b"junk", "b")], tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()


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


def test_readiness_probe_reads_a_non_http_listener_as_not_ready():
    """Another server's gRPC (HTTP/2) on the HTTP port: not ready, never a traceback."""
    import socket
    import threading

    from dit_deploy.serving.server import _ready

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def answer() -> None:
        conn, _ = listener.accept()
        conn.recv(1024)
        conn.sendall(b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x04\x00\x40\x00\x00\r\n\r\n")
        conn.close()

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        assert _ready(f"http://127.0.0.1:{listener.getsockname()[1]}") is False
    finally:
        thread.join(10)
        listener.close()


def test_pipeline_budget_is_per_request_not_per_image(export, monkeypatch):
    """Rows each under the budget but over it together are refused before decoding."""
    cat = (SAMPLES / "chelsea.jpg").read_bytes()  # 451 x 300 = 135300 pixels
    by_pixels = _pipeline(export, monkeypatch, max_pixels="200000")
    one, two = by_pixels.execute(
        [FakeRequest([cat], ["the cat"]), FakeRequest([cat, cat], ["the cat", "the dog"])]
    )
    assert one.error is None and two.outputs == {} and two.error.code == "INVALID_ARG"
    assert "2 images have 270600 pixels together" in two.error.message
    assert "max_pixels of 200000" in two.error.message
    by_bytes = _pipeline(export, monkeypatch, max_image_bytes=str(len(cat) + 10))
    one, two = by_bytes.execute(
        [FakeRequest([cat], ["the cat"]), FakeRequest([cat, cat], ["the cat", "the dog"])]
    )
    assert one.error is None and two.error.code == "INVALID_ARG"
    assert f"2 images have {2 * len(cat)} bytes together" in two.error.message


def test_stale_shared_memory_of_dead_serve_processes_is_removed(tmp_path):
    import subprocess

    from dit_deploy.serving.server import remove_stale_shm, shm_prefix

    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid no process has now
    names = [f"{shm_prefix(gone.pid)}a", f"{shm_prefix(os.getppid())}b", f"{shm_prefix()}c",
             "triton_python_backend_shm_region_d", "dit_deploy_serve_x_e"]  # fmt: skip
    for name in names:
        (tmp_path / name).write_bytes(b"\0")
    assert remove_stale_shm(tmp_path) == 1  # only the dead process's
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:])
    assert remove_stale_shm(tmp_path, own=True) == 1  # this process's, once its server is gone
    assert not (tmp_path / names[2]).exists() and (tmp_path / names[1]).exists()


def test_a_public_bind_without_a_token_is_warned_about():
    from dit_deploy.serving.server import public_bind_warning

    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert public_bind_warning(ServeOptions(Path("x"), host=host)) is None
    for host in ("0.0.0.0", "::", "10.1.2.3", "myhost"):
        assert "--api-token SECRET" in public_bind_warning(ServeOptions(Path("x"), host=host))
    assert public_bind_warning(ServeOptions(Path("x"), host="0.0.0.0", api_token="s")) is None
