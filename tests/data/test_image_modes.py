"""Every image mode Pillow opens comes out RGB with the right values: through the download guard
(sanitize_image on file bytes), the shard reader and to_rgb itself. 16-bit greyscale used to come
out saturated white and count as a success."""
from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from hddm_core.data.image_rgb import exif_upright, to_rgb
from hddm_core.data.safe_fetch import FetchGuard, sanitize_image
from hddm_core.data.shards import iter_tar_samples

GREY = 0.25  # a quarter-grey on every scale: 8-bit 64, 16-bit 16384, float 0.25
WHITE = (255, 255, 255)


def _grey16(mode: str) -> Image.Image:
    return Image.frombytes(mode, (4, 2), np.full((2, 4), 16384, "<u2" if mode != "I;16B" else ">u2").tobytes())


def case(mode: str) -> tuple[Image.Image, tuple]:
    """(image in mode, the RGB value every pixel must have)."""
    if mode in ("I;16", "I;16B"):
        return _grey16(mode), (64, 64, 64)
    if mode == "I":
        return Image.fromarray(np.full((2, 4), 16384, np.int32), "I"), (64, 64, 64)
    if mode == "F":
        return Image.fromarray(np.full((2, 4), GREY, np.float32), "F"), (64, 64, 64)
    if mode == "1":
        return Image.new("1", (4, 2), 1), WHITE
    if mode == "L":
        return Image.new("L", (4, 2), 64), (64, 64, 64)
    if mode == "LA":
        return Image.new("LA", (4, 2), (0, 0)), WHITE  # fully transparent black -> the white background
    if mode == "P":
        im = Image.new("P", (4, 2), 1)
        im.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
        return im, (10, 200, 30)
    if mode == "P+transparency":
        im = Image.new("P", (4, 2), 1)
        im.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
        im.info["transparency"] = 1
        return im, WHITE
    if mode == "PA":
        im = Image.new("PA", (4, 2), (1, 0))
        im.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
        return im, WHITE
    if mode == "RGB":
        return Image.new("RGB", (4, 2), (10, 200, 30)), (10, 200, 30)
    if mode == "RGBA":
        return Image.new("RGBA", (4, 2), (0, 0, 0, 128)), (127, 127, 127)  # half-transparent black on white
    if mode == "CMYK":
        return Image.new("CMYK", (4, 2), (0, 255, 255, 0)), (255, 0, 0)
    if mode == "YCbCr":
        return Image.new("YCbCr", (4, 2), (255, 128, 128)), WHITE
    if mode == "LAB":
        return Image.new("LAB", (4, 2), (255, 128, 128)), (254, 255, 254)  # L*=100, a*=b*=0 (CIE white)
    if mode == "HSV":
        return Image.new("HSV", (4, 2), (0, 255, 255)), (255, 0, 0)
    raise AssertionError(mode)


MODES = ["1", "L", "LA", "P", "P+transparency", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16",
         "I;16B", "F"]
FILE_MODES = [m for m in MODES if m != "HSV"]  # no format Pillow writes stores HSV


def assert_rgb(im: Image.Image, expected: tuple, tol: int = 1):
    assert im.mode == "RGB"
    px = np.asarray(im).reshape(-1, 3).astype(int)
    assert np.abs(px - np.array(expected)).max() <= tol, (px[0].tolist(), expected)


@pytest.mark.parametrize("mode", MODES)
def test_to_rgb_every_mode(mode):
    im, expected = case(mode)
    assert_rgb(to_rgb(im), expected)


def _file_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG" if im.mode in ("P", "RGB", "L", "1") else "TIFF",
            **({"transparency": im.info["transparency"]} if "transparency" in im.info else {}))
    return buf.getvalue()


@pytest.mark.parametrize("mode", FILE_MODES)
def test_guard_normalises_every_mode_from_file_bytes(mode):
    im, expected = case(mode)
    data = _file_bytes(im)
    reopened = Image.open(io.BytesIO(data))
    assert reopened.mode == im.mode  # the file really holds the mode under test
    out = Image.open(io.BytesIO(sanitize_image(data, FetchGuard())))
    assert_rgb(out.convert("RGB"), expected)  # PNG/TIFF RGB bytes; convert is a no-op check of the mode


def test_sixteen_bit_png_is_not_saturated():
    gradient = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4369)  # 0 .. 65535
    buf = io.BytesIO()
    Image.fromarray(gradient).save(buf, "PNG")
    out = np.asarray(Image.open(io.BytesIO(sanitize_image(buf.getvalue(), FetchGuard()))).convert("L"))
    assert out.min() == 0 and out.max() == 255
    assert np.array_equal(out.ravel(), np.arange(16) * 17)  # 4369 / 257 = 17: every level kept


def test_float_image_on_pillows_0_255_scale_is_not_stretched():
    im = Image.fromarray(np.full((2, 2), 64.0, np.float32), "F")
    assert_rgb(to_rgb(im), (64, 64, 64))


def test_exif_orientation_applied():
    im = Image.new("RGB", (4, 2), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif)
    assert exif_upright(Image.open(io.BytesIO(buf.getvalue()))).size == (2, 4)
    assert Image.open(io.BytesIO(sanitize_image(buf.getvalue(), FetchGuard()))).size == (2, 4)


@pytest.mark.parametrize("mode", ["I;16", "RGBA", "LA", "P+transparency"])
def test_shard_reader_normalises(mode):
    im, expected = case(mode)
    png = io.BytesIO()
    im.save(png, "PNG", **({"transparency": 1} if mode == "P+transparency" else {}))
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w") as tar:
        for name, data in (("000.png", png.getvalue()), ("000.txt", b"a caption")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    tar_buf.seek(0)
    (sample,) = list(iter_tar_samples(tar_buf))
    assert_rgb(sample.image, expected)
