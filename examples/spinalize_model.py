"""Turn the hidden Dense layers of an existing model into SpinalDense.

    python examples/spinalize_model.py
"""

import keras
import numpy as np

from spinalnet_keras import cost_report
from spinalnet_keras import hidden_dense_layers
from spinalnet_keras import spinalize

model = keras.Sequential([
    keras.Input((28, 28, 1)),
    keras.layers.Conv2D(8, 3, activation="relu"),
    keras.layers.MaxPooling2D(),
    keras.layers.Flatten(),
    keras.layers.Dense(128, activation="relu", name="fc1"),
    keras.layers.Dropout(0.3),
    keras.layers.Dense(64, activation="relu", name="fc2"),
    keras.layers.Dense(10, activation="softmax", name="classifier"),
])
print("hidden Dense layers:", hidden_dense_layers(model))

spinal = spinalize(model, width=8, depth=4)          # all hidden Dense layers
only_fc2 = spinalize(model, layers=["fc2"], depth=2)  # or a selection

x = np.random.rand(2, 28, 28, 1).astype("float32")
for name, m in [("original", model), ("all spinal", spinal), ("fc2 spinal", only_fc2)]:
    r = cost_report(m)
    print(f"{name:11s} params {r.trainable_params:8,} multiplications "
          f"{r.multiplications:9,} output {m.predict(x, verbose=0).shape}")

# A backbone and a head kept apart, the head a model of its own: its hidden
# Dense layers are reached by path ("head/fc"), and the result holds a
# rewritten head under the same name.
backbone = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(8, 3, activation="relu"),
                             keras.layers.GlobalAveragePooling2D()], name="backbone")
head = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32, activation="relu", name="fc"),
                         keras.layers.Dense(10, activation="softmax", name="classifier")],
                        name="head")
two_part = keras.Sequential([keras.Input((28, 28, 1)), backbone, head])
print("hidden Dense layers of backbone + head:", hidden_dense_layers(two_part))
spinal_head = spinalize(two_part, width=4, depth=4)
print("head after spinalize:",
      [type(layer).__name__ for layer in spinal_head.get_layer("head").layers],
      "output", spinal_head.predict(x, verbose=0).shape)
