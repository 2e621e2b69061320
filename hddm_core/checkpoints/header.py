"""Parsing an untrusted safetensors header into a rejection with a reason code, never a traceback.

A safetensors file is an 8-byte little-endian header length n, n bytes of JSON
({name: {"dtype", "shape", "data_offsets"}, optional "__metadata__": {str: str}}), then the tensor
data. parse_header checks everything the safetensors library would trip on (and more) on plain
bytes: the length, UTF-8, the JSON nesting depth (before json.loads recurses), every entry's keys
and types, a known dtype, non-negative shapes, and offsets that tile the data section exactly
(sorted, no gap, no overlap, each range the size its shape and dtype say). Each refusal is a
HeaderRejected with a short stable `code` (the list is CODES) and a one-line reason.
"""
from __future__ import annotations

import json
import math
import re
import struct

MAX_HEADER_BYTES = 16 << 20  # XL/2's header is ~60 KB; room for long names and metadata
MAX_TENSORS = 100_000  # XL/2 has ~700 tensors
MAX_NESTING = 4  # {"name": {"shape": [..]}} is depth 3; metadata {"__metadata__": {..}} depth 2
MAX_RANK = 8
# safetensors dtype tags and their item sizes in bits (the library's full list; which are allowed is decided later)
DTYPE_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "I16": 16, "U16": 16, "F16": 16,
              "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "F64": 64, "I64": 64, "U64": 64}
ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})
CODES = ("header-short", "header-length", "header-not-utf8", "header-not-json", "header-nesting", "header-not-object",
         "header-too-many", "header-metadata", "header-entry", "header-dtype", "header-shape", "header-offsets",
         "header-range-size", "header-overlap", "header-gap", "header-data-size")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"{}[]")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)


class HeaderRejected(ValueError):
    """A malformed safetensors header: .code (one of CODES) and a one-line reason."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def header_length(head: bytes, size: int) -> int:
    """n from the first 8 bytes, checked against the cap and the file size."""
    if len(head) < 8 or size < 8:
        raise HeaderRejected("header-short", f"too short to be safetensors ({size} bytes; the header length alone is 8)")
    (n,) = struct.unpack("<Q", head[:8])
    if n < 2 or n > MAX_HEADER_BYTES or 8 + n > size:
        raise HeaderRejected("header-length", f"header length {n} is implausible for a {size}-byte file "
                                              f"(valid: 2..{MAX_HEADER_BYTES} and within the file)")
    return n


def too_deep(raw: bytes, limit: int = MAX_NESTING) -> bool:
    """Whether JSON text nests brackets deeper than limit, strings ignored (no recursion; stops early)."""
    depth = 0
    for ch in _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS):
        depth += 1 if ch in b"{[" else -1
        if depth > limit:
            return True
    return False


def _strict_constant(name: str):
    raise ValueError(f"{name} is not a valid JSON number")


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate key {next(k for k in keys if keys.count(k) > 1)!r:.60}")
    return dict(pairs)


def _json(raw: bytes) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HeaderRejected("header-not-utf8", f"header is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not text.lstrip().startswith("{"):
        raise HeaderRejected("header-not-object", "header is not a JSON object (it must start with '{')")
    if too_deep(raw):
        raise HeaderRejected("header-nesting", f"header JSON nests deeper than {MAX_NESTING} (a safetensors "
                                               f"header nests at most {MAX_NESTING}: name, entry, shape)")
    try:
        header = json.loads(text, parse_constant=_strict_constant, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:
        raise HeaderRejected("header-not-json", f"header is not valid JSON ({str(exc)[:120]})") from None
    if not isinstance(header, dict):
        raise HeaderRejected("header-not-object", f"header is a JSON {type(header).__name__}, not an object")
    return header


def _entry(name: str, info) -> tuple[int, int, int]:
    """(begin, end, expected byte length) of one tensor entry, every field checked."""
    if not isinstance(info, dict) or set(info) != ENTRY_KEYS:
        keys = sorted(info) if isinstance(info, dict) else type(info).__name__
        raise HeaderRejected("header-entry", f"entry {name!r:.80} must have exactly {sorted(ENTRY_KEYS)}, got {keys!r:.120}")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise HeaderRejected("header-dtype", f"entry {name!r:.80}: dtype {dtype!r:.40} is not a safetensors dtype "
                                             f"({', '.join(sorted(DTYPE_BITS))})")
    if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(_is_int(d) and d >= 0 for d in shape):
        raise HeaderRejected("header-shape", f"entry {name!r:.80}: shape {shape!r:.80} must be a list of at most "
                                             f"{MAX_RANK} non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise HeaderRejected("header-offsets", f"entry {name!r:.80}: data_offsets {offsets!r:.80} must be two "
                                               "integers 0 <= begin <= end")
    return offsets[0], offsets[1], math.prod(shape) * DTYPE_BITS[dtype] // 8


def check_entries(header: dict, data_bytes: int) -> None:
    """Every entry well formed, the byte ranges tiling [0, data_bytes) exactly."""
    if len(header) > MAX_TENSORS:
        raise HeaderRejected("header-too-many", f"header lists {len(header)} tensors (limit {MAX_TENSORS})")
    ranges = []
    for name, info in header.items():
        begin, end, want = _entry(name, info)
        if end - begin != want:
            raise HeaderRejected("header-range-size", f"entry {name!r:.80}: data_offsets span {end - begin} bytes, "
                                                      f"its shape and dtype need {want}")
        ranges.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(ranges):
        if begin < position:
            raise HeaderRejected("header-overlap", f"entry {name!r:.80} starts at byte {begin}, inside the previous "
                                                   f"tensor (which ends at {position})")
        if begin > position:
            raise HeaderRejected("header-gap", f"entry {name!r:.80} starts at byte {begin}, leaving a gap after "
                                               f"byte {position}")
        position = end
    if position != data_bytes:
        raise HeaderRejected("header-data-size", f"the tensors cover {position} data bytes, the file holds {data_bytes}")


def parse_header(head: bytes, size: int) -> dict:
    """The tensor entries of a safetensors file ({name: info}, metadata dropped), from its first
    8 + n bytes (`head`, at least that long) and its total size; HeaderRejected otherwise."""
    n = header_length(head, size)
    if len(head) < 8 + n:
        raise HeaderRejected("header-short", f"the file ended inside its {n}-byte header")
    header = _json(head[8:8 + n])
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise HeaderRejected("header-metadata", f"__metadata__ must map strings to strings, got {metadata!r:.80}")
    check_entries(header, size - 8 - n)
    return header
