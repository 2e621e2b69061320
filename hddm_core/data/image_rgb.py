"""Every image mode Pillow can open, made RGB with its values on the right scale.

`Image.convert("RGB")` alone is wrong for three families: 16- and 32-bit integer greyscale (I;16,
I;16B, I) is clipped at 255, so a 16-bit photo comes out white; float greyscale (F) is clipped the
same way; and transparent pixels (RGBA, LA, PA, P or L/RGB with a tRNS colour) keep whatever colour
sits under alpha 0, often black. Here:

- I;16 / I;16B / I;16L / I;16N and I: read as 16-bit (0..65535, Pillow's reading of 16-bit PNG and TIFF),
  mapped to 0..255 by v / 257 (65535 -> 255), values outside clipped.
- F: nominal range [0, 1] (float TIFF) when every finite value lies in it, else Pillow's own 0..255;
  NaN -> 0, clipped.
- alpha (RGBA, LA, PA, La, RGBa, P or any mode with info["transparency"]): composited on white.
- 1, L, P, RGB, CMYK, YCbCr, LAB, HSV: Pillow's conversion (LAB through its CIE conversion).
`exif_upright` applies EXIF orientation (tag 0x0112) first, so a phone photo is not sideways.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I;16BS", "I;16LS", "I;16S", "I")
_ALPHA = ("RGBA", "LA", "PA", "La", "RGBa")


def exif_upright(im: Image.Image) -> Image.Image:
    """im rotated/flipped as its EXIF orientation says (unchanged without a tag)."""
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 (a broken EXIF block is no orientation)
        return im
    return ImageOps.exif_transpose(im) if orientation not in (None, 1) else im


def _grey_to_rgb(values: np.ndarray) -> Image.Image:
    grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB")


def to_rgb(im: Image.Image, *, background=(255, 255, 255)) -> Image.Image:
    """An RGB image of im (any mode Pillow opens), transparency composited on background."""
    mode = im.mode
    if mode in _SIXTEEN_BIT:
        values = np.asarray(im).astype(np.float64)
        return _grey_to_rgb(np.clip(values, 0, 65535) / 257.0)
    if mode == "F":
        values = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        unit = values.size == 0 or (values.min() >= 0.0 and values.max() <= 1.0)
        return _grey_to_rgb(values * 255.0 if unit else values)
    if mode in _ALPHA or "transparency" in im.info:
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return im if mode == "RGB" else im.convert("RGB")
