"""ArtifactStore against a local folder and a real S3 endpoint (moto's server on 127.0.0.1)."""
from __future__ import annotations

import logging
import os

import boto3
import pytest

from hddm_core.storage import TMP_MARK, ArtifactStore, open_store, validate_key

from .conftest import FAKE_KEY_ID, FAKE_SECRET, s3_store

MiB = 1 << 20


def big(n: int, seed: int) -> bytes:
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a", "a\\b", "s3://x", "a/b.tmp-123", "a\x00b"])
def test_validate_key_rejects_escapes_and_reserved_names(key):
    with pytest.raises(ValueError, match="key"):
        validate_key(key)


def test_local_roundtrip_and_atomic_failure(tmp_path):
    store = open_store(str(tmp_path / "art"))
    store.write_json("a/b.json", {"x": 1})
    assert store.read_json("a/b.json") == {"x": 1}
    with pytest.raises(RuntimeError):
        with store.open_write("a/b.json") as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert store.read_json("a/b.json") == {"x": 1}  # the old object survives a failed overwrite
    assert store.list() == ["a/b.json"]  # no temp left behind
    assert not any(TMP_MARK in p for p in os.listdir(tmp_path / "art" / "a"))


def test_root_with_embedded_credentials_is_refused_without_echoing_them():
    with pytest.raises(ValueError) as err:
        ArtifactStore("s3://AKIAX:topsecretvalue@bucket/prefix")
    assert "topsecretvalue" not in str(err.value)


def test_s3_roundtrip(moto_endpoint, s3_bucket, tmp_path):
    store = s3_store(moto_endpoint, s3_bucket)
    assert store.list() == []
    data = big(3 * MiB, 1)
    store.write_bytes("x/data.bin", data)
    store.write_json("x/meta.json", {"n": 3})
    src = tmp_path / "f.bin"
    src.write_bytes(b"hello")
    store.put_file(str(src), "y/f.bin")
    assert store.read_bytes("x/data.bin") == data
    assert store.size("x/data.bin") == len(data)
    assert store.list() == ["x/data.bin", "x/meta.json", "y/f.bin"]
    assert store.list("x") == ["x/data.bin", "x/meta.json"]
    with store.local_path("y/f.bin") as p:
        assert open(p, "rb").read() == b"hello"
    child = store.child("x")
    assert child.read_json("meta.json") == {"n": 3}
    assert child.uri("meta.json") == f"s3://{s3_bucket}/root/x/meta.json"
    store.delete("x")
    assert store.list() == ["y/f.bin"] and not store.exists("x/meta.json")


def test_control_plain_fsspec_publishes_truncated_objects(moto_endpoint, s3_bucket):
    """Why the store exists: an exception inside fs.open(key, 'wb') still commits what was written."""
    store = s3_store(moto_endpoint, s3_bucket, default_block_size=5 * MiB)
    fs = store.fs
    with pytest.raises(RuntimeError):
        with fs.open(f"{s3_bucket}/plain/small.bin", "wb") as f:
            f.write(b"first half")
            raise RuntimeError("producer failed")
    with pytest.raises(RuntimeError):
        with fs.open(f"{s3_bucket}/plain/multi.bin", "wb", block_size=5 * MiB) as f:
            f.write(big(7 * MiB, 2))  # one 5 MiB part uploaded, the rest buffered
            raise RuntimeError("producer failed")
    fs.invalidate_cache()
    assert fs.cat(f"{s3_bucket}/plain/small.bin") == b"first half"  # truncated, under the final key
    assert fs.size(f"{s3_bucket}/plain/multi.bin") == 7 * MiB  # truncated multipart object published


def test_exception_inside_store_write_publishes_nothing(moto_endpoint, s3_bucket):
    store = s3_store(moto_endpoint, s3_bucket, default_block_size=5 * MiB)
    store.write_bytes("k/old.bin", b"previous complete content")
    for key, n in (("k/new.bin", 100), ("k/multi.bin", 12 * MiB), ("k/old.bin", 7 * MiB)):
        with pytest.raises(RuntimeError):
            with store.open_write(key) as f:
                f.write(big(n, 3))
                raise RuntimeError("producer failed")
    assert not store.exists("k/new.bin") and not store.exists("k/multi.bin")
    assert store.read_bytes("k/old.bin") == b"previous complete content"
    raw = boto3.client("s3", endpoint_url=moto_endpoint).list_objects_v2(Bucket=s3_bucket).get("Contents", [])
    assert [o["Key"] for o in raw] == ["root/k/old.bin"]  # temp keys cleaned up too
    uploads = boto3.client("s3", endpoint_url=moto_endpoint).list_multipart_uploads(Bucket=s3_bucket)
    assert not uploads.get("Uploads")  # the aborted multipart upload is not left dangling


def test_failure_inside_multipart_upload_publishes_nothing(moto_endpoint, s3_bucket, monkeypatch):
    """A fault raised by s3fs itself on the second part of a 12 MiB multipart upload."""
    from s3fs.core import S3File

    store = s3_store(moto_endpoint, s3_bucket, default_block_size=5 * MiB)
    original = S3File._upload_chunk
    calls = {"n": 0}

    def flaky(self, final=False):
        calls["n"] += 1
        if calls["n"] == 2:
            raise ConnectionResetError("injected reset during upload_part")
        return original(self, final)

    monkeypatch.setattr(S3File, "_upload_chunk", flaky)
    data = big(12 * MiB, 4)
    with pytest.raises(ConnectionResetError):
        store.write_bytes("m/obj.bin", data)
    assert calls["n"] >= 2
    assert not store.exists("m/obj.bin")
    monkeypatch.setattr(S3File, "_upload_chunk", original)
    store.write_bytes("m/obj.bin", data)
    assert store.read_bytes("m/obj.bin") == data


def test_failure_during_commit_leaves_previous_object(moto_endpoint, s3_bucket, monkeypatch):
    store = s3_store(moto_endpoint, s3_bucket)
    store.write_bytes("c/obj.bin", b"v1")

    def broken_copy(*a, **k):
        raise ConnectionResetError("injected reset during server-side copy")

    monkeypatch.setattr(store.fs, "copy", broken_copy)
    with pytest.raises(ConnectionResetError):
        store.write_bytes("c/obj.bin", b"v2 longer content")
    monkeypatch.undo()
    assert store.read_bytes("c/obj.bin") == b"v1"
    assert store.list("c") == ["c/obj.bin"]


def test_connection_resets_leave_every_object_complete_or_absent(moto_endpoint, s3_bucket, reset_proxy):
    """Real TCP resets mid-request (a proxy drops connections after part of the body went out)."""
    flaky = s3_store(reset_proxy.url, s3_bucket, default_block_size=5 * MiB, skip_instance_cache=True,
                     config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 5, "read_timeout": 20})
    flaky.fs.retries = 2  # s3fs's own retry loop (class attribute, 5 by default)
    direct = s3_store(moto_endpoint, s3_bucket)
    sizes = [200, 64 * 1024, 6 * MiB, 11 * MiB]
    expected, outcomes = {}, []
    for trial in range(8):
        size = sizes[trial % len(sizes)]
        key = f"r/obj{trial}.bin"
        data = big(size, 10 + trial)
        reset_proxy.arm(after_bytes=[100, 30_000, 3 * MiB, 8 * MiB][trial % 4] if trial % 2 == 0 else size // 2,
                        faults=1 + 2 * (trial % 3))  # 1, 3 or 5 resets: within or past s3fs's retries
        try:
            flaky.write_bytes(key, data)
            outcomes.append("ok")
        except Exception:  # noqa: BLE001 (any failure is allowed; a partial object is not)
            outcomes.append("failed")
        expected[key] = data
        reset_proxy.arm(0, 0)
    print("reset outcomes", outcomes, "resets", reset_proxy.resets)
    assert reset_proxy.resets >= 4, "the proxy must actually have reset connections"
    assert "failed" in outcomes, outcomes  # some writes really broke
    for key, data in expected.items():
        if direct.exists(key):
            assert direct.read_bytes(key) == data, f"{key} is present but not complete"
        assert TMP_MARK not in "".join(direct.list())
    assert set(direct.list("r")) <= set(expected)


def test_listing_cache_does_not_go_stale_across_writers(moto_endpoint, s3_bucket):
    reader = s3_store(moto_endpoint, s3_bucket)
    assert reader.list() == [] and not reader.exists("a.txt")
    client = boto3.client("s3", endpoint_url=moto_endpoint)
    client.put_object(Bucket=s3_bucket, Key="root/a.txt", Body=b"short")  # another writer, not via fsspec
    assert reader.list() == ["a.txt"] and reader.read_bytes("a.txt") == b"short"
    client.put_object(Bucket=s3_bucket, Key="root/a.txt", Body=b"a much longer second version")
    assert reader.size("a.txt") == 28 and reader.read_bytes("a.txt") == b"a much longer second version"
    other = s3_store(moto_endpoint, s3_bucket, skip_instance_cache=True)  # a second store instance
    other.write_bytes("b.txt", b"b")
    assert reader.list() == ["a.txt", "b.txt"]
    client.delete_object(Bucket=s3_bucket, Key="root/a.txt")
    assert not reader.exists("a.txt") and reader.list() == ["b.txt"]


def test_credentials_never_in_repr_or_logs(moto_endpoint, s3_bucket, caplog):
    store = ArtifactStore(f"s3://{s3_bucket}/root", {"client_kwargs": {"endpoint_url": moto_endpoint},
                                                      "key": FAKE_KEY_ID, "secret": FAKE_SECRET})
    with caplog.at_level(logging.DEBUG):
        store.write_bytes("x.bin", b"x")
        store.read_bytes("x.bin")
        store.list()
        logging.getLogger("hddm_core.test").info("store %r", store)
    assert FAKE_SECRET not in repr(store) and FAKE_KEY_ID not in repr(store)
    assert FAKE_SECRET not in caplog.text
    assert store.read_bytes("x.bin") == b"x"
