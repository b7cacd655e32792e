"""SpinalDense where you would write Dense: Sequential, functional, .keras.

Trains a small dense and a small spinal classifier on a synthetic 10-class
problem (64 noisy features around one prototype per class; no download,
nothing beyond the package's own dependencies), prints their accuracy and
costs, then saves and reloads the spinal model.

    python examples/quickstart.py            # a few seconds
    python examples/quickstart.py --epochs 2 --model-file /tmp/spinal.keras
    KERAS_BACKEND=jax python examples/quickstart.py   # or torch: the layer is keras.ops only
"""

import argparse
import os

import keras
import numpy as np

from spinalnet_keras import SpinalDense
from spinalnet_keras import cost_report

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=30)
parser.add_argument("--model-file", default="runs/quickstart/spinal.keras",
                    help="where the spinal model is saved (a .keras file)")
args = parser.parse_args()
if args.epochs < 1:
    parser.error(f"--epochs must be at least 1. Received: {args.epochs}")

print(f"Keras backend: {keras.backend.backend()}")
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
prototypes = rng.normal(size=(10, 64))
# int32 labels: JAX has no int64 unless x64 is enabled, and Keras's fit
# on JAX (jax 0.12) warns that it truncates int64 labels to int32.
y = rng.integers(0, 10, 2000).astype("int32")
x = (prototypes[y] + 1.5 * rng.normal(size=(2000, 64))).astype("float32")
x_train, x_test, y_train, y_test = x[:1400], x[1400:], y[:1400], y[1400:]

# Sequential: the spinal head replaces Dense(32) -> Dense(10)
spinal = keras.Sequential([
    keras.Input((64,)),
    SpinalDense(10, width=8, depth=4, output_activation="softmax"),
])
dense = keras.Sequential([
    keras.Input((64,)),
    keras.layers.Dense(32, activation="relu"),
    keras.layers.Dense(10, activation="softmax"),
])

# Functional: SpinalDense without `units` is a hidden block of depth*width
inputs = keras.Input((64,))
hidden = SpinalDense(width=16, depth=4, splits=4, dropout=0.1, batch_norm=True)(inputs)
functional = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(hidden))

for name, model in [("dense", dense), ("spinal", spinal), ("functional spinal", functional)]:
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=32, verbose=0)
    _, acc = model.evaluate(x_test, y_test, verbose=0)
    report = cost_report(model)
    print(f"{name:18s} test accuracy {acc:.3f}  params {report.trainable_params:6,}  "
          f"multiplications {report.multiplications:6,}")

path = args.model_file
os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
spinal.save(path)
reloaded = keras.saving.load_model(path)  # safe_mode=True, no custom_objects
same = np.array_equal(spinal.predict(x_test, verbose=0), reloaded.predict(x_test, verbose=0))
print(f"saved to {path}; reloaded outputs identical: {same}")
