"""Forward+backward time of SpinalDense against the same network composed by
hand from Dense/Concatenate and against one Dense of the same output width.

All three produce `depth * width` features (ReLU) from `features` inputs.
A step computes the outputs and the gradients of their sum with respect to
every weight and the input (no optimizer update unless `--optimizer`).
Steps run as `fit` runs them with `steps_per_execution`: many per call,
in a graph loop, the step itself one `tf.function` (optionally
`jit_compile`) traced for any batch size. Each step's input is the previous one's moved a little along its
input gradient, so the steps run one after another and none can be lifted
out of the loop. `--per-call` instead calls each step from Python, as
Keras's default `steps_per_execution=1` does; that adds tf.function's
dispatch, about 0.25 ms on this machine, to every variant alike, which at
the small sizes is most of a step.

Implementations are timed interleaved: each repeat times all of them back to
back (in a rotating order), and the ratios are taken within each repeat, so
a slow spell of the shared machine hits both sides of a ratio. The table
gives the median ratio over repeats and its interquartile range. The FLOP
rate is against this machine's own rate on one large matmul, measured in
the same run.

    python benchmarks/layer_bench.py                 # all sizes, batch 64 and 256, jit on/off
    python benchmarks/layer_bench.py --quick         # small sizes only
    python benchmarks/layer_bench.py --sizes 25088x4x1024 --repeats 15
    python benchmarks/layer_bench.py --quick --chain  # plus the sequential chain alone
    python benchmarks/layer_bench.py --quick --per-call
    python benchmarks/layer_bench.py --layouts --sizes 512x4x64 1024x8x128 2048x4x256
    python benchmarks/layer_bench.py --layouts --optimizer adam --sizes 512x4x128
    python benchmarks/layer_bench.py --bias-add --sizes 512x2x8 512x4x128 4096x4x512
    python benchmarks/layer_bench.py --fused --quick     # needs a C++ compiler

`--layouts` adds SpinalDense with its input-split products laid out one
way at every width: one product per split, shared by the split's
sub-layers (the layer's layout below OWN_KERNEL_WIDTH = 128), and one
product per sub-layer (its layout from there on).

`--bias-add` adds SpinalDense with every input product's bias added as a
BiasAdd, as the layer did before: where a sub-layer that has its input
product to itself then adds its recurrent product (widths from 128, or
depth 2 or 3 at 2 splits), TensorFlow 2.21's oneDNN graph rewrite breaks
on MatMul -> BiasAdd -> Add -> ReLU, logs a warning, and runs the whole
step without graph optimizations. The layer now adds those biases as a
plain Add.

`--optimizer sgd|adam` makes each step a training step as `fit` runs it:
the gradients also update the weights with that optimizer, whose work
grows with the number of variables as well as their size.

`--chain` adds two variants: only the part of SpinalDense that cannot be
batched, the `depth - 1` dependent `width x width` products with their
additions and activations (its input stands for the sub-layers'
pre-activations), forward and backward. Its time against the whole Dense
step is a floor for spinal/dense on this machine whatever the rest costs.
The second is the same chain with a hand-written backward pass
(`keras.ops.custom_gradient`: the chain's gradient in reverse, all the
recurrent blocks' gradients in one batched product).

`--fused` adds the layer with its chain (ReLU) made one TensorFlow op
forward and one backward, written in C++ (`fused_chain_op.cc`, compiled
when the script starts; `fused_chain.py`): what such an op would gain,
measured before anyone ships one. Its outputs and gradients are checked
against SpinalDense's and autodiff's first. The op has no XLA kernel, so its
cells with `jit` on read n/a.
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

import fused_chain  # noqa: E402

from spinalnet_keras import SpinalDense  # noqa: E402
from spinalnet_keras import split_sizes  # noqa: E402
from summary import paired_ratio  # noqa: E402

# compile_op()'s module, with --fused
FUSED_OP = None

# (features, depth, width): the paper's head sizes
SIZES = [(320, 6, 8), (512, 4, 128), (4096, 4, 512), (25088, 4, 1024)]


def size_arg(text):
    try:
        features, depth, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FEATURESxDEPTHxWIDTH, got {text!r}")
    if features < 2 or depth < 2 or width < 1:
        raise argparse.ArgumentTypeError(
            f"expected at least 2 features, depth 2 and width 1, got {text!r}")
    return features, depth, width


def positive(kind):
    """An argparse type: a number of `kind` above zero."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value

    return parse


def check_repeats(parser, repeats):
    # The interquartile range of the per-repeat ratios needs two of them.
    if repeats < 2:
        parser.error(f"--repeats must be at least 2, got {repeats}")


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


class CustomGradientChain(SequentialChain):
    """SequentialChain with its backward pass written by hand."""

    def call(self, pre):
        depth, width = self.depth, self.width
        ops = keras.ops

        @ops.custom_gradient
        def chain(pre, kernel):
            pre = ops.split(pre, depth, axis=-1)
            blocks = ops.split(kernel, depth - 1, axis=0)
            outputs = [ops.relu(pre[0])]
            for i in range(1, depth):
                outputs.append(ops.relu(pre[i] + ops.matmul(outputs[-1], blocks[i - 1])))

            def grad(*args, upstream=None):
                upstream = args[0] if upstream is None else upstream
                d_out = ops.split(upstream, depth, axis=-1)
                d_pre, g = [None] * depth, d_out[-1]
                for i in range(depth - 1, -1, -1):
                    d_pre[i] = ops.where(outputs[i] > 0, g, 0.0)
                    if i:
                        g = d_out[i - 1] + ops.matmul(d_pre[i], ops.transpose(blocks[i - 1]))
                d_blocks = ops.matmul(ops.transpose(ops.stack(outputs[:-1]), (0, 2, 1)),
                                      ops.stack(d_pre[1:]))
                return (ops.concatenate(d_pre, -1),
                        ops.reshape(d_blocks, ((depth - 1) * width, width)))

            return ops.concatenate(outputs, -1), grad

        return chain(pre, self.recurrent_kernel)


CHAINS = {"chain": SequentialChain, "chain_custom_gradient": CustomGradientChain}


class LayoutSpinal(SpinalDense):
    """SpinalDense with its input-split products laid out one way at every
    width: `"split"`, one product per split shared by the split's sub-layers
    (the layer's choice below OWN_KERNEL_WIDTH), or `"sublayer"`, one per
    sub-layer (its choice from there on)."""

    def __init__(self, products, **kwargs):
        super().__init__(**kwargs)
        self.products = products

    def _own_kernels(self):
        return self.products == "sublayer"


LAYOUTS = {"per_split_products": "split", "per_sublayer_products": "sublayer"}


class BiasAddSpinal(SpinalDense):
    """SpinalDense with every input product's bias added as Keras makes
    `add(z, bias)`, a BiasAdd, as the layer did up to commit 6df5623, also
    where a lone sub-layer then adds its recurrent product and TensorFlow's
    oneDNN graph rewrite breaks (the layer now adds those biases as a plain
    Add)."""

    def _add_split_bias(self, z, bias, group):
        return keras.ops.add(z, bias)


def check_custom_gradient(depth, width, batch):
    """Refuse to time a hand-written backward that disagrees with autodiff."""
    pre = tf.random.normal((batch, depth * width))
    chains = [cls(depth, width) for cls in CHAINS.values()]
    grads = []
    for chain in chains:
        chain.build(pre.shape)
        chain.recurrent_kernel.assign(chains[0].recurrent_kernel)

        @tf.function  # as timed: eagerly, tf.custom_gradient wants variables apart
        def gradient(pre, chain=chain):
            with tf.GradientTape() as tape:
                tape.watch(pre)
                loss = tf.reduce_sum(chain(pre) * tf.range(depth * width, dtype=pre.dtype))
            return tape.gradient(loss, [pre, chain.recurrent_kernel])

        grads.append(gradient(pre))
    for auto, custom in zip(*grads):
        tf.debugging.assert_near(custom, auto, rtol=1e-5, atol=1e-5,
                                 message="hand-written chain gradient differs from autodiff")


def build(kind, features, depth, width):
    if kind in CHAINS:
        inputs = keras.Input((depth * width,))
        return keras.Model(inputs, CHAINS[kind](depth, width)(inputs))
    inputs = keras.Input((features,))
    if kind == "spinal":
        outputs = SpinalDense(width=width, depth=depth)(inputs)
        return keras.Model(inputs, outputs)
    if kind in LAYOUTS:
        outputs = LayoutSpinal(LAYOUTS[kind], width=width, depth=depth)(inputs)
        return keras.Model(inputs, outputs)
    if kind == "bias_add":
        return keras.Model(inputs, BiasAddSpinal(width=width, depth=depth)(inputs))
    if kind == "fused":
        return keras.Model(inputs, fused_chain.FusedSpinal(depth, width, FUSED_OP)(inputs))
    if kind == "composed":
        return composed_spinal(features, units=None, width=width, depth=depth)
    return keras.Model(inputs, keras.layers.Dense(depth * width, activation="relu")(inputs))


def graph_loop(advance, spec):
    """A function of (x, n) that applies `advance(x) -> (next x, scalar)` n
    times in one graph loop, each time to the x it returned last, and returns
    the sum of the scalars."""

    @tf.function(input_signature=[spec, tf.TensorSpec((), tf.int32)])
    def run(x, n):
        def body(i, x, total):
            x, seen = advance(x)
            return i + 1, x, total + seen

        return tf.while_loop(lambda i, x, total: i < n, body, (0, x, 0.0))[2]

    return run


# --optimizer: the paper's MNIST recipe's SGD, and Adam, whose update reads
# and writes two slots per variable. The work does not depend on the rate;
# it is tiny so that tens of thousands of steps on one batch leave the
# weights where they started (Adam moves each by at most the rate a step).
OPTIMIZERS = {
    "sgd": lambda: keras.optimizers.SGD(1e-9, momentum=0.5),
    "adam": lambda: keras.optimizers.Adam(1e-9),
}


def make_step(model, jit, optimizer=None):
    """A function of (x, n) that runs n steps from x and returns a scalar.
    With `optimizer` (a key of OPTIMIZERS) each step also updates the
    weights with it, as `fit` does."""
    weights = model.trainable_variables
    spec = tf.TensorSpec((None, model.inputs[0].shape[-1]))
    if optimizer is not None:
        optimizer = OPTIMIZERS[optimizer]()
        optimizer.build(weights)

    @tf.function(jit_compile=jit, input_signature=[spec])
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(model(x, training=True))
        dx, *dw = tape.gradient(loss, [x] + weights)
        if optimizer is None:
            # One element of each weight gradient keeps it from being pruned
            # without adding work in proportion to the weights.
            return dx, tf.add_n([tf.reshape(g, [-1])[0] for g in dw])
        optimizer.apply(dw, weights)
        return dx, loss

    def advance(x):
        dx, seen = step(x)
        return x - 1e-6 * dx, seen

    return graph_loop(advance, spec)


def time_steps(steps, x, n, per_call):
    """Seconds per step over n steps."""
    start = time.perf_counter()
    if per_call:
        for _ in range(n):
            out = steps(x, 1)
    else:
        out = steps(x, n)
    out.numpy()
    return (time.perf_counter() - start) / n


def machine_flops(n=2048, repeats=5):
    a = tf.random.normal((n, n))
    mm = tf.function(lambda a: tf.matmul(a, a))
    mm(a).numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(3):
            out = mm(a)
        out.numpy()
        best = min(best, (time.perf_counter() - start) / 3)
    return 2 * n**3 / best


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="the two small sizes only")
    parser.add_argument("--sizes", nargs="+", type=size_arg,
                        help="FEATURESxDEPTHxWIDTH, e.g. 320x6x8 (default: the paper's four)")
    parser.add_argument("--batches", type=positive(int), nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--chain", action="store_true",
                        help="also time the sequential chain alone (see above)")
    parser.add_argument("--layouts", action="store_true",
                        help="also time one product per split against one per sub-layer "
                             "(see above)")
    parser.add_argument("--bias-add", action="store_true",
                        help="also time the layer with every input bias a BiasAdd, as "
                             "before the graph-rewrite fix (see above)")
    parser.add_argument("--fused", action="store_true",
                        help="also time the layer with its chain fused into one C++ op "
                             "each way, compiled here (see above)")
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS),
                        help="each step also updates the weights with this optimizer "
                             "(default: gradients only)")
    parser.add_argument("--per-call", action="store_true",
                        help="one call from Python per step (see above)")
    parser.add_argument("--target-seconds", type=positive(float), default=0.25,
                        help="time per measurement (sets the number of steps)")
    args = parser.parse_args()
    check_repeats(parser, args.repeats)
    sizes = args.sizes or (SIZES[:2] if args.quick else SIZES)
    if args.fused:
        global FUSED_OP
        try:
            FUSED_OP = fused_chain.compile_op()
        except fused_chain.CompileError as e:
            parser.error(str(e))
    peak = machine_flops()
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, "
          f"{os.cpu_count()} CPU cores; machine matmul rate {peak / 1e9:.1f} GFLOP/s; "
          + ("one call per step" if args.per_call else "steps in a graph loop")
          + (f"; each step updates the weights with {args.optimizer}" if args.optimizer else ""))
    print("| features -> depth x width | batch | jit | spinal ms | composed ms | dense ms "
          "| spinal/composed (IQR) | spinal/dense (IQR) | mults spinal/dense "
          "| spinal GFLOP/s (% of machine) |"
          + (" chain ms | chain/dense (IQR) | custom-gradient chain / chain (IQR) |"
             if args.chain else "")
          + (" per-split products ms | per-sub-layer products ms "
             "| per-sub-layer / per-split (IQR) |" if args.layouts else "")
          + (" all-BiasAdd ms | spinal / all-BiasAdd (IQR) |" if args.bias_add else "")
          + (" fused ms | fused/dense (IQR) | fused/spinal (IQR) |" if args.fused else ""))
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" if args.chain else "")
          + ("---:|---:|---:|" if args.layouts else "") + ("---:|---:|" if args.bias_add else "")
          + ("---:|---:|---:|" if args.fused else ""))
    kinds = (["spinal", "composed", "dense"] + (list(CHAINS) if args.chain else [])
             + (list(LAYOUTS) if args.layouts else []) + (["bias_add"] if args.bias_add else [])
             + (["fused"] if args.fused else []))
    for features, depth, width in sizes:
        for batch in args.batches:
            for jit in (False, True):
                keras.utils.set_random_seed(0)
                x = tf.random.normal((batch, features))
                chain_x = tf.random.normal((batch, depth * width))
                inputs = {k: chain_x if k in CHAINS else x for k in kinds}
                if args.chain:
                    check_custom_gradient(depth, width, batch)
                if args.fused and not jit:
                    fused_chain.check(FUSED_OP, features, depth, width, batch)
                # without an XLA kernel the fused op cannot be compiled
                cell_kinds = [k for k in kinds if not (jit and k == "fused")]
                steps = {}
                for kind in cell_kinds:
                    steps[kind] = make_step(build(kind, features, depth, width), jit,
                                            args.optimizer)
                    steps[kind](inputs[kind], 2).numpy()  # trace and compile
                per = max(1, int(args.target_seconds / time_steps(
                    steps["dense"], inputs["dense"], 10, args.per_call)))
                times = {k: [] for k in steps}
                n = len(cell_kinds)
                for r in range(args.repeats):
                    for kind in cell_kinds[r % n:] + cell_kinds[:r % n]:
                        times[kind].append(time_steps(steps[kind], inputs[kind], per, args.per_call))
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
                      + (f" {1e3 * med['chain']:.3f} | {paired_ratio(times['chain'], times['dense'])} "
                         f"| {paired_ratio(times['chain_custom_gradient'], times['chain'])} |"
                         if args.chain else "")
                      + (f" {1e3 * med['per_split_products']:.3f} "
                         f"| {1e3 * med['per_sublayer_products']:.3f} "
                         f"| {paired_ratio(times['per_sublayer_products'], times['per_split_products'])} |"
                         if args.layouts else "")
                      + (f" {1e3 * med['bias_add']:.3f} "
                         f"| {paired_ratio(times['spinal'], times['bias_add'])} |"
                         if args.bias_add else "")
                      + ((" n/a | n/a | n/a |" if jit else
                          f" {1e3 * med['fused']:.3f} "
                          f"| {paired_ratio(times['fused'], times['dense'])} "
                          f"| {paired_ratio(times['fused'], times['spinal'])} |")
                         if args.fused else ""), flush=True)


if __name__ == "__main__":
    main()
