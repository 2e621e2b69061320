"""Reader of the download stage's output: webdataset tar shards named by the stage manifest.

Layout written by hddm_core.data.download (relative to the stage prefix):
    shards/00000.tar            webdataset: <key>.<jpg|png|webp>, <key>.txt (caption), <key>.json (meta)
    shards/00000.parquet        img2dataset's per-row status table (successes and failures)
    shards/00000_stats.json     per-shard stats; img2dataset writes it after the tar closed (completion marker)
    summary.json                success rate and failure reasons over all shards
    _manifest.json              written last; names the shards readers may trust
"""
from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from typing import Iterator

from PIL import Image

from hddm_core.data.image_rgb import exif_upright, to_rgb
from hddm_core.manifests import read_manifest
from hddm_core.storage import ArtifactStore

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


@dataclass
class Sample:
    key: str
    image: Image.Image  # RGB
    caption: str
    meta: dict = field(default_factory=dict)


def manifest_shards(store: ArtifactStore, prefix: str) -> list[str]:
    """Tar shard keys (relative to prefix) named by the download manifest, in order."""
    manifest = read_manifest(store, prefix)
    if manifest is None:
        raise FileNotFoundError(f"no download manifest under {store.uri(prefix)}: run the download stage first")
    return sorted(k for k in manifest.outputs if k.endswith(".tar"))


def _sample_from_members(key: str, members: dict[str, bytes]) -> Sample:
    image_ext = next((e for e in IMAGE_EXTENSIONS if e in members), None)
    if image_ext is None:
        raise ValueError(f"sample {key!r} has no image member (found {sorted(members)})")
    with Image.open(io.BytesIO(members[image_ext])) as im:
        image = to_rgb(exif_upright(im))  # 16-bit, float and alpha shards too (guards off, other writers)
    caption = members.get("txt", b"").decode("utf-8")
    meta = json.loads(members["json"].decode("utf-8")) if "json" in members else {}
    return Sample(key=key, image=image, caption=caption, meta=meta)


def iter_tar_samples(fileobj) -> Iterator[Sample]:
    """Samples of one webdataset tar stream (members of one sample are adjacent)."""
    current, members = None, {}
    with tarfile.open(fileobj=fileobj, mode="r|") as tar:
        for info in tar:
            if not info.isfile():
                continue
            name = info.name.rsplit("/", 1)[-1]
            key, _, ext = name.partition(".")
            if key != current and current is not None and members:
                yield _sample_from_members(current, members)
                members = {}
            current = key
            members[ext.lower()] = tar.extractfile(info).read()
    if current is not None and members:
        yield _sample_from_members(current, members)


def iter_download_samples(store: ArtifactStore, prefix: str) -> Iterator[Sample]:
    """Every successfully downloaded sample, reading only the shards the stage manifest names."""
    for shard in manifest_shards(store, prefix):
        with store.fs.open(store.path(f"{prefix}/{shard}"), "rb") as f:
            yield from iter_tar_samples(f)


def count_download_samples(store: ArtifactStore, prefix: str) -> int:
    manifest = read_manifest(store, prefix)
    if manifest is None:
        raise FileNotFoundError(f"no download manifest under {store.uri(prefix)}")
    return int(manifest.counts.get("success", 0))
