"""What a model draws at random in an epoch, set from the epoch's number.

Keras's seed generators (dropout's, and any other layer's that draws) go on
from step to step, and their states are not among a model's weights, so
neither a Keras backup nor a `tf.train.Checkpoint` of the model holds them:
a run resumed at epoch k would draw from the states the run began with, not
from the uninterrupted run's. Setting every generator at the start of epoch
k from its starting state and k alone makes each epoch's draws the same
whether or not the run was interrupted before it.
"""

import numpy as np

# Added to the generators' seed once per epoch: a new key for the stateless
# random ops, far from the counter's few steps, so epochs never share draws.
_EPOCH_STRIDE = 1_000_003


class EpochRandomness:
    """The seed generators of `model`, as they stand now (before training),
    to be set from an epoch's number with `start_epoch(epoch)`.

    Args:
        model: a built Keras model.
    """

    def __init__(self, model):
        # A generator's state is a variable of the model that is not one of
        # its weights (which the layers' own variables are).
        weights = {id(w) for w in model.weights}
        self._starts = [
            (v, np.array(v.numpy())) for v in model.variables
            if id(v) not in weights and v.name == "seed_generator_state"
        ]

    def start_epoch(self, epoch):
        """Set each generator to its starting seed plus epoch x 1,000,003
        and its starting counter."""
        for state, start in self._starts:
            state.assign(start + np.array([epoch * _EPOCH_STRIDE, 0], start.dtype))
