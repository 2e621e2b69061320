"""What the command line prints: stage references, checks, progress bars."""
from __future__ import annotations

import json
import sys
from typing import Any, Callable


def progress_bar(desc: str, unit: str = "step") -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """(callback(done, total), close) drawing a tqdm bar on stderr (hidden when stderr is not a terminal
    and HDDM_PROGRESS is unset, so logs stay readable)."""
    from tqdm import tqdm

    bar = {"obj": None}

    def update(done: int, total: int) -> None:
        if bar["obj"] is None:
            bar["obj"] = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)
        b = bar["obj"]
        b.total = total
        b.update(max(0, done - b.n))

    def close() -> None:
        if bar["obj"] is not None:
            bar["obj"].close()

    return update, close


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 160 else text[:157] + "..."


def print_ref(ref, as_json: bool = False) -> None:
    """A StageRef (or any pydantic model / dict): one summary line, then counts and extras."""
    data = ref.model_dump(mode="json") if hasattr(ref, "model_dump") else dict(ref)
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return
    status = "reused (already finished)" if data.get("reused") else "done"
    print(f"{data.get('stage', 'result')}: {status} -> {data.get('uri', '')}")
    for section in ("counts", "extra"):
        for k, v in (data.get(section) or {}).items():
            print(f"  {k}: {_short(v)}")


def print_checks(checks) -> bool:
    for c in checks:
        print(f"  {c}")
    ok = all(c.ok for c in checks)
    print("verdict: " + ("OK" if ok else "INVALID"))
    return ok
