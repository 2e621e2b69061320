"""Download at LAION scale: a LAION metadata parquet, filtered, split into parts, one img2dataset run
(the hardened downloader of hddm_core.data.download) per part as a work unit on any executor.

Columns are read as LAION publishes them: URL, TEXT, WIDTH, HEIGHT, similarity, hash, punsafe,
pwatermark, and the aesthetic score as `aesthetic` (LAION-Aesthetics V1, laion2B-en-aesthetic) or
`AESTHETIC_SCORE` (the improved_aesthetics_* subsets); names match case-insensitively, and the
lower-case url/caption of our own lists work too. The part files carry `url` and `caption` (what the
downloader reads) and every other column under its published name (into each sample's json).

- Filters (the paper's subset): minimum aesthetic score, width and height, caption length bounds,
  optional maximum punsafe and pwatermark. A dropped row is counted under the first filter it fails
  (one reason per row); the manifest states kept and dropped counts by reason.
- Parts: `rows_per_part` kept rows (a multiple of number_sample_per_shard), in input order. Part p
  writes shards p*S .. p*S+S-1 (S = rows_per_part / number_sample_per_shard) under shards/<p>/,
  so shard ids and sample keys are unique over the stage and the shards sort in input order.
  A part whose shards all completed is skipped; a killed part resumes (img2dataset's incremental mode).
- Recaption subset: the `count` downloaded samples ranked highest by a score column (ties by
  key), written to recaption_subset.parquet (key, score, rank) and stated in the manifest.
"""
from __future__ import annotations

import dataclasses
import io
import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np

from hddm_core.data.download import (_I2D_META, SHARDS_DIR, SUMMARY_NAME, DownloadConfig, _finish, _subprocess_env,
                                     i2d_kwargs, run_img2dataset, start_run)
from hddm_core.manifests import StageManifest, completed, hash_store_object
from hddm_core.storage import ArtifactStore

log = logging.getLogger(__name__)

PARTS_DIR = "parts"
SUBSET_NAME = "recaption_subset.parquet"
# role -> accepted names (case-insensitive), first found wins
COLUMNS = {"url": ("url",), "caption": ("text", "caption"), "width": ("width",), "height": ("height",),
           "aesthetic": ("aesthetic", "aesthetic_score"), "punsafe": ("punsafe",), "pwatermark": ("pwatermark",)}


@dataclass
class LaionFilter:
    min_aesthetic: float | None = None  # e.g. 5.0: LAION-Aesthetics' improved_aesthetics_5plus
    min_width: int = 0
    min_height: int = 0
    min_caption_chars: int = 1
    max_caption_chars: int | None = None
    max_punsafe: float | None = None
    max_pwatermark: float | None = None

    def validate(self) -> "LaionFilter":
        for name in ("min_width", "min_height", "min_caption_chars"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.max_caption_chars is not None and int(self.max_caption_chars) < int(self.min_caption_chars):
            raise ValueError(f"max_caption_chars={self.max_caption_chars} is below min_caption_chars="
                             f"{self.min_caption_chars}")
        return self


@dataclass
class RecaptionSubset:
    count: int = 0  # 0 = no subset
    score: str = "aesthetic"  # a role of COLUMNS or any column name, ranked high to low

    def validate(self) -> "RecaptionSubset":
        if int(self.count) < 0:
            raise ValueError(f"recaption subset count must be >= 0, got {self.count!r}")
        return self


def resolve_columns(names: list[str]) -> dict[str, str]:
    """role -> the parquet's own column name, for the roles it has; url and caption are required."""
    lower = {n.lower(): n for n in names}
    found = {role: next((lower[a] for a in aliases if a in lower), None) for role, aliases in COLUMNS.items()}
    for role in ("url", "caption"):
        if found[role] is None:
            raise ValueError(f"LAION parquet needs a {role} column ({' or '.join(a.upper() for a in COLUMNS[role])}, "
                             f"any case), has {names}")
    return {role: name for role, name in found.items() if name is not None}


def _needs(filters: LaionFilter) -> dict[str, bool]:
    return {"aesthetic": filters.min_aesthetic is not None, "width": filters.min_width > 0,
            "height": filters.min_height > 0, "punsafe": filters.max_punsafe is not None,
            "pwatermark": filters.max_pwatermark is not None}


def drop_reasons(table, cols: dict[str, str], filters: LaionFilter) -> np.ndarray:
    """Per row: '' if kept, else the first filter it fails (a missing value fails its filter)."""
    import pyarrow.compute as pc

    def values(role):
        return table.column(cols[role]).to_numpy(zero_copy_only=False).astype(np.float64)  # null -> nan

    url = table.column(cols["url"])
    caption_len = pc.fill_null(pc.utf8_length(pc.fill_null(table.column(cols["caption"]), "")), 0).to_numpy()
    tests = [("url: missing", pc.fill_null(pc.equal(pc.utf8_length(pc.fill_null(url, "")), 0), True).to_numpy(
        zero_copy_only=False))]
    if filters.min_aesthetic is not None:
        tests.append((f"aesthetic: below {filters.min_aesthetic}", ~(values("aesthetic") >= filters.min_aesthetic)))
    if filters.min_width:
        tests.append((f"width: below {filters.min_width}", ~(values("width") >= filters.min_width)))
    if filters.min_height:
        tests.append((f"height: below {filters.min_height}", ~(values("height") >= filters.min_height)))
    tests.append((f"caption: shorter than {filters.min_caption_chars}", caption_len < filters.min_caption_chars))
    if filters.max_caption_chars is not None:
        tests.append((f"caption: longer than {filters.max_caption_chars}", caption_len > filters.max_caption_chars))
    if filters.max_punsafe is not None:
        tests.append((f"punsafe: above {filters.max_punsafe}", ~(values("punsafe") <= filters.max_punsafe)))
    if filters.max_pwatermark is not None:
        tests.append((f"pwatermark: above {filters.max_pwatermark}", ~(values("pwatermark") <= filters.max_pwatermark)))
    reasons = np.full(table.num_rows, "", dtype=object)
    for reason, failed in reversed(tests):  # the first failing filter is written last
        reasons[np.asarray(failed, bool)] = reason
    return reasons


def split_parts(store: ArtifactStore, input_key: str, prefix: str, filters: LaionFilter, rows_per_part: int,
                batch_rows: int = 65536) -> tuple[list[tuple[str, int]], dict]:
    """Filter the parquet (streamed in row batches) into part files; ([(part key, rows)], filter counts)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with store.fs.open(store.path(input_key), "rb") as f:
        reader = pq.ParquetFile(f)
        cols = resolve_columns(reader.schema_arrow.names)
        missing = [role for role, needed in _needs(filters).items() if needed and role not in cols]
        if missing:
            raise ValueError(f"{store.uri(input_key)}: filters need columns {missing} "
                             f"({', '.join('/'.join(COLUMNS[m]) for m in missing)}), has {reader.schema_arrow.names}")
        rename = {cols["url"]: "url", cols["caption"]: "caption"}
        dropped, rows, parts, pending = Counter(), 0, [], []

        def write(tables):
            table = pa.concat_tables(tables)
            buf = io.BytesIO()
            pq.write_table(table, buf)
            key = f"{prefix}/{PARTS_DIR}/{len(parts):05d}.parquet"
            store.write_bytes(key, buf.getvalue())
            parts.append((key, table.num_rows))

        for batch in reader.iter_batches(batch_size=batch_rows):
            table = pa.Table.from_batches([batch])
            rows += table.num_rows
            reasons = drop_reasons(table, cols, filters)
            dropped.update(r for r in reasons if r)
            kept = table.filter(pa.array(reasons == "")).rename_columns([rename.get(n, n) for n in table.column_names])
            pending.append(kept)
            while sum(t.num_rows for t in pending) >= rows_per_part:
                whole = pa.concat_tables(pending)
                write([whole.slice(0, rows_per_part)])
                pending = [whole.slice(rows_per_part)]
        if sum(t.num_rows for t in pending):
            write(pending)
    kept = sum(n for _, n in parts)
    return parts, {"rows": rows, "kept": kept, "dropped": sum(dropped.values()), "dropped_by_reason": dict(sorted(dropped.items())),
                   "columns": cols}


def download_part(store_root: str, storage_options: dict | None, prefix: str, part: int, part_key: str, rows: int,
                  start: int, config: DownloadConfig, extra: list[str]) -> dict:
    """One part = one img2dataset run (a work unit) writing shards start, start+1, ...; skipped if all
    its shards completed."""
    store = ArtifactStore(store_root, storage_options)
    per_part = -(-rows // config.number_sample_per_shard)
    out = f"{prefix}/{SHARDS_DIR}/{part:05d}"
    done = [k for k in store.list(out) if k.endswith("_stats.json")]
    if len(done) < per_part:
        spec = {"kwargs": i2d_kwargs(store, part_key, out, config, extra), "start_shard_id": start,
                "guard": dataclasses.asdict(config.fetch_guard()) if config.guards else None}
        run_img2dataset(spec, _subprocess_env(store))
    from hddm_core.data.unit_runner import worker_name

    return {"part": part, "rows": rows, "shards": per_part, "resumed": len(done) == per_part, "worker": worker_name()}


def select_subset(store: ArtifactStore, prefix: str, shard_parquets: list[str], subset: RecaptionSubset,
                  cols: dict[str, str]) -> dict:
    """Rank the downloaded samples by the score column (high first, ties by key); write the top `count`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    column = cols.get(subset.score, subset.score)
    keys, scores = [], []
    for name in shard_parquets:
        with store.fs.open(store.path(f"{prefix}/{name}"), "rb") as f:
            table = pq.read_table(f)
        if column not in table.column_names:
            raise ValueError(f"recaption subset score column {subset.score!r} is not in the download "
                             f"(columns {table.column_names})")
        ok = np.asarray(table.column("status").to_pylist()) == "success"
        keys += [k for k, good in zip(table.column("key").to_pylist(), ok) if good]
        scores.append(table.column(column).to_numpy(zero_copy_only=False).astype(np.float64)[ok])
    score = np.concatenate(scores) if scores else np.zeros(0)
    order = np.lexsort((np.asarray(keys, dtype=str), -np.nan_to_num(score, nan=-np.inf)))[:int(subset.count)]
    chosen = pa.table({"key": [keys[i] for i in order], "score": score[order],
                       "rank": np.arange(len(order), dtype=np.int64)})
    buf = io.BytesIO()
    pq.write_table(chosen, buf)
    store.write_bytes(f"{prefix}/{SUBSET_NAME}", buf.getvalue())
    return {"requested": int(subset.count), "selected": len(order), "score": column, "of": len(keys),
            "min_score": float(score[order].min()) if len(order) else None}


def run_laion_download(store: ArtifactStore, input_key: str, prefix: str = "download",
                       config: DownloadConfig | None = None, filters: LaionFilter | None = None,
                       subset: RecaptionSubset | None = None, *, rows_per_part: int = 100_000, executor=None,
                       force: bool = False) -> StageManifest:
    """Filter and split the LAION parquet, download each part as a unit, then summary and manifest last."""
    from hddm_core.data.coordinator import InProcess

    config, filters = (config or DownloadConfig()).validate(), (filters or LaionFilter()).validate()
    subset = (subset or RecaptionSubset()).validate()
    if int(rows_per_part) < 1 or int(rows_per_part) % config.number_sample_per_shard:
        raise ValueError(f"rows_per_part must be a positive multiple of number_sample_per_shard="
                         f"{config.number_sample_per_shard}, got {rows_per_part!r}")
    cfg = {**dataclasses.asdict(config), "laion": {"filters": dataclasses.asdict(filters), "rows_per_part": rows_per_part,
                                                   "recaption_subset": dataclasses.asdict(subset)}}
    inputs = {"url_list": hash_store_object(store, input_key)}
    if not force and (done := completed(store, prefix, cfg, inputs)):
        log.info("download already complete at %s; skipping", store.uri(prefix))
        return done
    start_run(store, prefix, cfg, inputs, force, [SHARDS_DIR, SUMMARY_NAME, PARTS_DIR, SUBSET_NAME])
    parts, filtered = split_parts(store, input_key, prefix, filters, int(rows_per_part))
    extra = [c for c in _part_columns(store, parts) if c not in _I2D_META]  # WIDTH, HEIGHT, ... as published
    shards_per_part = int(rows_per_part) // config.number_sample_per_shard
    items = [(store.root, store.storage_options, prefix, i, key, n, i * shards_per_part, config, extra)
             for i, (key, n) in enumerate(parts)]
    records = (executor or InProcess()).run(download_part, items, [f"download-part-{i:05d}" for i in range(len(parts))])
    counts = {"filter": {k: v for k, v in filtered.items() if k != "columns"}, "columns": filtered["columns"],
              "parts": [{"part": r["part"], "rows": r["rows"], "worker": r["worker"], "resumed": r["resumed"]}
                        for r in records]}
    extra_outputs = ()
    if subset.count:
        shard_parquets = sorted(k[len(prefix) + 1:] for k in store.list(f"{prefix}/{SHARDS_DIR}")
                                if k.endswith(".parquet") and "/_tmp" not in k)
        counts["recaption_subset"] = select_subset(store, prefix, shard_parquets, subset, filtered["columns"])
        extra_outputs = (SUBSET_NAME,)
    return _finish(store, prefix, config, cfg, inputs, counts, extra_outputs)


def _part_columns(store: ArtifactStore, parts: list[tuple[str, int]]) -> list[str]:
    import pyarrow.parquet as pq

    if not parts:
        return []
    with store.fs.open(store.path(parts[0][0]), "rb") as f:
        return pq.read_schema(f).names
