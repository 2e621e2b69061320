"""Refusing pickles: by file name before anything is read, and by the first bytes of a file."""
from __future__ import annotations

from hddm_core.checkpoints.errors import PickleRefused

PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")


def refuse_pickle_name(location: str) -> None:
    """Raise PickleRefused for a pickle-based checkpoint name; nothing is opened."""
    if location.lower().endswith(PICKLE_SUFFIXES):
        raise PickleRefused(f"refusing {location!r}: pickle-based checkpoints ({', '.join(PICKLE_SUFFIXES)}) can run "
                            "arbitrary code when loaded; contributed weights must be safetensors + a JSON manifest. "
                            "Nothing was read.")


def sniff(head: bytes) -> str | None:
    """What pickle-carrying format the first bytes of a file announce, or None (safetensors starts with a length)."""
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return f"pickle protocol {head[1]} magic bytes"
    if head.startswith(b"PK\x03\x04"):
        return "zip magic bytes (torch.save archive, which holds a pickle)"
    return None


def refuse_pickle_bytes(head: bytes, uri: str) -> None:
    """Raise PickleRefused when `head` (a file's first bytes) is pickle or torch.save magic."""
    kind = sniff(head)
    if kind:
        raise PickleRefused(f"{uri} starts with {kind}: refusing it; nothing was unpickled")
