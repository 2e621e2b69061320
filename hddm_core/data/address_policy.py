"""Which resolved addresses the download guard may connect to: one explicit table.

`ipaddress.is_private` is not a safe test (100.64.0.0/10, which holds Alibaba Cloud's metadata
address 100.100.100.200, and 2002::/16, which can wrap 127.0.0.1, are not "private"), and its answers
changed between Python versions. So every IANA special-purpose block (RFC 6890 registries, IPv4 and
IPv6) is listed here with its verdict; forms that embed an IPv4 address are unwrapped and the IPv4
address is judged by the same table. IPv6 outside 2000::/3 (global unicast) is unassigned or
special: refused. Anything not listed is public.
"""
from __future__ import annotations

import ipaddress

REFUSE, EMBEDDED = "refuse", "embedded"  # EMBEDDED: extract the IPv4 address and judge it

# (network, verdict, why); the first match wins, so more specific blocks come first.
IPV4_TABLE = [
    ("0.0.0.0/8", REFUSE, "this network (RFC 791); 0.0.0.0 reaches localhost on Linux"),
    ("10.0.0.0/8", REFUSE, "private (RFC 1918)"),
    ("100.64.0.0/10", REFUSE, "shared address space / carrier NAT (RFC 6598); holds cloud metadata 100.100.100.200"),
    ("127.0.0.0/8", REFUSE, "loopback"),
    ("169.254.0.0/16", REFUSE, "link-local; holds cloud metadata 169.254.169.254"),
    ("172.16.0.0/12", REFUSE, "private (RFC 1918)"),
    ("192.0.0.0/24", REFUSE, "IETF protocol assignments (RFC 6890), incl. NAT64 discovery and DS-Lite"),
    ("192.0.2.0/24", REFUSE, "documentation TEST-NET-1"),
    ("192.31.196.0/24", REFUSE, "AS112-v4 DNS sink (no image host)"),
    ("192.52.193.0/24", REFUSE, "AMT (RFC 7450)"),
    ("192.88.99.0/24", REFUSE, "6to4 relay anycast (deprecated, RFC 7526)"),
    ("192.168.0.0/16", REFUSE, "private (RFC 1918)"),
    ("192.175.48.0/24", REFUSE, "AS112 direct delegation DNS sink"),
    ("198.18.0.0/15", REFUSE, "benchmarking (RFC 2544)"),
    ("198.51.100.0/24", REFUSE, "documentation TEST-NET-2"),
    ("203.0.113.0/24", REFUSE, "documentation TEST-NET-3"),
    ("224.0.0.0/4", REFUSE, "multicast"),
    ("240.0.0.0/4", REFUSE, "reserved (RFC 1112), incl. broadcast 255.255.255.255"),
]
IPV6_TABLE = [
    ("::/128", REFUSE, "unspecified"),
    ("::1/128", REFUSE, "loopback"),
    ("::ffff:0:0/96", EMBEDDED, "IPv4-mapped: the socket talks IPv4 to the embedded address"),
    ("::/96", REFUSE, "IPv4-compatible (deprecated, RFC 4291); no public host uses it"),
    ("64:ff9b::/96", EMBEDDED, "NAT64 well-known prefix (RFC 6052): the translator reaches the embedded IPv4"),
    ("64:ff9b:1::/48", REFUSE, "NAT64 local-use prefix (RFC 8215): site-specific translation"),
    ("100::/64", REFUSE, "discard-only (RFC 6666)"),
    ("2001::/32", EMBEDDED, "Teredo (RFC 4380): server and client IPv4 are both judged"),
    ("2001::/23", REFUSE, "IETF protocol assignments (benchmarking 2001:2::/48, ORCHID, AMT, AS112...)"),
    ("2001:db8::/32", REFUSE, "documentation"),
    ("2002::/16", EMBEDDED, "6to4 (RFC 3056): relays reach the embedded IPv4, 127.0.0.1 included"),
    ("2620:4f:8000::/48", REFUSE, "AS112 direct delegation DNS sink"),
    ("3fff::/20", REFUSE, "documentation (RFC 9637)"),
    ("5f00::/16", REFUSE, "SRv6 SIDs (RFC 9602)"),
    ("fc00::/7", REFUSE, "unique-local"),
    ("fe80::/10", REFUSE, "link-local"),
    ("fec0::/10", REFUSE, "site-local (deprecated)"),
    ("ff00::/8", REFUSE, "multicast"),
]
_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")
_V4 = [(ipaddress.ip_network(n), v, why) for n, v, why in IPV4_TABLE]
_V6 = [(ipaddress.ip_network(n), v, why) for n, v, why in IPV6_TABLE]


def _embedded_ipv4(addr: ipaddress.IPv6Address, net: ipaddress.IPv6Network) -> list[ipaddress.IPv4Address]:
    if addr.ipv4_mapped is not None:
        return [addr.ipv4_mapped]
    if addr.teredo is not None:
        return list(addr.teredo)  # (server, client)
    if addr.sixtofour is not None:
        return [addr.sixtofour]
    return [ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)]  # NAT64 /96: the last 32 bits


def refusal_reason(ip: str) -> str | None:
    """Why the guard refuses to connect to ip (a resolved address, IPv6 zone allowed); None if public."""
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv4Address):
        return next((f"{net} {why}" for net, _, why in _V4 if addr in net), None)
    for net, verdict, why in _V6:
        if addr in net:
            if verdict == REFUSE:
                return f"{net} {why}"
            inner = [refusal_reason(str(v4)) for v4 in _embedded_ipv4(addr, net)]
            bad = [r for r in inner if r is not None]
            return f"{net} wraps {bad[0]}" if bad else None
    if addr not in _GLOBAL_UNICAST_V6:
        return "outside 2000::/3 global unicast (unassigned or reserved)"
    return None


def address_is_public(ip: str) -> bool:
    return refusal_reason(ip) is None


def check_allow_hosts(hosts) -> tuple[str, ...]:
    """allow_hosts entries: 'host' or 'host:port' ('[v6]:port' for IPv6); refused otherwise, before any work."""
    out = []
    for h in hosts or ():
        if not isinstance(h, str) or not h or any(c in h for c in "/@?# \t\\") or "://" in h:
            raise ValueError(f"allow_hosts entries are 'host' or 'host:port', got {h!r}")
        out.append(h)
    return tuple(out)
