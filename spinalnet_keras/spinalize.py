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


def _node_outputs(layer):
    """The output tensors of each call of `layer` in a graph, flattened."""
    # Keras 3 records a node per call on the operation; nodes of graphs
    # other than the one being read hold tensors that are not in it, and
    # match nothing below.
    return [node.output_tensors for node in layer._inbound_nodes]


def _layer_tree(model, prefix="", exposed=None):
    """`(path, layer, hidden)` for each layer of `model` and, depth first,
    of the Sequential and functional models nested in it.

    A path is the layer's name, prefixed by those of the nested models that
    hold it ("head/fc1"; Keras refuses "/" in names). `hidden` says, for a
    Dense layer, that its output reaches no output of the whole model:
    within a nested model, an output of that model is hidden where each call
    of the model feeds it to other layers only. `exposed` holds the ids of
    `model`'s outputs that are outputs of the whole model (all of them for
    the model itself).
    """
    if exposed is None:
        exposed = {id(t) for t in model.outputs}
    for layer in model.layers:
        path = prefix + layer.name
        is_dense = type(layer) is keras.layers.Dense
        yield path, layer, is_dense and id(layer.output) not in exposed
        if isinstance(layer, keras.Model) and _is_graph_model(layer):
            inner_exposed = {
                id(t) for i, t in enumerate(layer.outputs)
                if any(id(outputs[i]) in exposed for outputs in _node_outputs(layer))
            }
            yield from _layer_tree(layer, path + "/", inner_exposed)


def hidden_dense_layers(model):
    """Paths of the `Dense` layers of `model` whose outputs feed other
    layers, not an output of the model: a layer's name, or for a layer in
    a nested Sequential or functional model, the names of the models that
    hold it and its own, joined by "/" ("head/fc1").

    >>> head = keras.Sequential([keras.Input((64,)),
    ...                          keras.layers.Dense(32, name="fc1"),
    ...                          keras.layers.Dense(10, name="classifier")],
    ...                         name="head")
    >>> model = keras.Sequential([keras.Input((320,)),
    ...                           keras.layers.Dense(64, name="features"), head])
    >>> hidden_dense_layers(model)
    ['features', 'head/fc1']
    """
    _check_graph_model(model)
    return [path for path, _, hidden in _layer_tree(model) if hidden]


def _nested_hint(model):
    """A sentence naming the nested subclassed models of `model` that hold
    Dense layers (empty if none): they have no layer graph to rewrite."""

    def holds_dense(m):
        return any(
            type(layer) is keras.layers.Dense
            or (isinstance(layer, keras.Model) and holds_dense(layer))
            for layer in m.layers
        )

    nested = [
        path for path, layer, _ in _layer_tree(model)
        if isinstance(layer, keras.Model) and not _is_graph_model(layer)
        and holds_dense(layer)
    ]
    if not nested:
        return ""
    return (
        f" The subclassed model(s) {nested} hold Dense layers, which cannot be "
        "converted from here (they have no layer graph to rewrite): put "
        "SpinalDense in their `__init__` instead."
    )


def spinalize(model, layers=None, width=None, depth=4, splits=2, **spinal_options):
    """Return a copy of `model` with hidden Dense layers made spinal.

    Args:
        model: a built Sequential or functional `keras.Model`.
        layers: the Dense layers to convert, as names, paths into
            nested Sequential or functional models ("head/fc1"), or layer
            objects; default: all hidden Dense layers, nested ones included
            (see `hidden_dense_layers`).
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
        fresh weights. A nested model that holds a converted layer is
        rewritten the same way (a new model of its class, under its name);
        all other layers keep their weights. The input model is not
        changed. Call `compile` on the result.

    Raises:
        TypeError: `model` is not a Keras model.
        ValueError: subclassed or unbuilt models, names that are not in
            the model (or are in a nested subclassed model), layers that
            are not Dense or have no hidden role, quantized or
            LoRA-enabled layers, layers with fewer input features than
            `splits`.

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
    tree = list(_layer_tree(model))
    hidden = [path for path, _, is_hidden in tree if is_hidden]
    by_path = {path: layer for path, layer, _ in tree}
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
        # A layer object is found where it is, also in a nested model.
        path_of = {id(layer): path for path, layer, _ in tree}
        selected = []
        for item in layers:
            if isinstance(item, keras.layers.Layer):
                path = path_of.get(id(item), item.name)
            else:
                path = item
            if not isinstance(path, str):  # a list would fail the look-up as "unhashable"
                raise ValueError(
                    "`layers` must hold layer names or layers. Received: "
                    f"layers={layers!r}, holding {path!r}; hidden Dense layers: {hidden}"
                )
            if path not in by_path or (
                isinstance(item, keras.layers.Layer) and by_path[path] is not item
            ):
                raise ValueError(
                    f"Layer {path!r} is not in model '{model.name}'. Hidden "
                    f"Dense layers: {hidden}." + _nested_hint(model)
                )
            if type(by_path[path]) is not keras.layers.Dense:
                raise ValueError(
                    f"Layer {path!r} is a {type(by_path[path]).__name__}, not a "
                    f"Dense layer. Hidden Dense layers: {hidden}"
                )
            if path not in hidden:
                raise ValueError(
                    f"Dense layer {path!r} has no hidden role: its output is "
                    f"an output of the model. Hidden Dense layers: {hidden}"
                )
            selected.append(path)
    selected = set(selected)
    for path in sorted(selected):
        _check_convertible(path, by_path[path], splits)

    def spinal_for(layer):
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

    return _rewrite(model, selected, spinal_for)


def _check_convertible(path, layer, splits):
    """Raise, naming the layer by `path`, if the Dense `layer` cannot
    become a SpinalDense with `splits`."""
    if layer.quantization_mode is not None:
        raise ValueError(
            f"Dense layer {path!r} is quantized ({layer.dtype_policy.name}); "
            "its rounded kernel cannot carry over to the SpinalDense, whose "
            "weights are new. Convert the float model, train it, then "
            "quantize (`quantize_int8(model)` quantizes SpinalDense layers "
            "too)."
        )
    if layer.get_config().get("lora_rank"):
        raise ValueError(
            f"Dense layer {path!r} has LoRA enabled; its low-rank update of "
            "the Dense kernel cannot carry over to the SpinalDense, whose "
            "weights are new. Convert it before enabling LoRA, train, then "
            "enable LoRA on the SpinalDense (`SpinalDense.enable_lora`)."
        )
    # SpinalDense would refuse this too, but mid-clone and without naming
    # the layer. The input spec, not the kernel: int4 packs its rows.
    features = layer.input_spec.axes[-1]
    if splits > features:
        raise ValueError(
            f"Dense layer {path!r} has {features} input feature(s), fewer than "
            f"splits={splits}: every split needs at least one. Pass splits <= "
            f"{features}, or leave the layer out with `layers`."
        )


def _rewrite(model, paths, spinal_for):
    """A copy of the graph `model` in which the Dense layers at `paths`
    (relative to it) are `spinal_for(layer)`, nested models holding some
    of them are rewritten likewise, and every other layer is a copy with
    its weights."""
    own = {p for p in paths if "/" not in p}
    nested = {}
    for p in paths - own:
        outer, rest = p.split("/", 1)
        nested.setdefault(outer, set()).add(rest)

    def clone(layer):
        if layer.name in own:
            return spinal_for(layer)
        if layer.name in nested:
            return _rewrite(layer, nested[layer.name], spinal_for)
        return layer.__class__.from_config(layer.get_config())

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
        # A rewritten nested model got its other layers' weights in its own
        # rewrite.
        if layer.name not in own and layer.name not in nested and layer.weights:
            new.get_layer(layer.name).set_weights(layer.get_weights())
    return new
