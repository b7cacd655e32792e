"""Fine-tune a trained spinal model on a shifted task with LoRA.

Trains a spinal classifier on a synthetic 10-class problem (64 noisy
features around one prototype per class; no download), then shuffles the
order of the features and fine-tunes on a few hundred examples of that new
task with LoRA: the kernels stay frozen and each SpinalDense learns a
low-rank update of them. Prints the accuracy on the new task before and
after, the share of parameters trained, and saves and reloads the tuned
model. With `--int8`, the trained kernels are first stored as int8 (a
quarter of float32's bytes) and the updates are learnt on top of them,
as QLoRA fine-tunes a quantized model.

    python examples/lora_fine_tuning.py            # a few seconds
    python examples/lora_fine_tuning.py --rank 2 --epochs 5
    python examples/lora_fine_tuning.py --int8
"""

import argparse
import os

import keras
import numpy as np

from spinalnet_keras import SpinalDense
from spinalnet_keras import cost_report
from spinalnet_keras import quantize_int8

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=20, help="epochs of each training")
parser.add_argument("--rank", type=int, default=4, help="rank of the LoRA updates")
parser.add_argument("--model-file", default="runs/lora/tuned.keras",
                    help="where the fine-tuned model is saved (a .keras file)")
parser.add_argument("--int8", action="store_true",
                    help="store the trained kernels as int8 before fine-tuning them with LoRA")
args = parser.parse_args()
for name in ("epochs", "rank"):
    if getattr(args, name) < 1:
        parser.error(f"--{name} must be at least 1. Received: {getattr(args, name)}")

keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)


def task(prototypes, examples):
    y = rng.integers(0, 10, examples)
    x = (prototypes[y] + 1.5 * rng.normal(size=(examples, 64))).astype("float32")
    return x, y


def build(**lora):
    return keras.Sequential([
        keras.Input((64,)),
        SpinalDense(width=32, depth=4, **lora),
        SpinalDense(10, width=16, depth=4, output_activation="softmax", **lora),
    ])


def accuracy(model, x, y):
    return float(np.mean(model.predict(x, verbose=0).argmax(-1) == y))


# Task A, trained in full.
prototypes = rng.normal(size=(10, 64))
x_a, y_a = task(prototypes, 3000)
model = build()
model.compile("adam", "sparse_categorical_crossentropy")
model.fit(x_a[:2400], y_a[:2400], epochs=args.epochs, batch_size=32, verbose=0)
print(f"task A: test accuracy {accuracy(model, x_a[2400:], y_a[2400:]):.3f}")

# Task B: the same classes, their features read in another order (as if
# the sensors were rewired); only 400 examples to learn it from.
x_b, y_b = task(prototypes[:, rng.permutation(64)], 1400)
(x_train, y_train), (x_test, y_test) = (x_b[:400], y_b[:400]), (x_b[400:], y_b[400:])
if args.int8:
    print(f"int8 layers: {quantize_int8(model)}; task A with int8 kernels: test "
          f"accuracy {accuracy(model, x_a[2400:], y_a[2400:]):.3f}")
print(f"task B before fine-tuning: accuracy {accuracy(model, x_test, y_test):.3f}")

for layer in model.layers:  # as for Dense: on built layers
    layer.enable_lora(args.rank)
report = cost_report(model)
# the kernels (and their int8 scales)
frozen = [keras.ops.convert_to_numpy(k) for k in model.non_trainable_weights]
print(f"LoRA rank {args.rank}: {report.trainable_params:,} of {report.params:,} "
      "parameters trained")
model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
model.fit(x_train, y_train, epochs=args.epochs, batch_size=32, verbose=0)
print(f"task B after LoRA fine-tuning: accuracy {accuracy(model, x_test, y_test):.3f}")
kept = all(np.array_equal(keras.ops.convert_to_numpy(k), f)
           for k, f in zip(model.non_trainable_weights, frozen))
print(f"kernels unchanged: {kept}")

# The .keras file keeps the updates apart from the kernels: the reloaded
# model computes the same and fine-tunes on from here.
os.makedirs(os.path.dirname(os.path.abspath(args.model_file)), exist_ok=True)
model.save(args.model_file)
loaded = keras.saving.load_model(args.model_file)
same = np.array_equal(loaded.predict(x_test, verbose=0), model.predict(x_test, verbose=0))
print(f"saved to {args.model_file}; reloaded outputs identical: {same}")
