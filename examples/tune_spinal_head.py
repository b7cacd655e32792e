"""A keras-tuner search over a spinal head's width, depth and split count.

The paper's Table I regression network (8 inputs, data defined by the paper,
no download) with its spinal head searched by random search. Split counts are
offered per depth, so no trial builds a head with more splits than
sub-layers. Prints the table of trials (with each model's parameters and
multiplications), the best head and its test loss, and saves the best model,
which carries its optimizer state and can go on training.

    python examples/tune_spinal_head.py                     # 8 trials of 10 epochs
    python examples/tune_spinal_head.py --max-trials 2 --epochs 1 --examples 256

The same search on images: `spinalnet-keras tune --model mnist_cnn --dataset
mnist ...` (README, Hyperparameter search).
"""

import argparse
import os

from spinalnet_keras import SearchSpace
from spinalnet_keras import SpinalHyperModel
from spinalnet_keras import chosen_splits
from spinalnet_keras import format_trial_table
from spinalnet_keras import load_task
from spinalnet_keras import make_tuner
from spinalnet_keras import trial_table

parser = argparse.ArgumentParser()
parser.add_argument("--max-trials", type=int, default=8)
parser.add_argument("--epochs", type=int, default=10)
parser.add_argument("--examples", type=int, default=None, help="training examples (default all 1000)")
parser.add_argument("--output-dir", default="runs/tune_example")
parser.add_argument("--seed", type=int, default=0,
                    help="of the hyperparameters tried and of each trial's initial weights")
args = parser.parse_args()
if args.epochs < 1:
    parser.error(f"--epochs must be at least 1. Received: {args.epochs}")
if args.seed < 0:
    parser.error(f"--seed must be at least 0. Received: {args.seed}")

task = load_task("table1/sum", batch_size=64, train_examples=args.examples)
space = SearchSpace(widths=(8, 16, 32, 50), depths=(2, 4, 6), splits=(1, 2, 4))
hypermodel = SpinalHyperModel(
    "regression", task.input_shape, task.num_outputs, space=space,
    optimizer="adam", learning_rate=0.01, loss="mse", metrics=(), seed=args.seed,
)
tuner = make_tuner(hypermodel, "random", objective="val_loss", max_trials=args.max_trials,
                   directory=args.output_dir, project_name="search", seed=args.seed)
# Started again with the same --output-dir, the search skips finished trials;
# run afresh with the same seed, it repeats (the same trials and scores).
tuner.search(task.train, validation_data=task.test, epochs=args.epochs, verbose=0)

print(format_trial_table(trial_table(tuner, hypermodel)))
best_hp = tuner.get_best_hyperparameters(1)[0]
best = tuner.get_best_models(1)[0]
print(f"best head: width {best_hp['width']}, depth {best_hp['depth']}, "
      f"splits {chosen_splits(best_hp)}")
print(f"best model test mse: {best.evaluate(task.test, verbose=0):.4f}")
path = os.path.join(args.output_dir, "best.keras")
best.save(path)
print(f"saved {path} (optimizer steps so far: {int(best.optimizer.iterations)})")
