"""A metric value with its exact name and provenance, or a plain statement that it is unavailable."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MetricResult:
    name: str  # exact metric name, e.g. "FID", "LPIPS-alex diversity", "FD-inception-proj64"
    value: float | None
    status: str = "ok"  # ok | unavailable | refused
    reason: str = ""
    details: dict = field(default_factory=dict)

    @classmethod
    def unavailable(cls, name: str, reason: str, **details) -> "MetricResult":
        return cls(name, None, "unavailable", reason, dict(details))

    @classmethod
    def refused(cls, name: str, reason: str, **details) -> "MetricResult":
        return cls(name, None, "refused", reason, dict(details))

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def as_dict(self) -> dict:
        return {"name": self.name, "value": self.value, "status": self.status, "reason": self.reason,
                "details": self.details}

    def __str__(self) -> str:
        return f"{self.name} = {self.value:.4f}" if self.ok else f"{self.name}: {self.status} ({self.reason})"
