"""The Python API's boundary: every misuse is a typed DITError naming the problem, and what
the manifest records (hashes) is checked on every open, a reopen after close() included."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_export
from PIL import Image

from dit_deploy.errors import ArtifactError, ConfigError, ImageError, InputError, TextError
from dit_deploy.preprocess import load_image
from dit_deploy.runtime import Predictor
from dit_deploy.runtime.export import Export
from dit_deploy.serving.client import DITClient, image_bytes

SAMPLE = Path(__file__).resolve().parents[1] / "dit_deploy" / "assets" / "samples" / "coffee.jpg"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"backend_options": {"bogus": 1}}, r"backend_options \['bogus'\]: the onnxruntime"),
        ({"backend_options": ["x"]}, "backend_options must be a dict"),
        ({"backend": ["onnxruntime"]}, "backend must be a name"),
        ({"precision": None}, "precision must be a name"),
        ({"precision": "FP16"}, "unknown precision 'FP16'; precisions are fp32, fp16, int8"),
        ({"threads": True}, "threads must be a positive integer"),
        ({"threads": 10**6}, "threads must be at most"),
        ({"max_batch": 0}, "max_batch must be a positive integer"),
        ({"device": 0}, "device 0: use cpu"),
        ({"layout": "FUSED"}, "layout 'FUSED': use one of split, fused"),
    ],
)
def test_predictor_arguments_are_checked(tiny_export, kwargs, match):
    with pytest.raises(InputError, match=match):
        Predictor(tiny_export, **kwargs)


def test_an_export_is_a_path_and_integer_likes_are_taken(tiny_export):
    for source in (None, 3):
        with pytest.raises(InputError, match="an export is a directory path"):
            Export.open(source)
    with Predictor(tiny_export, max_batch=np.int64(4), threads=np.int32(1)) as p:
        assert p.max_batch == 4 and type(p.max_batch) is int


def test_a_reopen_after_close_checks_the_hashes_again(tiny_export, tmp_path):
    export = copy_export(tiny_export, tmp_path / "e")
    predictor = Predictor(export)
    first = predictor.predict(SAMPLE, "the cup")
    predictor.close()
    graph = export / "dit_fused.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")
    with pytest.raises(ArtifactError, match="dit_fused.onnx .* changed since it was written"):
        predictor.predict(SAMPLE, "the cup")
    graph.write_bytes(graph.read_bytes()[:-1])
    assert np.array_equal(predictor.predict(SAMPLE, "the cup").mask, first.mask)


def test_a_hash_the_manifest_does_not_record_is_an_error_not_a_skipped_check(tiny_export, tmp_path):
    for part in ("graph", "vocabulary"):
        export = copy_export(tiny_export, tmp_path / part)
        data = json.loads((export / "manifest.json").read_text())
        if part == "graph":
            data["graphs"]["dit_fused"]["sha256"] = ""
        else:
            data["tokenizer"].pop("sha256")
        (export / "manifest.json").write_text(json.dumps(data))
        with pytest.raises(ArtifactError, match="records no sha256 for .* re-export"):
            Predictor(export)
        with Predictor(export, verify=False):  # the documented switch for a trusted file
            pass


def test_load_image_checks_its_keywords():
    with pytest.raises(InputError, match="max_pixels must be a positive integer, got None"):
        load_image(SAMPLE, max_pixels=None)
    with pytest.raises(InputError, match="input_size must be a positive integer, got -4"):
        load_image(SAMPLE, input_size=-4)


def test_client_checks_what_it_sends_before_any_network():
    client = DITClient("http://127.0.0.1:9", timeout_s=1)
    for text in (None, b"the cup", 3):
        with pytest.raises(TextError, match="a referring expression must be a str"):
            client.predict(SAMPLE, text)
    with pytest.raises(TextError, match="not valid Unicode .surrogates not allowed"):
        client.predict(SAMPLE, "the cup \udcff")
    with pytest.raises(InputError, match="pair 0 must be an .image, text. 2-tuple"):
        client.predict_batch([str(SAMPLE), "the cup"])
    with pytest.raises(InputError, match="got NoneType"):
        client.predict_batch(None)
    with pytest.raises(ImageError, match="zero size"):
        image_bytes(np.zeros((0, 0, 3), np.uint8))
    for url in (None, 8000, "http://127.0.0.1:99999", "http://[::1:8000"):
        with pytest.raises(ConfigError, match="must look like http://HOST:PORT"):
            DITClient(url)
    with pytest.raises(ConfigError, match="concurrency must be an integer >= 1"):
        DITClient("http://h:1", concurrency="8")
    with pytest.raises(ConfigError, match="timeout_s must be a number of seconds > 0"):
        DITClient("http://h:1", timeout_s=None)


def test_client_sends_arrays_and_pil_images_as_the_predictor_reads_them(tmp_path):
    """Float arrays in [0, 1], 16-bit arrays and an EXIF-rotated PIL image arrive as the RGB
    that load_image gives in process (so served and in-process masks agree)."""
    rgb = np.random.default_rng(0).integers(0, 256, (20, 60, 3), dtype=np.uint8)
    for array in (rgb / 255.0, rgb.astype(np.uint16) << 8):
        sent = np.asarray(Image.open(io.BytesIO(image_bytes(array))))
        assert np.array_equal(sent, load_image(array))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    Image.fromarray(rgb).save(tmp_path / "r.jpg", exif=exif, quality=95)
    with Image.open(tmp_path / "r.jpg") as pil:
        sent = np.asarray(Image.open(io.BytesIO(image_bytes(pil))))
    assert sent.shape == (60, 20, 3)
    assert np.array_equal(sent, load_image(tmp_path / "r.jpg"))
