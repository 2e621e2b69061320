"""Commands shown in the docs, extracted so tests run (or at least parse) exactly what the docs show.

A fenced ```bash block preceded by `<!-- run: NAME -->` is run by a test under that name; every other
bash block's `hddmp ...` lines are parsed with the real parser (tests/cli/test_docs_commands.py).
"""
from __future__ import annotations

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = [os.path.join(REPO, "README.md")] + sorted(
    os.path.join(REPO, "docs", f) for f in os.listdir(os.path.join(REPO, "docs")) if f.endswith(".md"))
_BLOCK = re.compile(r"(?:<!--\s*run:\s*(?P<name>[\w-]+)\s*-->\s*\n)?```(?:bash|sh|shell)\n(?P<body>.*?)```", re.S)


def block_commands(body: str) -> list[str]:
    """Command lines of a shell block: continuations joined, comments and blank lines dropped."""
    out, pending = [], ""
    for raw in body.splitlines():
        line = raw.rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line and not line.startswith("#"):
            out.append(re.sub(r"\s+#.*$", "", line) if " #" in line else line)
    return out


def doc_blocks(path: str) -> list[tuple[str | None, list[str]]]:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return [(m.group("name"), block_commands(m.group("body"))) for m in _BLOCK.finditer(text)]


def named_block(name: str) -> list[str]:
    found = [cmds for path in DOCS for n, cmds in doc_blocks(path) if n == name]
    if len(found) != 1:
        raise AssertionError(f"expected exactly one docs block marked 'run: {name}', found {len(found)}")
    return found[0]


def hddmp_lines() -> list[tuple[str, str | None, str]]:
    """(doc file, block name or None, command) for every hddmp command in the docs."""
    return [(os.path.relpath(path, REPO), name, cmd) for path in DOCS for name, cmds in doc_blocks(path)
            for cmd in cmds if cmd.startswith("hddmp ")]
