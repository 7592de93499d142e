"""Append-only JSONL results: one line per finished unit of work, flushed to disk before the next starts.

A run killed mid-write leaves at most a torn last line, which readers skip and writers never glue onto, so
re-running a sweep or a calibration loses at most the unit in flight.

Rows are reused only when their ``key`` (``identity``: a SHA-256 of the canonical JSON of everything that
changes the result; files and folders by their ``fingerprint``) matches. Writers hold an advisory lock
(``fcntl.flock`` on a sidecar ``<file>.lock``, never deleted), so two processes never write the same file at
once: a whole run refuses to start while another holds it (``ResultsFileBusy``); a single ``append_row`` waits
for it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch


class ResultsFileBusy(RuntimeError):
    """Another process holds the lock of a results file."""


_HELD: dict[str, tuple[int, int]] = {}  # lock file -> (pid, descriptor) of the locks this process holds
SMALL_FILE_BYTES = 64 << 10  # ``fingerprint`` hashes files up to this size; larger ones by size and mtime


def canonical(value, depth: int = 0):
    """A JSON-able, deterministic form of ``value``: arrays and tensors become the SHA-256 of their bytes
    (with shape and dtype); other objects their type and public, non-callable attributes (3 levels deep)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, np.generic):
        return canonical(value.item(), depth)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {str(k): canonical(v, depth) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [canonical(v, depth) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(json.dumps(canonical(v, depth), sort_keys=True) for v in value)
    if isinstance(value, (np.ndarray, torch.Tensor)):
        t = torch.as_tensor(value).detach().cpu().contiguous()
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        return {"sha256": hashlib.sha256(data).hexdigest(), "shape": list(t.shape), "dtype": str(t.dtype)}
    name = type(value).__qualname__
    if depth >= 3 or not hasattr(value, "__dict__"):
        return name
    state = {k: v for k, v in vars(value).items() if not k.startswith("_") and not callable(v)}
    return {"type": name, "state": canonical(state, depth + 1)}


def identity(fields: dict) -> str:
    """SHA-256 (hex) of the canonical JSON of ``fields``: equal exactly when every field is equal."""
    text = json.dumps(canonical(fields), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def scheduler_identity(scheduler) -> dict:
    """A scheduler's class name and full config (private ``_`` keys dropped), as the resume keys use it."""
    config = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
    return {"class": type(scheduler).__name__, "config": canonical(config)}


def model_name(model) -> dict | str:
    """A model's name for resume keys: a pipeline's class and ``_name_or_path`` (with a fingerprint of the
    folder's files when it is a local folder), a callable's qualified name."""
    if hasattr(model, "components"):
        name = str(model.config.get("_name_or_path", ""))
        local = bool(name) and Path(name).is_dir()
        return {"pipeline": type(model).__name__, "name_or_path": str(Path(name).resolve()) if local else name,
                "fingerprint": fingerprint(name) if local else None}
    return f"{getattr(model, '__module__', '')}.{getattr(model, '__qualname__', type(model).__qualname__)}"


def fingerprint(path: str | os.PathLike, content: bool = False) -> str:
    """A fingerprint of a file or a folder (every file under it, by relative path) that changes when a file is
    added, removed or rewritten: the SHA-256 of each file up to ``SMALL_FILE_BYTES`` (of every file if
    ``content``), the size and modification time (ns) of larger ones. FileNotFoundError if ``path`` is missing."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    entries = []
    for file in files:
        stat = file.stat()
        small = content or stat.st_size <= SMALL_FILE_BYTES
        entries.append([file.relative_to(root).as_posix() if file != root else ".",
                        hashlib.sha256(file.read_bytes()).hexdigest() if small else [stat.st_size, stat.st_mtime_ns]])
    return identity(entries)


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


@contextmanager
def exclusive(path: str | Path, wait: bool = False) -> Iterator[None]:
    """Hold the advisory lock of results file ``path`` for the block (re-entrant within this process).

    Raises ``ResultsFileBusy`` at once if another process holds it, unless ``wait``."""
    path = Path(path)
    lock = _lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    key = str(lock.resolve())
    if _HELD.get(key, (None,))[0] == os.getpid():  # a forked child copies _HELD but does not hold the lock
        yield
        return
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        raise ResultsFileBusy(f"another process is writing {path} (it holds {lock}); wait for it to finish or "
                              "choose another output file (--out / --archive)") from None
    _HELD[key] = (os.getpid(), fd)
    try:
        yield
    finally:
        del _HELD[key]
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def read_rows(path: str | Path) -> list[dict]:
    """Every complete row of ``path`` (none if it does not exist)."""
    path = Path(path)
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def append_row(path: str | Path, row: dict) -> None:
    """Append one row and fsync it (creating the folder if needed), under the file's lock."""
    path = Path(path)
    with exclusive(path, wait=True):
        torn = False
        if path.exists() and path.stat().st_size > 0:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
        with open(path, "a") as f:
            f.write(("\n" if torn else "") + json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
