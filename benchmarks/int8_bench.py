"""SpinalDense in int8 against the same layer in float32: file size, error,
and inference time.

For each size, one SpinalDense head (`units` outputs over the paper's spinal
sizes) with random weights, and a copy quantized with
`layer.quantize("int8")`, which stores the kernels as int8 with a float scale
per column of each sub-layer's block and computes in float32: each product
with an int8 kernel cast to float32, its columns then scaled. Reported:

- the bytes of each model's `.keras` file and their ratio;
- the largest output difference on a standard normal batch, against the
  largest float32 output (the rounding of the kernels alone: the int8 form
  rounds no inputs);
- the time of a forward pass (inference, `training=False`) per batch, many
  in a graph loop as in `layer_bench.py` (each pass's input depending on the
  previous output), interleaved and in a rotating order, as the median
  int8 / float32 ratio over repeats with its interquartile range.

Beside them, a Keras `Dense` of the same output width (`depth * width`,
as in `layer_bench.py`) and its copy quantized by Keras's own
`Dense.quantize("int8")`, timed in the same rotation: that layer rounds
each batch of inputs to int8 too and multiplies in integers, the way
SpinalDense's int8 form does not take. Its error is measured as above.

With `--lora RANK`, both heads get LoRA at that rank (the int8 one after
quantizing, as QLoRA fine-tunes), and the times are those of training
steps instead: forward and backward passes, with an SGD update of what
trains (the LoRA updates and the biases), as in `layer_bench.py
--optimizer sgd`. Two more float32 heads are timed beside them, each
against the float32 LoRA head: the same head without LoRA, training all
its weights (what LoRA saves), and one that computes LoRA as the layer
did up to commit a078a40, multiplying by each kernel plus its update
`A @ B` instead of adding `(x @ A) @ B` to each product.

    python benchmarks/int8_bench.py
    python benchmarks/int8_bench.py --sizes 25088x4x1024 --batches 64 --repeats 15
    python benchmarks/int8_bench.py --lora 8
"""

import argparse
import os
import statistics
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from layer_bench import (  # noqa: E402
    SIZES, check_repeats, graph_loop, make_step, positive, size_arg, time_steps)
from summary import paired_ratio  # noqa: E402

from spinalnet_keras import SpinalDense  # noqa: E402


class KernelPlusUpdate(SpinalDense):
    """SpinalDense computing LoRA as up to commit a078a40: each product
    with its kernel plus `lora_alpha / rank * A @ B` (`_effective_kernels`),
    so that the gradient reaches A and B through one of the kernel's size."""

    def _call_kernels(self, dtype):
        kernels = self._effective_kernels(dtype)
        return kernels, [None] * len(kernels)

    def _lora_factors(self, dtype):
        return None


def models(features, depth, width, units, lora=None):
    """A float32 head and its int8 copy, with the same weights; with
    `lora`, both with LoRA of that rank, and beside them the float32 head
    without LoRA ("full") and one with `KernelPlusUpdate`'s LoRA."""
    def head(layer=SpinalDense):
        return keras.Sequential([keras.Input((features,)),
                                 layer(units, width=width, depth=depth)])

    keras.utils.set_random_seed(0)
    float32, int8 = head(), head()
    int8.set_weights(float32.get_weights())
    int8.layers[0].quantize("int8")
    if not lora:
        dense, dense_int8 = (keras.Sequential([keras.Input((features,)),
                                               keras.layers.Dense(depth * width)])
                             for _ in range(2))
        dense_int8.set_weights(dense.get_weights())
        dense_int8.layers[0].quantize("int8")
        return {"float32": float32, "int8": int8,
                "dense_float32": dense, "dense_int8": dense_int8}
    full, merged = head(), head(KernelPlusUpdate)
    for model in (full, merged):
        model.set_weights(float32.get_weights())
    for model in (float32, int8, merged):
        model.layers[0].enable_lora(lora)
    return {"float32": float32, "int8": int8, "full": full, "kernel_plus_update": merged}


def file_bytes(model, folder, name):
    path = os.path.join(folder, f"{name}.keras")
    model.save(path)
    return os.path.getsize(path)


def forward_loop(model):
    def advance(x):
        y = model(x, training=False)
        return x + 1e-6 * y[:, :1], y[0, 0]

    return graph_loop(advance, tf.TensorSpec((None, model.inputs[0].shape[-1])))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", type=size_arg,
                        help="FEATURESxDEPTHxWIDTH, e.g. 320x6x8 (default: the paper's four)")
    parser.add_argument("--units", type=positive(int), default=10,
                        help="outputs of the head (classes)")
    parser.add_argument("--batches", type=positive(int), nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--target-seconds", type=positive(float), default=0.25,
                        help="time per measurement (sets the number of passes)")
    parser.add_argument("--lora", type=positive(int), metavar="RANK",
                        help="enable LoRA at this rank on both heads and time training steps")
    args = parser.parse_args()
    check_repeats(parser, args.repeats)
    timed = (f"LoRA rank {args.lora} on both, training steps (SGD)" if args.lora
             else "forward passes")
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPU "
          f"cores; SpinalDense({args.units}, ...) heads, {timed} in a graph loop")
    more_columns = (" | float32 LoRA / full training (IQR) "
                    "| kernel-plus-update LoRA / float32 LoRA (IQR)") if args.lora else (
                    " | Keras Dense(depth x width): int8/float32 time (IQR) "
                    "| Keras Dense: max error / max output")
    print("| features -> depth x width | batch | float32 ms | int8 ms | int8/float32 time (IQR) "
          "| float32 file bytes | int8 file bytes | int8/float32 bytes "
          f"| max error / max output{more_columns} |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:" + "|---:" * 2 + "|")
    for features, depth, width in args.sizes or SIZES:
        heads = models(features, depth, width, args.units, args.lora)
        with tempfile.TemporaryDirectory() as folder:
            sizes = {name: file_bytes(heads[name], folder, name) for name in ("float32", "int8")}
        sample = np.random.default_rng(0).normal(size=(256, features)).astype("float32")
        outputs = {name: head.predict(sample, verbose=0) for name, head in heads.items()}

        def error(prefix=""):
            reference = outputs[prefix + "float32"]
            return (np.abs(outputs[prefix + "int8"] - reference).max()
                    / np.abs(reference).max())

        for batch in args.batches:
            x = tf.random.normal((batch, features), seed=0)
            loops = {name: make_step(m, jit=False, optimizer="sgd") if args.lora
                     else forward_loop(m) for name, m in heads.items()}
            for run in loops.values():
                run(x, 2).numpy()  # trace
            passes = max(1, int(args.target_seconds / time_steps(loops["float32"], x, 10,
                                                                  per_call=False)))
            seconds = {name: [] for name in loops}
            names = list(loops)
            for r in range(args.repeats):
                shift = r % len(names)
                for name in names[shift:] + names[:shift]:
                    seconds[name].append(time_steps(loops[name], x, passes, per_call=False))
            ms = {name: 1e3 * statistics.median(s) for name, s in seconds.items()}
            more_cells = (
                f" | {paired_ratio(seconds['float32'], seconds['full'])} "
                f"| {paired_ratio(seconds['kernel_plus_update'], seconds['float32'])}"
            ) if args.lora else (
                f" | {paired_ratio(seconds['dense_int8'], seconds['dense_float32'])} "
                f"| {error('dense_'):.4f}")
            print(f"| {features} -> {depth} x {width} | {batch} | {ms['float32']:.3f} "
                  f"| {ms['int8']:.3f} | {paired_ratio(seconds['int8'], seconds['float32'])} "
                  f"| {sizes['float32']:,} | {sizes['int8']:,} "
                  f"| {sizes['int8'] / sizes['float32']:.2f} | {error():.4f}{more_cells} |",
                  flush=True)


if __name__ == "__main__":
    main()
