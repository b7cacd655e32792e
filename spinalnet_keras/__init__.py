"""SpinalNet (Kabir et al., arXiv 2007.03347) for Keras 3.

The layers, heads, models and cost accounting import with Keras alone. The
training, tuning and tf.distribute API (`train`, `SpinalHyperModel`,
`get_strategy`, ...) is also importable from here, but its modules load on
first use: they need TensorFlow and keras-tuner, which a user of the layer
alone (on any Keras backend) should not pay for at import.
"""

import gc
import importlib

# Importing Keras and TensorFlow creates some 365,000 objects that live as
# long as the process. With the cyclic garbage collector running, CPython
# scans all of them again in each of about six full collections during the
# import: about 0.4 s of a 2.7 s import on 2 cores (benchmarks/RESULTS.md).
# None of them is garbage, so the collector is paused for the import and
# restored after (if the importer had it on).
_collector_was_on = gc.isenabled()
gc.disable()
try:
    from spinalnet_keras.backbones import ImagePreprocessing
    from spinalnet_keras.backbones import available_backbones
    from spinalnet_keras.backbones import backbone_model
    from spinalnet_keras.backbones import make_backbone
    from spinalnet_keras.costs import CostReport
    from spinalnet_keras.costs import LayerCost
    from spinalnet_keras.costs import cost_report
    from spinalnet_keras.export import ExportError
    from spinalnet_keras.export import export_model
    from spinalnet_keras.export import format_report
    from spinalnet_keras.export import load_model_file
    from spinalnet_keras.export import quantize_int8
    from spinalnet_keras.export import with_input_normalization
    from spinalnet_keras.heads import Head
    from spinalnet_keras.heads import build_head
    from spinalnet_keras.paper_models import PAPER_MODELS
    from spinalnet_keras.paper_models import paper_model
    from spinalnet_keras.spinal_dense import SpinalDense
    from spinalnet_keras.spinal_dense import split_sizes
    from spinalnet_keras.spinalize import hidden_dense_layers
    from spinalnet_keras.spinalize import spinalize
finally:
    if _collector_was_on:
        gc.enable()
    del _collector_was_on

__version__ = "0.4.0"

# name -> module that defines it, imported on first access (PEP 562)
_LAZY = {
    "TrainConfig": "training",
    "build_training_state": "training",
    "compare": "training",
    "steps_per_execution_for": "training",
    "train": "training",
    "load_task": "data",
    "get_strategy": "distribute",
    "multi_worker_fit": "distribute",
    "set_virtual_cpus": "distribute",
    "supported_steps_per_execution": "distribute",
    "SearchSpace": "tuning",
    "SpinalHyperModel": "tuning",
    "chosen_splits": "tuning",
    "format_trial_table": "tuning",
    "make_tuner": "tuning",
    "trial_table": "tuning",
}


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(f"spinalnet_keras.{_LAZY[name]}")
        value = getattr(module, name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'spinalnet_keras' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "CostReport",
    "ExportError",
    "Head",
    "ImagePreprocessing",
    "LayerCost",
    "PAPER_MODELS",
    "SearchSpace",
    "SpinalDense",
    "SpinalHyperModel",
    "TrainConfig",
    "available_backbones",
    "backbone_model",
    "build_head",
    "build_training_state",
    "chosen_splits",
    "compare",
    "cost_report",
    "export_model",
    "format_report",
    "format_trial_table",
    "get_strategy",
    "hidden_dense_layers",
    "load_model_file",
    "load_task",
    "make_backbone",
    "make_tuner",
    "multi_worker_fit",
    "paper_model",
    "quantize_int8",
    "set_virtual_cpus",
    "spinalize",
    "split_sizes",
    "steps_per_execution_for",
    "supported_steps_per_execution",
    "train",
    "trial_table",
    "with_input_normalization",
]
