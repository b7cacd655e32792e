"""The paper's networks with dense and spinal heads, and their costs.

    python examples/paper_networks.py
    python examples/paper_networks.py --classes 47 --train-steps 1
"""

import argparse

import numpy as np

from spinalnet_keras import PAPER_MODELS
from spinalnet_keras import cost_report
from spinalnet_keras import paper_model

parser = argparse.ArgumentParser()
parser.add_argument("--classes", type=int, default=None, help="override the number of classes")
parser.add_argument("--train-steps", type=int, default=0, help="train steps on random data")
args = parser.parse_args()
if args.train_steps < 0:
    parser.error(f"--train-steps must be at least 0. Received: {args.train_steps}")

for name, spec in PAPER_MODELS.items():
    for head in ("dense", "spinal"):
        classes = args.classes if name != "regression" else None
        model = paper_model(name, head=head, num_classes=classes)
        report = cost_report(model)
        print(f"{name:10s} {head:6s} trainable {report.trainable_params:>11,}  "
              f"multiplications {report.multiplications:>13,}  output {model.output_shape}")
        if args.train_steps:
            loss = "mse" if name == "regression" else "sparse_categorical_crossentropy"
            model.compile("adam", loss)
            x = np.random.rand(4, *spec.input_shape).astype("float32")
            y = np.zeros((4, 1)) if name == "regression" else np.zeros(4)
            for _ in range(args.train_steps):
                model.train_on_batch(x, y)
