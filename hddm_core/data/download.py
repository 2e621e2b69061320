"""The download stage: a LAION-style parquet (url, caption, optional width/height/aesthetic and extra
columns) -> webdataset tar shards through the real img2dataset 1.47, with its fetch hardened by
hddm_core.data.safe_fetch.

Why a hook and not a pre-pass: img2dataset's Downloader calls the module-level function
img2dataset.downloader.download_image from its thread pool; GuardedDownloader (a subclass) swaps
that function for the guarded fetch inside each spawned worker, so there is one fetch per row,
img2dataset keeps its own sharding, resizing, writers, per-shard stats and incremental resume, and
the guards cost only their checks. img2dataset starts workers by spawn, so it runs in a child
process (`python -m hddm_core.data.download SPEC.json`), which makes the stage safe to call from any
caller, Prefect tasks and notebooks included, without an `if __name__ == "__main__"` guard there.

Layout under the stage prefix: see hddm_core.data.shards. img2dataset writes `<shard>_stats.json`
after the shard's tar closed; that file is the per-shard completion marker its incremental mode
honours, so a killed run resumes with the missing shards only (rewritten whole, never appended).
The manifest is written last and names only completed shards.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import posixpath
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field

from hddm_core.manifests import (MANIFEST_NAME, StageManifest, completed, describe_outputs, hash_config,
                         hash_store_object, read_manifest, write_manifest)
from hddm_core.redact import mask_secrets
from hddm_core.storage import ArtifactStore
from hddm_core.data.safe_fetch import FetchGuard

log = logging.getLogger(__name__)

RUN_MARKER = "_run.json"
SHARDS_DIR = "shards"
SUMMARY_NAME = "summary.json"
# img2dataset adds these to every row's metadata; input columns of the same name cannot be carried.
_I2D_META = {"url", "caption", "key", "status", "error_message", "width", "height", "original_width",
             "original_height", "exif", "sha256", "md5"}


@dataclass
class DownloadConfig:
    image_size: int = 64
    resize_mode: str = "border"  # img2dataset: no, border, keep_ratio, keep_ratio_largest, center_crop
    encode_format: str = "jpg"
    encode_quality: int | None = None  # None: 95 for jpg/webp, compression level 3 for png
    number_sample_per_shard: int = 1000
    processes_count: int = 1
    thread_count: int = 16
    retries: int = 0
    guards: bool = True  # False = plain img2dataset (only for the benchmark's baseline)
    allow_hosts: tuple[str, ...] = ()
    deadline_s: float = 10.0
    max_bytes: int = 20 << 20
    max_image_pixels: int = 40_000_000
    max_redirects: int = 5
    max_shard_retry: int = 1

    def validate(self) -> "DownloadConfig":
        if self.resize_mode not in ("no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"):
            raise ValueError(f"resize_mode {self.resize_mode!r} invalid: no, border, keep_ratio, "
                             "keep_ratio_largest or center_crop")
        if self.encode_format not in ("jpg", "png", "webp"):
            raise ValueError(f"encode_format {self.encode_format!r} invalid: jpg, png or webp")
        for name in ("image_size", "number_sample_per_shard", "processes_count", "thread_count"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.encode_quality is None:
            self.encode_quality = 3 if self.encode_format == "png" else 95
        limit = 9 if self.encode_format == "png" else 100
        if not 0 <= self.encode_quality <= limit:
            raise ValueError(f"encode_quality {self.encode_quality} invalid for {self.encode_format}: 0..{limit}")
        self.fetch_guard().validate()
        return self

    def fetch_guard(self) -> FetchGuard:
        return FetchGuard(allow_hosts=tuple(self.allow_hosts), deadline_s=self.deadline_s,
                          max_bytes=self.max_bytes, max_image_pixels=self.max_image_pixels,
                          max_redirects=self.max_redirects)


def _store_url(store: ArtifactStore, key: str) -> str:
    return store.path(key) if store.is_local else store.uri(key)


def _subprocess_env(store: ArtifactStore) -> dict:
    """The child's environment: S3 endpoint and credentials from the store's options (never logged)."""
    env = dict(os.environ)
    env.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    opts = getattr(store, "storage_options", {}) or {}
    endpoint = (opts.get("client_kwargs") or {}).get("endpoint_url") or opts.get("endpoint_url")
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    if opts.get("key"):
        env["AWS_ACCESS_KEY_ID"] = opts["key"]
    if opts.get("secret"):
        env["AWS_SECRET_ACCESS_KEY"] = opts["secret"]
    return env


# (url, caption) column names accepted: ours, and LAION's as published (laion2B-en parquet: URL, TEXT)
COLUMN_NAMES = (("url", "caption"), ("URL", "TEXT"))


def _input_columns(store: ArtifactStore, input_key: str) -> tuple[list[str], str, str]:
    """(all columns, url column, caption column) of a LAION-style parquet."""
    import pyarrow.parquet as pq

    with store.fs.open(store.path(input_key), "rb") as f:
        names = pq.read_schema(f).names
    for url_col, caption_col in COLUMN_NAMES:
        if url_col in names and caption_col in names:
            return names, url_col, caption_col
    raise ValueError(f"{store.uri(input_key)}: LAION-style parquet needs url and caption columns, one of "
                     f"{[list(c) for c in COLUMN_NAMES]}; has {names}")


def run_download(store: ArtifactStore, input_key: str, prefix: str = "download",
                 config: DownloadConfig | None = None, *, force: bool = False) -> StageManifest:
    """Download every row of the parquet at store/input_key into store/prefix; manifest last.

    A rerun with the same input and config returns the existing manifest; a killed run resumes."""
    config = (config or DownloadConfig()).validate()
    cfg = dataclasses.asdict(config)  # no credentials: the store's options stay out of config and manifest
    inputs = {"url_list": hash_store_object(store, input_key)}
    if not force and (done := completed(store, prefix, cfg, inputs)):
        log.info("download already complete at %s; skipping", store.uri(prefix))
        return done

    start_run(store, prefix, cfg, inputs, force, [SHARDS_DIR, SUMMARY_NAME])
    columns, url_col, caption_col = _input_columns(store, input_key)
    extra = [c for c in columns if c not in _I2D_META and c not in (url_col, caption_col)]
    spec = {"kwargs": i2d_kwargs(store, input_key, f"{prefix}/{SHARDS_DIR}", config, extra, url_col, caption_col),
            "guard": dataclasses.asdict(config.fetch_guard()) if config.guards else None}
    run_img2dataset(spec, _subprocess_env(store))
    return _finish(store, prefix, config, cfg, inputs)


def start_run(store: ArtifactStore, prefix: str, cfg: dict, inputs: dict, force: bool, outputs: list[str]) -> None:
    """Drop the manifest (readers stop trusting the old set first); drop `outputs` too unless this is
    the same work resumed (same config and inputs as the run marker), which keeps completed shards."""
    run = {"config_hash": hash_config(cfg), "inputs": inputs}
    marker = f"{prefix}/{RUN_MARKER}"
    previous = store.read_json(marker) if store.exists(marker) else None
    store.delete(f"{prefix}/{MANIFEST_NAME}")
    if force or previous != run:  # different work: nothing partial from before may be resumed
        for key in outputs:
            store.delete(f"{prefix}/{key}")
        store.write_json(marker, run)
    else:
        log.info("resuming download at %s from its completed shards", store.uri(prefix))


def i2d_kwargs(store: ArtifactStore, input_key: str, output_key: str, config: DownloadConfig, extra: list[str],
               url_col: str = "url", caption_col: str = "caption") -> dict:
    """img2dataset's arguments for one parquet (url and caption columns, and `extra` carried as they are)."""
    return dict(url_list=_store_url(store, input_key), output_folder=_store_url(store, output_key),
                input_format="parquet", url_col=url_col, caption_col=caption_col,
                save_additional_columns=extra or None, output_format="webdataset", image_size=config.image_size,
                resize_mode=config.resize_mode, encode_format=config.encode_format,
                encode_quality=config.encode_quality, number_sample_per_shard=config.number_sample_per_shard,
                processes_count=config.processes_count, thread_count=config.thread_count,
                timeout=max(1, int(config.deadline_s)), retries=config.retries, enable_wandb=False,
                incremental_mode="incremental", max_shard_retry=config.max_shard_retry,
                extract_exif=False, compute_hash="sha256", distributor="multiprocessing")


def run_img2dataset(spec: dict, env: dict | None = None) -> None:
    """Run img2dataset in a child process (spawn-safe); raise with its log tail if it fails."""
    with tempfile.TemporaryDirectory(prefix="hddm-i2d-") as tmp:
        spec_path = os.path.join(tmp, "spec.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        log_path = os.path.join(tmp, "img2dataset.log")
        with open(log_path, "wb") as out:
            proc = subprocess.run([sys.executable, "-m", "hddm_core.data.download", spec_path],
                                  stdout=out, stderr=subprocess.STDOUT, env=env or dict(os.environ), check=False)
        if proc.returncode != 0:
            with open(log_path, "rb") as f:
                tail = f.read()[-3000:].decode("utf-8", "replace")
            raise RuntimeError(f"img2dataset exited with {proc.returncode}; log tail:\n{mask_secrets(tail)}")


def _finish(store: ArtifactStore, prefix: str, config: DownloadConfig, cfg: dict, inputs: dict,
            extra_counts: dict | None = None, extra_outputs: tuple[str, ...] = ()) -> StageManifest:
    shard_keys = [k for k in store.list(f"{prefix}/{SHARDS_DIR}") if "/_tmp" not in k[len(prefix):]]
    rel = sorted(posixpath.relpath(k, prefix) for k in shard_keys)
    stats_keys = [k for k in rel if k.endswith("_stats.json")]
    tars = [k for k in rel if k.endswith(".tar")]
    done_ids = {posixpath.basename(k)[: -len("_stats.json")] for k in stats_keys}
    incomplete = sorted(posixpath.basename(t)[:-4] for t in tars if posixpath.basename(t)[:-4] not in done_ids)
    if incomplete:
        raise RuntimeError(f"download at {store.uri(prefix)}: shards {incomplete[:10]} did not complete; "
                           "rerun to resume them")
    totals, reasons = Counter(), Counter()
    per_shard = {}
    for k in stats_keys:
        stats = store.read_json(f"{prefix}/{k}")
        sid = posixpath.basename(k)[: -len("_stats.json")]
        per_shard[sid] = {n: stats.get(n, 0) for n in ("count", "successes", "failed_to_download", "failed_to_resize",
                                                       "duration")}
        for n in ("count", "successes", "failed_to_download", "failed_to_resize"):
            totals[n] += int(stats.get(n, 0))
        for reason, n in (stats.get("status_dict") or {}).items():
            if reason != "success":
                reasons[reason] += int(n)
    summary = {"shards": len(stats_keys), "count": totals["count"], "success": totals["successes"],
               "failed_to_download": totals["failed_to_download"], "failed_to_resize": totals["failed_to_resize"],
               "success_rate": (totals["successes"] / totals["count"]) if totals["count"] else 0.0,
               "failure_reasons": dict(reasons.most_common()), "per_shard": per_shard, "guards": config.guards}
    store.write_json(f"{prefix}/{SUMMARY_NAME}", summary)
    outputs = [k for k in rel if k.endswith((".tar", ".parquet", "_stats.json"))
               and posixpath.basename(k)[:5].isdigit()] + [SUMMARY_NAME] + list(extra_outputs)
    counts = {**{k: v for k, v in summary.items() if k != "per_shard"}, **(extra_counts or {})}
    manifest = StageManifest(stage="download", config=cfg, config_hash=hash_config(cfg), inputs=inputs,
                             outputs=describe_outputs(store, prefix, outputs), counts=counts)
    write_manifest(store, prefix, manifest)
    log.info("download: %d/%d images (%.1f%%), failures %s", summary["success"], summary["count"],
             100 * summary["success_rate"], dict(reasons.most_common(5)))
    return manifest


def read_summary(store: ArtifactStore, prefix: str = "download") -> dict:
    if read_manifest(store, prefix) is None:
        raise FileNotFoundError(f"no download manifest under {store.uri(prefix)}")
    return store.read_json(f"{prefix}/{SUMMARY_NAME}")


def _child_main(spec_path: str) -> None:
    """Entry point of the img2dataset child process."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    with open(spec_path) as f:
        spec = json.load(f)
    import importlib

    i2d_main = importlib.import_module("img2dataset.main")  # the package re-exports a function named main

    if spec.get("guard") is not None:
        from hddm_core.data.safe_fetch import make_guarded_downloader_factory

        guard = FetchGuard(**{**spec["guard"], "allow_hosts": tuple(spec["guard"]["allow_hosts"])})
        i2d_main.Downloader = make_guarded_downloader_factory(guard)
    if spec.get("start_shard_id"):  # a part of a split parquet: its shard ids (and sample keys) follow the
        base = i2d_main.Reader      # earlier parts', so keys are unique over the stage (download_laion)

        class OffsetReader(base):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.start_shard_id = int(spec["start_shard_id"])

        i2d_main.Reader = OffsetReader
    i2d_main.download(**spec["kwargs"])


if __name__ == "__main__":
    _child_main(sys.argv[1])
