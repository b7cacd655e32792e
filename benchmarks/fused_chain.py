"""SpinalDense with its sequential chain fused into one TensorFlow op each way
(`fused_chain_op.cc`), for `layer_bench.py --fused`: an experiment that
measures what such an op would gain, not part of the package.

The op is compiled here with the C++ compiler (`CXX`, default `g++`) against
the installed TensorFlow's headers, into a temporary folder, with AVX2 and
FMA where the processor has them (the op's width-8 path, the paper's MNIST
head, is written for them; other widths, and machines without, run plain
loops: at 512 -> 4 x 128 the fused layer took 2 to 3 times SpinalDense's
time, benchmarks/RESULTS.md). It has no XLA kernel, so the fused layer runs without
`jit_compile` only.
"""

import os
import shutil
import subprocess
import tempfile

import keras
import tensorflow as tf

from spinalnet_keras import SpinalDense
from spinalnet_keras import split_sizes

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fused_chain_op.cc")


class CompileError(RuntimeError):
    pass


def compile_op():
    """Compile `fused_chain_op.cc` and load it; the loaded module."""
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise CompileError(f"--fused compiles a TensorFlow op and needs a C++ compiler; "
                           f"{compiler!r} is not on PATH (set CXX to another).")
    folder = tempfile.mkdtemp(prefix="spinal_fused_")
    library = os.path.join(folder, "fused_chain.so")
    # AVX2 and FMA where the machine has them (any x86-64 of the last ten
    # years); not -march=native, whose AVX-512 FP16 headers GCC 12 rejects.
    arch = ["-mavx2", "-mfma"] if _has_avx2() else []
    command = ([compiler, "-shared", "-fPIC", "-O3", "-w", *arch, SOURCE, "-o", library]
               + tf.sysconfig.get_compile_flags() + tf.sysconfig.get_link_flags())
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode:
        raise CompileError(f"compiling {SOURCE} failed:\n{proc.stderr[-3000:]}")
    module = tf.load_op_library(library)
    shutil.rmtree(folder)  # loaded; the file is no longer needed
    _register_gradient(module)
    return module


def _has_avx2():
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


def _register_gradient(module):
    @tf.RegisterGradient("SpinalChain")
    def _spinal_chain_grad(op, dy):
        n = op.get_attr("N")
        d_products, d_bias, d_recurrent = module.spinal_chain_grad(
            dy, op.outputs[0], op.inputs[n + 1],
            depth=op.get_attr("depth"), width=op.get_attr("width"), N=n)
        return [*d_products, d_bias, d_recurrent]


class FusedSpinal(keras.layers.Layer):
    """SpinalDense's forward pass (ReLU, bias, no dropout or BatchNorm) with
    the layer's layout below a width of 128: one kernel per input part,
    shared by the part's sub-layers (sub-layer i's columns `i // splits`),
    one bias, and the recurrent blocks stacked. `module` is `compile_op()`'s;
    None runs the chain in TensorFlow ops instead, the reference the fused
    op's outputs and gradients are checked against."""

    def __init__(self, depth, width, module, splits=2, **kwargs):
        super().__init__(**kwargs)
        if depth < 2:
            raise ValueError(f"FusedSpinal needs depth >= 2, got depth={depth}")
        self.depth, self.width, self.splits, self.module = depth, width, splits, module

    def build(self, input_shape):
        self.sizes = split_sizes(input_shape[-1], self.splits)
        d, w, n = self.depth, self.width, self.splits
        self.kernels = [
            self.add_weight(shape=(size, len(range(s, d, n)) * w), name=f"kernel_{s}")
            for s, size in enumerate(self.sizes)
        ]
        self.bias = self.add_weight(shape=(d * w,), initializer="zeros", name="bias")
        self.recurrent = self.add_weight(shape=((d - 1) * w, w), name="recurrent")

    def call(self, x):
        parts = tf.split(x, self.sizes, axis=-1)
        products = [tf.matmul(p, k) for p, k in zip(parts, self.kernels)]
        if self.module is not None:
            return self.module.spinal_chain(products, self.bias, self.recurrent,
                                            depth=self.depth, width=self.width)
        d, w, n = self.depth, self.width, self.splits
        outputs = []
        for i in range(d):
            z = products[i % n][:, (i // n) * w:(i // n + 1) * w] + self.bias[i * w:(i + 1) * w]
            if i:
                z = z + tf.matmul(outputs[-1], self.recurrent[(i - 1) * w:i * w])
            outputs.append(tf.nn.relu(z))
        return tf.concat(outputs, -1)

    def load_spinal(self, layer):
        """Take a built SpinalDense's weights (same sizes, no units)."""
        weights = layer.get_sublayer_weights()
        d, n = self.depth, self.splits
        kernels, biases = weights["kernels"], weights["biases"]
        for s, variable in enumerate(self.kernels):
            variable.assign(tf.concat([kernels[i][:self.sizes[s]] for i in range(s, d, n)], 1))
        self.bias.assign(tf.concat(biases, 0))
        self.recurrent.assign(tf.concat(
            [kernels[i][self.sizes[i % n]:] for i in range(1, d)], 0))


def check(module, features, depth, width, batch):
    """Refuse to time a fused op that computes otherwise than SpinalDense:
    the fused layer's outputs against the layer's with the same weights, and
    its gradients (every weight and the input) against autodiff of the same
    chain in TensorFlow ops."""
    keras.utils.set_random_seed(1)
    x = tf.random.normal((batch, features))
    spinal = SpinalDense(width=width, depth=depth)
    spinal.build(x.shape)
    # random biases, so that a bias misplaced in the chain shows
    spinal.bias.assign(tf.random.normal(spinal.bias.shape))
    fused, reference = FusedSpinal(depth, width, module), FusedSpinal(depth, width, None)
    for layer in (fused, reference):
        layer.build(x.shape)
        layer.load_spinal(spinal)
    weight = tf.random.normal((batch, depth * width))

    @tf.function
    def gradients(x, layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * weight)
        return y, tape.gradient(loss, [x] + layer.trainable_variables)

    y_fused, g_fused = gradients(x, fused)
    y_ref, g_ref = gradients(x, reference)
    tf.debugging.assert_near(y_ref, spinal(x), rtol=1e-5, atol=1e-5,
                             message="the reference chain differs from SpinalDense")
    tf.debugging.assert_near(y_fused, y_ref, rtol=1e-5, atol=1e-5,
                             message="the fused chain's outputs differ")
    for name, a, b in zip(["input"] + [v.path for v in fused.trainable_variables],
                          g_fused, g_ref):
        tf.debugging.assert_near(a, b, rtol=1e-4, atol=1e-4,
                                 message=f"the fused chain's gradient of {name} differs")

