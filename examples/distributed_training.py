"""Data-parallel training with tf.distribute.

Trains the paper's Table I regression network (spinal head, data defined by
the paper, no download) under a `tf.distribute` strategy through the
package's `train`. The batch size is global: each replica gets its share.

    python examples/distributed_training.py                     # mirrored, 2 CPU replicas
    python examples/distributed_training.py --strategy auto     # every GPU of this machine

With no GPU, `--virtual-cpus N` splits the CPU into N logical devices, so
that `mirrored` has N replicas to synchronise (a way to try the strategy,
not a speed-up; default 2). Beside GPUs, or with `--strategy multi_worker`
(one replica per worker process), the option would go unused and is refused. Several machines: run the same command with
`--strategy multi_worker` on each, with `TF_CONFIG` naming the cluster and the
machine's place in it, and the same `--output-dir` on shared storage (README,
Distributed training).

`--patience N` adds Keras's `EarlyStopping` (test loss, N epochs without
improvement) to the run's callbacks, which every strategy runs as `fit`
does; under `multi_worker` a stop asked for on any worker stops them all.
"""

import argparse

import keras
import tensorflow as tf

from spinalnet_keras import TrainConfig
from spinalnet_keras import get_strategy
from spinalnet_keras import set_virtual_cpus
from spinalnet_keras import train

parser = argparse.ArgumentParser()
parser.add_argument("--strategy", default="mirrored",
                    help="auto, mirrored, multi_worker, tpu, one_device or default")
parser.add_argument("--virtual-cpus", type=int, default=None,
                    help="logical devices the CPU is split into, one replica each "
                         "(default 2; not with GPUs, nor with --strategy multi_worker, "
                         "where each worker process is one replica)")
parser.add_argument("--epochs", type=int, default=20)
parser.add_argument("--batch-size", type=int, default=64, help="global batch size")
parser.add_argument("--patience", type=int, default=None,
                    help="stop after this many epochs without a lower test loss "
                         "(default: train every epoch)")
parser.add_argument("--output-dir", default="runs/distributed_example")
args = parser.parse_args()
if args.patience is not None and args.patience < 0:
    parser.error(f"--patience must be at least 0. Received: {args.patience}")
if args.virtual_cpus is not None and args.virtual_cpus < 1:
    parser.error(f"--virtual-cpus must be at least 1. Received: {args.virtual_cpus}")
if args.virtual_cpus is not None and args.strategy == "multi_worker":
    parser.error("--virtual-cpus splits one process's CPU; with --strategy multi_worker "
                 "each worker process is one replica. Received: --virtual-cpus "
                 f"{args.virtual_cpus}")
gpus = tf.config.list_physical_devices("GPU")
if args.virtual_cpus is not None and gpus:
    parser.error(f"--virtual-cpus is for a machine without GPUs; this one has {len(gpus)}, "
                 f"one replica each. Received: --virtual-cpus {args.virtual_cpus}")

if not gpus and args.strategy != "multi_worker":
    # before TensorFlow sets up its devices
    set_virtual_cpus(2 if args.virtual_cpus is None else args.virtual_cpus)
strategy = get_strategy(args.strategy)
replicas = strategy.num_replicas_in_sync
print(f"{type(strategy).__name__}: {replicas} replica(s), global batch {args.batch_size}, "
      f"{args.batch_size // replicas} per replica")

config = TrainConfig(model="regression", dataset="table1/sum", epochs=args.epochs,
                     batch_size=args.batch_size, optimizer="adam", learning_rate=0.01,
                     output_dir=args.output_dir, verbose=0)
# The model is built, compiled and restored inside the strategy's scope; run
# again with the same --output-dir, an interrupted run resumes.
callbacks = ([keras.callbacks.EarlyStopping("val_loss", patience=args.patience)]
             if args.patience is not None else [])
result = train(config, strategy=strategy, callbacks=callbacks)
if not result.get("chief", True):  # another worker of several: the chief writes the run
    print(f"worker {result['worker']} done")
else:
    print(f"test {result['metric']} after {result['epochs']} epochs: {result['final']:.4f}")
    print(f"model: {args.output_dir}/final.keras")
