"""Load per-sub-layer weights into SpinalDense, e.g. from a PyTorch model.

The reference SpinalNet scripts build each spinal sub-layer as
`Dropout -> Linear -> (BatchNorm1d) -> ReLU` and the output as a `Linear`.
`SpinalDense.set_sublayer_weights` takes those weights, one entry per
sub-layer: Keras kernels are PyTorch's `Linear.weight` transposed, and
BatchNorm's `weight`, `bias`, `running_mean`, `running_var` are Keras's
`gamma`, `beta`, `moving_mean`, `moving_variance`. This script makes such
weights at random (standing in for a trained PyTorch model's), loads them,
checks the layer against the forward pass written out in NumPy, and reads
them back in the same layout.

    python examples/import_weights.py --features 320 --width 8 --depth 6
"""

import argparse

import keras
import numpy as np

from spinalnet_keras import SpinalDense
from spinalnet_keras import split_sizes

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--features", type=int, default=320)
parser.add_argument("--width", type=int, default=8)
parser.add_argument("--depth", type=int, default=6)
parser.add_argument("--splits", type=int, default=2)
parser.add_argument("--classes", type=int, default=10)
parser.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=True)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
for name in ("features", "width", "depth", "splits", "classes"):
    if getattr(args, name) < 1:
        parser.error(f"--{name} must be at least 1. Received: {getattr(args, name)}")

rng = np.random.default_rng(args.seed)
w, depth = args.width, args.depth
# Checks splits against features and depth, with the layer's own messages.
try:
    layer = SpinalDense(args.classes, width=w, depth=depth, splits=args.splits,
                        batch_norm=args.batch_norm,
                        batch_norm_momentum=0.9, batch_norm_epsilon=1e-5)  # PyTorch's
    layer.build((None, args.features))
except ValueError as e:
    parser.error(str(e))
sizes = split_sizes(args.features, args.splits)

# What a PyTorch state dict holds, as NumPy arrays: (out, in) Linear weights.
torch_like = []
for i in range(depth):
    fan_in = sizes[i % args.splits] + (w if i else 0)
    sub = {"weight": rng.uniform(-1, 1, (w, fan_in)) / np.sqrt(fan_in),
           "bias": rng.normal(0, 0.1, w)}
    if args.batch_norm:
        sub.update(bn_weight=rng.uniform(0.5, 1.5, w), bn_bias=rng.normal(0, 0.1, w),
                   running_mean=rng.normal(0, 0.1, w), running_var=rng.uniform(0.5, 1.5, w))
    torch_like.append(sub)
out_weight = rng.uniform(-1, 1, (args.classes, depth * w)) / np.sqrt(depth * w)
out_bias = rng.normal(0, 0.1, args.classes)

weights = {
    "kernels": [sub["weight"].T for sub in torch_like],
    "biases": [sub["bias"] for sub in torch_like],
    "output_kernel": out_weight.T,
    "output_bias": out_bias,
}
if args.batch_norm:
    weights["batch_norms"] = [
        {"gamma": s["bn_weight"], "beta": s["bn_bias"],
         "moving_mean": s["running_mean"], "moving_variance": s["running_var"]}
        for s in torch_like
    ]
layer.set_sublayer_weights(weights)


def reference_forward(x):
    """The reference network at inference, from the PyTorch-layout arrays."""
    parts = np.split(x, np.cumsum(sizes)[:-1], axis=-1)
    prev, outputs = None, []
    for i, sub in enumerate(torch_like):
        z = parts[i % args.splits] if prev is None else np.concatenate(
            [parts[i % args.splits], prev], axis=-1)
        z = z @ sub["weight"].T + sub["bias"]
        if args.batch_norm:
            z = (z - sub["running_mean"]) / np.sqrt(sub["running_var"] + 1e-5)
            z = z * sub["bn_weight"] + sub["bn_bias"]
        prev = np.maximum(z, 0)
        outputs.append(prev)
    return np.concatenate(outputs, axis=-1) @ out_weight.T + out_bias


x = rng.normal(size=(4, args.features)).astype("float32")
got = keras.ops.convert_to_numpy(layer(x, training=False))
gap = float(np.max(np.abs(got - reference_forward(x))))
print(f"SpinalDense({args.classes}, width={w}, depth={depth}, splits={args.splits}, "
      f"batch_norm={args.batch_norm}) on {args.features} features")
print(f"largest difference from the reference forward pass: {gap:.2e}")
print(f"matches the reference: {gap < 1e-4}")

back = layer.get_sublayer_weights()
same = all(np.allclose(k.T, sub["weight"], atol=1e-6) for k, sub in zip(back["kernels"], torch_like))
if args.batch_norm:
    same &= all(np.allclose(bn["moving_variance"], sub["running_var"], atol=1e-6)
                for bn, sub in zip(back["batch_norms"], torch_like))
print(f"read back in the PyTorch layout: {same}")
