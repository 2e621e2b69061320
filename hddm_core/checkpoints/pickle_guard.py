"""Refusing pickles: by file name before anything is read, and by the structure of a file's bytes.

A file is called a pickle only when its bytes have a pickle's structure, never by a prefix alone:
a safetensors header length can begin with the bytes of a protocol marker (0x80 0x02..0x05 is
any length whose low byte is 0x80 and next byte 2..5, about 1 in 2,000 lengths). Detected: a zip
archive holding a `data.pkl` member (torch.save's format), and a pickle stream of any protocol
(0-5) that pickletools.genops walks to its STOP opcode inside the bytes. genops only decodes
opcodes and their arguments: nothing is imported, constructed or executed.
"""
from __future__ import annotations

import io
import pickletools
import zipfile

from hddm_core.checkpoints.errors import PickleRefused

PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")
MAX_PICKLE_SCAN = 64 << 20  # bytes walked by genops; a pickle whose STOP lies further is not called one


def refuse_pickle_name(location: str) -> None:
    """Raise PickleRefused for a pickle-based checkpoint name; nothing is opened."""
    if location.lower().endswith(PICKLE_SUFFIXES):
        raise PickleRefused(f"refusing {location!r}: pickle-based checkpoints ({', '.join(PICKLE_SUFFIXES)}) can run "
                            "arbitrary code when loaded; contributed weights must be safetensors + a JSON manifest. "
                            "Nothing was read.")


def _torch_zip(data: bytes) -> bool:
    if not data.startswith(b"PK\x03\x04"):
        return False
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return any(n == "data.pkl" or n.endswith("/data.pkl") for n in z.namelist())
    except Exception:  # noqa: BLE001 - any malformed zip is simply not a torch.save archive
        return False


def _pickle_stream(data: bytes) -> int | None:
    """The protocol of a complete pickle stream at the start of data, or None (nothing executed)."""
    proto = 0
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(data[:MAX_PICKLE_SCAN])):
            if op.name == "PROTO":
                proto = arg
            if op.name == "STOP":
                return proto
    except Exception:  # noqa: BLE001 - an unknown opcode, a truncated argument: not a pickle
        return None
    return None


def sniff(data: bytes) -> str | None:
    """What pickle-carrying format `data` (a whole file, or its first MAX_PICKLE_SCAN bytes) has, or None."""
    if _torch_zip(data):
        return "a torch.save zip archive (it holds data.pkl, a pickle)"
    proto = _pickle_stream(data)
    if proto is not None:
        return f"a pickle stream (protocol {proto})"
    return None


def refuse_pickle_bytes(data: bytes, uri: str) -> None:
    """Raise PickleRefused when `data` has the structure of a pickle or a torch.save archive."""
    kind = sniff(data)
    if kind:
        raise PickleRefused(f"{uri} is {kind}: refusing it; nothing was unpickled")
