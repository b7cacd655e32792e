"""The benchmark scripts still run, on settings too small for their figures
to mean anything: benchmarks/RESULTS.md gives their commands to reproduce
every figure, so the scripts must not rot. What is checked is what does not
depend on the machine: the tables' shape, the multiplication ratio, the
variables of the traced heads, the accuracy after one epoch."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import MNIST_DIR
from conftest import REPO
from conftest import SHARED_DATA

RATIO = re.compile(r"^\d+\.\d\d \(\d+\.\d\d-\d+\.\d\d\)$")


def _run(script, *args, expect=0):
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", script), *args],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == expect, proc.stderr[-3000:]
    return proc


def _rows(stdout):
    """The cells of every markdown table row, separator rows left out."""
    return [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in stdout.splitlines()
            if line.startswith("|") and not line.startswith("|--")]


def test_layer_bench_runs_every_variant():
    # --chain also checks the hand-written gradient against autodiff and
    # exits non-zero if they differ.
    out = _run("layer_bench.py", "--sizes", "320x6x8", "--batches", "8", "--repeats", "2",
               "--target-seconds", "0.01", "--chain", "--layouts", "--bias-add",
               "--optimizer", "sgd").stdout
    assert "; each step updates the weights with sgd" in out
    header, *rows = _rows(out)
    assert header[:3] == ["features -> depth x width", "batch", "jit"]
    assert header[-3] == "per-sub-layer / per-split (IQR)" and len(header) == 18
    assert header[-1] == "spinal / all-BiasAdd (IQR)"
    assert [row[:3] for row in rows] == [["320 -> 6 x 8", "8", "off"],
                                         ["320 -> 6 x 8", "8", "on"]]
    for row in rows:
        assert len(row) == len(header)
        # 8,000 multiplications against Dense's 320 x 48 = 15,360
        assert row[header.index("mults spinal/dense")] == "0.52"
        ratios = [cell for name, cell in zip(header, row) if "(IQR)" in name]
        assert len(ratios) == 6 and all(RATIO.match(cell) for cell in ratios), row


def test_layer_bench_refuses_bad_arguments():
    proc = _run("layer_bench.py", "--repeats", "1", expect=2)
    assert "--repeats must be at least 2, got 1" in proc.stderr
    proc = _run("layer_bench.py", "--sizes", "320x6", expect=2)
    assert "expected FEATURESxDEPTHxWIDTH, got '320x6'" in proc.stderr


@pytest.mark.skipif(shutil.which("g++") is None,
                    reason="--fused compiles a TensorFlow op with g++, which is not installed")
def test_layer_bench_fused_chain_computes_as_the_layer():
    # The script checks the fused op's outputs against SpinalDense's and its
    # gradients against autodiff's at each size and batch, and exits
    # non-zero if they differ; parts of unequal size (301 features) read by
    # unequal numbers of sub-layers (depth 5: 3 and 2), and batch 1, included.
    out = _run("layer_bench.py", "--sizes", "320x6x8", "301x5x7", "--batches", "1", "9",
               "--repeats", "2", "--target-seconds", "0.01", "--fused",
               "--optimizer", "sgd").stdout
    header, *rows = _rows(out)
    assert header[-3:] == ["fused ms", "fused/dense (IQR)", "fused/spinal (IQR)"]
    assert len(rows) == 8
    for row in rows:
        if row[2] == "on":  # no XLA kernel
            assert row[-3:] == ["n/a"] * 3
        else:
            assert float(row[-3]) > 0
            assert RATIO.match(row[-2]) and RATIO.match(row[-1]), row


def test_fused_chain_without_a_compiler_is_refused_by_name(tmp_path):
    env = {**os.environ, "CXX": str(tmp_path / "no-compiler")}
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "layer_bench.py"), "--quick",
         "--fused"], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 2
    assert "needs a C++ compiler" in proc.stderr and "no-compiler" in proc.stderr


def test_matmul_bench_runs():
    out = _run("matmul_bench.py", "--inner", "64", "--widths", "8", "16", "--batches", "4",
               "--repeats", "2", "--target-seconds", "0.01").stdout
    assert "(batch, 64) @ (64, N), float32" in out
    header, *rows = _rows(out)
    assert [row[:3] for row in rows] == [["4", "8", "32"], ["4", "16", "64"]]
    assert rows[0][-1] == "1.00 (1.00-1.00)"  # the first width against itself
    assert RATIO.match(rows[1][-1])


def test_int8_bench_compares_sizes_and_outputs():
    file_bytes = {}
    for lora in ([], ["--lora", "2"]):
        out = _run("int8_bench.py", "--sizes", "512x4x64", "--batches", "8", "--repeats", "2",
                   "--target-seconds", "0.01", *lora).stdout
        timed = "LoRA rank 2 on both, training steps (SGD)" if lora else "forward passes"
        assert f"SpinalDense(10, ...) heads, {timed} in a graph loop" in out
        header, *rows = _rows(out)
        assert header[:2] == ["features -> depth x width", "batch"]
        assert len(header) == 11
        (row,) = rows
        assert row[:2] == ["512 -> 4 x 64", "8"]
        cells = dict(zip(header, row))
        assert RATIO.match(cells["int8/float32 time (IQR)"])
        if lora:  # two more heads, timed against the float32 LoRA one
            assert RATIO.match(cells["float32 LoRA / full training (IQR)"])
            assert RATIO.match(cells["kernel-plus-update LoRA / float32 LoRA (IQR)"])
        else:  # Keras's own int8 Dense of the same width, against its float32 one
            assert RATIO.match(cells["Keras Dense(depth x width): int8/float32 time (IQR)"])
            assert 0 < float(cells["Keras Dense: max error / max output"]) < 0.05
        float_bytes, int8_bytes = (int(cells[f"{k} file bytes"].replace(",", ""))
                                   for k in ("float32", "int8"))
        # 2 x 256 x 128 (the splits' kernels) + 3 x 64 x 64 + 256 x 10 kernel
        # entries: 4 bytes each in float32, 1 in int8; the 458 scales and the
        # int8 file's four more arrays take a few kB of that back (LoRA's
        # updates are float32 in both files)
        entries = 2 * 256 * 128 + 3 * 64 * 64 + 256 * 10
        assert 3 * entries - 8 * 1024 < float_bytes - int8_bytes < 3 * entries
        assert cells["int8/float32 bytes"] == f"{int8_bytes / float_bytes:.2f}"
        assert 0 < float(cells["max error / max output"]) < 0.02  # rounding, not garbage
        file_bytes[bool(lora)] = (float_bytes, int8_bytes)
    # rank-2 updates: A of 2 x 256 x 4 (the splits'), 192 x 2 (recurrent rows),
    # 256 x 2 (output); B of 8 x 64 and 2 x 10; float32 in both files, with
    # the six arrays' own few hundred bytes each
    lora_bytes = 4 * (2 * 256 * 4 + 192 * 2 + 256 * 2 + 8 * 64 + 2 * 10)
    for with_lora, without in zip(file_bytes[True], file_bytes[False]):
        assert lora_bytes < with_lora - without < lora_bytes + 6 * 1024


def test_overhead_bench_runs_an_experiment():
    # head_trace reads no data, so the bench makes no MNIST copy for it
    # (--manual-dir names a folder without one).
    out = _run("overhead_bench.py", "--only", "head_trace", "--pairs", "2",
               "--manual-dir", os.path.join(REPO, "no-such-folder")).stdout
    header, row = _rows(out)
    assert row[:2] == ["head_trace",
                       "first compiled call (67 steps), 320 features -> head, s"]
    assert RATIO.match(row[header.index("B / A (IQR)")])
    # dense 320-50-10: two kernels, two biases; SpinalDense(10, 6 x 8): one
    # kernel per input half, the recurrent kernel, the bias, and the output
    # kernel and bias.
    assert re.fullmatch(r"ops \d+ / \d+; variables 4 / 6", row[-1]), row


def test_overhead_bench_refuses_what_it_would_not_measure(tmp_path):
    for args, message in [
        (["--pairs", "1"], "--pairs must be at least 2. Received: 1"),
        (["--variant", "A"], "give --versus too. Received: --variant A"),
        (["--versus", str(tmp_path)], f"holding spinalnet_keras/. Received: --versus {tmp_path}"),
    ]:
        assert message in _run("overhead_bench.py", *args, expect=2).stderr


@pytest.mark.skipif(not os.path.isdir(MNIST_DIR), reason="real MNIST files not available")
def test_epoch_bench_trains_both_to_a_useful_accuracy():
    pytest.importorskip("torch", reason="the PyTorch side needs pip install torch==2.13.0")
    out = _run("epoch_bench.py", "--repeats", "1", "--manual-dir", SHARED_DATA).stdout
    rows = {row[0]: row for row in _rows(out)}
    for framework in ("keras", "torch"):
        # one epoch of the paper's recipe: about 0.94 to 0.96
        assert float(rows[framework][3]) > 0.9, rows[framework]
    for ratio in ("whole process", "train+test"):
        assert re.fullmatch(r"\d+\.\d\d", rows[ratio][1]), rows[ratio]


def test_spread_keeps_the_quartiles_within_the_values():
    # The smoke tests above run 2 repeats; the default quartiles of two
    # values extrapolate beyond both (of 0.61 and 2.88: 0.04 to 3.45), and a
    # noisy run printed a ratio's range as "-0.03-2.82".
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        from summary import paired_ratio
        from summary import spread
    finally:
        sys.path.remove(os.path.join(REPO, "benchmarks"))
    assert spread([0.61, 2.88]) == "1.74 (1.18-2.31)"
    assert paired_ratio([1.0, 3.0], [1.0, 1.0]) == "2.00 (1.50-2.50)"
    # From three values on, the quartiles RESULTS.md's figures were printed with.
    assert spread([1.0, 2.0, 3.0]) == "2.00 (1.00-3.00)"
    assert spread([float(v) for v in range(1, 10)]) == "5.00 (2.50-7.50)"
    assert spread([0.5]) == "0.50"
