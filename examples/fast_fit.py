"""Your own `fit`, set up the way the package's `train` is.

The paper's MNIST CNN with the spinal 6 x 8 head, on a tf.data pipeline of
MNIST-shaped random images (no download), compiled with a number of steps
per execution that divides the epoch, and with its optimizer and metric
variables built before `fit`, so the training step is traced once instead
of twice (see README, Performance). Prints the steps per execution, how many
times the training step was traced, and each epoch's loss.

    python examples/fast_fit.py                    # 3 epochs of 938 steps
    python examples/fast_fit.py --examples 640 --epochs 1
"""

import argparse
import time

import keras
import numpy as np
import tensorflow as tf

from spinalnet_keras import build_training_state
from spinalnet_keras import paper_model
from spinalnet_keras import steps_per_execution_for

parser = argparse.ArgumentParser()
parser.add_argument("--examples", type=int, default=60_000)
parser.add_argument("--batch-size", type=int, default=64)
parser.add_argument("--epochs", type=int, default=3)
args = parser.parse_args()
for option in ("examples", "batch_size", "epochs"):
    if getattr(args, option) < 1:
        parser.error(f"--{option.replace('_', '-')} must be at least 1. "
                     f"Received: {getattr(args, option)}")

keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
images = rng.random((args.examples, 28, 28, 1), dtype="float32")
labels = rng.integers(0, 10, args.examples)
train_ds = (tf.data.Dataset.from_tensor_slices((images, labels))
            .shuffle(args.examples, seed=0).batch(args.batch_size)
            .prefetch(tf.data.AUTOTUNE))
steps = int(train_ds.cardinality())

model = paper_model("mnist_cnn", head="spinal", width=8, depth=6)
# 32 steps per compiled call, moved to the nearest divisor of the epoch's
# steps so that each epoch ends on a call boundary (67 for MNIST's 938).
per_call = steps_per_execution_for(32, steps)
model.compile(keras.optimizers.SGD(0.01, momentum=0.5), "sparse_categorical_crossentropy",
              metrics=["accuracy"], steps_per_execution=per_call)
build_training_state(model, train_ds)

traces = []
train_step = model.train_step


def counted_train_step(data):  # Python runs this once per trace
    traces.append(1)
    return train_step(data)


model.train_step = counted_train_step
start = time.perf_counter()
history = model.fit(train_ds, epochs=args.epochs, verbose=0, shuffle=False)
seconds = time.perf_counter() - start
print(f"{steps} steps per epoch, {per_call} steps per execution")
print(f"training step traced {len(traces)} time(s)")
for epoch, loss in enumerate(history.history["loss"], 1):
    print(f"epoch {epoch}: loss {loss:.4f}")
print(f"fit: {seconds:.1f} s")
