"""The rate of one float32 product `x @ W` against the width of W.

Why SpinalDense 0.2 lost to the hand-composed network at 4096 -> 4 x 512,
batch 64 (RESULTS.md, section 2): it computed each input half's products
for both of its sub-layers as one product with a 2048 x 1024 kernel, where
the composed network makes one per sub-layer with 512 columns (0.3 does
the same from a width of 256). This script times `(batch, 2048) @ (2048, N)` for several N, in a
graph loop as `layer_bench.py` runs its steps (each product's input
depending on the previous one), interleaved, and reports each rate against
that of N = 512 measured in the same repeat.

    python benchmarks/matmul_bench.py
    python benchmarks/matmul_bench.py --inner 12544 --widths 1024 2048 2064
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from layer_bench import check_repeats, graph_loop, positive  # noqa: E402
from summary import paired_ratio  # noqa: E402


def product_loop(kernel):
    def advance(x):
        y = tf.matmul(x, kernel)
        return x + 1e-6 * y[0, 0], y[0, 0]

    return graph_loop(advance, tf.TensorSpec((None, kernel.shape[0])))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--inner", type=positive(int), default=2048,
                        help="rows of W (features per input half)")
    parser.add_argument("--widths", type=positive(int), nargs="+", default=[512, 768, 1024, 1040],
                        help="columns of W; the first is the reference")
    parser.add_argument("--batches", type=positive(int), nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--target-seconds", type=positive(float), default=0.25)
    args = parser.parse_args()
    check_repeats(parser, args.repeats)
    if len(set(args.widths)) < len(args.widths):
        parser.error(f"--widths must not repeat a width, got {args.widths}")
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores; "
          f"(batch, {args.inner}) @ ({args.inner}, N), float32")
    print("| batch | N | row of W, bytes | ms | GFLOP/s | rate / rate at N = "
          f"{args.widths[0]} (IQR) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for batch in args.batches:
        tf.random.set_seed(0)
        x = tf.random.normal((batch, args.inner))
        loops = {n: product_loop(tf.Variable(tf.random.normal((args.inner, n)) * 0.01))
                 for n in args.widths}
        steps = {}
        for n, run in loops.items():
            run(x, 2).numpy()
            start = time.perf_counter()
            run(x, 10).numpy()
            steps[n] = max(1, int(args.target_seconds * 10 / (time.perf_counter() - start)))
        rates = {n: [] for n in loops}
        widths = list(loops)
        for r in range(args.repeats):
            for n in widths[r % len(widths):] + widths[:r % len(widths)]:
                start = time.perf_counter()
                loops[n](x, steps[n]).numpy()
                seconds = (time.perf_counter() - start) / steps[n]
                rates[n].append(2 * batch * args.inner * n / seconds)
        ref = args.widths[0]
        for n in widths:
            rate = statistics.median(rates[n])
            ms = 1e3 * 2 * batch * args.inner * n / rate
            print(f"| {batch} | {n} | {4 * n} | {ms:.3f} | {rate / 1e9:.0f} "
                  f"| {paired_ratio(rates[n], rates[ref])} |", flush=True)


if __name__ == "__main__":
    main()
