"""Check results and the errors a checkpoint raises when it fails validation or is a pickle."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""
    code: str = ""  # a failed check's short stable reason (e.g. "header-overlap"); the name when not given

    def __post_init__(self):
        if not self.ok and not self.code:
            object.__setattr__(self, "code", self.name)

    def __str__(self) -> str:
        tag = f" ({self.code})" if not self.ok and self.code != self.name else ""
        return f"[{'ok' if self.ok else 'FAIL'}] {self.name}{tag}: {self.detail}"


class CheckpointError(ValueError):
    """A checkpoint failed validation; .checks holds every check that was run."""

    def __init__(self, message: str, checks: list[Check] | None = None):
        super().__init__(message)
        self.checks = checks or []


class PickleRefused(CheckpointError):
    pass
