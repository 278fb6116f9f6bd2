"""load_image conversions and errors; letterbox against a direct PIL + numpy computation."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dit_deploy.errors import ImageError, InputError
from dit_deploy.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Letterbox,
    letterbox,
    load_image,
    preprocess_batch,
)

RNG = np.random.default_rng(0)


def _rgb(h: int, w: int) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _reference_letterbox(img: np.ndarray, size: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """Independent, straightforward restatement of the authors' eval transform."""
    h, w = img.shape[:2]
    r = size / max(h, w)
    nw, nh = round(w * r), round(h * r)
    resized = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
    x = resized.astype(np.float32) / 255.0
    for c in range(3):
        x[..., c] = (x[..., c] - np.float32(IMAGENET_MEAN[c])) / np.float32(IMAGENET_STD[c])
    top, left = round((size - nh) / 2 - 0.1), round((size - nw) / 2 - 0.1)
    out = np.zeros((3, size, size), np.float32)
    for c in range(3):
        out[c, top : top + nh, left : left + nw] = x[..., c]
    return out, (h, w, nh, nw, top, left)


# ------------------------------------------------------------------- letterbox
@pytest.mark.parametrize(
    ("h", "w", "size"),
    [
        (480, 640, 512),
        (640, 427, 512),
        (333, 333, 512),
        (7, 1001, 512),
        (1001, 3, 512),
        (512, 512, 512),
        (300, 200, 64),
        (31, 97, 64),
        (120, 5, 32),
    ],
)
def test_letterbox_matches_reference(h: int, w: int, size: int) -> None:
    img = _rgb(h, w)
    x, lb = letterbox(img, size)
    ref, (rh, rw, nh, nw, top, left) = _reference_letterbox(img, size)
    assert x.dtype == np.float32 and x.shape == (3, size, size)
    assert lb == Letterbox(rh, rw, nh, nw, top, left, size)
    assert max(lb.new_h, lb.new_w) == size
    np.testing.assert_array_equal(x, ref)


def test_letterbox_rounding_of_top_left() -> None:
    # size 10, image 7x10 -> dh = 3 -> top = round(1.4) = 1; 9x10 -> dh = 1 -> round(0.4) = 0
    _, lb = letterbox(_rgb(7, 10), 10)
    assert (lb.new_h, lb.new_w, lb.top, lb.left) == (7, 10, 1, 0)
    _, lb = letterbox(_rgb(9, 10), 10)
    assert (lb.top, lb.left) == (0, 0)
    _, lb = letterbox(_rgb(6, 10), 10)  # dh = 4 -> round(1.9) = 2
    assert lb.top == 2
    _, lb = letterbox(_rgb(10, 5), 10)  # dw = 5 -> round(2.4) = 2
    assert (lb.top, lb.left) == (0, 2)


def test_padding_is_zero_after_normalisation() -> None:
    white = np.full((50, 100, 3), 255, np.uint8)
    x, lb = letterbox(white, 100)
    assert (lb.top, lb.new_h) == (25, 50)
    assert (x[:, :25] == 0).all() and (x[:, 75:] == 0).all()
    expected = (1 - np.float32(IMAGENET_MEAN[0])) / np.float32(IMAGENET_STD[0])
    np.testing.assert_allclose(x[0, 25:75], expected, rtol=1e-6)
    black = np.zeros((50, 100, 3), np.uint8)
    xb, _ = letterbox(black, 100)
    assert (xb[:, 30] < 0).all()  # black is NOT zero once normalised, the pad is


def test_no_resize_when_size_matches() -> None:
    img = _rgb(512, 300)
    x, lb = letterbox(img, 512)
    assert (lb.new_h, lb.new_w) == (512, 300)
    manual = (img.astype(np.float32) / np.float32(255) - np.float32(IMAGENET_MEAN)) / np.float32(
        IMAGENET_STD
    )
    np.testing.assert_array_equal(x[:, :, lb.left : lb.left + 300], manual.transpose(2, 0, 1))


def test_letterbox_dict_round_trip() -> None:
    lb = Letterbox(480, 640, 384, 512, 64, 0, 512)
    assert Letterbox.from_dict(lb.to_dict()) == lb
    with pytest.raises(InputError, match="lacks the key"):
        Letterbox.from_dict({"orig_h": 1})


def test_preprocess_batch(tmp_path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(_rgb(40, 60)).save(path)
    batch, boxes = preprocess_batch([path, _rgb(30, 10), Image.new("L", (5, 5), 7)], size=32)
    assert batch.shape == (3, 3, 32, 32) and batch.dtype == np.float32
    assert [(b.orig_h, b.orig_w) for b in boxes] == [(40, 60), (30, 10), (5, 5)]


# ------------------------------------------------------------------- conversions
def test_array_inputs() -> None:
    gray = RNG.integers(0, 256, (4, 5), dtype=np.uint8)
    np.testing.assert_array_equal(load_image(gray), np.repeat(gray[:, :, None], 3, 2))
    np.testing.assert_array_equal(load_image(gray[:, :, None]), np.repeat(gray[:, :, None], 3, 2))
    rgba = RNG.integers(0, 256, (4, 5, 4), dtype=np.uint8)
    np.testing.assert_array_equal(load_image(rgba), rgba[:, :, :3])
    u16 = np.array([[0, 255, 256, 65535]], np.uint16)
    assert load_image(u16)[0, :, 0].tolist() == [0, 0, 1, 255]
    f = np.array([[0.0, 0.5, 1.0, 0.002]], np.float64)
    assert load_image(f)[0, :, 1].tolist() == [0, 128, 255, 1]
    b = np.array([[True, False]])
    assert load_image(b)[0, :, 2].tolist() == [255, 0]
    out = load_image(_rgb(3, 3))
    assert out.dtype == np.uint8 and out.shape == (3, 3, 3) and out.flags.c_contiguous


def test_gray_png(tmp_path) -> None:
    gray = RNG.integers(0, 256, (6, 7), dtype=np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    np.testing.assert_array_equal(load_image(tmp_path / "g.png"), np.repeat(gray[..., None], 3, 2))
    Image.fromarray(gray > 128).save(tmp_path / "bw.png")  # mode '1'
    assert set(np.unique(load_image(str(tmp_path / "bw.png")))) <= {0, 255}


def test_rgba_and_la_drop_alpha(tmp_path) -> None:
    rgba = RNG.integers(0, 256, (6, 7, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent: dropping alpha keeps the colours, no compositing
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), rgba[..., :3])
    la = Image.fromarray(rgba[..., :2].copy(), "LA")
    np.testing.assert_array_equal(load_image(la), np.repeat(rgba[..., :1], 3, 2))


def test_palette_png(tmp_path) -> None:
    rgb = _rgb(8, 8)
    pal = Image.fromarray(rgb).quantize(colors=16)
    pal.save(tmp_path / "p.png")
    expected = np.asarray(pal.convert("RGB"))
    np.testing.assert_array_equal(load_image(tmp_path / "p.png"), expected)


def test_16bit_png_shifts_by_8(tmp_path) -> None:
    a = np.array([[0, 255, 256, 4660, 65535]], np.uint16)
    Image.fromarray(a).save(tmp_path / "d.png")
    with Image.open(tmp_path / "d.png") as im:
        assert im.mode.startswith("I")
    assert load_image(tmp_path / "d.png")[0, :, 0].tolist() == [0, 0, 1, 18, 255]


def test_float_and_cmyk_tiff(tmp_path) -> None:
    f = np.array([[0.0, 0.25, 1.0]], np.float32)
    Image.fromarray(f, "F").save(tmp_path / "f.tif")
    assert load_image(tmp_path / "f.tif")[0, :, 0].tolist() == [0, 64, 255]
    cmyk = Image.new("CMYK", (3, 2), (0, 255, 255, 0))  # pure red
    cmyk.save(tmp_path / "c.tif")
    assert load_image(tmp_path / "c.tif")[0, 0].tolist() == [255, 0, 0]
    ycc = Image.new("RGB", (3, 2), (10, 200, 30)).convert("YCbCr")
    np.testing.assert_allclose(load_image(ycc)[0, 0], [10, 200, 30], atol=3)


def test_exif_orientation_6_is_applied(tmp_path) -> None:
    # A 20 x 40 (h x w) image: left half red, right half blue. Orientation 6 = the viewer
    # rotates 90 degrees clockwise -> 40 x 20, red on top.
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "r.jpg", exif=exif, quality=95)
    with Image.open(tmp_path / "r.jpg") as opened:
        raw = np.asarray(opened.convert("RGB"))
        out_pil = load_image(opened)
    out = load_image(tmp_path / "r.jpg")
    assert out.shape == (40, 20, 3)
    np.testing.assert_array_equal(out, np.rot90(raw, k=-1))
    assert out[5, 10, 0] > 200 and out[35, 10, 2] > 200
    np.testing.assert_array_equal(out_pil, out)


# ------------------------------------------------------------------- errors
def test_missing_file(tmp_path) -> None:
    with pytest.raises(ImageError, match="image file not found: .*nope.jpg"):
        load_image(tmp_path / "nope.jpg")


def test_text_bytes_in_jpg(tmp_path) -> None:
    (tmp_path / "fake.jpg").write_text("this is not an image\n")
    with pytest.raises(ImageError, match=r"cannot decode image file .*fake\.jpg"):
        load_image(tmp_path / "fake.jpg")


def test_truncated_png(tmp_path) -> None:
    buf = io.BytesIO()
    Image.fromarray(_rgb(64, 64)).save(buf, format="PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match=r"cannot decode .*cut\.png.*truncated"):
        load_image(tmp_path / "cut.png")


@pytest.mark.parametrize("shape", [(4, 4, 2), (4,), (2, 4, 4, 3), (4, 4, 5)])
def test_bad_array_shape(shape) -> None:
    with pytest.raises(ImageError, match=r"shape .*expected \(H, W\)"):
        load_image(np.zeros(shape, np.uint8))


def test_bad_array_dtype_and_range() -> None:
    with pytest.raises(ImageError, match=r"values in \[3.0, 3.0\].*must lie in \[0, 1\]"):
        load_image(np.full((4, 4, 3), 3.0, np.float32))
    with pytest.raises(ImageError, match="NaN"):
        load_image(np.full((4, 4), np.nan))
    with pytest.raises(ImageError, match="dtype int64"):
        load_image(np.zeros((4, 4, 3), np.int64))


def test_zero_size() -> None:
    with pytest.raises(ImageError, match=r"zero size \(0x0"):
        load_image(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(ImageError, match="zero size"):
        load_image(Image.new("RGB", (0, 0)))


def test_short_side_vanishes() -> None:
    thin = np.zeros((1, 5000, 3), np.uint8)  # 1 * 512 / 5000 = 0.1 -> 0 rows
    with pytest.raises(ImageError, match=r"1x5000 .*rounds to 0 .*512"):
        letterbox(thin, 512)
    with pytest.raises(ImageError, match="rounds to 0"):
        load_image(thin, input_size=512)
    assert load_image(thin).shape == (1, 5000, 3)  # loading alone is fine


def test_max_pixels(tmp_path) -> None:
    Image.fromarray(_rgb(20, 30)).save(tmp_path / "big.png")
    with pytest.raises(ImageError, match="600 pixels, more than max_pixels=500.*larger max_pixels"):
        load_image(tmp_path / "big.png", max_pixels=500)
    with pytest.raises(ImageError, match="max_pixels=100"):
        load_image(_rgb(20, 30), max_pixels=100)
    assert load_image(tmp_path / "big.png", max_pixels=600).shape == (20, 30, 3)


def test_a_decompression_bomb_header_is_a_typed_error(tmp_path) -> None:
    """A 30000 x 30000 PNG header: Pillow refuses it at open with an error outside OSError;
    the Python API and the server both give an ImageError naming it."""
    import struct
    import zlib

    from dit_deploy.serving import contract

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
    (tmp_path / "bomb.png").write_bytes(png)
    with pytest.raises(ImageError, match="decompression-bomb limit"):
        load_image(tmp_path / "bomb.png")
    with pytest.raises(ImageError, match="decompression-bomb limit"):
        contract.decode_image(png, contract.SERVE_MAX_PIXELS, 96)


def test_bad_source_type_and_letterbox_input() -> None:
    with pytest.raises(ImageError, match="cannot load an image from int"):
        load_image(42)
    with pytest.raises(ImageError, match="uint8 RGB"):
        letterbox(np.zeros((4, 4), np.uint8))


def test_only_the_listed_raster_formats_are_opened(tmp_path) -> None:
    """A PostScript header is refused by name, never handed to Ghostscript; GIF and an
    MPO-class JPEG still load, from a path, from bytes and as dataset images alike."""
    from dit_deploy.data.types import load_rgb
    from dit_deploy.errors import DatasetError
    from dit_deploy.serving import contract

    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nshowpage\n"
    (tmp_path / "a.eps").write_bytes(eps)
    with pytest.raises(ImageError, match="JPEG, PNG, WebP, BMP, TIFF or GIF") as info:
        load_image(tmp_path / "a.eps")
    assert "Ghostscript" not in str(info.value)
    with pytest.raises(ImageError, match="send JPEG, PNG, WebP, BMP, TIFF or GIF") as info:
        contract.decode_image(eps, contract.SERVE_MAX_PIXELS, 96)
    assert "Ghostscript" not in str(info.value)
    with pytest.raises(DatasetError, match="cannot be read") as info:
        load_rgb(tmp_path / "a.eps")
    assert "Ghostscript" not in str(info.value)
    ico = io.BytesIO()
    Image.new("RGB", (16, 16)).save(ico, format="ICO")
    with pytest.raises(ImageError, match="not an image file"):
        contract.decode_image(ico.getvalue(), contract.SERVE_MAX_PIXELS, 96)

    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[5:15, 10:20] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "a.gif")
    gif = load_image(tmp_path / "a.gif")
    assert gif.shape == (20, 30, 3) and tuple(gif[10, 15]) == (255, 0, 0)
    assert np.array_equal(load_rgb(tmp_path / "a.gif"), gif)
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    assert load_image(tmp_path / "a.jpg").shape == (20, 30, 3)
    second = Image.fromarray(rgb[::-1].copy())
    Image.fromarray(rgb).save(
        tmp_path / "m.jpg", format="MPO", quality=95, save_all=True, append_images=[second]
    )
    with Image.open(tmp_path / "m.jpg") as im:
        assert im.format == "MPO"  # what phone cameras write
    assert np.array_equal(load_image(tmp_path / "m.jpg"), load_image(tmp_path / "a.jpg"))
