"""Forward+backward time of SpinalDense against the same network composed by
hand from Dense/Concatenate and against one Dense of the same output width.

All three produce `depth * width` features (ReLU) from `features` inputs.
Each step computes the outputs and the gradients of their sum with respect
to every weight and the input (no optimizer update), inside one
`tf.function` (optionally `jit_compile`). Implementations are timed
interleaved: each repeat times all three back to back (in a rotating
order), and the ratios are taken within each repeat, so a slow spell of
the shared machine hits both sides of a ratio. The table gives the median
ratio over repeats and its interquartile range. The FLOP rate is against
this machine's own rate on one large matmul, measured in the same run.

    python benchmarks/layer_bench.py                 # all sizes, batch 64 and 256, jit on/off
    python benchmarks/layer_bench.py --quick         # small sizes only
    python benchmarks/layer_bench.py --sizes 25088x4x1024 --repeats 15
    python benchmarks/layer_bench.py --quick --chain  # plus the sequential chain alone

`--chain` adds a fourth variant: only the part of SpinalDense that cannot be
batched, the `depth - 1` dependent `width x width` products with their
additions and activations (its input stands for the sub-layers'
pre-activations), forward and backward. Its time against the whole Dense
step is a floor for spinal/dense on this machine whatever the rest costs.
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from composed import composed_spinal  # noqa: E402

from spinalnet_keras import SpinalDense  # noqa: E402
from spinalnet_keras import split_sizes  # noqa: E402

# (features, depth, width): the paper's head sizes
SIZES = [(320, 6, 8), (512, 4, 128), (4096, 4, 512), (25088, 4, 1024)]


def size_arg(text):
    try:
        features, depth, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FEATURESxDEPTHxWIDTH, got {text!r}")
    return features, depth, width


def spinal_mults(features, depth, width, splits=2):
    sizes = split_sizes(features, splits)
    return sum((sizes[i % splits] + (width if i else 0)) * width for i in range(depth))


class SequentialChain(keras.layers.Layer):
    """SpinalDense's dependent products alone: sub-layer i adds
    `previous output @ recurrent block i` to its pre-activation (the input's
    i-th `width` features) and applies ReLU; the layer's ops, without the
    input-split products and the bias."""

    def __init__(self, depth, width, **kwargs):
        super().__init__(**kwargs)
        self.depth, self.width = depth, width

    def build(self, input_shape):
        self.recurrent_kernel = self.add_weight(
            shape=((self.depth - 1) * self.width, self.width), initializer="glorot_uniform")

    def call(self, pre):
        pre = keras.ops.split(pre, self.depth, axis=-1)
        blocks = keras.ops.split(self.recurrent_kernel, self.depth - 1, axis=0)
        outputs = [keras.ops.relu(pre[0])]
        for i in range(1, self.depth):
            z = pre[i] + keras.ops.matmul(outputs[-1], blocks[i - 1])
            outputs.append(keras.ops.relu(z))
        return keras.ops.concatenate(outputs, -1)


def build(kind, features, depth, width):
    if kind == "chain":
        inputs = keras.Input((depth * width,))
        return keras.Model(inputs, SequentialChain(depth, width)(inputs))
    inputs = keras.Input((features,))
    if kind == "spinal":
        outputs = SpinalDense(width=width, depth=depth)(inputs)
        return keras.Model(inputs, outputs)
    if kind == "composed":
        return composed_spinal(features, units=None, width=width, depth=depth)
    return keras.Model(inputs, keras.layers.Dense(depth * width, activation="relu")(inputs))


def make_step(model, jit):
    weights = model.trainable_variables

    @tf.function(jit_compile=jit)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = model(x, training=True)
            loss = tf.reduce_sum(y)
        return tape.gradient(loss, [x] + weights)

    return step


def time_steps(step, x, steps):
    start = time.perf_counter()
    for _ in range(steps):
        out = step(x)
    _ = [o.numpy() for o in out[:1]]
    return (time.perf_counter() - start) / steps


def paired_ratio(a, b):
    """Median of a[i] / b[i] over repeats, with its interquartile range."""
    ratios = [x / y for x, y in zip(a, b)]
    q1, median, q3 = statistics.quantiles(ratios, n=4)
    return f"{median:.2f} ({q1:.2f}-{q3:.2f})"


def machine_flops(n=2048, repeats=5):
    a = tf.random.normal((n, n))
    mm = tf.function(lambda a: tf.matmul(a, a))
    mm(a).numpy()
    best = min(time_steps(mm, a, 3) for _ in range(repeats))
    return 2 * n**3 / best


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="the two small sizes only")
    parser.add_argument("--sizes", nargs="+", type=size_arg,
                        help="FEATURESxDEPTHxWIDTH, e.g. 320x6x8 (default: the paper's four)")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--chain", action="store_true",
                        help="also time the sequential chain alone (see above)")
    parser.add_argument("--target-seconds", type=float, default=0.25,
                        help="time per measurement (sets the number of steps)")
    args = parser.parse_args()
    sizes = args.sizes or (SIZES[:2] if args.quick else SIZES)
    peak = machine_flops()
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, "
          f"{os.cpu_count()} CPU cores; machine matmul rate {peak / 1e9:.1f} GFLOP/s")
    print("| features -> depth x width | batch | jit | spinal ms | composed ms | dense ms "
          "| spinal/composed (IQR) | spinal/dense (IQR) | mults spinal/dense "
          "| spinal GFLOP/s (% of machine) |" + (" chain ms | chain/dense (IQR) |" if args.chain else ""))
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if args.chain else ""))
    kinds = ["spinal", "composed", "dense"] + (["chain"] if args.chain else [])
    for features, depth, width in sizes:
        for batch in args.batches:
            for jit in (False, True):
                keras.utils.set_random_seed(0)
                x = tf.random.normal((batch, features))
                inputs = {k: x for k in kinds}
                if args.chain:
                    inputs["chain"] = tf.random.normal((batch, depth * width))
                steps = {}
                for kind in kinds:
                    steps[kind] = make_step(build(kind, features, depth, width), jit)
                    steps[kind](inputs[kind])  # trace and compile
                per = max(1, int(args.target_seconds
                                 / time_steps(steps["dense"], inputs["dense"], 2)))
                times = {k: [] for k in steps}
                n = len(kinds)
                for r in range(args.repeats):
                    for kind in kinds[r % n:] + kinds[:r % n]:
                        times[kind].append(time_steps(steps[kind], inputs[kind], per))
                med = {k: statistics.median(v) for k, v in times.items()}
                ratio = {k: paired_ratio(times["spinal"], times[k]) for k in ("composed", "dense")}
                sm = spinal_mults(features, depth, width)
                dm = features * depth * width
                # forward + backward (grads of weights and input): 3 products
                rate = 3 * 2 * sm * batch / med["spinal"]
                print(f"| {features} -> {depth} x {width} | {batch} | {'on' if jit else 'off'} "
                      f"| {1e3 * med['spinal']:.3f} | {1e3 * med['composed']:.3f} "
                      f"| {1e3 * med['dense']:.3f} | {ratio['composed']} "
                      f"| {ratio['dense']} | {sm / dm:.2f} "
                      f"| {rate / 1e9:.1f} ({100 * rate / peak:.0f}%) |"
                      + (f" {1e3 * med['chain']:.3f} | {paired_ratio(times['chain'], times['dense'])} |"
                         if args.chain else ""), flush=True)


if __name__ == "__main__":
    main()
