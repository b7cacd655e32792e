"""Classification/regression heads: the paper's dense baseline or SpinalNet.

A `Head` describes the fully connected part that sits on top of a feature
extractor; `build_head` applies it to a feature tensor. The paper builders,
the `keras.applications` builder and the tuner all describe heads this way.
"""

import dataclasses
import numbers

import keras

from spinalnet_keras import _validation
from spinalnet_keras.spinal_dense import SpinalDense
from spinalnet_keras.spinal_dense import _get_activation
from spinalnet_keras.spinal_dense import _refuse_layer_class
from spinalnet_keras.spinal_dense import _refuse_single_output_softmax
from spinalnet_keras.spinal_dense import check_sizes

HEAD_KINDS = ("dense", "spinal")
# Fields that only one kind of head reads, with their defaults.
_DEFAULTS = {
    "spinal": {"width": 20, "depth": 4, "splits": 2},
    "dense": {"hidden_units": (512,), "input_dropout": 0.0},
}


@dataclasses.dataclass(frozen=True)
class Head:
    """Specification of a dense or spinal fully connected head.

    Args:
        kind: `"spinal"` (a `SpinalDense` block) or `"dense"` (the paper's
            baseline: a stack of `Dense` layers).
        width: spinal sub-layer width (spinal only; default 20).
        depth: number of spinal sub-layers (spinal only; default 4).
        splits: number of input splits (spinal only; default 2).
        hidden_units: sizes of the hidden `Dense` layers (dense only;
            default `(512,)`; `()` for none, a linear classifier, which
            takes no hidden-layer options). A field of the other kind
            raises a ValueError instead of being ignored.
        dropout: dropout rate before each spinal sub-layer (spinal), or
            before each hidden Dense after the first (dense).
        input_dropout: dropout rate before the first hidden Dense (dense
            only, default 0; the spinal `dropout` already acts there).
        output_dropout: dropout rate before the output Dense.
        batch_norm: BatchNormalization after each hidden Dense / spinal
            sub-layer, before its activation.
        activation: activation of the hidden layers (name or Keras layer).
        batch_norm_momentum, batch_norm_epsilon: of those BatchNorm layers.

    Example:

    >>> head = Head("spinal", width=128, depth=4, dropout=0.5, batch_norm=True)
    >>> head.splits
    2
    """

    kind: str = "spinal"
    width: int = None
    depth: int = None
    splits: int = None
    hidden_units: tuple = None
    dropout: float = 0.0
    input_dropout: float = None
    output_dropout: float = 0.0
    batch_norm: bool = False
    activation: object = "relu"
    batch_norm_momentum: float = 0.99
    batch_norm_epsilon: float = 1e-3

    def __post_init__(self):
        # Fields keep the values their checks return (plain ints, floats and
        # bools, where numpy scalars may have been given).
        self._set("kind", _validation.choice("head", self.kind, HEAD_KINDS))
        # Fields of the other kind would be ignored: refuse them, and give
        # this kind's fields their defaults.
        other = "dense" if self.kind == "spinal" else "spinal"
        given = {f: getattr(self, f) for f in _DEFAULTS[other] if getattr(self, f) is not None}
        _validation.refuse(given, f"{other} heads only; this head is {self.kind!r}")
        for field, default in _DEFAULTS[self.kind].items():
            if getattr(self, field) is None:
                self._set(field, default)
        if self.kind == "dense":
            self._check_dense()
        else:
            sizes = check_sizes(self.width, self.depth, self.splits)
            for field, value in zip(("width", "depth", "splits"), sizes):
                self._set(field, value)
        for name in ("dropout", "output_dropout"):
            self._set(name, _validation.rate(name, getattr(self, name)))
        if self.kind == "dense" and self.dropout and len(self.hidden_units) < 2:
            raise ValueError(
                "`dropout` of a dense head acts before each hidden Dense after the "
                f"first, and this head has one (hidden_units={self.hidden_units}), so "
                "it would change nothing; `input_dropout` and `output_dropout` act "
                f"before its hidden and its output Dense. Received: dropout={self.dropout!r}"
            )
        self._set("batch_norm", _validation.boolean("batch_norm", self.batch_norm))
        if self.kind == "dense" and not self.hidden_units:
            # A linear classifier: these act on hidden layers it does not have.
            unused = {"input_dropout": self.input_dropout, "batch_norm": self.batch_norm}
            unused = {k: v for k, v in unused.items() if v}
            if self.activation != type(self).activation:  # the field's default
                unused["activation"] = self.activation
            _validation.refuse(
                unused, "options of a dense head's hidden layers, and this head has none "
                "(hidden_units=()), so they would change nothing; leave them at their "
                "defaults (input_dropout=0, batch_norm=False, activation='relu'). "
                "`output_dropout` acts before its output Dense")
        self._set("batch_norm_momentum", _validation.unit_interval(
            "batch_norm_momentum", self.batch_norm_momentum))
        self._set("batch_norm_epsilon", _validation.positive_number(
            "batch_norm_epsilon", self.batch_norm_epsilon))
        _get_activation("activation", self.activation)  # fail here, not at build

    def _set(self, field, value):
        object.__setattr__(self, field, value)  # the dataclass is frozen

    def _check_dense(self):
        units = self.hidden_units
        if isinstance(units, numbers.Integral) and not isinstance(units, bool):
            units = (units,)
        if not isinstance(units, (tuple, list)):
            raise ValueError(
                "`hidden_units` must be a tuple of positive integers. "
                f"Received: hidden_units={self.hidden_units!r}"
            )
        self._set("hidden_units", tuple(_validation.positive_int("hidden_units", u)
                                        for u in units))
        self._set("input_dropout", _validation.rate("input_dropout", self.input_dropout))

    def replace(self, **changes):
        """A copy with `changes`; unknown fields raise a clear error."""
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - fields)
        if unknown:
            raise ValueError(
                f"Unknown head option(s) {unknown}. Allowed: {sorted(fields)}"
            )
        if "kind" in changes and changes["kind"] != self.kind:
            # The fields of this kind, defaults included, would be refused
            # by the other kind, with a message about fields never given.
            raise ValueError(
                f"A {self.kind!r} head cannot become another kind with `replace`: its "
                f"fields belong to its kind. Make a new Head({changes['kind']!r}, ...), "
                f"or pass head={changes['kind']!r} to the model builders. Received: "
                f"kind={changes['kind']!r}"
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
        features: symbolic tensor of shape `(batch, features)`, or
            `(batch, ..., features)`: like `Dense`, the head acts on the last
            axis, giving one prediction per position (e.g. per time step).
            Pool or flatten a feature map first for one per example.
        num_outputs: classes (or regression outputs).
        head: a `Head`, or `"spinal"` / `"dense"` for one with defaults.
        output_activation: activation of the last Dense (`"softmax"`, or
            None for logits / regression; any name or callable that
            `keras.activations.get` takes). Computed in float32 so that mixed
            precision keeps probabilities exact.
        name: prefix of the layer names (a non-empty string).

    Returns:
        The output tensor of shape `(batch, num_outputs)` (`(batch, ...,
        num_outputs)` for inputs of higher rank).
    """
    num_outputs = _validation.positive_int("num_outputs", num_outputs)
    check_output_activation(output_activation, num_outputs)
    _validation.keras_name("name", name, "the prefix of the head's layer names")
    if isinstance(head, str):
        head = Head(head)
    elif not isinstance(head, Head):
        raise TypeError(
            f"`head` must be a Head or one of {list(HEAD_KINDS)}. Received: head={head!r}"
        )
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


def check_output_activation(activation, num_outputs=None):
    """Return `activation` if `keras.layers.Activation` takes it, else raise
    a ValueError naming `output_activation` (Keras's own error names no
    argument). Softmax over `num_outputs=1` is refused too. The builders
    call it before making a (possibly pretrained) backbone."""
    _refuse_layer_class("output_activation", activation)
    try:
        keras.activations.get(activation)
    except (ValueError, TypeError) as e:
        raise ValueError(
            "`output_activation` must be an activation name (e.g. 'softmax'), "
            f"a callable or None (linear). Received: output_activation={activation!r}"
        ) from e
    _refuse_single_output_softmax("output_activation", activation, num_outputs)
    return activation


def _output_activation(x, activation, name):
    # Always a float32 layer: under mixed precision the model's outputs
    # (probabilities, regression values) stay in float32.
    return keras.layers.Activation(
        activation or "linear", dtype="float32", name=f"{name}_output_activation"
    )(x)
