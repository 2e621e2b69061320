"""An HTTP server on 127.0.0.1 that serves the embedded dataset's images from an ArtifactStore, so
the real img2dataset download path runs offline. Context manager: started and stopped by callers.

    with LoopbackImageServer(store, "embedded/images") as server:
        write_laion_parquet(store, "embedded", server.base_url)
        download(..., allow_hosts=[server.host_port])
"""
from __future__ import annotations

import logging
import mimetypes
import posixpath
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from hddm_core.storage import ArtifactStore, validate_key

log = logging.getLogger(__name__)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hddm-loopback/1"

    def do_GET(self):  # noqa: N802 (http.server naming)
        srv: LoopbackImageServer = self.server.owner  # type: ignore[attr-defined]
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        try:
            data = srv.store.read_bytes(f"{srv.prefix}/{validate_key(path)}")
        except (ValueError, FileNotFoundError, OSError):
            self.send_error(404, "not found")
            return
        self.send_response(200)
        self.send_header("Content-Type", mimetypes.guess_type(path)[0] or "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):  # quiet: one line per image would flood logs
        log.debug("loopback %s", fmt % args)


class LoopbackImageServer:
    """Serves store/prefix/<path> at http://127.0.0.1:<port>/<path> (port 0 = a free port)."""

    def __init__(self, store: ArtifactStore, prefix: str, port: int = 0, host: str = "127.0.0.1"):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the loopback server binds loopback addresses only, got host={host!r}")
        self.store, self.prefix = store, posixpath.normpath(prefix).strip("/")
        self.host, self.port = host, port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def host_port(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.host_port}"

    def start(self) -> "LoopbackImageServer":
        self._httpd = ThreadingHTTPServer((self.host, self.port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self  # type: ignore[attr-defined]
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hddm-loopback", daemon=True)
        self._thread.start()
        log.info("loopback image server on %s serving %s", self.base_url, self.store.uri(self.prefix))
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = self._thread = None

    def __enter__(self) -> "LoopbackImageServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
