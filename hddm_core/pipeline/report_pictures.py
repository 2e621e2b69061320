"""Summary cards for a stage: markdown with tables and pictures shown inline, bounded in size.

A Prefect link artifact to a file:// path opens nothing in a browser, so a stage's pictures are
embedded: a PNG read from the artifact store, downscaled to a thumbnail and written as
`![alt](data:image/png;base64,...)`. Both UIs that Prefect 3.9 serves render that: the React UI (v2)
lets `data:image/` through its URL transform and its rehype-sanitize schema for an <img src>, and the
Vue UI (v1) turns a markdown image token into <img src> as it is. The card is plain markdown built here
without Prefect (the tasks layer only hands it to create_markdown_artifact).

Every card has a byte budget (MAX_CARD_BYTES): a picture that would take the card past it is left out
and a sentence says so and where the full picture is. Where the picture lives: a link when the store
is http(s), the s3:// URL as text (a browser cannot open it), the local path as text (for a terminal).
"""
from __future__ import annotations

import base64
import io
import logging
from typing import Iterable, Optional

log = logging.getLogger(__name__)

MAX_CARD_BYTES = 200_000  # per artifact: the UI loads the whole card, pictures included
THUMB_SIDE = 640  # longest side of a thumbnail, pixels
MAX_SOURCE_BYTES = 32 << 20  # a stage's PNGs are kilobytes to a few megabytes
MAX_SOURCE_PIXELS = 40_000_000  # refused before decoding (a decompression bomb)
TEXT_RESERVE = 4_000  # bytes kept free for the lines a card adds after its pictures


def thumbnail_png(data: bytes, max_side: int = THUMB_SIDE, colors: Optional[int] = None,
                  max_pixels: int = MAX_SOURCE_PIXELS) -> bytes:
    """PNG bytes of the picture `data` with its longest side at most max_side (never enlarged);
    colors: reduce to a palette of that many colours (a much smaller PNG for photos and grids)."""
    return _encode(_decode(data, max_pixels), max_side, colors)


def _decode(data: bytes, max_pixels: int = MAX_SOURCE_PIXELS):
    """The picture as an RGB (or RGBA, where it is transparent) PIL image; its size checked first."""
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    w, h = im.size
    if w * h > max_pixels:
        raise ValueError(f"a {w}x{h} picture is over the {max_pixels}-pixel limit of a thumbnail")
    im = im.convert("RGBA") if im.mode in ("RGBA", "LA", "P", "PA") else im.convert("RGB")
    if im.mode == "RGBA" and im.getchannel("A").getextrema() == (255, 255):
        im = im.convert("RGB")  # matplotlib writes an opaque alpha channel
    return im


def _encode(im, max_side: int, colors: Optional[int]) -> bytes:
    from PIL import Image

    if max_side < 8:
        raise ValueError(f"thumbnail max_side must be >= 8 pixels, got {max_side}")
    if colors is not None and not 2 <= colors <= 256:
        raise ValueError(f"thumbnail colors must be 2..256 (a PNG palette), got {colors}")
    im = im.copy()
    im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    if colors is not None:  # octree: ~40x faster than median cut, the only method for RGBA
        im = im.quantize(colors=colors, method=Image.Quantize.FASTOCTREE)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def describe_location(uri: str, local_path: Optional[str] = None) -> str:
    """Markdown saying where an object is: a link for http(s), the URL as text for s3:// (no browser
    opens it: the bucket and key), the local path as text otherwise."""
    if uri.startswith(("http://", "https://")):
        return f"[{uri.rsplit('/', 1)[-1]}]({uri})"
    if uri.startswith("s3://"):
        return f"S3 object `{uri}`"
    return f"`{local_path or uri}`"


def location(store, key: str) -> str:
    """describe_location for `key` in an ArtifactStore."""
    return describe_location(store.uri(key), store.path(key) if store.is_local else None)


def _cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict], columns: Optional[list[str]] = None) -> list[str]:
    """A markdown table (lines); columns default to every key in first-seen order."""
    if not rows:
        return ["(no rows)"]
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return lines


class Card:
    """Markdown lines plus inline pictures, kept under `budget` bytes: text is always added, a
    picture only where its thumbnail fits (else a sentence saying it was left out, and where it is)."""

    # thumbnails tried in turn, largest first. A 256-colour palette looks the same for plots and sample
    # grids at half the bytes of full colour, so the first pictures leave room for the next ones.
    ATTEMPTS = ((THUMB_SIDE, 256), (THUMB_SIDE // 2, 256), (THUMB_SIDE // 4, 64))

    def __init__(self, title: str, budget: int = MAX_CARD_BYTES):
        if budget < 2 * TEXT_RESERVE:
            raise ValueError(f"card budget must be >= {2 * TEXT_RESERVE} bytes, got {budget}")
        self.budget = budget
        self.lines: list[str] = []
        self._size = 0  # bytes of text() so far
        self.left_out: list[str] = []
        self.add(f"## {title}", "")

    def size(self) -> int:
        return self._size

    def add(self, *lines: str) -> "Card":
        self.lines.extend(lines)
        self._size += sum(len(line.encode()) + 1 for line in lines)
        return self

    def table(self, rows: list[dict], columns: Optional[list[str]] = None) -> "Card":
        return self.add(*markdown_table(rows, columns), "")

    def picture(self, store, key: str, alt: str) -> bool:
        """Embed the picture at `key` as a thumbnail if it fits the budget; True when it was embedded."""
        where = location(store, key)
        alt = alt.replace("[", "(").replace("]", ")")
        room = self.budget - TEXT_RESERVE - self._size
        smallest = None
        try:
            if not store.exists(key):
                self.add(f"_{alt}: no picture at {where}._", "")
                return False
            im = _decode(store.read_bytes(key, max_bytes=MAX_SOURCE_BYTES))
            for side, colors in self.ATTEMPTS:
                image = f"![{alt}]({data_uri(_encode(im, side, colors))})"
                smallest = len(image)
                if smallest <= room:
                    self.add(f"**{alt}**", "", image, "", f"full size: {where}", "")
                    return True
        except Exception as exc:  # unreadable or not a picture: the card still says what it can
            log.warning("picture %s left out of the card: %s", key, exc)
            self.add(f"_{alt}: {where} could not be shown ({type(exc).__name__}: {exc})._", "")
            return False
        self.left_out.append(key)
        self.add(f"_{alt} left out: its smallest thumbnail ({smallest // 1000} KB) would take this card past "
                 f"its {self.budget // 1000} KB limit; the picture is at {where}._", "")
        return False

    def pictures(self, store, items: Iterable[tuple[str, str]]) -> "Card":
        for key, alt in items:
            self.picture(store, key, alt)
        return self

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"
