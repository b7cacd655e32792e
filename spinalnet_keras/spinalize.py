"""Turn the hidden `Dense` layers of an existing model into `SpinalDense`.

The paper (Fig. 4) notes that any traditional hidden layer can become a
spinal hidden layer. `spinalize` does it on a Sequential or functional
model: chosen hidden `Dense` layers become `SpinalDense` layers with the
same output size and output activation; every other layer is cloned with
its weights.
"""

import math

import keras

from spinalnet_keras import _validation
from spinalnet_keras.spinal_dense import SpinalDense


def _is_graph_model(model):
    # Functional models (and subclasses built from inputs/outputs) carry a
    # layer graph; subclassed models with their own `call` do not.
    return isinstance(model, keras.Sequential) or hasattr(model, "_nodes_by_depth")


_INHERITED = (
    "use_bias", "kernel_initializer", "bias_initializer", "kernel_regularizer",
    "bias_regularizer", "activity_regularizer", "kernel_constraint", "bias_constraint",
)
# A converted layer keeps these of its Dense layer: its output size and name
# (the rest of the graph and `get_layer` rely on them) and its dtype policy.
_KEPT = ("units", "name", "dtype")


def _check_graph_model(model):
    if not isinstance(model, keras.Model):
        raise TypeError(
            "spinalize works on Keras Sequential and functional models. "
            f"Received: model={model!r} (a {type(model).__name__})"
        )
    if not _is_graph_model(model):
        raise ValueError(
            "spinalize works on Sequential and functional models; a subclassed "
            "model has no layer graph to rewrite. Put SpinalDense in its "
            f"`__init__` instead. Received: {type(model).__name__}"
        )
    if not model.built or not model.outputs:
        raise ValueError(
            f"Model '{model.name}' is not built: give it a keras.Input first."
        )


def hidden_dense_layers(model):
    """Names of the `Dense` layers of `model` whose outputs feed other
    layers (not a model output)."""
    _check_graph_model(model)
    outputs = {id(t) for t in model.outputs}
    return [
        layer.name
        for layer in model.layers
        if type(layer) is keras.layers.Dense and id(layer.output) not in outputs
    ]


def _nested_hint(model):
    """A sentence naming the nested models of `model` that hold Dense
    layers (empty if none): `spinalize` rewrites the top-level graph only."""

    def holds_dense(m):
        return any(
            type(layer) is keras.layers.Dense
            or (isinstance(layer, keras.Model) and holds_dense(layer))
            for layer in m.layers
        )

    nested = [
        layer.name for layer in model.layers
        if isinstance(layer, keras.Model) and holds_dense(layer)
    ]
    if not nested:
        return ""
    return (
        f" The nested model(s) {nested} hold Dense layers, which are not "
        "converted from here: spinalize the nested model and use the result "
        "in its place."
    )


def spinalize(model, layers=None, width=None, depth=4, splits=2, **spinal_options):
    """Return a copy of `model` with hidden Dense layers made spinal.

    Args:
        model: a built Sequential or functional `keras.Model`.
        layers: names (or layer objects) of the Dense layers to convert;
            default: all hidden Dense layers (see `hidden_dense_layers`).
            Only the model's own layers: Dense layers inside a nested model
            are converted by spinalizing that model.
        width: width of the spinal sub-layers; default
            `ceil(units / depth)`, so the sub-layers hold about as many
            neurons as the Dense layer they replace.
        depth: number of spinal sub-layers.
        splits: number of input splits (at most the layer's input size).
        **spinal_options: other `SpinalDense` arguments (`dropout`,
            `batch_norm`, `activation`, initializers, ...). `units`, `name`
            and `dtype` are the Dense layer's and cannot be given.

    Returns:
        A new model of the same class. Converted layers are `SpinalDense`
        with the Dense layer's `units`, `use_bias`, initializers,
        regularizers and constraints and, as `output_activation`, its
        activation (unless `spinal_options` set them); they start from
        fresh weights. All other layers keep their weights. The input model is
        not changed. Call `compile` on the result.

    Raises:
        TypeError: `model` is not a Keras model.
        ValueError: subclassed or unbuilt models, names that are not in
            the model, layers that are not Dense or have no hidden role,
            quantized or LoRA-enabled layers, layers with fewer input
            features than `splits`.

    Example:

    >>> dense_model = keras.Sequential([
    ...     keras.Input((320,)),
    ...     keras.layers.Dense(50, activation="relu", name="hidden"),
    ...     keras.layers.Dense(10, activation="softmax", name="output"),
    ... ])
    >>> spinal = spinalize(dense_model, width=8, depth=6)
    >>> [type(layer).__name__ for layer in spinal.layers]
    ['SpinalDense', 'Dense']
    """
    _check_graph_model(model)
    depth = _validation.positive_int("depth", depth)
    width = _validation.positive_int("width", width, allow_none=True)
    splits = _validation.positive_int("splits", splits)
    _validation.refuse(
        {k: spinal_options[k] for k in _KEPT if k in spinal_options},
        "a converted layer keeps its Dense layer's units, name and dtype",
    )
    hidden = hidden_dense_layers(model)
    if layers is None:
        selected = hidden
        if not selected:
            raise ValueError(
                f"Model '{model.name}' has no hidden Dense layer to convert."
                + _nested_hint(model)
            )
    else:
        if isinstance(layers, (str, keras.layers.Layer)):
            layers = [layers]
        if not isinstance(layers, (list, tuple, set)) or not layers:
            raise ValueError(
                "`layers` must name at least one layer: a name, a layer, or a list "
                f"of them. Received: layers={layers!r}; hidden Dense layers: {hidden}"
            )
        selected = []
        names = {layer.name: layer for layer in model.layers}
        for item in layers:
            name = item.name if isinstance(item, keras.layers.Layer) else item
            if not isinstance(name, str):  # a list would fail the look-up as "unhashable"
                raise ValueError(
                    "`layers` must hold layer names or layers. Received: "
                    f"layers={layers!r}, holding {name!r}; hidden Dense layers: {hidden}"
                )
            if name not in names:
                raise ValueError(
                    f"Layer {name!r} is not in model '{model.name}'. Hidden "
                    f"Dense layers: {hidden}." + _nested_hint(model)
                )
            if type(names[name]) is not keras.layers.Dense:
                raise ValueError(
                    f"Layer {name!r} is a {type(names[name]).__name__}, not a "
                    f"Dense layer. Hidden Dense layers: {hidden}"
                )
            if name not in hidden:
                raise ValueError(
                    f"Dense layer {name!r} has no hidden role: its output is "
                    f"an output of the model. Hidden Dense layers: {hidden}"
                )
            selected.append(name)
    selected = set(selected)
    for name in sorted(selected):
        layer = model.get_layer(name)
        if layer.quantization_mode is not None:
            raise ValueError(
                f"Dense layer {name!r} is quantized ({layer.dtype_policy.name}); "
                "SpinalDense has no quantized form. Convert the float model, "
                "train it, then quantize (`model.quantize` leaves SpinalDense "
                "layers in float)."
            )
        if layer.get_config().get("lora_rank"):
            raise ValueError(
                f"Dense layer {name!r} has LoRA enabled; its low-rank update "
                "has no SpinalDense counterpart. Convert it before enabling LoRA."
            )
        # SpinalDense would refuse this too, but mid-clone and without naming
        # the layer. The input spec, not the kernel: int4 packs its rows.
        features = layer.input_spec.axes[-1]
        if splits > features:
            raise ValueError(
                f"Dense layer {name!r} has {features} input feature(s), fewer than "
                f"splits={splits}: every split needs at least one. Pass splits <= "
                f"{features}, or leave the layer out with `layers`."
            )

    def clone(layer):
        if layer.name not in selected:
            return layer.__class__.from_config(layer.get_config())
        cfg = layer.get_config()
        # What the Dense layer regularised or constrained stays so, unless
        # the caller says otherwise.
        inherited = {k: cfg[k] for k in _INHERITED if cfg.get(k) is not None}
        return SpinalDense(
            cfg["units"],
            width=width or math.ceil(cfg["units"] / depth),
            depth=depth,
            splits=splits,
            name=layer.name,
            dtype=layer.dtype_policy,
            **{"output_activation": cfg["activation"], **inherited, **spinal_options},
        )

    # clone_model would give the copy plain dense inputs: a sparse input
    # (bag-of-words features) would lose its flag and be densified on entry.
    # (A Sequential model has `inputs` only; a functional one's structure is
    # `input`, which clone_model matches.)
    inputs = keras.tree.map_structure(
        lambda x: keras.Input(batch_shape=x.shape, dtype=x.dtype, name=x.name,
                              sparse=x.sparse, ragged=x.ragged),
        model.inputs if isinstance(model, keras.Sequential) else model.input,
    )
    new = keras.models.clone_model(model, input_tensors=inputs, clone_function=clone)
    for layer in model.layers:
        if layer.name not in selected and layer.weights:
            new.get_layer(layer.name).set_weights(layer.get_weights())
    return new
