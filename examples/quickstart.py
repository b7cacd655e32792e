"""SpinalDense where you would write Dense: Sequential, functional, .keras.

Trains a small dense and a small spinal classifier on scikit-learn's 8x8
digits (shipped with scikit-learn, no download), prints their accuracy and
costs, then saves and reloads the spinal model.

    python examples/quickstart.py            # a few seconds
    python examples/quickstart.py --epochs 2
"""

import argparse
import os
import tempfile

import keras
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from spinalnet_keras import SpinalDense
from spinalnet_keras import cost_report

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=30)
args = parser.parse_args()

keras.utils.set_random_seed(0)
x, y = load_digits(return_X_y=True)
x = (x / 16.0).astype("float32")
x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0)

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

path = os.path.join(tempfile.mkdtemp(), "spinal.keras")
spinal.save(path)
reloaded = keras.saving.load_model(path)  # safe_mode=True, no custom_objects
same = np.array_equal(spinal.predict(x_test, verbose=0), reloaded.predict(x_test, verbose=0))
print(f"saved to {path}; reloaded outputs identical: {same}")
