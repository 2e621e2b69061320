"""Store reads are bounded (regular files only, size caps, strict JSON) and killed writes' temporaries
are cleaned up; check_root says in one line why a root cannot be used, writing nothing."""
from __future__ import annotations

import json
import os
import threading
import time

import pytest

from hddm_core.storage import (MAX_JSON_BYTES, STALE_TMP_AGE_S, TMP_MARK, ArtifactStore, check_root, loads_strict,
                               open_store)

from .conftest import s3_store


def run_with_timeout(fn, seconds: float = 5.0):
    """fn() in a thread; fails the test (instead of hanging it) when fn blocks."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "the read blocked"
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_manifest_symlinked_to_dev_zero_is_refused_not_read_forever(tmp_path):
    store = open_store(str(tmp_path / "art"))
    os.makedirs(tmp_path / "art" / "stage")
    os.symlink("/dev/zero", tmp_path / "art" / "stage" / "_manifest.json")
    with pytest.raises(ValueError, match="not a regular file"):
        run_with_timeout(lambda: store.read_json("stage/_manifest.json"))
    with pytest.raises(ValueError, match="not a regular file"):
        run_with_timeout(lambda: store.read_bytes("stage/_manifest.json"))


def test_fifo_is_refused_without_blocking(tmp_path):
    store = open_store(str(tmp_path / "art"))
    os.mkfifo(tmp_path / "art" / "pipe.json")
    with pytest.raises(ValueError, match="not a regular file"):
        run_with_timeout(lambda: store.read_json("pipe.json"))


def test_folder_is_refused(tmp_path):
    store = open_store(str(tmp_path / "art"))
    os.makedirs(tmp_path / "art" / "d")
    with pytest.raises(ValueError, match="folder|not a regular file"):
        store.read_bytes("d")


def test_reads_are_capped(tmp_path):
    store = open_store(str(tmp_path / "art"))
    store.write_bytes("big.bin", b"x" * 1000)
    assert store.read_bytes("big.bin", max_bytes=1000) == b"x" * 1000
    with pytest.raises(ValueError, match="1000 bytes, over the 999-byte limit"):
        store.read_bytes("big.bin", max_bytes=999)
    store.write_bytes("big.json", b"[" + b"0," * (MAX_JSON_BYTES // 2) + b"0]")
    with pytest.raises(ValueError, match="limit"):
        store.read_json("big.json")


def test_s3_reads_are_capped(moto_endpoint, s3_bucket):
    store = s3_store(moto_endpoint, s3_bucket)
    store.write_bytes("a.bin", b"y" * 100)
    assert store.read_bytes("a.bin", max_bytes=100) == b"y" * 100
    with pytest.raises(ValueError, match="over the 99-byte limit"):
        store.read_bytes("a.bin", max_bytes=99)


@pytest.mark.parametrize("text", ['{"latent_scale": Infinity}', '{"latent_scale": -Infinity}',
                                  '{"latent_scale": NaN}', '{"latent_scale": 1e999}',
                                  '{"image_resolution": 1000000000000000000000000000000}'])
def test_json_refuses_non_finite_and_absurd_numbers(tmp_path, text):
    store = open_store(str(tmp_path / "art"))
    store.write_bytes("m.json", text.encode())
    with pytest.raises(ValueError, match="m.json is not valid JSON"):
        store.read_json("m.json")
    assert json.loads(text) is not None  # what the store used to accept


def test_strict_json_keeps_ordinary_numbers():
    assert loads_strict('{"a": 1.5e10, "b": -9223372036854775808, "c": 9223372036854775807}') == \
        {"a": 1.5e10, "b": -2**63, "c": 2**63 - 1}


def _leave_temp(store: ArtifactStore, key: str, age_s: float) -> str:
    """What a writer killed mid-write leaves: '<name>.tmp-<12 hex>' with partial data."""
    path = store.path(key) + TMP_MARK + "0123456789ab"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"partial")
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


def test_next_write_of_the_key_removes_its_stale_temporaries(tmp_path):
    store = open_store(str(tmp_path / "art"))
    stale = _leave_temp(store, "a/b.json", STALE_TMP_AGE_S + 60)
    fresh_other = _leave_temp(store, "a/c.json", STALE_TMP_AGE_S + 60)  # another key: not this write's business
    young = store.path("a/b.json") + TMP_MARK + "ffffffffffff"
    with open(young, "wb") as f:  # a live concurrent writer of the same key: left alone
        f.write(b"live")
    store.write_json("a/b.json", {"x": 1})
    assert not os.path.exists(stale)
    assert os.path.exists(fresh_other) and os.path.exists(young)
    assert store.read_json("a/b.json") == {"x": 1}


def test_sweep_removes_only_own_stale_temporaries(tmp_path):
    store = open_store(str(tmp_path / "art"))
    old = _leave_temp(store, "s/x.bin", 7200)
    recent = _leave_temp(store, "s/y.bin", 10)
    lookalike = os.path.join(store.base, "s", "z.tmp-notours")  # not <12 hex>: a user's file
    with open(lookalike, "wb") as f:
        f.write(b"user file")
    os.utime(lookalike, (time.time() - 7200,) * 2)
    removed = store.sweep_temporaries("s", older_than_s=3600)
    assert removed == [old]
    assert os.path.exists(recent) and os.path.exists(lookalike)
    assert store.sweep_temporaries(older_than_s=0) == [recent]
    with pytest.raises(ValueError, match="older_than_s"):
        store.sweep_temporaries(older_than_s=float("inf"))


def test_s3_stale_temporaries_removed_on_next_write(moto_endpoint, s3_bucket):
    store = s3_store(moto_endpoint, s3_bucket)
    store.fs.pipe(store.path("k.json") + TMP_MARK + "0123456789ab", b"partial")
    assert store.sweep_temporaries(only_for="k.json", older_than_s=3600) == []  # young: kept
    assert len(store.sweep_temporaries(only_for="k.json", older_than_s=0)) == 1
    assert store.fs.find(store.base) == []


def test_check_root_refuses_a_file_and_writes_nothing(tmp_path):
    target = tmp_path / "afile"
    target.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_root(str(target))
    with pytest.raises(ValueError, match="is a file"):
        check_root(str(target / "sub"))
    with pytest.raises(ValueError, match="is a file, not a folder"):
        ArtifactStore(str(target))  # used to end in FileExistsError's traceback
    check_root(str(tmp_path / "new" / "root"))
    assert not (tmp_path / "new").exists()


def test_check_root_refuses_an_unwritable_folder(tmp_path, monkeypatch):
    from hddm_core import storage_checks

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(storage_checks.os, "access", lambda path, mode: False)  # as a non-root user on 0o500
    with pytest.raises(ValueError, match="not writable"):
        check_root(str(tmp_path / "ro" / "art"))


def test_check_root_refuses_s3_without_credentials(monkeypatch, tmp_path):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ValueError, match="no S3 credentials"):
        check_root("s3://bucket/prefix")


def test_check_root_reports_an_unreachable_endpoint(monkeypatch):
    from .conftest import FAKE_KEY_ID, FAKE_SECRET, free_port

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens
    start = time.monotonic()
    with pytest.raises(ValueError, match="unreachable") as err:
        check_root("s3://bucket/prefix", timeout_s=2)
    assert time.monotonic() - start < 30
    assert FAKE_SECRET not in str(err.value) and FAKE_KEY_ID not in str(err.value)


def test_check_root_accepts_a_reachable_bucket_and_names_a_missing_one(moto_endpoint, s3_bucket, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    assert check_root(f"s3://{s3_bucket}/p") == f"s3://{s3_bucket}/p"
    with pytest.raises(ValueError, match="does not exist"):
        check_root("s3://no-such-bucket-hddm/p")
