"""Guards for what img2dataset 1.47 leaves open (each one reproduced in tests/data; docs/stack-notes.md): it follows redirects to internal
addresses, reads file:// rows, has a per-read but no total timeout, no body cap, decodes a
400-megapixel PNG bomb, and ignores EXIF orientation.

`guarded_fetch` replaces its urllib fetch: only http(s); every hop's host is resolved and refused if
any address falls in a special-purpose range (the table in hddm_core.data.address_policy), unless
host:port is allowlisted; the socket connects to the vetted address (no DNS rebinding between check and use);
redirects are followed by hand and re-checked; a watchdog enforces one total deadline per request
(a slow drip whose every read is fast still ends); the body is capped. `sanitize_image` then reads
only the image header to reject decompression bombs by area before any pixel is decoded, decodes
the rest (truncated files refused), applies EXIF orientation and normalises every Pillow mode to RGB
(hddm_core.data.image_rgb: 16-bit and float scaled, alpha on white), re-encoding only when something changed.

`GuardedDownloader` plugs both into img2dataset's own Downloader (its worker processes are spawned,
so the hook installs itself in each worker when the pickled downloader is first called). Refusals are
returned as img2dataset error messages with stable reason strings ("guard: ..."), which img2dataset
counts per shard in its stats; a refused row never raises.
"""
from __future__ import annotations

import dataclasses
import http.client
import io
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

from PIL import Image

from hddm_core.data.address_policy import address_is_public, check_allow_hosts
from hddm_core.data.image_rgb import exif_upright, to_rgb

ALLOWED_SCHEMES = ("http", "https")
USER_AGENT = "Mozilla/5.0 (compatible; hddm-pipeline; +img2dataset)"


class FetchRefused(Exception):
    """A row refused by a guard; str(self) is a stable reason that stats can count."""


@dataclass
class FetchGuard:
    allow_hosts: tuple[str, ...] = ()  # "host:port" or "host" exempt from the private-address check
    deadline_s: float = 10.0  # total per request: DNS, connect, redirects, headers and body
    max_bytes: int = 20 << 20  # body cap
    max_image_pixels: int = 40_000_000  # width * height, checked from the header before decoding
    max_redirects: int = 5
    reencode_format: str = "PNG"  # lossless re-encoding for images the guard had to transform

    def validate(self) -> "FetchGuard":
        if self.deadline_s <= 0 or self.max_bytes <= 0 or self.max_image_pixels <= 0 or self.max_redirects < 0:
            raise ValueError(f"fetch guard limits must be positive: {dataclasses.asdict(self)}")
        check_allow_hosts(self.allow_hosts)
        return self

    def allows(self, host: str, port: int) -> bool:
        host = host.lower().strip("[]")
        return any(a.lower() in (host, f"{host}:{port}", f"[{host}]:{port}") for a in self.allow_hosts)


def resolve_vetted(host: str, port: int, guard: FetchGuard) -> str:
    """An address to connect to for host:port, refusing internal ones unless allowlisted."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise FetchRefused(f"dns: {err.strerror or err}") from None
    addrs = [info[4][0] for info in infos]
    if not addrs:
        raise FetchRefused("dns: no address")
    if not guard.allows(host, port) and not all(address_is_public(a) for a in addrs):
        raise FetchRefused("guard: internal address")  # which range: address_policy.refusal_reason
    return addrs[0]


class _Watchdog:
    """Shuts the socket down at the deadline so any blocked read returns (the total deadline)."""

    def __init__(self, seconds: float):
        self.sock: socket.socket | None = None
        self.fired = False
        self._timer = threading.Timer(max(seconds, 0.0), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self):
        self.fired = True
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cancel(self):
        self._timer.cancel()


def _open_connection(scheme: str, host: str, ip: str, port: int, timeout: float) -> http.client.HTTPConnection:
    sock = socket.create_connection((ip, port), timeout=timeout)
    if scheme == "https":
        sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        conn = http.client.HTTPSConnection(host, port, timeout=timeout)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    conn.sock = sock  # connected to the vetted address; Host header still names the host
    return conn


def guarded_fetch(url: str, guard: FetchGuard, headers: dict | None = None,
                  header_check=None) -> bytes:
    """The body of url under every guard, or FetchRefused(reason). header_check(headers) may return
    a refusal reason (img2dataset's X-Robots-Tag check)."""
    deadline = time.monotonic() + guard.deadline_s
    for _hop in range(guard.max_redirects + 1):
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ALLOWED_SCHEMES:
            raise FetchRefused(f"guard: scheme {scheme or 'none'!s} not allowed")
        host = parts.hostname
        if not host:
            raise FetchRefused("guard: url without host")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise FetchRefused("guard: bad port") from None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchRefused("guard: deadline exceeded")
        ip = resolve_vetted(host, port, guard)
        dog = _Watchdog(remaining)
        conn = None
        try:
            conn = _open_connection(scheme, host, ip, port, timeout=remaining)
            dog.sock = conn.sock
            path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
            conn.request("GET", path, headers={"User-Agent": USER_AGENT, **(headers or {})})
            resp = conn.getresponse()
            if resp.status in (301, 302, 303, 307, 308):
                location = resp.getheader("Location")
                if not location:
                    raise FetchRefused(f"http: {resp.status} without location")
                url = urllib.parse.urljoin(url, location)
                continue
            if resp.status != 200:
                raise FetchRefused(f"http: status {resp.status}")
            if header_check is not None and (reason := header_check(resp.headers)):
                raise FetchRefused(reason)
            length = resp.getheader("Content-Length")
            if length is not None and length.isdigit() and int(length) > guard.max_bytes:
                raise FetchRefused("guard: body too large")
            chunks, total = [], 0
            while True:
                chunk = resp.read1(1 << 16)  # returns after one socket read: slow drips hit the deadline
                if dog.fired or time.monotonic() > deadline:
                    raise FetchRefused("guard: deadline exceeded")
                if not chunk:
                    break
                total += len(chunk)
                if total > guard.max_bytes:
                    raise FetchRefused("guard: body too large")
                chunks.append(chunk)
            if length is not None and length.isdigit() and total != int(length):
                raise FetchRefused("http: incomplete body")
            return b"".join(chunks)
        except FetchRefused:
            raise
        except (OSError, http.client.HTTPException) as err:
            if dog.fired or time.monotonic() > deadline:
                raise FetchRefused("guard: deadline exceeded") from None
            raise FetchRefused(f"http: {type(err).__name__}") from None
        finally:
            dog.cancel()
            if conn is not None:
                conn.close()
    raise FetchRefused("guard: too many redirects")


def sanitize_image(data: bytes, guard: FetchGuard) -> bytes:
    """Image bytes img2dataset's OpenCV resizer reads correctly, or FetchRefused(reason)."""
    try:
        im = Image.open(io.BytesIO(data))  # parses the header only
    except Image.DecompressionBombError:
        raise FetchRefused("guard: image area too large") from None
    except Exception:  # noqa: BLE001 (anything Pillow cannot identify is one reason)
        raise FetchRefused("image: unidentified format") from None
    width, height = im.size
    if width < 1 or height < 1 or width * height > guard.max_image_pixels:
        raise FetchRefused("guard: image area too large")  # before a single pixel is decoded
    try:
        im.load()
    except Image.DecompressionBombError:
        raise FetchRefused("guard: image area too large") from None
    except Exception as err:  # noqa: BLE001 (truncated streams raise OSError; broken ones others)
        if "truncated" in str(err).lower() or isinstance(err, (OSError, SyntaxError, EOFError)):
            raise FetchRefused("image: truncated or corrupt") from None
        raise FetchRefused("image: undecodable") from None
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 (a broken EXIF block is no orientation)
        orientation = 1
    if orientation in (None, 1) and im.mode in ("RGB", "L") and "transparency" not in im.info \
            and getattr(im, "n_frames", 1) == 1:
        return data  # nothing to fix: pass the original bytes through untouched
    out = to_rgb(exif_upright(im))  # 16-bit and float scaled, alpha on white, CMYK/LAB/... converted
    buf = io.BytesIO()
    out.save(buf, format=guard.reencode_format, compress_level=1) if guard.reencode_format == "PNG" \
        else out.save(buf, format=guard.reencode_format, quality=95)
    return buf.getvalue()


def guarded_download(url: str, guard: FetchGuard, header_check=None) -> bytes:
    return sanitize_image(guarded_fetch(url, guard, header_check=header_check), guard)


# -- img2dataset hook ------------------------------------------------------------------------------
_ACTIVE_GUARD: FetchGuard | None = None


def _download_image(row, timeout, user_agent_token, disallowed_header_directives):
    """Drop-in for img2dataset.downloader.download_image (same signature and return contract)."""
    from img2dataset.downloader import is_disallowed

    key, url = row
    guard = _ACTIVE_GUARD
    check = None
    if disallowed_header_directives:
        def check(headers):
            if is_disallowed(headers, user_agent_token, disallowed_header_directives):
                return "Use of image disallowed by X-Robots-Tag directive"
            return None
    try:
        return key, io.BytesIO(guarded_download(str(url), guard, header_check=check)), None
    except FetchRefused as refused:
        return key, None, str(refused)
    except Exception as err:  # noqa: BLE001 (a row never crashes the shard)
        return key, None, f"error: {type(err).__name__}"


def install_guard(guard: FetchGuard) -> None:
    """Route this process's img2dataset fetches through the guards."""
    global _ACTIVE_GUARD
    import img2dataset.downloader as i2d_downloader

    _ACTIVE_GUARD = guard.validate()
    Image.MAX_IMAGE_PIXELS = guard.max_image_pixels
    i2d_downloader.download_image = _download_image


def guarded_downloader_class():
    """img2dataset's Downloader with the guards installed in whichever process calls it."""
    from img2dataset.downloader import Downloader

    class GuardedDownloader(Downloader):
        guard: FetchGuard

        def __call__(self, row):
            install_guard(self.guard)  # runs inside the spawned worker, where the shard is downloaded
            return super().__call__(row)

    GuardedDownloader.__module__ = __name__
    GuardedDownloader.__qualname__ = "GuardedDownloader"
    return GuardedDownloader


def __getattr__(name):  # pickle resolves hddm_core.data.safe_fetch.GuardedDownloader lazily
    if name == "GuardedDownloader":
        cls = guarded_downloader_class()
        globals()["GuardedDownloader"] = cls
        return cls
    raise AttributeError(name)


def make_guarded_downloader_factory(guard: FetchGuard):
    """A stand-in for img2dataset.main.Downloader that builds GuardedDownloaders carrying guard."""
    guard = guard.validate()

    def factory(**kwargs):
        from hddm_core.data import safe_fetch

        obj = safe_fetch.GuardedDownloader(**kwargs)
        obj.guard = guard
        return obj

    return factory
