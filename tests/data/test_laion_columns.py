"""LAION parquets are accepted with their published column names (URL, TEXT) as well as (url, caption)."""
from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hddm_core.data.download import _input_columns
from hddm_core.storage import ArtifactStore


def _parquet(store, key, columns):
    buf = io.BytesIO()
    pq.write_table(pa.table({c: ["x"] for c in columns}), buf)
    store.write_bytes(key, buf.getvalue())


@pytest.mark.parametrize("columns, url, caption", [
    (["URL", "TEXT", "WIDTH", "HEIGHT", "similarity"], "URL", "TEXT"),  # laion2B-en as published
    (["url", "caption", "width"], "url", "caption"),
])
def test_columns_are_found(tmp_path, columns, url, caption):
    store = ArtifactStore(str(tmp_path))
    _parquet(store, "list.parquet", columns)
    assert _input_columns(store, "list.parquet") == (columns, url, caption)


def test_missing_columns_are_named(tmp_path):
    store = ArtifactStore(str(tmp_path))
    _parquet(store, "list.parquet", ["URL", "caption"])
    with pytest.raises(ValueError, match=r"one of \[\['url', 'caption'\], \['URL', 'TEXT'\]\]; has \['URL', 'caption'\]"):
        _input_columns(store, "list.parquet")
