"""Fixtures for the data tests: a real S3 endpoint (moto's server on 127.0.0.1), a TCP proxy in front of
it that resets connections on demand, and loopback HTTP servers. All started and stopped here."""
from __future__ import annotations

import os
import socket
import struct
import threading
import uuid

import pytest

FAKE_KEY_ID = "AKIAHDDMTESTKEYID000"
FAKE_SECRET = "hddm-test-secret-0123456789abcdefSECRET"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint():
    """http://127.0.0.1:PORT of a moto S3 server; fake credentials in the environment meanwhile."""
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                            "AWS_ENDPOINT_URL")}
    os.environ.update(AWS_ACCESS_KEY_ID=FAKE_KEY_ID, AWS_SECRET_ACCESS_KEY=FAKE_SECRET,
                      AWS_DEFAULT_REGION="us-east-1")
    os.environ.pop("AWS_ENDPOINT_URL", None)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_bucket(moto_endpoint):
    """A fresh bucket name on the moto server."""
    import boto3

    name = f"hddm-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


def s3_store(endpoint: str, bucket: str, prefix: str = "root", **extra):
    from hddm_core.storage import ArtifactStore

    options = {"client_kwargs": {"endpoint_url": endpoint}, **extra}
    return ArtifactStore(f"s3://{bucket}/{prefix}", options)


class ResetProxy:
    """TCP proxy on 127.0.0.1 in front of an upstream; when armed, the next `faults` connections are
    reset (RST) after forwarding `after_bytes` bytes of the request upstream: the server sees a
    half-sent request, the client a connection reset mid-upload."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.after_bytes, self.faults, self.resets = 0, 0, 0
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def arm(self, after_bytes: int, faults: int) -> None:
        with self.lock:
            self.after_bytes, self.faults = after_bytes, faults

    def _accept(self):
        while not self._stop:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                doomed = self.faults > 0
                if doomed:
                    self.faults -= 1
                limit = self.after_bytes
            threading.Thread(target=self._serve, args=(client, doomed, limit), daemon=True).start()

    @staticmethod
    def _reset(s: socket.socket):
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        except OSError:
            pass

    def _serve(self, client, doomed, limit):
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        except OSError:
            self._reset(client)
            return
        sent = [0]

        def up():
            try:
                while chunk := client.recv(65536):
                    if doomed and sent[0] + len(chunk) > limit:
                        upstream.sendall(chunk[: max(0, limit - sent[0])])
                        with self.lock:
                            self.resets += 1
                        self._reset(client)
                        self._reset(upstream)
                        return
                    upstream.sendall(chunk)
                    sent[0] += len(chunk)
            except OSError:
                pass
            finally:
                try:
                    upstream.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

        def down():
            try:
                while chunk := upstream.recv(65536):
                    client.sendall(chunk)
            except OSError:
                pass
            finally:
                try:
                    client.close()
                except OSError:
                    pass

        t = threading.Thread(target=up, daemon=True)
        t.start()
        down()
        t.join(timeout=5)

    def close(self):
        self._stop = True
        self.sock.close()


@pytest.fixture
def reset_proxy(moto_endpoint):
    proxy = ResetProxy(int(moto_endpoint.rsplit(":", 1)[1]))
    yield proxy
    proxy.close()
