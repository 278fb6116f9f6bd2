"""The C++ runtime (cpp/) == the Python runtime: same tokens, same input tensor, same masks.

Builds cpp/ into ``build/`` (or reuses it; ``DIT_CPP_BUILD`` points elsewhere) with CMake,
Release, ``-j2``, runs its ctest suite, then compares, for both layouts (fused and split):

- token ids, masks, tokens and errors of ``dit_tokenize`` vs ``WordPieceTokenizer`` on a corpus
  of tricky strings with the real 30522-entry BERT vocabulary;
- the (B, 3, S, S) image tensor of ``dit_infer --dump-input`` vs ``preprocess_batch`` (exact);
- masks of ``dit_infer`` vs ``Predictor.predict_batch`` (IoU >= 0.999) and scores;
- the same for the FP16 and INT8 graphs of ``export/quantize.py`` (``--precision``), on the
  bundled ``dit-tiny-synthetic`` model exported in both layouts.

Skipped with the reason when CMake, a compiler or the C++ dependencies are missing
(``bash scripts/install_cpp_deps.sh`` installs them); ``DIT_REQUIRE_CPP=1`` turns that skip into
a failure, for CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import unicodedata
from pathlib import Path

import numpy as np
import PIL
import pytest
from gpu_boundary import gpu_boundary
from PIL import Image

from dit_deploy.preprocess import preprocess_batch
from dit_deploy.tokenizer import WordPieceTokenizer

ROOT = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("DIT_CPP_BUILD", ROOT / "build"))
FIXTURES = Path(__file__).parent / "fixtures"
REQUIRE = os.environ.get("DIT_REQUIRE_CPP") == "1"


def _unavailable(reason: str):
    if REQUIRE:
        pytest.fail(f"DIT_REQUIRE_CPP=1 but the C++ runtime cannot be built: {reason}")
    pytest.skip(reason)


def _run(cmd, timeout=300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def cpp_build() -> Path:
    """Configure (once) and build cpp/; skip with the reason when the toolchain is missing."""
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            _unavailable(f"{tool} not found; run: bash scripts/install_cpp_deps.sh")
    nice = ["nice", "-n", "10"] if shutil.which("nice") else []
    if not (BUILD / "CMakeCache.txt").is_file():
        cfg = _run(
            ["cmake", "-S", str(ROOT / "cpp"), "-B", str(BUILD), "-DCMAKE_BUILD_TYPE=Release"]
        )
        if cfg.returncode != 0:
            shutil.rmtree(BUILD / "CMakeFiles", ignore_errors=True)
            (BUILD / "CMakeCache.txt").unlink(missing_ok=True)
            last = [ln for ln in (cfg.stderr + cfg.stdout).splitlines() if ln.strip()]
            _unavailable(
                "C++ dependencies missing (bash scripts/install_cpp_deps.sh): "
                + " ".join(last[-6:])[:600]
            )
    build = _run([*nice, "cmake", "--build", str(BUILD), "-j2"], timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return BUILD


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    """The tiny authors' checkpoint exported in both layouts (input 96)."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from dit_deploy.cli import verb_main

    main = verb_main("export")

    out = tmp_path_factory.mktemp("cpp_export") / "tiny"
    rc = main(
        [
            "--checkpoint", str(FIXTURES / "authors" / "layer_wise.pth"),
            "--config", "layer_wise_tiny",
            "--vocab", str(FIXTURES / "tiny_vocab.txt"),
            "--out", str(out), "--layout", "both", "--overwrite",
        ]
    )  # fmt: skip
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def quantized_export(tmp_path_factory) -> Path:
    """dit-tiny-synthetic in both layouts plus its FP16 and INT8 graphs, made as the README says:

    python export/to_onnx.py --pretrained dit-tiny-synthetic --out DIR --layout both
    python export/quantize.py DIR --precision fp16 --eval-size 8 --quiet
    python export/quantize.py DIR --precision int8 --calib-size 8 --eval-size 8 --quiet

    (in-process, synthetic calibration/eval pairs, no latency runs, a private range cache).
    """
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxconverter_common")
    from dit_deploy.cli import verb_main

    export_main, quantize_main = verb_main("export"), verb_main("quantize")

    root = tmp_path_factory.mktemp("cpp_quantized")
    out = root / "synthetic"
    rc = export_main(["--pretrained", "dit-tiny-synthetic", "--out", str(out), "--layout", "both"])
    assert rc == 0
    common = ["--eval-size", "8", "--latency-runs", "0", "--cache-dir", str(root / "cache")]
    assert quantize_main([str(out), "--precision", "fp16", *common, "--quiet"]) == 0
    rc = quantize_main([str(out), "--precision", "int8", "--calib-size", "8", *common, "--quiet"])
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["precisions"]) == ["fp16", "int8"]
    return out


# --------------------------------------------------------------------------- ctest
def test_ctest_suite(cpp_build: Path) -> None:
    r = _run(["ctest", "--test-dir", str(cpp_build), "--output-on-failure"], timeout=120)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "100% tests passed" in r.stdout
    for table_test in ("test_engine_compat", "test_precision_compat", "test_ort_options",
                       "test_device_buffer"):  # fmt: skip
        assert f" {table_test} " in r.stdout, table_test


# ------------------------------------------------------------------------- tokens
CORPUS = [
    "man in the red shirt",
    "Man In The RED Shirt",
    "café on the left",
    "naïve dog, near the Ångström sign",
    "Crème Brûlée ON the TABLE",
    "São Paulo façade",
    "the guy!!! on the left???",
    "...left-most... person",
    "(red) [blue] {green} <yellow>",
    "$5 bill & 10% off #1 @home ^_^ `quote` ~tilde",
    "3.14 pies and 2,000 cats; 1/2 visible, player #23 in 4k",
    "man's hat and the dogs' bowls, don't pick the 'other' one",
    "“curly quotes” and ‘single’ ones — dash – en",
    "zxqvbnmplk flibbertigibbet unaffable antidisestablishmentarianism",
    "the 😀 emoji guy 👍🏽 🚗🚗🚗",
    "中文 的 猫 on the left 猫猫猫 and 犬",
    "日本語のテキスト カタカナ ひらがな 한국어 텍스트",
    "tab\tseparated\twords new\nline\r\nwords",
    "control\x00chars\x07here\x1b[0m",
    "zero\u200bwidth space, non\u00a0breaking\u2003spaces, line\u2028separator\u2029para",
    "replacement \ufffd char and private \ue000 use",
    "a" * 101,
    "a" * 100,
    "prefix " + "b" * 150 + " suffix",
    "the man wearing a red shirt and blue jeans standing next to the woman with the "
    "umbrella near the bus stop on the left side of the road",
    "supercalifragilisticexpialidocious " * 5,
    "ΑΘΗΝΑ Ελληνικά ΣΟΦΟΣ ΟΔΟΣ. Σ ΣΑ",
    "Москва красная площадь",
    "İstanbul ıi ŞĞ",
    "e\u0301 combining acute and a\u0308 and \u0301 alone",
    "ﬁne ligature and ½ fraction and ² superscript ℌ",
    "arabic كتاب and hebrew ספר and thai ภาษาไทย",
    "   leading and trailing spaces   ",
    "x",
    "?",
    "a.b.c email@example.com http://x.y/z?q=1",
    "Kelvin \u212a and Angstrom \u212b",
    "shaking face \U0001fae8 (Unicode 15) and \U00031350 (CJK ext. H)",
    "\U0002a700 cjk ext c \U0002f800 compat",
    "",
    "   \t\n  ",
    "\x00\x07",
    "x" * 1001,
]


def _python_encodings(tok: WordPieceTokenizer, texts: list[str]) -> list[dict]:
    out = []
    for t in texts:
        try:
            e = tok.encode(t)
        except Exception as exc:  # the C++ side reports the same class name
            out.append({"error": type(exc).__name__})
            continue
        out.append(
            {
                "input_ids": e.input_ids.tolist(),
                "attention_mask": e.attention_mask.tolist(),
                "tokens": e.tokens,
                "truncated": e.truncated,
            }
        )
    return out


def _cpp_encodings(build: Path, args: list[str], texts: list[str]) -> list[dict]:
    r = _run([str(build / "dit_tokenize"), *args], input=json.dumps(texts), timeout=60)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    return [{"error": g["error"]} if "error" in g else g for g in got]


@pytest.mark.parametrize("max_tokens", [20, 8])
def test_tokens_match_python_on_real_vocab(cpp_build: Path, minilm_dir: Path, max_tokens) -> None:
    vocab = minilm_dir / "vocab.txt"
    tok = WordPieceTokenizer.from_vocab_file(vocab, max_tokens=max_tokens)
    args = ["--vocab", str(vocab), "--max-tokens", str(max_tokens)]
    args += ["--unicode-version", unicodedata.unidata_version]
    want = _python_encodings(tok, CORPUS)
    got = _cpp_encodings(cpp_build, args, CORPUS)
    bad = [(t, w, g) for t, w, g in zip(CORPUS, want, got, strict=True) if w != g]
    assert not bad, "\n".join(f"{t!r}:\n  py  {w}\n  cpp {g}" for t, w, g in bad[:5])


def test_tokens_match_python_on_export_vocab(cpp_build: Path, export_dir: Path) -> None:
    tok = WordPieceTokenizer.from_vocab_file(export_dir / "vocab.txt")
    args = ["--export", str(export_dir), "--unicode-version", unicodedata.unidata_version]
    assert _cpp_encodings(cpp_build, args, CORPUS) == _python_encodings(tok, CORPUS)


# ------------------------------------------------------------------- images + masks
def _pattern(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth image with a few shapes: enough structure for the tiny model's masks to vary."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack(
        [
            (x * 255 / max(w - 1, 1)),
            (y * 255 / max(h - 1, 1)),
            128 + 100 * np.sin((x + y) / 7.0),
        ],
        axis=-1,
    )
    for _ in range(3):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(3, max(4, min(h, w) // 3))
        img[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("cpp_images")
    paths = []

    def save(name: str, im: Image.Image, **kw) -> None:
        p = d / name
        im.save(p, **kw)
        paths.append(p)

    save("rgb.jpg", Image.fromarray(_pattern(120, 200, 0)), quality=90)
    save("big.jpg", Image.fromarray(_pattern(480, 640, 1)), quality=85)
    save(
        "rgba.png", Image.fromarray(np.dstack([_pattern(150, 64, 2), _pattern(150, 64, 3)[..., 0]]))
    )
    save("gray.png", Image.fromarray(_pattern(90, 90, 4)[..., 0]))
    save("gray.jpg", Image.fromarray(_pattern(77, 130, 5)[..., 1]), quality=92)
    g16 = (_pattern(70, 50, 6)[..., 0].astype(np.uint16) * 257 + 77).astype(np.uint16)
    save("gray16.png", Image.fromarray(g16))
    pal = Image.fromarray(_pattern(80, 120, 7)).convert("P", palette=Image.ADAPTIVE, colors=32)
    save("palette.png", pal, transparency=3)
    save("bits.png", Image.fromarray(_pattern(33, 47, 8)[..., 0] > 128).convert("1"))
    save("tiny.png", Image.fromarray(_pattern(3, 5, 9)))
    save("cmyk.jpg", Image.fromarray(_pattern(60, 90, 10)).convert("CMYK"), quality=90)
    for orientation in range(2, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        save(
            f"exif{orientation}.jpg",
            Image.fromarray(_pattern(50, 80, 10 + orientation)),
            exif=exif,
            quality=90,
        )
    return paths


TEXTS = ["the man on the left", "one cat", "Crème brûlée at the top", "the 2nd-left one, 3 of 4"]


def _cpp_infer(build, export_dir, pairs, out_dir, layout, extra=()) -> dict:
    args = [str(build / "dit_infer"), str(export_dir)]
    for img, text in pairs:
        args += [str(img), text]
    args += ["--json", "--out-dir", str(out_dir), "--layout", layout, *extra]
    if int(PIL.__version__.split(".")[0]) < 13:  # Pillow 10-12 resized horizontally first
        args.append("--pillow-legacy-resize")
    r = _run(args, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_input_tensor_matches_python(cpp_build, export_dir, images, tmp_path) -> None:
    manifest = json.loads((export_dir / "manifest.json").read_text())
    size = manifest["input_size"]
    pairs = [(p, TEXTS[i % len(TEXTS)]) for i, p in enumerate(images)]
    dump = tmp_path / "input.f32"
    doc = _cpp_infer(cpp_build, export_dir, pairs, tmp_path, "fused", ["--dump-input", str(dump)])
    ours = np.fromfile(dump, dtype=np.float32).reshape(len(pairs), 3, size, size)
    want, boxes = preprocess_batch(
        [p for p, _ in pairs], size, manifest["pixel_mean"], manifest["pixel_std"]
    )
    for i, (p, _) in enumerate(pairs):
        assert doc["results"][i]["letterbox"] == boxes[i].to_dict(), p.name
        diff = float(np.abs(ours[i] - want[i]).max())
        assert diff <= 1e-6, f"{p.name}: input tensor max |diff| {diff}"


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _compare_masks(
    build, export_dir, pairs, out_dir, layout, precision="fp32", backend="onnxruntime"
) -> dict:
    """dit_infer vs Predictor.predict_batch on `pairs` (same backend): IoU >= 0.999 per mask,
    scores within 1e-4; returns {"min_iou", "max_score_diff", "masks", "nonempty"}."""
    from dit_deploy.runtime import Predictor

    extra = [] if precision == "fp32" else ["--precision", precision]
    device = "cpu"
    if backend == "tensorrt":
        extra, device = [*extra, "--backend", "tensorrt", "--device", "cuda"], "cuda"
    doc = _cpp_infer(build, export_dir, pairs, out_dir, layout, extra)
    predictor = Predictor(
        export_dir, layout=layout, precision=precision, backend=backend, device=device
    )
    want = predictor.predict_batch([(str(p), t) for p, t in pairs])
    assert doc["layout"] == layout
    assert doc["precision"] == precision
    low, ious, diffs = [], [], []
    for i, ((p, t), w) in enumerate(zip(pairs, want, strict=True)):
        got = np.asarray(Image.open(out_dir / f"mask_{i}.png")) > 0
        assert got.shape == w.mask.shape, p.name
        iou = _iou(got, w.mask)
        ious.append(iou)
        if iou < 0.999:
            low.append(f"{p.name} {t!r}: IoU {iou:.5f}")
        diffs.append(abs(doc["results"][i]["score"] - w.score))
        assert diffs[-1] < 1e-4, (p.name, t, precision)
    assert not low, low
    nonempty = sum(r["area"] > 0 for r in doc["results"])
    assert nonempty > 0  # the comparison is not all-empty
    return {
        "graphs": doc["graphs"],
        "min_iou": min(ious),
        "max_score_diff": max(diffs),
        "masks": len(ious),
        "nonempty": nonempty,
    }


@pytest.mark.parametrize("layout", ["fused", "split"])
def test_masks_match_python(cpp_build, export_dir, images, tmp_path, layout) -> None:
    pairs = [(p, TEXTS[(i + j) % len(TEXTS)]) for i, p in enumerate(images) for j in range(2)]
    _compare_masks(cpp_build, export_dir, pairs, tmp_path, layout)


@pytest.mark.parametrize("layout", ["fused", "split"])
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_masks_match_python_per_precision(
    cpp_build, quantized_export, images, tmp_path, precision, layout
) -> None:
    """`dit_infer --precision P` runs <role>.P.onnx and agrees with Predictor(precision=P)."""
    pairs = [(p, TEXTS[i % len(TEXTS)]) for i, p in enumerate(images)]
    stats = _compare_masks(cpp_build, quantized_export, pairs, tmp_path, layout, precision)
    roles = ["dit_fused"] if layout == "fused" else ["dit_encoder", "mask_decoder", "text_encoder"]
    assert stats["graphs"] == {r: f"{r}.{precision}.onnx" for r in roles}
    print(f"{precision} {layout}: {stats}")


# ------------------------------------------------------------------------ errors
def test_cli_errors_are_clear_and_do_not_crash(cpp_build, export_dir, tmp_path) -> None:
    infer = str(cpp_build / "dit_infer")
    good = tmp_path / "ok.png"
    Image.fromarray(_pattern(20, 30, 0)).save(good)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(good.read_bytes()[:8] + b"\x00" * 50)
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    broken = tmp_path / "broken_export"
    shutil.copytree(export_dir, broken)
    (broken / "manifest.json").write_text('{"manifest_version": 1, "graphs": ')
    cases = [
        ([str(export_dir), str(corrupt), "x"], 4, "cannot decode"),
        ([str(export_dir), str(truncated), "x"], 4, "truncated"),
        ([str(export_dir), str(tmp_path / "missing.png"), "x"], 4, "not found"),
        ([str(export_dir), str(good), " \t "], 4, "empty"),
        ([str(broken), str(good), "x"], 3, "not valid JSON"),
        ([str(tmp_path / "nope"), str(good), "x"], 3, "not found"),
        ([str(export_dir), str(good), "x", "--layout", "sideways"], 3, "--layout sideways"),
        (
            [str(export_dir), str(good), "x", "--precision", "int8"],
            3,
            f"{export_dir} has no int8 graphs (has: fp32); create them with: "
            f"dit-deploy quantize {export_dir} --precision int8",
        ),
        ([str(export_dir), str(good), "x", "--precision", "bf16"], 2, "fp32, fp16 or int8"),
        ([str(export_dir), str(good), "x", "--device", "cuda"], 5, "CUDAExecutionProvider"),
        ([str(export_dir), str(good)], 2, "usage"),
    ]
    for args, code, needle in cases:
        r = _run([infer, *args], timeout=60)
        assert r.returncode == code, (args, r.returncode, r.stderr)
        assert needle in r.stderr, (args, r.stderr)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_engines_in_cpp_match_the_python_tensorrt_backend(
    quantized_export, images, tmp_path, precision
) -> None:
    """``dit_infer --backend tensorrt`` (a build with -DDIT_WITH_TENSORRT=ON, given as
    $DIT_CPP_TRT_BUILD by scripts/gpu_check.sh) runs the engines Python built, and its masks
    match the Python TensorRT backend's."""
    from dit_deploy.engines import EngineOptions, build_engines

    export = tmp_path / "export"
    shutil.copytree(quantized_export, export)
    options = EngineOptions(export, (precision,), max_batch=8)
    pairs = [(p, TEXTS[i % len(TEXTS)]) for i, p in enumerate(images)]
    gpu_boundary()
    if not os.environ.get("DIT_CPP_TRT_BUILD"):
        pytest.skip("set DIT_CPP_TRT_BUILD to a cmake build of cpp/ with -DDIT_WITH_TENSORRT=ON")
    build = Path(os.environ["DIT_CPP_TRT_BUILD"])
    assert (build / "dit_infer").is_file(), f"no dit_infer in DIT_CPP_TRT_BUILD={build}"
    build_engines(options)
    out = tmp_path / "masks"
    out.mkdir()
    for layout in ("fused", "split"):
        stats = _compare_masks(build, export, pairs, out, layout, precision, backend="tensorrt")
        print(f"C++ TensorRT {precision} {layout}: {stats}")
