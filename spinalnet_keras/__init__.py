"""SpinalNet (Kabir et al., arXiv 2007.03347) for Keras 3."""

from spinalnet_keras.backbones import ImagePreprocessing
from spinalnet_keras.backbones import available_backbones
from spinalnet_keras.backbones import backbone_model
from spinalnet_keras.backbones import make_backbone
from spinalnet_keras.costs import CostReport
from spinalnet_keras.costs import LayerCost
from spinalnet_keras.costs import cost_report
from spinalnet_keras.export import ExportError
from spinalnet_keras.export import export_model
from spinalnet_keras.export import load_model_file
from spinalnet_keras.heads import Head
from spinalnet_keras.heads import build_head
from spinalnet_keras.paper_models import PAPER_MODELS
from spinalnet_keras.paper_models import paper_model
from spinalnet_keras.spinal_dense import SpinalDense
from spinalnet_keras.spinal_dense import split_sizes
from spinalnet_keras.spinalize import hidden_dense_layers
from spinalnet_keras.spinalize import spinalize

__version__ = "0.2.0"

__all__ = [
    "CostReport",
    "ExportError",
    "Head",
    "ImagePreprocessing",
    "LayerCost",
    "PAPER_MODELS",
    "SpinalDense",
    "available_backbones",
    "backbone_model",
    "build_head",
    "cost_report",
    "export_model",
    "hidden_dense_layers",
    "load_model_file",
    "make_backbone",
    "paper_model",
    "spinalize",
    "split_sizes",
]
