"""The fetch guards against hostile cases served from loopback servers (no img2dataset here: the
integration through img2dataset is in test_download.py)."""
from __future__ import annotations

import io
import time

import pytest
from PIL import Image

from hddm_core.data.safe_fetch import FetchGuard, FetchRefused, guarded_download, guarded_fetch, sanitize_image

from .conftest import hostile_images


@pytest.fixture
def guard(hostile_server):
    return FetchGuard(allow_hosts=(hostile_server.host_port,), deadline_s=1.5, max_bytes=1 << 20,
                      max_image_pixels=4_000_000)


def refused(fn, *args) -> str:
    with pytest.raises(FetchRefused) as err:
        fn(*args)
    return str(err.value)


def test_allowlisted_loopback_fetch_works(hostile_server, guard):
    im = Image.open(io.BytesIO(guarded_download(hostile_server.url("good.png"), guard)))
    assert im.size == (40, 20) and im.mode == "RGB"
    # a redirect within the allowlisted host is followed
    assert guarded_fetch(hostile_server.url("redirect-good"), guard) == hostile_images()["good.png"]


def test_loopback_refused_without_allowlist(hostile_server):
    assert refused(guarded_fetch, hostile_server.url("good.png"), FetchGuard()) == "guard: internal address"
    # the allowlist is per host:port string: the same server named 'localhost' is not listed
    g = FetchGuard(allow_hosts=(hostile_server.host_port,))
    assert refused(guarded_fetch, f"http://localhost:{hostile_server.port}/good.png", g) == "guard: internal address"


@pytest.mark.parametrize("url", ["http://10.0.0.1/x.png", "http://169.254.169.254/latest/meta-data",
                                 "http://[::1]:80/x", "http://192.168.1.1/", "http://0.0.0.0/",
                                 "http://[::ffff:127.0.0.1]/x"])
def test_private_link_local_and_mapped_addresses_refused(url):
    assert refused(guarded_fetch, url, FetchGuard(deadline_s=1)) == "guard: internal address"


def test_redirect_to_internal_port_refused_and_never_reached(hostile_server, guard):
    assert refused(guarded_fetch, hostile_server.url("redirect-internal"), guard) == "guard: internal address"
    assert hostile_server.secret_hits == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x.png", "gopher://x/", "data:,hi"])
def test_non_http_schemes_refused(url, guard):
    assert refused(guarded_fetch, url, guard).startswith("guard: scheme")


def test_redirect_to_file_and_redirect_loops_refused(hostile_server, guard):
    assert refused(guarded_fetch, hostile_server.url("redirect-file"), guard).startswith("guard: scheme")
    assert refused(guarded_fetch, hostile_server.url("redirect-loop"), guard) == "guard: too many redirects"


def test_slow_drip_hits_total_deadline(hostile_server, guard):
    t0 = time.monotonic()
    assert refused(guarded_fetch, hostile_server.url("drip"), guard) == "guard: deadline exceeded"
    assert time.monotonic() - t0 < 10  # ended by the 1.5 s total deadline, not the 25 s drip


def test_endless_and_oversized_bodies_capped(hostile_server, guard):
    assert refused(guarded_fetch, hostile_server.url("endless"), guard) == "guard: body too large"
    assert refused(guarded_fetch, hostile_server.url("huge-declared"), guard) == "guard: body too large"


def test_decompression_bomb_rejected_from_header(hostile_server, guard):
    import tracemalloc

    tracemalloc.start()
    assert refused(guarded_download, hostile_server.url("bomb.png"), guard) == "guard: image area too large"
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50 << 20  # the 400 MP (1.2 GB decoded) image was never decoded


def test_truncated_and_non_images_refused(guard):
    images = hostile_images()
    assert refused(sanitize_image, images["truncated.jpg"], guard) == "image: truncated or corrupt"
    assert refused(sanitize_image, images["notimage.png"], guard) == "image: unidentified format"


def test_exif_orientation_applied():
    out = Image.open(io.BytesIO(sanitize_image(hostile_images()["exif.jpg"], FetchGuard())))
    assert out.size == (20, 40)  # 40x20 stored, rotated 90 degrees by its EXIF tag
    top = out.getpixel((10, 2))
    assert top[2] > 150 and top[0] < 100  # the blue left stripe is now on top


@pytest.mark.parametrize("name,size", [("cmyk.jpg", (40, 20)), ("palette.png", (40, 20)), ("alpha.png", (30, 30)),
                                       ("la.png", (30, 30)), ("tall.png", (1, 50)), ("wide.png", (50, 1))])
def test_odd_modes_and_shapes_become_rgb(name, size):
    data = hostile_images()[name]
    out = Image.open(io.BytesIO(sanitize_image(data, FetchGuard())))
    assert out.mode in ("RGB", "L") and out.size == size
    if name == "alpha.png":  # half-transparent green over white
        assert out.getpixel((5, 5)) == pytest.approx((127, 227, 127), abs=2)
    if name == "cmyk.jpg":
        r, g, b = out.getpixel((30, 10))
        assert r > 150 and g < 80 and b < 80  # red stays red (not inverted CMYK)


def test_good_rgb_passes_through_untouched():
    data = hostile_images()["good.jpg"]
    assert sanitize_image(data, FetchGuard()) == data
