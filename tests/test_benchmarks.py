"""Smoke tests: the benchmark scripts run and report every contender (numbers not checked)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))


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
        ("infer", 1),
        ("infer", 256),
    }
    for r in data["speed"]:
        assert r["scratchcnn_img_s"] > 0 and r["pytorch_img_s"] > 0
        assert r["rounds"] == 1 and r["dropped_rounds"] >= 0
    frameworks = [m["framework"] for m in data["memory"]]
    assert frameworks == ["scratchcnn", "scratchcnn-split", "pytorch"]
    for m in data["memory"]:
        assert m["peak_rss_mib"] > 20 and m["working_mib"] >= 0
    # The split's workers are counted: two processes with NumPy each hold more than one.
    assert data["memory"][1]["peak_rss_mib"] > data["memory"][0]["peak_rss_mib"]


def test_bench_speed_cifar_net_runs(tmp_path):
    out = run(
        "bench_speed.py",
        *("--net", "cifar", "--only", "infer", "--rounds", "1", "--seconds", "0.02"),
        *("--json", str(tmp_path / "c.json")),
    )
    assert "cifar" in out
    data = json.loads((tmp_path / "c.json").read_text())
    assert {(r["kind"], r["batch"]) for r in data["speed"]} == {("infer", 8), ("infer", 256)}


def test_harness_drops_rounds_taken_under_load(monkeypatch):
    import _harness

    loads = iter([0.9, 0.0, 0.0, 0.0])  # the first round's first window is "loaded"

    def fake_window(fn, batch, seconds):
        return _harness.Window(rate=float(batch), foreign=next(loads))

    monkeypatch.setattr(_harness, "timed_window", fake_window)
    result = _harness.compare({"a": lambda: None, "b": lambda: None}, 4, rounds=1, seconds=0)
    assert result.dropped == 1 and len(result.foreign) == 1 and not result.loaded
    assert result.ratio("a", "b") == 1.0


def test_harness_reports_least_loaded_round_when_all_are_loaded(monkeypatch):
    import _harness

    loads = iter([0.9, 0.8, 0.5, 0.6])

    def fake_window(fn, batch, seconds):
        return _harness.Window(rate=2.0, foreign=next(loads))

    monkeypatch.setattr(_harness, "timed_window", fake_window)
    result = _harness.compare(
        {"a": lambda: None, "b": lambda: None}, 4, rounds=1, seconds=0, max_attempts=2
    )
    assert result.loaded and result.foreign == [0.6] and result.dropped == 1


def test_torch_twin_of_the_cifar_net_matches_scratchcnn_outputs():
    import numpy as np
    import torch
    from _nets import cifar_net
    from _torch_twin import twin as to_torch

    ours = cifar_net().eval()
    x = np.random.default_rng(1).uniform(0, 1, (2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        theirs = to_torch(ours).eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours.forward(x), theirs, rtol=1e-4, atol=1e-5)


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


def test_profile_layers_walks_into_residual_blocks():
    out = run("profile_layers.py", "--net", "resnet8", "--steps", "1", "--batch", "4")
    assert "3.body.0" in out and "5.shortcut.1" in out and "matrix products" in out


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


def test_alternate_blocks_reports_the_ratio_of_two_steps(monkeypatch):
    """On a fake clock where B takes 3 units a step and A 2, every pair says 1.5."""
    import _harness

    now = [0.0]
    monkeypatch.setattr(_harness.time, "perf_counter", lambda: now[0])

    def step(cost):
        def run():
            now[0] += cost

        return run

    calls = {"a": 0, "b": 0}

    def a():
        calls["a"] += 1
        step(2e-3)()

    def b():
        calls["b"] += 1
        step(3e-3)()

    result = _harness.alternate_blocks(a, b, seconds=1.0, block=0.05)
    assert result["speedup_a_over_b"] == pytest.approx(1.5)
    assert result["interval95"] == pytest.approx([1.5, 1.5])
    assert result["steps_per_block"] == 17  # 0.05 s / 3 ms per step of the slower one
    assert result["ms_a"] == pytest.approx(2.0) and result["ms_b"] == pytest.approx(3.0)
    assert result["pairs"] >= 5
    # Each block starts with one untimed step; sizing the blocks took 3 steps of each.
    assert calls["a"] == calls["b"] == 3 + result["pairs"] * (result["steps_per_block"] + 1)


def test_ab_compares_two_versions_of_a_step():
    out = run(
        "ab.py",
        *("--net", "lenet5", "--kind", "infer", "--batch", "2", "--threads", "1"),
        *("--set", "scratchcnn.engine.conv.ONE_GEMM_MAX_COLS=0", "--kernels", "numpy"),
        *("--seconds", "0.3", "--json"),
    )
    result = json.loads(out.strip().splitlines()[-1])
    lo, hi = result["interval95"]
    assert lo <= result["speedup_a_over_b"] <= hi
    assert result["pairs"] >= 5 and result["ms_a"] > 0 and result["ms_b"] > 0
    assert (result["net"], result["kind"], result["batch"]) == ("lenet5", "infer", 2)


def test_ab_refuses_what_it_cannot_compare():
    for args, message in [
        ((), "nothing to compare"),
        (("--set", "no_equals_sign"), "--set wants module.NAME=VALUE"),
        (("--set", "scratchcnn.nn.layers.conv._NO_SUCH=1"), "has no attribute '_NO_SUCH'"),
        (("--set", "scratchcnn.engine.conv.ONE_GEMM_MAX_COLS=x+"), "must be a Python literal"),
        (("--kernels", "numpy", "--batch", "0"), "--batch and --threads must be at least 1"),
    ]:
        result = subprocess.run(
            [sys.executable, str(BENCH / "ab.py"), *args, "--seconds", "0.1"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode != 0
        assert message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_bench_image_folder_measures_first_and_cached_passes(tmp_path):
    out = run(
        "bench_image_folder.py",
        *("--images", "60", "--size", "8", "--classes", "3", "--json", str(tmp_path / "i.json")),
    )
    assert "speed-up of a cached epoch" in out
    data = json.loads((tmp_path / "i.json").read_text())
    assert set(data["rows"]) == {"first", "first-sized", "cached", "cached-2"}
    for row in data["rows"].values():
        assert row["train"] + row["test"] == 60 and row["shape"] == [3, 8, 8]
        assert row["vmhwm_mib"] > 20 and row["peak_rss_anon_mib"] > 0
    rows = data["rows"]
    assert rows["first"]["checksum"][0] == rows["cached"]["checksum"][0]  # the same batches
    assert len(rows["cached"]["checksum"]) == 2


def test_torchvision_import_benchmark_reports_a_row_per_export(tmp_path):
    """One small model, the TorchScript exporter at opset 17: import, errors and timing."""
    out = run(
        "torchvision_import.py",
        *("--models", "squeezenet1_1", "--exporters", "ts", "--opsets", "17", "--timing", "--ab"),
        *("--rounds", "1", "--seconds", "0.02", "--json", str(tmp_path / "t.json")),
    )
    assert "squeezenet1_1" in out and "threads 1" in out
    (row,) = json.loads((tmp_path / "t.json").read_text())
    assert row["status"] == "ok" and row["out_err"] <= 1e-4 and row["grad_err"] <= 1e-9
    for batch in ("batch1", "batch16"):
        names = ("scratchcnn", "torch", "onnxruntime", "scratchcnn-layers")
        assert all(row["timing"][batch][n] > 0 for n in names)
    assert "layer by layer" in out


def test_finetune_step_benchmark_reports_a_ratio(tmp_path):
    out = run(
        "finetune_step.py",
        *("--models", "mobilenet_v2", "--size", "32", "--batch", "4", "--rounds", "1"),
        *("--seconds", "0.05", "--json", str(tmp_path / "f.json")),
    )
    assert "mobilenet_v2" in out and "ours/torch" in out
    (row,) = json.loads((tmp_path / "f.json").read_text())
    assert row["scratchcnn_steps_s"] > 0 and row["torch_steps_s"] > 0
    assert row["ratio"] == round(row["scratchcnn_steps_s"] / row["torch_steps_s"], 3)


def test_small_nets_onnxruntime_reports_every_contender(tmp_path):
    out = run(
        "small_nets_onnxruntime.py",
        *("--nets", "lenet5", "--batches", "1", "--rounds", "1", "--seconds", "0.02"),
        *("--json", str(tmp_path / "s.json")),
    )
    assert "lenet5" in out and "ours/ort" in out
    (row,) = json.loads((tmp_path / "s.json").read_text())
    t = row["batch1"]
    for name in ("scratchcnn", "torch", "onnxruntime", "scratchcnn-layers"):
        assert t[name] > 0
    assert t["vs_onnxruntime"] > 0 and row["max_abs_diff_vs_ort"] < 1e-4


@pytest.mark.parametrize("entry", ["evaluate", "cifar"])
def test_busy_machine_child_reports_its_rate_and_threads(entry):
    line = run("busy_machine.py", "--child", entry, "--seconds", "0.1").strip().splitlines()[-1]
    row = json.loads(line)
    assert row["img_s"] > 0 and row["threads"] >= 1


def test_busy_machine_summary_takes_medians_of_per_round_ratios():
    import busy_machine as bm

    runs = []
    for r, (quiet_1t, busy_auto) in enumerate([(100.0, 50.0), (200.0, 150.0), (100.0, 90.0)]):
        for entry in bm.ENTRIES:
            for mode in bm.MODES:
                for cond in bm.CONDITIONS:
                    rate = busy_auto if (mode, cond) == ("auto", "busy") else quiet_1t
                    runs.append({"round": r, "entry": entry, "mode": mode, "condition": cond,
                                 "img_s": rate, "threads": 1, "workers": 0})  # fmt: skip
    summary = bm.summarise(runs, 3)
    # per round 2.0, 1.33, 1.11: the median is 1.33 (not 150 / 100 or a ratio of medians)
    assert summary["fit"]["busy_slowdown_vs_1t_quiet"] == pytest.approx(200 / 150)
    assert summary["fit"]["meets_target"] is True
