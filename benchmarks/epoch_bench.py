"""One epoch of the paper's MNIST recipe: this package's `train` vs PyTorch.

Both run the small CNN with a spinal 6 x 8 head, SGD lr 0.01 momentum 0.5,
batch 64, on real MNIST, one epoch plus the test pass, each as a whole fresh
process, interleaved (keras, torch, keras, torch, ...). Reports the medians
of the whole-process wall time and of the in-process train+test time, the
ratios keras / torch (median of the per-repeat ratios, each Keras run
against the PyTorch run right after it, with the interquartile range; and
the ratio of the medians) and the test accuracy of every run.

The Keras side is the package's console command as a user runs it, in the
Python environment this script runs in; the report says whether that
environment has scikit-learn, which Keras imports at start-up when present.

PyTorch is for comparison only: pip install torch==2.13.0.

    python benchmarks/epoch_bench.py --repeats 7
"""

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from summary import spread

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.join(HERE, "..", "..", "shared", "data")


def run(cmd, env):
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{cmd} failed:\n{proc.stderr[-3000:]}")
    return wall, proc.stdout


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--manual-dir", default=DEFAULT_DATA,
                        help="folder holding mnist/ with the four IDX files")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="extra arguments for spinalnet-keras train")
    args = parser.parse_args()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    work = tempfile.mkdtemp(prefix="epoch_bench_")
    try:
        measure(args, env, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(args, env, work):
    data_dir = os.path.join(work, "tfds")
    # Prepare the tfds copy and its decoded cache once, outside the timings
    # (as a user's first run does once for all later ones).
    run([sys.executable, "-c", "import sys; from spinalnet_keras.data import load_task; "
         "load_task('mnist', data_dir=sys.argv[1], manual_dir=sys.argv[2])",
         data_dir, args.manual_dir], env)
    keras_cmd = [sys.executable, "-m", "spinalnet_keras", "train", "--model", "mnist_cnn",
                 "--head", "spinal", "--width", "8", "--depth", "6", "--dataset", "mnist",
                 "--data-dir", data_dir, "--epochs", "1", "--batch-size", "64",
                 "--optimizer", "sgd", "--learning-rate", "0.01", "--momentum", "0.5",
                 "--verbose", "0", *args.extra]
    torch_cmd = [sys.executable, os.path.join(HERE, "torch_mnist.py"),
                 os.path.join(args.manual_dir, "mnist"), "--epochs", "1"]
    rows = {"keras": [], "torch": []}
    for r in range(args.repeats):
        out = os.path.join(work, f"keras{r}")
        wall, _ = run(keras_cmd + ["--seed", str(r), "--output-dir", out], env)
        with open(os.path.join(out, "result.json")) as f:
            res = json.load(f)
        rows["keras"].append((wall, res["train_seconds_this_session"], res["final"]))
        steps_per_execution = res["steps_per_execution"]
        wall, stdout = run(torch_cmd + ["--seed", str(r)], env)
        res = json.loads(stdout.strip().splitlines()[-1])
        rows["torch"].append((wall, res["train_and_test_seconds"], res["test_accuracy"]))
        print(f"repeat {r}: keras {rows['keras'][-1]}, torch {rows['torch'][-1]}", flush=True)
    med = {k: (statistics.median(w for w, _, _ in v), statistics.median(t for _, t, _ in v))
           for k, v in rows.items()}
    print("\n| | whole process s (median) | train+test s (median) | test accuracy per run |")
    print("|---|---:|---:|---|")
    for k in ("keras", "torch"):
        accs = ", ".join(f"{a:.4f}" for _, _, a in rows[k])
        print(f"| {k} | {med[k][0]:.2f} | {med[k][1]:.2f} | {accs} |")
    print("\n| ratio keras/torch | median of paired ratios (IQR) | ratio of medians |")
    print("|---|---:|---:|")
    for col, name in ((0, "whole process"), (1, "train+test")):
        paired = [k[col] / t[col] for k, t in zip(rows["keras"], rows["torch"])]
        print(f"| {name} | {spread(paired)} | {med['keras'][col] / med['torch'][col]:.2f} |")
    has_sklearn = importlib.util.find_spec("sklearn") is not None
    print(f"\n{args.repeats} interleaved repeats, {os.cpu_count()} cores; Keras steps per "
          f"execution {steps_per_execution}; scikit-learn "
          f"{'installed' if has_sklearn else 'not installed'} in this environment")


if __name__ == "__main__":
    main()
