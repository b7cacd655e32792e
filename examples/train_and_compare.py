"""Train and compare through the Python API (the same code as the command).

    python examples/train_and_compare.py                       # Table I regression
    python examples/train_and_compare.py --dataset mnist --model mnist_cnn \
        --manual-dir ../shared/data --epochs 8                # Table II recipe
"""

import argparse

from spinalnet_keras import TrainConfig
from spinalnet_keras import compare
from spinalnet_keras import train

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="regression")
parser.add_argument("--dataset", default="table1/sum")
parser.add_argument("--epochs", type=int, default=20)
parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
parser.add_argument("--manual-dir", default=None)
parser.add_argument("--output-dir", default="runs/example")
args = parser.parse_args()
if len(set(args.seeds)) < len(args.seeds):
    # compare would refuse them, but only after the single run has trained
    parser.error(f"--seeds must be distinct. Received: {' '.join(map(str, args.seeds))}")

regression = args.model == "regression"
config = TrainConfig(
    model=args.model, dataset=args.dataset, epochs=args.epochs,
    optimizer="adam" if regression else "sgd",  # SGD with the paper's momentum, 0.5
    learning_rate=0.01, manual_dir=args.manual_dir,
    output_dir=f"{args.output_dir}/single", verbose=0,
)
result = train(config)
print(f"one spinal run: test {result['metric']} {result['final']:.4f} "
      f"({result['epochs']} epochs)")
config.output_dir = f"{args.output_dir}/compare"
compare(config, seeds=args.seeds)
