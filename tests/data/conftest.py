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


# -- hostile loopback server ------------------------------------------------------------------------
def _png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A PNG whose header claims width x height RGB pixels (400 MP) but whose body is a few bytes:
    built cheaply; a decoder that trusts the header would allocate ~1.2 GB."""
    import zlib

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width * 3 + 1) * 4, 9)  # four rows of zeros
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def hostile_images() -> dict[str, bytes]:
    import io

    from PIL import Image

    def enc(im, fmt, **kw):
        buf = io.BytesIO()
        im.save(buf, format=fmt, **kw)
        return buf.getvalue()

    rgb = Image.new("RGB", (40, 20), (200, 30, 30))
    rgb.paste((30, 30, 200), (0, 0, 10, 20))  # a blue stripe on the left edge: shows orientation
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    full_jpeg = enc(rgb, "JPEG", quality=90)
    big_jpeg = enc(Image.effect_noise((256, 256), 60).convert("RGB"), "JPEG", quality=90)
    return {
        "good.png": enc(rgb, "PNG"),
        "good.jpg": full_jpeg,
        "exif.jpg": enc(rgb, "JPEG", quality=90, exif=exif.tobytes()),
        "truncated.jpg": big_jpeg[: len(big_jpeg) * 2 // 3],  # header intact, scan data cut
        "cmyk.jpg": enc(rgb.convert("CMYK"), "JPEG", quality=90),
        "palette.png": enc(rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=8), "PNG"),
        "alpha.png": enc(Image.new("RGBA", (30, 30), (0, 200, 0, 128)), "PNG"),
        "la.png": enc(Image.new("LA", (30, 30), (100, 50)), "PNG"),
        "tall.png": enc(Image.new("RGB", (1, 50), (10, 200, 10)), "PNG"),
        "wide.png": enc(Image.new("RGB", (50, 1), (10, 200, 10)), "PNG"),
        "bomb.png": _png_bomb(),
        "notimage.png": b"<html>not an image</html>",
    }


class HostileServer:
    """Loopback HTTP server with one route per hostile case; `secret_port` is a second, internal
    server that must never be reached through a redirect."""

    def __init__(self, secret_port: int):
        import time
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        images = hostile_images()
        hits = self.secret_hits = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, code, body=b"", headers=()):
                self.send_response(code)
                for k, v in headers:
                    self.send_header(k, v)
                if not any(k == "Content-Length" for k, _ in headers):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802
                name = self.path.lstrip("/")
                try:
                    if name in images:
                        self._send(200, images[name], [("Content-Type", "image/png")])
                    elif name.startswith("slow/"):  # a good image after 50 ms (resume tests)
                        time.sleep(0.05)
                        self._send(200, images["good.png"], [("Content-Type", "image/png")])
                    elif name == "redirect-internal":
                        self._send(302, headers=[("Location", f"http://127.0.0.1:{secret_port}/secret.png")])
                    elif name == "redirect-good":
                        self._send(302, headers=[("Location", "/good.png")])
                    elif name == "redirect-loop":
                        self._send(302, headers=[("Location", "/redirect-loop")])
                    elif name == "redirect-file":
                        self._send(302, headers=[("Location", "file:///etc/passwd")])
                    elif name == "drip":  # every read returns fast, the whole body takes ~25 s
                        self.send_response(200)
                        self.send_header("Content-Length", "500")
                        self.end_headers()
                        for _ in range(500):
                            self.wfile.write(b"x")
                            self.wfile.flush()
                            time.sleep(0.05)
                    elif name == "endless":  # no length, never ends
                        self.send_response(200)
                        self.send_header("Content-Type", "image/png")
                        self.end_headers()
                        block = b"\0" * 65536
                        while True:
                            self.wfile.write(block)
                    elif name == "huge-declared":
                        self.send_response(200)
                        self.send_header("Content-Length", str(10 << 30))
                        self.end_headers()
                    else:
                        self._send(404, b"nope")
                except (BrokenPipeError, ConnectionResetError):
                    pass

        class Secret(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):  # noqa: N802
                hits.append(self.path)
                body = images["good.png"]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.secret = ThreadingHTTPServer(("127.0.0.1", secret_port), Secret)
        self.secret.daemon_threads = True
        self.port = self.httpd.server_address[1]
        for srv in (self.httpd, self.secret):
            threading.Thread(target=srv.serve_forever, daemon=True).start()

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, name: str) -> str:
        return f"http://{self.host_port}/{name}"

    def close(self):
        for srv in (self.httpd, self.secret):
            srv.shutdown()
            srv.server_close()


@pytest.fixture(scope="module")
def hostile_server():
    server = HostileServer(free_port())
    yield server
    server.close()
