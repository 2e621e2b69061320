"""Checks of the environment a stage will run in, before any work: the artifact root (a folder, writable,
S3 credentials present, endpoint answering; hddm_core.storage.check_root) and every `device` field
(cuda asked for but no GPU visible). Each failure is one ValueError line naming the value and what
would work; callers (hddmp's stage commands) run this before the stage starts, so nothing is written."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from hddm_core.storage import check_root


def check_device(name: str, where: str = "device") -> str:
    """name when it can run here: 'cuda' needs a visible CUDA GPU."""
    if name == "cuda" or str(name).startswith("cuda:"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"{where} {name!r}: no CUDA GPU is visible here (torch.cuda.is_available() is False); "
                             "use 'cpu' or 'auto'")
        index = int(str(name).partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ValueError(f"{where} {name!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return name


def _devices(model: BaseModel, where: str = "") -> list[tuple[str, Any]]:
    out = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        path = f"{where}.{name}" if where else name
        if name == "device" and isinstance(value, str):
            out.append((path, value))
        elif isinstance(value, BaseModel):
            out += _devices(value, path)
    return out


def check_environment(params: BaseModel) -> None:
    """ValueError (one line) when the params' artifact root or a device cannot be used here."""
    check_root(getattr(params, "artifact_root", None))
    for path, device in _devices(params):
        check_device(device, path)
