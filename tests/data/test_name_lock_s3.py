"""The expert-name lock on a real S3 endpoint (moto on 127.0.0.1): PutObject with If-None-Match: *
creates the lock only if absent, so a second registration of the same name is refused."""
import json

import pytest

from hddm_core.contrib.name_lock import LOCK_NAME, NameBusy, name_lock

from .conftest import s3_store


def test_s3_lock_is_a_conditional_create(moto_endpoint, s3_bucket):
    store = s3_store(moto_endpoint, s3_bucket)
    other = s3_store(moto_endpoint, s3_bucket, skip_instance_cache=True)  # another submitter's client
    with name_lock(store, "experts/registry/x") as owner:
        assert store.read_json(f"experts/registry/x/{LOCK_NAME}")["owner"] == owner
        with pytest.raises(NameBusy, match="in progress"):
            with name_lock(other, "experts/registry/x"):
                pass
    assert not store.exists(f"experts/registry/x/{LOCK_NAME}")
    store.write_bytes(f"experts/registry/x/{LOCK_NAME}", json.dumps({"owner": "killed", "expires": 0}).encode())
    with name_lock(other, "experts/registry/x") as owner:  # an expired lease is taken over
        assert other.read_json(f"experts/registry/x/{LOCK_NAME}")["owner"] == owner
