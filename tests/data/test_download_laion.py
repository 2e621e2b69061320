"""Download at LAION scale: a parquet with LAION's published column names, filtered for the paper's
subset (counts per reason in the manifest), split into parts downloaded as work units through the
hardened img2dataset run (loopback server, no network), and a recaption subset ranked by score."""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hddm_core.data.coordinator import ProcessPool
from hddm_core.data.download import DownloadConfig
from hddm_core.data.download_laion import (SUBSET_NAME, LaionFilter, RecaptionSubset, drop_reasons, resolve_columns,
                                           run_laion_download, split_parts)
from hddm_core.data.shards import iter_download_samples
from hddm_core.data.units import DownloadSource
from hddm_core.storage import ArtifactStore

FILTERS = LaionFilter(min_aesthetic=5.0, min_width=256, min_height=256, min_caption_chars=5, max_caption_chars=40)


def laion_rows(server, n=16):
    """Rows as LAION-Aesthetics V2 publishes them; rows 3, 6, 9, 12 fail one filter each, 15 fails two."""
    rows = []
    for i in range(n):
        rows.append({"URL": server.url(f"slow/{i}") if i != 10 else server.url("missing"),
                     "TEXT": f"a picture number {i:02d}", "WIDTH": 512.0, "HEIGHT": 384.0, "similarity": 0.3,
                     "hash": i * 7919, "punsafe": 0.01, "pwatermark": 0.1, "AESTHETIC_SCORE": 5.0 + (i % 5) / 4})
    rows[3]["AESTHETIC_SCORE"] = 4.2
    rows[6]["WIDTH"] = 128.0
    rows[9]["TEXT"] = "cat"
    rows[12]["TEXT"] = "x" * 60
    rows[15].update(HEIGHT=None, AESTHETIC_SCORE=1.0)  # counted under the first: aesthetic
    return rows


def write_parquet(store, key, rows):
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    store.write_bytes(key, buf.getvalue())
    return key


def test_published_column_names_are_read_in_either_case():
    v2 = ["URL", "TEXT", "WIDTH", "HEIGHT", "similarity", "hash", "punsafe", "pwatermark", "AESTHETIC_SCORE"]
    assert resolve_columns(v2) == {"url": "URL", "caption": "TEXT", "width": "WIDTH", "height": "HEIGHT",
                                   "aesthetic": "AESTHETIC_SCORE", "punsafe": "punsafe", "pwatermark": "pwatermark"}
    assert resolve_columns(["url", "caption", "aesthetic"])["aesthetic"] == "aesthetic"  # V1 and our own lists
    with pytest.raises(ValueError, match=r"needs a url column \(URL, any case\), has \['TEXT'\]"):
        resolve_columns(["TEXT"])


def test_each_dropped_row_is_counted_under_its_first_failing_filter(hostile_server):
    table = pa.Table.from_pylist(laion_rows(hostile_server))
    reasons = drop_reasons(table, resolve_columns(table.column_names), FILTERS)
    assert {i: r for i, r in enumerate(reasons) if r} == {
        3: "aesthetic: below 5.0", 6: "width: below 256", 9: "caption: shorter than 5",
        12: "caption: longer than 40", 15: "aesthetic: below 5.0"}
    lenient = drop_reasons(table, resolve_columns(table.column_names), LaionFilter(min_height=256))
    assert [i for i, r in enumerate(lenient) if r] == [15] and lenient[15] == "height: below 256"  # null fails


def test_parts_hold_the_kept_rows_in_input_order(tmp_path, hostile_server):
    store = ArtifactStore(str(tmp_path))
    key = write_parquet(store, "in/laion.parquet", laion_rows(hostile_server))
    parts, counts = split_parts(store, key, "dl", FILTERS, rows_per_part=4, batch_rows=5)  # batches cross parts
    assert [n for _, n in parts] == [4, 4, 3] and counts["kept"] == 11 and counts["rows"] == 16
    assert counts["dropped_by_reason"] == {"aesthetic: below 5.0": 2, "caption: longer than 40": 1,
                                           "caption: shorter than 5": 1, "width: below 256": 1}
    captions = [c for k, _ in parts for c in pq.read_table(io.BytesIO(store.read_bytes(k))).column("caption").to_pylist()]
    assert captions == [f"a picture number {i:02d}" for i in (0, 1, 2, 4, 5, 7, 8, 10, 11, 13, 14)]
    with pytest.raises(ValueError, match=r"filters need columns \['aesthetic'\]"):
        write_parquet(store, "in/plain.parquet", [{"url": "http://x/1", "caption": "hello there"}])
        split_parts(store, "in/plain.parquet", "dl2", LaionFilter(min_aesthetic=5.0), 4)


@pytest.mark.slow  # ~3 img2dataset child processes on 2 pool workers: ~40 s here
def test_parts_download_as_units_with_filters_and_subset_in_the_manifest(tmp_path, hostile_server):
    store = ArtifactStore(str(tmp_path))
    key = write_parquet(store, "in/laion.parquet", laion_rows(hostile_server))
    config = DownloadConfig(allow_hosts=(hostile_server.host_port,), number_sample_per_shard=2, thread_count=4,
                            deadline_s=5)
    with ProcessPool(workers=2) as pool:
        manifest = run_laion_download(store, key, "dl", config, FILTERS, RecaptionSubset(count=3, score="aesthetic"),
                                      rows_per_part=4, executor=pool)
    counts = manifest.counts
    assert counts["filter"] == {"rows": 16, "kept": 11, "dropped": 5, "dropped_by_reason": {
        "aesthetic: below 5.0": 2, "caption: longer than 40": 1, "caption: shorter than 5": 1, "width: below 256": 1}}
    assert [p["rows"] for p in counts["parts"]] == [4, 4, 3] and len({p["worker"] for p in counts["parts"]}) >= 1
    assert counts["count"] == 11 and counts["success"] == 10 and counts["failure_reasons"] == {"http: status 404": 1}
    samples = list(iter_download_samples(store, "dl"))
    keys = [s.key for s in samples]
    assert len(set(keys)) == 10  # unique over the parts (img2dataset orders a tar by completion)
    in_key_order = [s.caption for s in sorted(samples, key=lambda s: s.key)]
    assert in_key_order == [f"a picture number {i:02d}" for i in (0, 1, 2, 4, 5, 7, 8, 11, 13, 14)]
    assert samples[0].meta["WIDTH"] == 512.0 and "AESTHETIC_SCORE" in samples[0].meta  # carried as published
    assert DownloadSource(store.root, None, "dl").keys() == keys  # tar headers alone give the same order
    subset = pq.read_table(io.BytesIO(store.read_bytes(f"dl/{SUBSET_NAME}"))).to_pylist()
    by_key = {s.key: s.meta["AESTHETIC_SCORE"] for s in samples}
    best = sorted(by_key, key=lambda k: (-by_key[k], k))[:3]
    assert [r["key"] for r in subset] == best and [r["rank"] for r in subset] == [0, 1, 2]
    assert counts["recaption_subset"] == {"requested": 3, "selected": 3, "score": "AESTHETIC_SCORE", "of": 10,
                                          "min_score": float(np.min([by_key[k] for k in best]))}
    assert SUBSET_NAME in manifest.outputs
    again = run_laion_download(store, key, "dl", config, FILTERS, RecaptionSubset(count=3, score="aesthetic"),
                               rows_per_part=4)
    assert again.content_hash == manifest.content_hash  # finished: skipped
