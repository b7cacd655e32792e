"""SpinalNet (Kabir et al., arXiv 2007.03347) for Keras 3."""

from spinalnet_keras.costs import CostReport
from spinalnet_keras.costs import LayerCost
from spinalnet_keras.costs import cost_report
from spinalnet_keras.heads import Head
from spinalnet_keras.heads import build_head
from spinalnet_keras.paper_models import PAPER_MODELS
from spinalnet_keras.paper_models import paper_model
from spinalnet_keras.spinal_dense import SpinalDense
from spinalnet_keras.spinal_dense import split_sizes

__version__ = "0.1.0"

__all__ = [
    "CostReport",
    "Head",
    "LayerCost",
    "PAPER_MODELS",
    "SpinalDense",
    "build_head",
    "cost_report",
    "paper_model",
    "split_sizes",
]
