"""The contributor's images: a folder, a webdataset shard or a finished download stage, as samples plus a content hash."""
from __future__ import annotations

import hashlib
import os
from typing import Callable, Iterable, Iterator

from hddm_core.storage import ArtifactStore

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
SOURCE_KINDS = ("images", "shard", "download")


def _caption_for(path: str) -> str:
    sidecar = os.path.splitext(path)[0] + ".txt"
    if os.path.isfile(sidecar):
        with open(sidecar, encoding="utf-8") as f:
            return f.read().strip()
    return os.path.splitext(os.path.basename(path))[0].replace("_", " ").replace("-", " ").strip()


def _folder_files(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = sorted(os.path.join(d, f) for d, _, names in os.walk(folder) for f in names
                   if f.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    return files


def _folder_samples(folder: str, files: list[str]) -> Iterator:
    from PIL import Image

    from hddm_core.data.image_rgb import exif_upright, to_rgb
    from hddm_core.data.shards import Sample

    for path in files:
        with Image.open(path) as im:
            image = to_rgb(exif_upright(im))
        key = os.path.relpath(path, folder).replace(os.sep, "/")
        yield Sample(key=key, image=image, caption=_caption_for(path), meta={"file": key})


def check_source(source: dict) -> dict:
    """{'images': folder} | {'shard': webdataset .tar (img2dataset/LAION layout)} | {'download': stage URL}."""
    if not isinstance(source, dict) or len(source) != 1 or next(iter(source)) not in SOURCE_KINDS:
        raise ValueError(f"source must name exactly one of {list(SOURCE_KINDS)}, got {source!r}")
    kind, location = next(iter(source.items()))
    if not isinstance(location, str) or not location:
        raise ValueError(f"source {kind!r} needs a path or URL, got {location!r}")
    if "://" not in location:
        location = os.path.abspath(location)
    return {kind: location}


def open_source(source: dict) -> tuple[Callable[[], Iterable], str, int | None]:
    """(a function returning a fresh sample iterator, a content hash of the source, sample count or None)."""
    kind, location = next(iter(check_source(source).items()))
    if kind == "images":
        files = _folder_files(location)
        h = hashlib.sha256()
        for path in files:
            h.update(os.path.relpath(path, location).encode() + b"\0")
            with open(path, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
            sidecar = os.path.splitext(path)[0] + ".txt"
            if os.path.isfile(sidecar):
                with open(sidecar, "rb") as f:
                    h.update(b"caption" + hashlib.sha256(f.read()).digest())
        return (lambda: _folder_samples(location, files)), h.hexdigest(), len(files)
    if kind == "shard":
        import fsspec

        from hddm_core.data.shards import iter_tar_samples

        with fsspec.open(location, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()

        def samples():
            with fsspec.open(location, "rb") as f:
                yield from iter_tar_samples(f)

        return samples, digest, None
    from hddm_core.data.shards import count_download_samples, iter_download_samples
    from hddm_core.manifests import read_manifest

    parent_url, prefix = _split_url(location)
    parent = ArtifactStore(parent_url)
    manifest = read_manifest(parent, prefix)
    if manifest is None or manifest.stage != "download":
        raise FileNotFoundError(f"no finished download stage at {location}: run `hddmp data download` first")
    return (lambda: iter_download_samples(parent, prefix)), manifest.content_hash, count_download_samples(parent, prefix)


def _split_url(location: str) -> tuple[str, str]:
    """(parent URL, last segment) of a local path or URL."""
    if "://" not in location:
        location = os.path.abspath(location)
        return os.path.dirname(location), os.path.basename(location)
    head, _, tail = location.rstrip("/").rpartition("/")
    return head, tail
