"""Classification/regression heads: the paper's dense baseline or SpinalNet.

A `Head` describes the fully connected part that sits on top of a feature
extractor; `build_head` applies it to a feature tensor. The paper builders,
the `keras.applications` builder and the tuner all describe heads this way.
"""

import dataclasses

import keras

from spinalnet_keras import _validation
from spinalnet_keras.spinal_dense import SpinalDense

HEAD_KINDS = ("dense", "spinal")


@dataclasses.dataclass(frozen=True)
class Head:
    """Specification of a dense or spinal fully connected head.

    Args:
        kind: `"spinal"` (a `SpinalDense` block) or `"dense"` (the paper's
            baseline: a stack of `Dense` layers).
        width: spinal sub-layer width (spinal only).
        depth: number of spinal sub-layers (spinal only).
        splits: number of input splits (spinal only).
        hidden_units: sizes of the hidden `Dense` layers (dense only).
        dropout: dropout rate before each spinal sub-layer (spinal), or
            before each hidden Dense after the first (dense).
        input_dropout: dropout rate before the first hidden Dense (dense
            only; the spinal `dropout` already acts there).
        output_dropout: dropout rate before the output Dense.
        batch_norm: BatchNormalization after each hidden Dense / spinal
            sub-layer, before its activation.
        activation: activation of the hidden layers (name or Keras layer).
        batch_norm_momentum, batch_norm_epsilon: of those BatchNorm layers.

    Example:

    >>> Head("spinal", width=128, depth=4, dropout=0.5, batch_norm=True)
    """

    kind: str = "spinal"
    width: int = 20
    depth: int = 4
    splits: int = 2
    hidden_units: tuple = (512,)
    dropout: float = 0.0
    input_dropout: float = 0.0
    output_dropout: float = 0.0
    batch_norm: bool = False
    activation: object = "relu"
    batch_norm_momentum: float = 0.99
    batch_norm_epsilon: float = 1e-3

    def __post_init__(self):
        _validation.choice("head", self.kind, HEAD_KINDS)
        _validation.positive_int("width", self.width)
        _validation.positive_int("depth", self.depth)
        _validation.positive_int("splits", self.splits)
        if self.kind == "spinal" and self.splits > self.depth:
            raise ValueError(
                "`splits` must be between 1 and `depth`. Received: "
                f"splits={self.splits!r}, depth={self.depth!r}"
            )
        units = self.hidden_units
        if isinstance(units, int) and not isinstance(units, bool):
            units = (units,)
        if not isinstance(units, (tuple, list)):
            raise ValueError(
                "`hidden_units` must be a tuple of positive integers. "
                f"Received: hidden_units={self.hidden_units!r}"
            )
        for u in units:
            _validation.positive_int("hidden_units", u)
        object.__setattr__(self, "hidden_units", tuple(int(u) for u in units))
        for name in ("dropout", "input_dropout", "output_dropout"):
            _validation.rate(name, getattr(self, name))
        _validation.boolean("batch_norm", self.batch_norm)

    def replace(self, **changes):
        """A copy with `changes`; unknown fields raise a clear error."""
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - fields)
        if unknown:
            raise ValueError(
                f"Unknown head option(s) {unknown}. Allowed: {sorted(fields)}"
            )
        return dataclasses.replace(self, **changes)


def _activation_layer(activation, name):
    if isinstance(activation, keras.layers.Layer):
        # A fresh copy per hidden layer, under this head's naming.
        config = {**activation.get_config(), "name": name}
        return activation.__class__.from_config(config)
    return keras.layers.Activation(activation, name=name)


def build_head(
    features,
    num_outputs,
    head,
    output_activation="softmax",
    name="head",
):
    """Apply `head` to the feature tensor `features` (functional API).

    Args:
        features: symbolic tensor of shape `(batch, features)`.
        num_outputs: classes (or regression outputs).
        head: a `Head`.
        output_activation: activation of the last Dense (`"softmax"`, or
            None for logits / regression). Computed in float32 so that mixed
            precision keeps probabilities exact.
        name: prefix of the layer names.

    Returns:
        The output tensor of shape `(batch, num_outputs)`.
    """
    num_outputs = _validation.positive_int("num_classes", num_outputs)
    x = features
    if head.kind == "spinal":
        fold_output = not head.output_dropout
        x = SpinalDense(
            num_outputs if fold_output else None,
            width=head.width,
            depth=head.depth,
            splits=head.splits,
            activation=head.activation,
            dropout=head.dropout,
            batch_norm=head.batch_norm,
            batch_norm_momentum=head.batch_norm_momentum,
            batch_norm_epsilon=head.batch_norm_epsilon,
            name=f"{name}_spinal",
        )(x)
        if fold_output:
            return _output_activation(x, output_activation, name)
    else:
        for i, units in enumerate(head.hidden_units):
            rate = head.input_dropout if i == 0 else head.dropout
            if rate:
                x = keras.layers.Dropout(rate, name=f"{name}_dropout_{i}")(x)
            x = keras.layers.Dense(units, name=f"{name}_dense_{i}")(x)
            if head.batch_norm:
                x = keras.layers.BatchNormalization(
                    momentum=head.batch_norm_momentum,
                    epsilon=head.batch_norm_epsilon,
                    name=f"{name}_batch_norm_{i}",
                )(x)
            x = _activation_layer(head.activation, f"{name}_activation_{i}")(x)
    if head.output_dropout:
        x = keras.layers.Dropout(head.output_dropout, name=f"{name}_output_dropout")(x)
    x = keras.layers.Dense(num_outputs, name=f"{name}_output")(x)
    return _output_activation(x, output_activation, name)


def _output_activation(x, activation, name):
    # Always a float32 layer: under mixed precision the model's outputs
    # (probabilities, regression values) stay in float32.
    return keras.layers.Activation(
        activation or "linear", dtype="float32", name=f"{name}_output_activation"
    )(x)
