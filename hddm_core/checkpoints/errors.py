"""Check results and the errors a checkpoint raises when it fails validation or is a pickle."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""

    def __str__(self) -> str:
        return f"[{'ok' if self.ok else 'FAIL'}] {self.name}: {self.detail}"


class CheckpointError(ValueError):
    """A checkpoint failed validation; .checks holds every check that was run."""

    def __init__(self, message: str, checks: list[Check] | None = None):
        super().__init__(message)
        self.checks = checks or []


class PickleRefused(CheckpointError):
    pass
