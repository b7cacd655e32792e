"""Multiplications and parameters of a dense head vs a spinal head.

The MNIST head of the paper: 320 features -> 50 -> 10 (dense) against a
spinal head of 6 sub-layers of width 8.

    python examples/cost_accounting.py
"""

import keras

from spinalnet_keras import SpinalDense
from spinalnet_keras import cost_report
from spinalnet_keras import paper_model

dense = keras.Sequential([
    keras.Input((320,)),
    keras.layers.Dense(50, activation="relu"),
    keras.layers.Dropout(0.5),
    keras.layers.Dense(10),
], name="dense_head")
spinal = keras.Sequential([keras.Input((320,)), SpinalDense(10, width=8, depth=6)],
                          name="spinal_head")

dense_cost, spinal_cost = cost_report(dense), cost_report(spinal)
print(dense_cost, "\n")
print(spinal_cost, "\n")
cut = spinal_cost.reduction_vs(dense_cost)
print(f"spinal head: {spinal_cost.multiplications:,} vs {dense_cost.multiplications:,} "
      f"multiplications ({100 * cut['multiplications']:.1f}% fewer), "
      f"{100 * cut['trainable_params']:.1f}% fewer parameters")

# A single layer needs its input shape:
layer_cost = cost_report(SpinalDense(10, width=10, depth=6), input_shape=(None, 320))
print(f"SpinalDense(10, width=10, depth=6) on 320 features: "
      f"{layer_cost.multiplications:,} multiplications")
# Whole networks, nested models included:
network_cost = cost_report(paper_model("mnist_cnn", head="spinal"))
print(f"mnist_cnn with the spinal head: {network_cost.trainable_params:,} trainable parameters")
