"""safetensors files whose bytes depend on their content alone."""
from __future__ import annotations

import json
import struct


def canonical_safetensors(data: bytes) -> bytes:
    """The same file with its metadata entries in sorted order. safetensors keeps metadata in a Rust
    HashMap, so a file with two metadata keys comes out in either order from call to call; sorted,
    a file's bytes depend on its content alone (equal across workers and runs)."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    if "__metadata__" in header:
        header = {"__metadata__": dict(sorted(header["__metadata__"].items())),
                  **{k: v for k, v in header.items() if k != "__metadata__"}}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    return struct.pack("<Q", len(text)) + text + data[8 + n:]
