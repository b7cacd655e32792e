"""Cost accounting: multiplications per example and parameters, per layer.

SpinalNet's claim is the same or better accuracy for fewer multiplications
and parameters. `cost_report` measures both for a layer or a whole model so
a spinal head can be put beside a dense one.

What counts as a multiplication: the multiply-accumulates of weight
products (Dense, SpinalDense, EinsumDense, convolutions, and these inside
TimeDistributed), per example, as the paper counts them ("320*50 +
50*10"). Element-wise work (activations, biases, normalisation, pooling)
and Embedding's look-ups are not counted. A layer that the model calls
more than once (shared, or in a nested model used twice) counts every
call, at that call's shapes. A layer with weights whose
kind is not known reports `None`, and the report lists it, rather than
guessing.
"""

import dataclasses
import math

import keras

from spinalnet_keras import _validation
from spinalnet_keras.spinal_dense import SpinalDense


def _positions(shape):
    """Product of the axes between batch and last (1 for rank-2 shapes)."""
    inner = tuple(shape[1:-1])
    if any(d is None for d in inner):
        return None
    return math.prod(inner)


def _spatial(shape, data_format):
    """Product of the spatial axes of a conv input/output shape."""
    axes = shape[1:-1] if data_format == "channels_last" else shape[2:]
    if any(d is None for d in axes):
        return None
    return math.prod(axes)


def _mul(a, b):
    return None if a is None or b is None else a * b


def _dense(layer, in_shape, out_shape):
    return _mul(int(layer.kernel.shape[0]) * layer.units, _positions(in_shape))


def _spinal(layer, in_shape, out_shape):
    w = layer.width
    per_position = sum(
        (layer.split_sizes[i % layer.splits] + (w if i else 0)) * w
        for i in range(layer.depth)
    )
    if layer.units:
        per_position += layer.depth * w * layer.units
    return _mul(per_position, _positions(in_shape))


def _conv(layer, in_shape, out_shape):
    # Every output position (input position, for a transposed convolution)
    # multiplies the whole kernel once.
    transposed = "Transpose" in type(layer).__name__
    spatial = _spatial(in_shape if transposed else out_shape, layer.data_format)
    return _mul(math.prod(layer.kernel.shape), spatial)


def _separable(layer, in_shape, out_shape):
    spatial = _spatial(out_shape, layer.data_format)
    return _mul(
        math.prod(layer.depthwise_kernel.shape)
        + math.prod(layer.pointwise_kernel.shape),
        spatial,
    )


def _einsum(layer, in_shape, out_shape):
    # Each output element multiplies over the indices that the input and the
    # kernel share and the output drops ("ab,bc->ac": b per element).
    inputs, output = layer.equation.replace(" ", "").split("->")
    x_indices, kernel_indices = inputs.split(",")
    per_element = math.prod(int(size) for i, size in zip(kernel_indices, layer.kernel.shape)
                            if i in x_indices and i not in output)
    elements = tuple(out_shape[1:])
    if any(d is None for d in elements):
        return None
    return math.prod(elements) * per_element


def _time_distributed(layer, in_shape, out_shape):
    # The wrapped layer's cost on one time step, times the steps.
    step = _layer_cost(layer.layer, (in_shape[0], *in_shape[2:]),
                       (out_shape[0], *out_shape[2:])).multiplications
    return _mul(step, in_shape[1])


# Checked in order; the first class that matches decides.
_RULES = (
    (SpinalDense, _spinal),
    (keras.layers.Dense, _dense),
    (keras.layers.EinsumDense, _einsum),
    (keras.layers.TimeDistributed, _time_distributed),
    (keras.layers.DepthwiseConv1D, _conv),
    (keras.layers.DepthwiseConv2D, _conv),
    (keras.layers.SeparableConv1D, _separable),
    (keras.layers.SeparableConv2D, _separable),
    (keras.layers.Conv1D, _conv),
    (keras.layers.Conv2D, _conv),
    (keras.layers.Conv3D, _conv),
    (keras.layers.Conv1DTranspose, _conv),
    (keras.layers.Conv2DTranspose, _conv),
    (keras.layers.Conv3DTranspose, _conv),
)

# Layers whose weights take part in no product: element-wise ones (scale,
# shift, statistics) and Embedding, whose weights are looked up.
_ELEMENTWISE = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
    keras.layers.Normalization,
    keras.layers.PReLU,
    keras.layers.Embedding,
)


@dataclasses.dataclass(frozen=True)
class LayerCost:
    """Cost of one layer, per example."""

    name: str
    class_name: str
    output_shape: tuple
    trainable_params: int
    non_trainable_params: int
    multiplications: object  # int, or None when unknown
    # Times the model calls the layer per example (a shared layer, a nested
    # model used twice); `multiplications` covers all of them.
    calls: int = 1


@dataclasses.dataclass(frozen=True)
class CostReport:
    """Per-layer and total costs of a layer or model.

    Attributes:
        layers: tuple of `LayerCost`, in model order (nested models are
            expanded into their layers), one per layer: a layer called more
            than once has its calls' multiplications summed and `calls`
            set to their number.
    """

    layers: tuple

    @property
    def trainable_params(self):
        return sum(c.trainable_params for c in self.layers)

    @property
    def non_trainable_params(self):
        return sum(c.non_trainable_params for c in self.layers)

    @property
    def params(self):
        return self.trainable_params + self.non_trainable_params

    @property
    def multiplications(self):
        """Total multiplications per example over the layers whose count is
        known (see `unknown_layers`)."""
        return sum(c.multiplications or 0 for c in self.layers)

    @property
    def unknown_layers(self):
        """Names of layers with weights whose multiplications are unknown."""
        return tuple(c.name for c in self.layers if c.multiplications is None)

    def reduction_vs(self, baseline):
        """Relative cut of this report against `baseline` (a CostReport).

        Returns a dict with `"multiplications"` and `"trainable_params"`,
        each `1 - self / baseline` (0.486 means 48.6% fewer).
        """
        if not isinstance(baseline, CostReport):
            raise TypeError(
                "`baseline` must be a CostReport, e.g. cost_report(dense_model). "
                f"Received: baseline={baseline!r}"
            )
        for name in ("multiplications", "trainable_params"):
            if not getattr(baseline, name):
                raise ValueError(
                    f"`baseline` has no {name.replace('_', ' ')} to cut from (0): "
                    "a reduction against it is undefined."
                )
        return {
            "multiplications": 1 - self.multiplications / baseline.multiplications,
            "trainable_params": 1
            - self.trainable_params / baseline.trainable_params,
        }

    def to_dict(self):
        return {
            "layers": [dataclasses.asdict(c) for c in self.layers],
            "trainable_params": self.trainable_params,
            "non_trainable_params": self.non_trainable_params,
            "multiplications": self.multiplications,
            "unknown_layers": list(self.unknown_layers),
        }

    def to_markdown(self):
        rows = [
            "| layer | type | output shape | trainable | non-trainable | multiplications |",
            "|---|---|---|---:|---:|---:|",
        ]
        for c in self.layers:
            mult = "unknown" if c.multiplications is None else f"{c.multiplications:,}"
            name = c.name if c.calls == 1 else f"{c.name} ({c.calls} calls)"
            rows.append(
                f"| {name} | {c.class_name} | {c.output_shape} | "
                f"{c.trainable_params:,} | {c.non_trainable_params:,} | {mult} |"
            )
        rows.append(
            f"| **total** | | | {self.trainable_params:,} | "
            f"{self.non_trainable_params:,} | {self.multiplications:,} |"
        )
        if self.unknown_layers:
            rows.append(
                "\nMultiplications unknown (not in the total) for: "
                + ", ".join(self.unknown_layers)
            )
        return "\n".join(rows)

    __str__ = to_markdown


def _count(weights):
    return sum(math.prod(w.shape) for w in weights)


def _layer_cost(layer, in_shape, out_shape):
    mult = 0
    for cls, rule in _RULES:
        if isinstance(layer, cls):
            mult = rule(layer, in_shape, out_shape)
            break
    else:
        if layer.weights and not isinstance(layer, _ELEMENTWISE):
            mult = None
    return LayerCost(
        name=layer.name,
        class_name=type(layer).__name__,
        output_shape=tuple(out_shape),
        trainable_params=_count(layer.trainable_weights),
        non_trainable_params=_count(layer.non_trainable_weights),
        multiplications=mult,
    )


def _shape(tensors):
    # Multi-input layers (Concatenate, Add) have no weights: the first
    # input's shape is enough for them.
    if isinstance(tensors, (list, tuple)):
        tensors = tensors[0]
    return tuple(tensors.shape)


def _calls(model):
    """`{id(layer): [(input shape, output shape) per call]}` over the calls
    in `model`'s own graph (empty if it has none to read).

    A layer's `input`/`output` describe its first call only, which may be
    another model's, and a shared layer runs once per call.
    """
    graph = model._functional if isinstance(model, keras.Sequential) else model
    by_depth = getattr(graph, "_nodes_by_depth", None)
    if by_depth is None:
        return {}
    calls = {}
    for nodes in by_depth.values():
        for node in nodes:
            if node.input_tensors:
                calls.setdefault(id(node.operation), []).append(node)
    # In the order of the calls, so that a report shows the first call's
    # output shape.
    return {
        key: [
            (_shape(node.input_tensors), _shape(node.output_tensors))
            for node in sorted(nodes, key=nodes[0].operation._inbound_nodes.index)
        ]
        for key, nodes in calls.items()
    }


def _unreadable(layer, model):
    return ValueError(
        f"Cannot read the input shape of layer '{layer.name}' of model "
        f"'{model.name}'. cost_report needs a Sequential or functional "
        "model that has been built on an `Input` (subclassed models "
        "have no layer graph: wrap the model in a functional model, or "
        "report its layers one by one with `input_shape`)."
    )


def _model_costs(model, seen, repeat=1):
    costs = []
    calls = _calls(model)
    for layer in model.layers:
        if id(layer) in seen or isinstance(layer, keras.layers.InputLayer):
            continue
        seen.add(id(layer))
        shapes = calls.get(id(layer))
        if shapes is None:
            try:
                shapes = [(_shape(layer.input), _shape(layer.output))]
            except (AttributeError, ValueError) as e:
                raise _unreadable(layer, model) from e
        if isinstance(layer, keras.Model):
            costs.extend(_model_costs(layer, seen, repeat * len(shapes)))
            continue
        per_call = [_layer_cost(layer, *shape) for shape in shapes]
        counts = [c.multiplications for c in per_call] * repeat
        costs.append(dataclasses.replace(
            per_call[0],
            multiplications=None if None in counts else sum(counts),
            calls=len(counts),
        ))
    return costs


def cost_report(model_or_layer, input_shape=None):
    """Multiplications per example and parameters of each layer, and totals.

    Args:
        model_or_layer: a built Sequential or functional `keras.Model`
            (nested models are expanded), or a single layer.
        input_shape: for a single layer (and only then), its input shape
            including the batch axis, e.g. `(None, 320)`. Builds the layer
            if needed; a built layer must accept it.

    Returns:
        A `CostReport`; `print(report)` shows a Markdown table, and
        `report.reduction_vs(other)` gives the relative cut.

    Example:

    >>> head = SpinalDense(10, width=8, depth=6)
    >>> cost_report(head, input_shape=(None, 320)).multiplications
    8480
    """
    if isinstance(model_or_layer, keras.Model):
        if input_shape is not None:
            raise ValueError(
                "`input_shape` is for a single layer; a model's input shape is "
                f"its own. Received: input_shape={input_shape!r} for model "
                f"'{model_or_layer.name}'"
            )
        if not model_or_layer.built:
            raise ValueError(
                f"Model '{model_or_layer.name}' is not built: give it an "
                "`keras.Input` or call it on data before cost_report."
            )
        return CostReport(tuple(_model_costs(model_or_layer, set())))
    layer = model_or_layer
    if not isinstance(layer, keras.layers.Layer):
        raise TypeError(
            "cost_report expects a keras.Model or keras.layers.Layer. "
            f"Received: {model_or_layer!r}"
        )
    if input_shape is None:
        raise ValueError(
            f"cost_report of the single layer '{layer.name}' needs its "
            "`input_shape`, including the batch axis, e.g. (None, 320)."
        )
    dims = tuple(input_shape) if isinstance(input_shape, (list, tuple)) else ()
    if not dims or not all(d is None or (_validation.is_int(d) and d > 0) for d in dims):
        raise ValueError(
            "`input_shape` must be a tuple of positive integers or None, the "
            f"batch axis included, e.g. (None, 320). Received: input_shape={input_shape!r}"
        )
    input_shape = tuple(None if d is None else int(d) for d in dims)
    if not layer.built:
        layer.build(input_shape)
    # A built layer's weights fix some input dimensions (its input_spec, as
    # Dense and SpinalDense set it); counting for another shape would give
    # the numbers of the shape it was built for.
    specs = layer.input_spec if isinstance(layer.input_spec, list) else [layer.input_spec]
    fixed = (specs[0].axes or {}) if len(specs) == 1 and specs[0] is not None else {}
    for axis, dim in fixed.items():
        if -len(input_shape) <= axis < len(input_shape) and input_shape[axis] not in (None, dim):
            raise ValueError(
                f"Layer '{layer.name}' was built for inputs with {dim} on axis "
                f"{axis}. Received: input_shape={input_shape!r}"
            )
    out_shape = tuple(layer.compute_output_shape(input_shape))
    return CostReport((_layer_cost(layer, input_shape, out_shape),))
