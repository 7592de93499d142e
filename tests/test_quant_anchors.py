"""bench/quantization.py's anchor rows and run-time columns (bench/quant_anchors.py), without the anchors'
libraries: optimum-quanto and torchao are never imported here."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from diffusers_ext.results_log import append_row, read_rows

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # the scripts import their siblings, as `python bench/x.py` lets them
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class Packed(torch.Tensor):
    """A float32-looking wrapper around uint8 codes and float32 scales, as quanto's and torchao's weights are."""

    @staticmethod
    def __new__(cls, codes, scale, shape):
        return torch.Tensor._make_wrapper_subclass(cls, shape, dtype=torch.float32)

    def __init__(self, codes, scale, shape):
        self.codes, self.scale = codes, scale

    def __tensor_flatten__(self):
        return ["codes", "scale"], None

    @staticmethod
    def __tensor_unflatten__(inner, context, size, stride):
        return Packed(inner["codes"], inner["scale"], size)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise NotImplementedError(func)


def test_resident_bytes_counts_subclass_data_and_each_storage_once():
    anchors = _load("quant_anchors")
    packed = Packed(torch.zeros(64, 16, dtype=torch.uint8), torch.ones(64, 1), (64, 32))  # 1024 + 256 bytes
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(4, 3))
    model[1].weight = model[0].weight  # tied: counted once
    model[1].register_buffer("packed", packed)
    big = torch.zeros(100)
    model[1].view = big[:10]  # a view keeps its whole storage (400 bytes) alive
    assert anchors.resident_bytes(model) == 4 * (12 + 3 + 3) + 1024 + 256 + 400
    assert anchors.resident_bytes(nn.Sequential(nn.Linear(4, 3))) == 4 * 15


def test_cpu_ms_per_call_orders_work_and_restores_threads():
    anchors = _load("quant_anchors")
    a = torch.randn(192, 192)
    light, heavy = (lambda x: x + 1), (lambda x: [x @ x for _ in range(30)])
    calls = [((a,), {}, None), ((a * 2,), {}, None)]
    threads = torch.get_num_threads()
    ms = anchors.cpu_ms_per_call({"light": light, "heavy": heavy}, calls, repeats=3, threads=1)
    assert set(ms) == {"light", "heavy"} and 0 <= ms["light"] < ms["heavy"] and torch.get_num_threads() == threads
    with pytest.raises(ValueError, match="repeats and threads must be >= 1"):
        anchors.cpu_ms_per_call({"light": light}, calls, repeats=0)


def _row(config, library, bits, **fields):
    return {"config": config, "library": library, "weight_bits": bits, "float32_bytes": 4000, "file_bytes": 2048,
            "relative_mse": 1e-3, "fid_mean": 4.0, "fid_std": 0.5, **fields}


def test_quantization_table_merges_run_time_rows_and_groups_by_bits(tmp_path):
    report = _load("report")
    path = tmp_path / "q.jsonl"
    for row in (_row("fp32", "diffusers_ext", 32), _row("W4A8 INT4, learned", "diffusers_ext", 4,
                                                                report={"layers": 51, "learned_rounding_kept": 50}),
                _row("quanto W8 qint8", "optimum-quanto 0.2.7", 8, resident_bytes=1000, cpu_ms=30.0, fp32_cpu_ms=20.0),
                {"config": "torchao W4 int4", "library": "torchao 0.18.0", "weight_bits": 4,
                 "error": "ImportError: Requires mslk >= 1.0.0"},
                {"config": "W4A8 INT4, learned", "resident_bytes": 800, "cpu_ms": 40.0, "fp32_cpu_ms": 20.0}):
        append_row(path, row)
    lines = report.quantization_table(read_rows(path)).splitlines()
    body = [line.split(" | ") for line in lines if line.startswith("| ") and "---" not in line][1:]
    assert [cells[0] for cells in body] == ["| fp32", "| quanto W8 qint8", "| W4A8 INT4, learned", "| torchao W4 int4"]
    assert body[0][6:8] == ["-", "-"]  # no run-time columns measured yet
    assert body[1][6:8] == ["1 (0.25x)", "30.0 (1.50x)"]
    assert body[2][3:] == ["1.00e-03", "4.00 ± 0.50", "2", "1 (0.20x)", "40.0 (2.00x)", "50 of 51 |"]
    assert "not run on this CPU: ImportError: Requires mslk >= 1.0.0" in body[3][4]


def test_anchors_are_skipped_without_their_libraries(tmp_path, monkeypatch, capsys):
    quantization = _load("quantization")
    monkeypatch.setattr(quantization, "LIBRARIES", {"optimum-quanto": "no_such_quanto", "torchao": "no_such_ao"})
    path = tmp_path / "q.jsonl"
    append_row(path, _row("fp32", "diffusers_ext", 32))
    written = path.read_bytes()
    monkeypatch.setattr(sys, "argv", ["quantization.py", "--rows", "anchors", "--out", str(path)])
    quantization.main()
    out = capsys.readouterr().out
    assert out.count("is not installed (pip install -e '.[bench-quant]')") == len(quantization.ANCHORS)
    assert "| fp32 | diffusers_ext | 32 |" in out and path.read_bytes() == written


def test_unknown_config_names_fail_before_anything_runs(tmp_path, monkeypatch, capsys):
    quantization = _load("quantization")
    path = tmp_path / "q.jsonl"
    monkeypatch.setattr(sys, "argv", ["quantization.py", "--rows", "ours", "--configs", "fp32", "quanto W4 qint4",
                                      "--out", str(path)])
    with pytest.raises(SystemExit):
        quantization.main()
    err = capsys.readouterr().err
    assert "--configs: unknown ['quanto W4 qint4']; valid choices with --rows ours: ['fp32', " in err
    assert not path.exists()
