"""Independent references for SpinalDense: NumPy and hand-composed Keras."""

import keras
import numpy as np


def numpy_spinal(x, kernels, biases, splits, activation=lambda z: np.maximum(z, 0),
                 output_kernel=None, output_bias=None, batch_norms=None, epsilon=1e-3):
    """The forward pass of the notes, §1, written the obvious way (with
    `batch_norms`, each sub-layer's BatchNorm as at inference)."""
    parts = np.array_split(x, splits, axis=-1)
    prev, outs = None, []
    for i, kernel in enumerate(kernels):
        s = parts[i % splits]
        z = s if prev is None else np.concatenate([s, prev], axis=-1)
        z = z @ kernel
        if biases is not None:
            z = z + biases[i]
        if batch_norms is not None:
            bn = batch_norms[i]
            z = (z - bn["moving_mean"]) / np.sqrt(bn["moving_variance"] + epsilon)
            z = z * bn["gamma"] + bn["beta"]
        prev = activation(z)
        outs.append(prev)
    y = np.concatenate(outs, axis=-1)
    if output_kernel is not None:
        y = y @ output_kernel
        if output_bias is not None:
            y = y + output_bias
    return y


def composed_spinal(features, units, width, depth, splits=2):
    """The same network made by hand from Dense, Concatenate and slicing."""
    inputs = keras.Input((features,))
    bounds = np.cumsum([0] + [len(a) for a in np.array_split(np.arange(features), splits)])
    parts = [
        keras.layers.Identity()(inputs[:, bounds[j]:bounds[j + 1]]) for j in range(splits)
    ]
    prev, outs = None, []
    for i in range(depth):
        z = parts[i % splits] if prev is None else keras.layers.Concatenate()(
            [parts[i % splits], prev]
        )
        prev = keras.layers.Dense(width, activation="relu", name=f"sub_{i}")(z)
        outs.append(prev)
    y = keras.layers.Concatenate()(outs) if depth > 1 else outs[0]
    if units:
        y = keras.layers.Dense(units, name="out")(y)
    return keras.Model(inputs, y)


class SubclassedDense(keras.Model):
    """A subclassed model (no layer graph), for the clear-error tests."""

    def __init__(self):
        super().__init__()
        self.d = keras.layers.Dense(3)

    def call(self, x):
        return self.d(x)
