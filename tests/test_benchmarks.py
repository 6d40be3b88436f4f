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


def test_fashion_mnist_benchmark_runs_on_a_slice(tmp_path):
    out = run(
        "fashion_mnist.py", "--epochs", "1", "--limit", "512", "--json", str(tmp_path / "f.json")
    )
    assert "scratchcnn epoch 1" in out and "pytorch    epoch 1" in out
    data = json.loads((tmp_path / "f.json").read_text())
    assert len(data["scratchcnn"]) == len(data["pytorch"]) == 1


def test_profile_layers_prints_every_layer():
    out = run("profile_layers.py", "--steps", "2", "--batch", "8")
    assert "MaxPool2D" in out and "images/s" in out


def test_resnet_benchmark_runs_on_a_slice_and_combines(tmp_path):
    a, b, both = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "both.json"
    small = ("--epochs", "1", "--limit", "256", "--threads", "1")
    out = run("resnet_fashion_mnist.py", *small, "--framework", "scratchcnn", "--json", str(a))
    assert "scratchcnn epoch 1" in out
    out = run("resnet_fashion_mnist.py", *small, "--framework", "pytorch", "--json", str(b))
    assert "pytorch    epoch 1" in out
    run("resnet_fashion_mnist.py", "--combine", str(a), str(b), "--json", str(both))
    data = json.loads(both.read_text())
    assert data["recipe"]["model"] == "resnet8" and data["train_images"] == 256
    for name in ("scratchcnn", "pytorch"):
        (row,) = data[name]
        assert row["epoch"] == 1 and 0 <= row["test_accuracy"] <= 1 and row["seconds"] > 0
