"""Every special-purpose range of the download guard's address table, IPv4 and IPv6, one case each:
refused ranges, embedded-IPv4 forms judged by their IPv4 address, and public addresses allowed."""
from __future__ import annotations

import socket

import pytest

from hddm_core.data import safe_fetch
from hddm_core.data.address_policy import IPV4_TABLE, IPV6_TABLE, address_is_public, refusal_reason
from hddm_core.data.safe_fetch import FetchGuard, FetchRefused, resolve_vetted

REFUSED = {
    "100.100.100.200": "100.64.0.0/10",  # shared address space: Alibaba Cloud metadata (the reported gap)
    "100.64.0.1": "100.64.0.0/10",
    "2002:7f00:1::": "127.0.0.0/8",  # 6to4 wrapping 127.0.0.1 (the reported gap)
    "2002:a9fe:a9fe::1": "169.254.0.0/16",  # 6to4 wrapping the AWS metadata address
    "0.0.0.0": "0.0.0.0/8", "0.1.2.3": "0.0.0.0/8",
    "10.1.2.3": "10.0.0.0/8", "172.16.0.1": "172.16.0.0/12", "192.168.1.1": "192.168.0.0/16",
    "127.0.0.1": "127.0.0.0/8", "127.255.0.1": "127.0.0.0/8",
    "169.254.169.254": "169.254.0.0/16",
    "192.0.0.9": "192.0.0.0/24", "192.0.0.170": "192.0.0.0/24",
    "192.0.2.1": "192.0.2.0/24", "198.51.100.7": "198.51.100.0/24", "203.0.113.9": "203.0.113.0/24",
    "192.31.196.1": "192.31.196.0/24", "192.52.193.1": "192.52.193.0/24", "192.175.48.1": "192.175.48.0/24",
    "192.88.99.1": "192.88.99.0/24",
    "198.18.0.1": "198.18.0.0/15", "198.19.255.254": "198.18.0.0/15",
    "224.0.0.1": "224.0.0.0/4", "239.255.255.250": "224.0.0.0/4",
    "240.0.0.1": "240.0.0.0/4", "255.255.255.255": "240.0.0.0/4",
    "::": "::/128", "::1": "::1/128",
    "::ffff:127.0.0.1": "127.0.0.0/8", "::ffff:10.0.0.1": "10.0.0.0/8", "::ffff:100.100.100.200": "100.64.0.0/10",
    "::127.0.0.1": "::/96", "::8.8.8.8": "::/96",
    "64:ff9b::7f00:1": "127.0.0.0/8", "64:ff9b::a9fe:a9fe": "169.254.0.0/16",
    "64:ff9b:1::808:808": "64:ff9b:1::/48",
    "100::1": "100::/64",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2": "192.0.2.0/24",  # RFC 4380's Teredo example: client 192.0.2.45
    "2001:0:7f00:1:8000:63bf:3fff:fdd2": "127.0.0.0/8",  # Teredo server 127.0.0.1
    "2001:2::1": "2001::/23", "2001:10::1": "2001::/23", "2001:20::1": "2001::/23",
    "2001:db8::1": "2001:db8::/32", "3fff::1": "3fff::/20", "2620:4f:8000::1": "2620:4f:8000::/48",
    "5f00::1": "5f00::/16",
    "fc00::1": "fc00::/7", "fd12:3456::1": "fc00::/7",
    "fe80::1": "fe80::/10", "fe80::1%lo": "fe80::/10", "fec0::1": "fec0::/10",
    "ff02::1": "ff00::/8", "ff05::2": "ff00::/8",
    "4000::1": "2000::/3", "::2:1": "::/96",
}
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "100.63.255.255", "100.128.0.1", "192.0.3.1", "198.20.0.1",
          "223.255.255.254", "2606:4700:4700::1111", "2a00:1450:4001::200e", "::ffff:8.8.8.8",
          "2002:808:808::1", "64:ff9b::808:808", "2001:0:4136:e378:8000:63bf:f7f7:f7f7"]


@pytest.mark.parametrize("ip,where", sorted(REFUSED.items()))
def test_special_purpose_address_is_refused_naming_its_range(ip, where):
    reason = refusal_reason(ip)
    assert reason is not None and where in reason, (ip, reason)
    assert not address_is_public(ip)


@pytest.mark.parametrize("ip", PUBLIC)
def test_public_address_is_allowed(ip):
    assert refusal_reason(ip) is None and address_is_public(ip)


def test_every_table_row_is_exercised_by_a_refused_case():
    named = " ".join(refusal_reason(ip) or "" for ip in REFUSED)
    missing = [net for net, _, _ in IPV4_TABLE + IPV6_TABLE if net not in named]
    assert not missing, f"table rows without a test: {missing}"


@pytest.mark.parametrize("ip", ["100.100.100.200", "2002:7f00:1::", "64:ff9b::7f00:1", "198.18.0.1"])
def test_guard_refuses_a_host_resolving_to_the_range(monkeypatch, ip):
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    monkeypatch.setattr(safe_fetch.socket, "getaddrinfo",
                        lambda *a, **k: [(family, socket.SOCK_STREAM, 6, "", (ip, 80))])
    with pytest.raises(FetchRefused, match="guard: internal address"):
        resolve_vetted("images.example.org", 80, FetchGuard())
    # the allowlist is the only way through
    assert resolve_vetted("images.example.org", 80, FetchGuard(allow_hosts=("images.example.org",))) == ip


def test_one_internal_address_among_public_ones_refuses_the_host(monkeypatch):
    infos = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("8.8.8.8", 80)),
             (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2002:7f00:1::", 80, 0, 0))]
    monkeypatch.setattr(safe_fetch.socket, "getaddrinfo", lambda *a, **k: infos)
    with pytest.raises(FetchRefused):
        resolve_vetted("rebind.example.org", 80, FetchGuard())
