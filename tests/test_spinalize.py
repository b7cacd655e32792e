import warnings

import keras
import numpy as np
import pytest
from composed import SubclassedDense

from spinalnet_keras import SpinalDense, hidden_dense_layers, spinalize


def _x(*shape):
    return np.random.default_rng(0).normal(size=shape).astype("float32")


def test_sequential_all_hidden_layers():
    model = keras.Sequential([
        keras.Input((20,)), keras.layers.Dense(16, activation="relu", name="h1"),
        keras.layers.Dropout(0.2), keras.layers.Dense(8, activation="tanh", name="h2"),
        keras.layers.Dense(3, name="out")])
    assert hidden_dense_layers(model) == ["h1", "h2"]
    new = spinalize(model, depth=4)
    assert isinstance(new, keras.Sequential)
    h1, h2 = new.get_layer("h1"), new.get_layer("h2")
    assert isinstance(h1, SpinalDense) and isinstance(h2, SpinalDense)
    assert (h1.units, h1.width, h1.depth) == (16, 4, 4)
    assert (h2.units, h2.width) == (8, 2)
    assert keras.activations.serialize(h2.output_activation) == "tanh"
    np.testing.assert_array_equal(new.get_layer("out").kernel.numpy(), model.get_layer("out").kernel.numpy())
    assert new.predict(_x(5, 20), verbose=0).shape == (5, 3)
    assert isinstance(model.get_layer("h1"), keras.layers.Dense)  # input model untouched


def test_functional_selection_keeps_untouched_layers_and_outputs():
    inputs = keras.Input((12, 12, 1))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.Flatten(name="flat")(x)
    a = keras.layers.Dense(10, activation="relu", name="a")(x)
    b = keras.layers.Dense(6, activation="relu", name="b")(x)
    merged = keras.layers.Concatenate(name="cat")([a, b])
    outputs = keras.layers.Dense(2, name="out")(merged)
    model = keras.Model(inputs, outputs)
    new = spinalize(model, layers=["b"], width=3, depth=2, splits=2, dropout=0.1)
    assert isinstance(new.get_layer("b"), SpinalDense)
    assert type(new.get_layer("a")) is keras.layers.Dense
    assert new.get_layer("b").dropout == 0.1
    x = _x(3, 12, 12, 1)
    for name in ("conv", "a"):
        old_out = keras.Model(model.input, model.get_layer(name).output)(x)
        new_out = keras.Model(new.input, new.get_layer(name).output)(x)
        np.testing.assert_allclose(old_out, new_out, rtol=1e-6)
    new.compile("adam", "mse")
    assert np.isfinite(new.train_on_batch(x, np.zeros((3, 2))))


def test_sparse_inputs_stay_sparse():
    # Keras's clone_model alone gives the copy dense inputs (it drops `sparse`).
    import tensorflow as tf

    seq = keras.Sequential([keras.Input((50,), sparse=True, name="words"),
                            keras.layers.Dense(16, activation="relu", name="h"),
                            keras.layers.Dense(3, name="out")])
    words, other = keras.Input((50,), sparse=True, name="words"), keras.Input((7,), name="other")
    hidden = keras.layers.Dense(16, activation="relu", name="h")(
        keras.layers.Concatenate()([words, other]))
    functional = keras.Model({"words": words, "other": other}, keras.layers.Dense(2)(hidden))
    for model in (seq, functional):
        new = spinalize(model, width=4)
        assert isinstance(new.get_layer("h"), SpinalDense)
        assert [(x.name, x.sparse) for x in new.inputs] == [(x.name, x.sparse) for x in model.inputs]
    x = _x(6, 50) * (_x(6, 50) > 1)
    sparse = tf.sparse.from_dense(x)
    new = spinalize(seq, width=4)
    np.testing.assert_allclose(new.predict(sparse, verbose=0), new.predict(x, verbose=0), atol=1e-6)
    new.compile("sgd", "mse")
    assert np.isfinite(new.fit(sparse, np.zeros((6, 3)), epochs=1, verbose=0).history["loss"][0])


def test_regularizers_initializers_and_constraints_carry_over():
    model = keras.Sequential([
        keras.Input((10,)),
        keras.layers.Dense(8, activation="relu", name="h", kernel_regularizer=keras.regularizers.L2(0.5),
                           bias_initializer=keras.initializers.Constant(0.25),
                           kernel_constraint=keras.constraints.NonNeg()),
        keras.layers.Dense(2, name="out")])
    layer = spinalize(model, depth=2).get_layer("h")
    assert isinstance(layer.kernel_regularizer, keras.regularizers.L2)
    assert layer.kernel_regularizer.l2 == pytest.approx(0.5)
    assert isinstance(layer.kernel_constraint, keras.constraints.NonNeg)
    bias = [w for w in layer.weights if w.path.endswith("bias")]
    assert bias and all(np.allclose(w.numpy(), 0.25) for w in bias)
    # the penalty is in the converted model's losses (one per kernel block)
    losses = spinalize(model, depth=2).losses
    assert losses and all(float(v) > 0 for v in losses)
    # the caller's options win
    plain = spinalize(model, depth=2, kernel_regularizer=None)
    assert plain.get_layer("h").kernel_regularizer is None and plain.losses == []
    # ... also over the Dense layer's bias and activation
    layer = spinalize(model, depth=2, use_bias=False, output_activation="tanh").get_layer("h")
    assert layer.use_bias is False and not [w for w in layer.weights if "bias" in w.path]
    assert keras.activations.serialize(layer.output_activation) == "tanh"


def test_errors():
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, name="h"),
                              keras.layers.ReLU(name="r"), keras.layers.Dense(1, name="out")])
    with pytest.raises(ValueError, match="'out' has no hidden role"):
        spinalize(model, layers=["out"])
    with pytest.raises(ValueError, match=r"'nope' is not in model.*\['h'\]"):
        spinalize(model, layers=["nope"])
    with pytest.raises(ValueError, match="'r' is a ReLU, not a Dense"):
        spinalize(model, layers=["r"])
    with pytest.raises(ValueError, match="depth=0"):
        spinalize(model, depth=0)
    for layers, shown in (([], r"\[\]"), (3, "3")):
        with pytest.raises(ValueError, match=r"`layers` must name at least one layer: a name, "
                           rf"a layer, or a list of them. Received: layers={shown}; hidden"):
            spinalize(model, layers=layers)
    with pytest.raises(ValueError, match=r"hold layer names or layers. Received: "
                       r"layers=\[\['h'\]\], holding \['h'\]; hidden"):
        spinalize(model, layers=[["h"]])
    # what the rest of the graph relies on stays the Dense layer's
    with pytest.raises(ValueError, match=r"`units`, `name`: .*Received: units=5, name='x'"):
        spinalize(model, units=5, name="x")
    with pytest.raises(ValueError, match=r"`dtype`: .*Received: dtype='float64'"):
        spinalize(model, dtype="float64")
    # the layer that cannot take the splits is named, before anything is cloned
    narrow = keras.Sequential([keras.Input((5,)), keras.layers.Dense(2, name="wide"),
                               keras.layers.Dense(4, name="narrow"), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match=r"'narrow' has 2 input feature\(s\), fewer than splits=3"):
        spinalize(narrow, splits=3)
    assert spinalize(narrow, layers=["wide"], splits=3).get_layer("wide").splits == 3
    quantized = keras.models.clone_model(model)
    with warnings.catch_warnings():  # Keras's, for the layers it cannot quantize
        warnings.simplefilter("ignore")
        quantized.quantize("int8")
    # the SpinalDense's weights would be new: nothing of the int8 kernel carries over
    with pytest.raises(ValueError, match=r"'h' is quantized \(int8_from_float32\); its rounded "
                       "kernel cannot carry over"):
        spinalize(quantized)
    model.get_layer("h").enable_lora(2)
    with pytest.raises(ValueError, match="'h' has LoRA enabled"):
        spinalize(model)
    only_output = keras.Sequential([keras.Input((5,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="no hidden Dense layer"):
        spinalize(only_output)
    # Dense layers in a nested subclassed model: the error says where they
    # are and why they cannot be reached
    net = SubclassedDense()
    inputs = keras.Input((4,))
    holder = keras.Model(inputs, keras.layers.Dense(1)(net(inputs)))
    for layers in (None, ["d"]):
        with pytest.raises(ValueError, match=r"subclassed model\(s\) \['subclassed_dense'\] "
                           r"hold Dense layers, which cannot be converted"):
            spinalize(holder, layers=layers)

    net(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="subclassed"):
        spinalize(net)
    with pytest.raises(ValueError, match="Sequential and functional models"):
        hidden_dense_layers(net)
    for bad in ("model", None):
        with pytest.raises(TypeError, match=r"Sequential and functional models\. "
                           rf"Received: model={bad!r} \(a {type(bad).__name__}\)"):
            hidden_dense_layers(bad)
        with pytest.raises(TypeError, match="Received: model="):
            spinalize(bad)


def _nested_model():
    """A functional model holding a Sequential head and a functional block;
    the block is called twice, on the head's output and on the features
    (that second call's output an output of the model)."""
    block_in = keras.Input((6,))
    block = keras.Model(block_in, keras.layers.Dense(6, activation="relu", name="mix")(block_in),
                        name="block")
    head = keras.Sequential([keras.Input((6,)), keras.layers.Dense(12, activation="relu", name="fc1"),
                             keras.layers.Dense(6, name="fc2")], name="head")
    inputs = keras.Input((10,))
    x = keras.layers.Dense(6, activation="relu", name="features")(inputs)
    # head's last layer feeds other layers here: hidden in the whole model
    y = keras.layers.Dense(3, name="out")(block(head(x)))
    return keras.Model(inputs, [y, block(x)])


def test_dense_layers_in_nested_models_are_converted(tmp_path):
    model = _nested_model()
    # block's Dense is hidden in its first call, an output in its second
    assert hidden_dense_layers(model) == ["features", "head/fc1", "head/fc2"]
    x = _x(4, 10)
    before = model.predict(x, verbose=0)
    new = spinalize(model, width=3, depth=2)
    head = new.get_layer("head")
    assert isinstance(head, keras.Sequential) and head is not model.get_layer("head")
    assert [type(layer).__name__ for layer in head.layers] == ["SpinalDense", "SpinalDense"]
    assert (head.get_layer("fc1").units, head.get_layer("fc1").width) == (12, 3)
    assert isinstance(new.get_layer("features"), SpinalDense)
    # untouched layers keep their weights; the shared block stays one model
    assert type(new.get_layer("block").get_layer("mix")) is keras.layers.Dense
    np.testing.assert_array_equal(new.get_layer("block").get_layer("mix").kernel.numpy(),
                                  model.get_layer("block").get_layer("mix").kernel.numpy())
    assert [layer.name for layer in new.layers].count("block") == 1
    np.testing.assert_array_equal(new.get_layer("out").kernel.numpy(),
                                  model.get_layer("out").kernel.numpy())
    assert [o.shape for o in new.predict(x, verbose=0)] == [(4, 3), (4, 6)]
    # the input model is unchanged
    assert type(model.get_layer("head").get_layer("fc1")) is keras.layers.Dense
    for a, b in zip(before, model.predict(x, verbose=0)):
        np.testing.assert_array_equal(a, b)
    # a selection by path or by layer object converts that layer only
    for layers in (["head/fc2"], [model.get_layer("head").get_layer("fc2")], "head/fc2"):
        one = spinalize(model, layers=layers, width=2, depth=3)
        assert [type(layer).__name__ for layer in one.get_layer("head").layers] == [
            "Dense", "SpinalDense"]
        assert type(one.get_layer("features")) is keras.layers.Dense
        np.testing.assert_array_equal(one.get_layer("head").get_layer("fc1").kernel.numpy(),
                                      model.get_layer("head").get_layer("fc1").kernel.numpy())
    # the rewritten model trains, saves and loads (safe mode)
    new.compile("adam", ["mse", "mse"])
    new.fit(x, [np.zeros((4, 3)), np.zeros((4, 6))], epochs=1, verbose=0)
    new.save(tmp_path / "nested.keras")
    loaded = keras.saving.load_model(tmp_path / "nested.keras", safe_mode=True)
    assert isinstance(loaded.get_layer("head").get_layer("fc2"), SpinalDense)
    for a, b in zip(new.predict(x, verbose=0), loaded.predict(x, verbose=0)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    # two levels down: each model on the way is rewritten
    deep = keras.Sequential([keras.Input((8,)), keras.layers.Dense(6, name="d1"),
                             keras.layers.Dense(4, name="d2")], name="deep")
    mid_in = keras.Input((8,))
    mid = keras.Model(mid_in, keras.layers.Dense(3, name="m")(deep(mid_in)), name="mid")
    top = keras.Sequential([keras.Input((8,)), mid, keras.layers.Dense(2, name="o")])
    assert hidden_dense_layers(top) == ["mid/deep/d1", "mid/deep/d2", "mid/m"]
    new = spinalize(top, layers=["mid/deep/d2"], width=2, depth=2)
    assert [type(layer).__name__ for layer in new.get_layer("mid").get_layer("deep").layers] == [
        "Dense", "SpinalDense"]
    assert new.predict(_x(3, 8), verbose=0).shape == (3, 2)


def test_nested_selection_errors_name_the_path():
    model = _nested_model()
    hidden = r"Hidden Dense layers: \['features', 'head/fc1', 'head/fc2'\]"
    for layers, message in [
        (["fc1"], "Layer 'fc1' is not in model"),  # a nested layer needs its path
        (["head/nope"], "Layer 'head/nope' is not in model"),
        ([keras.layers.Dense(2, name="fc1")], "Layer 'fc1' is not in model"),
        (["block/mix"], "Dense layer 'block/mix' has no hidden role"),
        (["head"], "Layer 'head' is a Sequential, not a Dense layer"),
    ]:
        with pytest.raises(ValueError, match=message + ".*" + hidden):
            spinalize(model, layers=layers)
    with pytest.raises(ValueError, match=r"Dense layer 'head/fc2' has 12 input feature\(s\), "
                       "fewer than splits=13"):
        spinalize(model, layers=["head/fc2"], splits=13)
    model.get_layer("head").get_layer("fc1").enable_lora(2)
    with pytest.raises(ValueError, match="Dense layer 'head/fc1' has LoRA enabled"):
        spinalize(model)
