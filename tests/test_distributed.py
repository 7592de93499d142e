"""A digits sweep sharded over 2 CPU processes (torchrun, gloo) equals the single-process sweep."""

import json
import subprocess
import sys

import pytest


def _sweep(out, nproc):
    args = ["-m", "diffusers_ext", "sweep", "--model", "digits", "--schedulers", "unipc,dpm++2m", "--nfe", "4",
            "--samples", "60", "--out", str(out), "--cache-dir", str(out.parent / "cache")]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port())] + args
    else:
        cmd = [sys.executable] + args
    subprocess.run(cmd, check=True, capture_output=True, timeout=300, env={"OMP_NUM_THREADS": "1",
                                                                            **_env()})
    return {(r["scheduler"], r["nfe"]): r["value"] for r in map(json.loads, out.read_text().splitlines())}


def _free_port() -> int:
    """A port nobody listens on now (a fixed one can still be held by an earlier run)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env():
    import os

    return {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}


def test_two_processes_equal_one(tmp_path):
    single = _sweep(tmp_path / "one" / "s.jsonl", 1)
    double = _sweep(tmp_path / "two" / "s.jsonl", 2)
    assert single.keys() == double.keys() and len(single) == 2
    for key in single:
        assert double[key] == pytest.approx(single[key], rel=1e-4), key
    assert len((tmp_path / "two" / "s.jsonl").read_text().splitlines()) == 2  # one writer
