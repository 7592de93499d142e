"""Rerunning a bench script with everything cached prints its table and leaves the result files byte-identical."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


def _load(name):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # the scripts import their siblings, as `python bench/x.py` lets them
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _main(module, monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", [f"{module.__name__}.py", *map(str, args)])
    module.main()
    return capsys.readouterr().out


def test_step_cost_rerun_is_cached_and_prints_medians(tmp_path, monkeypatch, capsys):
    step_cost = _load("step_cost")
    out = tmp_path / "step_cost.json"
    args = ("--repeats", 2, "--threads", "1,2", "--shape", "1,2,4,4", "--steps", 3, "--out", out)
    first = _main(step_cost, monkeypatch, capsys, *args)
    written = out.read_bytes()
    mtime = out.stat().st_mtime_ns
    second = _main(step_cost, monkeypatch, capsys, *args)
    assert out.read_bytes() == written and out.stat().st_mtime_ns == mtime
    assert second.startswith("cached: ") and first.startswith("written: ")  # the table follows either way
    table = [line for line in second.splitlines() if line.startswith("| DPM-Solver++ 2M | float32 |")]
    assert [line.split(" | ")[2] for line in table] == ["1", "2"]  # one row per thread count
    assert table == [line for line in first.splitlines() if line.startswith("| DPM-Solver++ 2M | float32 |")]

    result = json.loads(written)
    assert result["settings"] == {"shape": [1, 2, 4, 4], "steps": 3, "repeats": 2, "threads": [1, 2]}
    assert len(result["rows"]) == 3 * 2 * 2  # schedulers x dtypes x thread counts
    for row in result["rows"]:
        assert row["runs"] == 2
        for key in ("diffusers_step_ms", "ours_step_ms", "speedup"):
            assert 0 < row[f"{key}_min"] <= row[key] <= row[f"{key}_max"]
            assert float(f"{row[key]:.6g}") == row[key]  # written to 6 significant digits
        if row["dtype"] == "float32":
            assert row["relative_difference"] < 1e-5

    third = _main(step_cost, monkeypatch, capsys, *args[:-2], "--repeats", 1, "--threads", 1, "--out", out)
    assert third.startswith("written: ") and json.loads(out.read_text())["settings"]["repeats"] == 1  # new settings


@pytest.mark.parametrize("bad", [("--threads", "0"), ("--repeats", "x"), ("--steps", "2")])
def test_step_cost_rejects_bad_settings(bad, tmp_path, monkeypatch, capsys):
    step_cost = _load("step_cost")
    with pytest.raises(SystemExit):
        _main(step_cost, monkeypatch, capsys, *bad, "--out", tmp_path / "s.json")
    err = capsys.readouterr().err
    assert bad[0] in err and "must be" in err and not (tmp_path / "s.json").exists()


def test_write_json_skips_float_noise(tmp_path, capsys):
    results_io = _load("results_io")
    path = tmp_path / "r.json"
    data = {"rmse": [0.1 + 0.2, 1 / 3], "name": "dpm", "n": 3}
    assert results_io.write_json(path, data)
    text = path.read_text()
    assert json.loads(text) == {"rmse": [0.3, 0.333333], "name": "dpm", "n": 3}
    noisy = {"rmse": [0.30000000000000016, 1 / 3 * (1 + 1e-12)], "name": "dpm", "n": 3}
    assert not results_io.write_json(path, noisy)  # last-digit noise: the file stays as it was
    assert path.read_text() == text and "unchanged" in capsys.readouterr().out
    assert results_io.write_json(path, {**noisy, "n": 4}) and json.loads(path.read_text())["n"] == 4
    assert results_io.write_json(path, {"x": 1 / 3}, digits=None) and json.loads(path.read_text())["x"] == 1 / 3


def test_masked_rerun_prints_cached_tables(tmp_path, monkeypatch, capsys):
    masked = _load("masked_diffusion")
    for name in ("quality", "entropy"):
        shutil.copy(BENCH / "results" / f"masked_{name}.jsonl", tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setattr(masked, "RESULTS", tmp_path)
    out = _main(masked, monkeypatch, capsys, "--part", "quality")
    assert "| First-Hitting | - | 128 |" in out and "all results cached" in out
    out = _main(masked, monkeypatch, capsys, "--part", "entropy")
    assert "| MDLM | 10000 |" in out and "all results cached" in out
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_report_renders_both_step_cost_formats(tmp_path):
    report = _load("report")
    machine = {"platform": "Linux", "processor": "", "torch": "2.x"}
    common = {"scheduler": "DPM-Solver++ 2M", "dtype": "float32", "relative_difference": 4e-7,
              "diffusers_mb_per_step": 23.0, "ours_mb_per_step": 13.75}
    old = {"shape": [16, 4, 64, 64], "steps": 20, "machine": {**machine, "threads": 2},
           "rows": [{**common, "diffusers_step_ms": 0.665, "ours_step_ms": 0.166, "speedup": 4.01}]}
    new = {"shape": [16, 4, 64, 64], "steps": 20, "machine": {**machine, "cpus": 2},
           "rows": [{**common, "threads": 1, "runs": 5, "diffusers_step_ms": 0.7, "diffusers_step_ms_min": 0.6,
                     "diffusers_step_ms_max": 0.9, "ours_step_ms": 0.2, "ours_step_ms_min": 0.1,
                     "ours_step_ms_max": 0.25, "speedup": 3.5, "speedup_min": 2.4, "speedup_max": 6.0}]}
    for data in (old, new):
        (tmp_path / "s.json").write_text(json.dumps(data))
        data = json.loads((tmp_path / "s.json").read_text())
        table = report.step_cost_table(data)
        assert "| DPM-Solver++ 2M | float32 |" in table
    assert "**4.01x**" in report.step_cost_table(old)
    assert "| 1 | 0.700 (0.600-0.900) | 0.200 (0.100-0.250) | **3.50x** (2.40-6.00) |" in table
    assert "median (min-max) of 5 runs" in table
