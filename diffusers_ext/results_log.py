"""Append-only JSONL results: one line per finished unit of work, flushed to disk before the next starts.

A run killed mid-write leaves at most a torn last line, which readers skip and writers never glue onto, so
re-running a sweep or a calibration loses at most the unit in flight.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def read_rows(path: str | Path) -> list[dict]:
    """Every complete row of ``path`` (none if it does not exist)."""
    path = Path(path)
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def append_row(path: str | Path, row: dict) -> None:
    """Append one row and fsync it (creating the folder if needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torn = path.exists() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    with open(path, "a") as f:
        f.write(("\n" if torn else "") + json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())
