"""Smoke tests: the benchmark scripts run and report both frameworks (numbers not checked)."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def run(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_bench_lenet_reports_ratios_and_memory(tmp_path):
    out = run(
        "bench_lenet.py", "--rounds", "1", "--seconds", "0.05", "--json", str(tmp_path / "r.json")
    )
    assert "ratio" in out and "working" in out
    data = json.loads((tmp_path / "r.json").read_text())
    assert {(r["kind"], r["batch"]) for r in data["speed"]} == {
        ("train", 16),
        ("train", 64),
        ("train", 256),
        ("infer", 256),
    }
    assert all(r["scratchcnn_img_s"] > 0 and r["pytorch_img_s"] > 0 for r in data["speed"])
    assert [m["framework"] for m in data["memory"]] == ["scratchcnn", "pytorch"]


def test_fashion_mnist_benchmark_runs_on_a_slice(tmp_path, fashion_mnist_dir):
    out = run(
        "fashion_mnist.py",
        *("--epochs", "1", "--limit", "512", "--json", str(tmp_path / "f.json")),
        *("--data-dir", str(fashion_mnist_dir)),
    )
    assert "scratchcnn epoch 1" in out and "pytorch    epoch 1" in out
    data = json.loads((tmp_path / "f.json").read_text())
    assert len(data["scratchcnn"]) == len(data["pytorch"]) == 1


def test_profile_layers_prints_every_layer():
    out = run("profile_layers.py", "--steps", "2", "--batch", "8")
    assert "MaxPool2D" in out and "images/s" in out


def test_thread_benchmark_reports_all_four_settings(tmp_path):
    out = run(
        "bench_threads.py", "--rounds", "1", "--steps", "2", "--json", str(tmp_path / "t.json")
    )
    assert "busy" in out
    rows = json.loads((tmp_path / "t.json").read_text())["rows"]
    assert {(r["threads"], r["busy"]) for r in rows} == {
        (1, False),
        (2, False),
        (1, True),
        (2, True),
    }
    assert all(r["img_s_median"] > 0 for r in rows)


def test_bench_mpi_measures_the_three_configurations(tmp_path):
    out = run(
        "bench_mpi.py",
        "--rounds",
        "1",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--batch",
        "16",
        "--json",
        str(tmp_path / "m.json"),
    )
    assert "mpiexec -n 2" in out
    rows = json.loads((tmp_path / "m.json").read_text())["results"]
    assert len(rows) == 3 and all(r["img_s"] > 0 for r in rows)
