"""A spinal head on a keras.applications backbone, fine-tuned end to end.

The paper's "transferred initialization": start from pretrained backbone
weights and train the whole network with a SpinalNet head. Offline, pass a
weights file (`--weights path.weights.h5`); with `--weights imagenet` Keras
downloads (or reuses its cache under ~/.keras/models).

    python examples/backbone_transfer.py --backbone ResNet50 --weights imagenet
    python examples/backbone_transfer.py --backbone VGG16 --size 32 --steps 1   # tiny
"""

import argparse
import os
import tempfile

import keras
import numpy as np

from spinalnet_keras import backbone_model
from spinalnet_keras import cost_report

parser = argparse.ArgumentParser()
parser.add_argument("--backbone", default="VGG19")
parser.add_argument("--size", type=int, default=64)
parser.add_argument("--classes", type=int, default=10)
parser.add_argument("--weights", default=None, help="None, imagenet or a weights file")
parser.add_argument("--steps", type=int, default=3, help="training steps (0: none)")
args = parser.parse_args()
if args.steps < 0:
    parser.error(f"--steps must be at least 0. Received: {args.steps}")


def build(weights):
    return backbone_model(
        args.backbone, (args.size, args.size, 3), args.classes,
        head="spinal", width=64, depth=4, dropout=0.5, batch_norm=True,
        pooling="flatten", weights=weights,
    )


if args.weights is None:
    # Offline stand-in for pretrained weights: save a backbone's weights and
    # start from that file, exactly as you would from a downloaded one.
    source = backbone_model(args.backbone, (args.size, args.size, 3), args.classes).get_layer("backbone")
    with tempfile.TemporaryDirectory() as folder:
        weights = os.path.join(folder, "backbone.weights.h5")
        source.save_weights(weights)
        model = build(weights)
else:
    model = build(args.weights)
model.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy", metrics=["accuracy"])
images = np.random.default_rng(0).uniform(0, 255, (8, args.size, args.size, 3)).astype("float32")
labels = np.arange(8) % args.classes
for step in range(args.steps):
    loss, acc = model.train_on_batch(images, labels)
    print(f"step {step}: loss {loss:.4f}")
report = cost_report(model)
head = [c for c in report.layers if c.name.startswith("head_")]
print(f"{model.name}: {report.trainable_params:,} trainable parameters; head "
      f"{sum(c.multiplications for c in head):,} multiplications per image")
print("probabilities of the first image:", np.round(model.predict(images[:1], verbose=0)[0], 3))
