"""The download stage through the real img2dataset: hostile rows counted by reason, outputs readable,
manifest last, no-op reruns, and a killed run resumed without losing or duplicating a sample."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hddm_core.data.download import DownloadConfig, read_summary, run_download
from hddm_core.data.shards import iter_download_samples, manifest_shards
from hddm_core.manifests import read_manifest
from hddm_core.storage import ArtifactStore

GOOD = ["good.png", "good.jpg", "exif.jpg", "cmyk.jpg", "palette.png", "alpha.png", "la.png", "tall.png",
        "wide.png", "redirect-good"]
BAD = {"truncated.jpg": "image: truncated or corrupt", "bomb.png": "guard: image area too large",
       "notimage.png": "image: unidentified format", "drip": "guard: deadline exceeded",
       "endless": "guard: body too large", "redirect-internal": "guard: internal address",
       "missing": "http: status 404"}


def write_parquet(store, key, rows):
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    store.write_bytes(key, buf.getvalue())
    return key


@pytest.fixture(scope="module")
def hostile_download(hostile_server, tmp_path_factory):
    store = ArtifactStore(str(tmp_path_factory.mktemp("dl")))
    rows = [{"url": hostile_server.url(n), "caption": f"case {n}", "case": n} for n in GOOD + list(BAD)]
    rows += [{"url": "file:///etc/passwd", "caption": "file row", "case": "file"},
             {"url": f"http://127.0.0.1:{hostile_server.secret.server_address[1]}/secret.png",
              "caption": "direct internal", "case": "internal"}]
    key = write_parquet(store, "in/hostile.parquet", rows)
    cfg = DownloadConfig(allow_hosts=(hostile_server.host_port,), deadline_s=1.5, max_bytes=1 << 20,
                         max_image_pixels=4_000_000, number_sample_per_shard=10, thread_count=8)
    manifest = run_download(store, key, "dl", cfg)
    return store, key, cfg, manifest, len(rows)


@pytest.mark.slow  # over 10 s
def test_hostile_rows_are_counted_by_reason_never_crash(hostile_download, hostile_server):
    store, _, _, manifest, n_rows = hostile_download
    summary = read_summary(store, "dl")
    assert summary["count"] == n_rows and summary["success"] == len(GOOD)
    reasons = summary["failure_reasons"]
    for case, reason in BAD.items():
        assert reasons.get(reason, 0) >= 1, (case, reasons)
    assert reasons["guard: internal address"] == 2  # the redirect and the direct internal row
    assert reasons["guard: scheme file not allowed"] == 1
    assert sum(reasons.values()) == n_rows - len(GOOD)
    assert hostile_server.secret_hits == []
    assert manifest.counts["success"] == len(GOOD)


@pytest.mark.slow  # over 10 s
def test_samples_readable_rgb_with_captions_and_exif_applied(hostile_download):
    store = hostile_download[0]
    samples = {s.meta["case"]: s for s in iter_download_samples(store, "dl")}
    assert sorted(samples) == sorted(GOOD)
    for case, s in samples.items():
        assert s.image.mode == "RGB" and s.image.size == (64, 64) and s.caption == f"case {case}"
        assert s.meta["status"] == "success"
    exif = samples["exif.jpg"].meta
    assert (exif["original_width"], exif["original_height"]) == (20, 40)  # rotated before resizing
    assert (samples["tall.png"].meta["original_width"], samples["tall.png"].meta["original_height"]) == (1, 50)


@pytest.mark.slow  # over 10 s
def test_manifest_names_shards_and_reruns_are_noops(hostile_download):
    store, key, cfg, manifest, _ = hostile_download
    assert manifest_shards(store, "dl") == [f"shards/0000{i}.tar" for i in range(2)]
    assert "summary.json" in manifest.outputs
    again = run_download(store, key, "dl", cfg)
    assert again.created_at == manifest.created_at  # nothing re-downloaded
    forced = run_download(store, key, "dl", cfg, force=True)
    assert forced.created_at != manifest.created_at and forced.counts["success"] == len(GOOD)


@pytest.mark.slow
def test_killed_run_resumes_without_loss_or_duplicates(hostile_server, tmp_path):
    store = ArtifactStore(str(tmp_path / "art"))
    n = 80
    rows = [{"url": hostile_server.url(f"slow/{i}"), "caption": f"sample {i}", "idx": i} for i in range(n)]
    key = write_parquet(store, "in/slow.parquet", rows)
    cfg_args = dict(allow_hosts=(hostile_server.host_port,), number_sample_per_shard=10, thread_count=1,
                    deadline_s=5)
    script = ("import sys; from hddm_core.storage import ArtifactStore; "
              "from hddm_core.data.download import DownloadConfig, run_download; "
              f"run_download(ArtifactStore({store.root!r}), {key!r}, 'dl', DownloadConfig(**{cfg_args!r}))")
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards_dir = store.path("dl/shards")
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            done = [f for f in os.listdir(shards_dir) if f.endswith("_stats.json")] if os.path.isdir(shards_dir) else []
            if len(done) >= 2:
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole run, img2dataset's spawned workers included
        proc.wait()
    assert 2 <= len(done) < n // 10, f"the kill must land mid-run, saw {len(done)} completed shards"
    assert read_manifest(store, "dl") is None
    kept = {f: os.path.getmtime(os.path.join(shards_dir, f)) for f in done}
    manifest = run_download(store, key, "dl", DownloadConfig(**cfg_args))
    for f, mtime in kept.items():  # completed shards were kept, not downloaded again
        assert os.path.getmtime(os.path.join(shards_dir, f)) == mtime
    idx = [s.meta["idx"] for s in iter_download_samples(store, "dl")]
    assert sorted(idx) == list(range(n))  # every sample exactly once
    assert manifest.counts["success"] == n and manifest.counts["shards"] == n // 10
