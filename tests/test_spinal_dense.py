import os
import re
import warnings

import keras
import numpy as np
import pytest

from composed import composed_spinal
from composed import numpy_spinal
from spinalnet_keras import SpinalDense
from spinalnet_keras import split_sizes
from spinalnet_keras.spinal_dense import OWN_KERNEL_WIDTH


def _x(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


# -- forward pass ------------------------------------------------------------


@pytest.mark.parametrize(
    "features,width,depth,splits,units",
    [(320, 8, 6, 2, 10), (321, 5, 4, 2, None), (10, 3, 4, 3, 7), (9, 4, 1, 1, 2),
     (7, OWN_KERNEL_WIDTH, 3, 2, 5)],  # a kernel per sub-layer
)
def test_forward_matches_numpy_reference(features, width, depth, splits, units):
    layer = SpinalDense(units, width=width, depth=depth, splits=splits,
                        bias_initializer="random_normal")
    x = _x(5, features)
    y = keras.ops.convert_to_numpy(layer(x))
    w = layer.get_sublayer_weights()
    expected = numpy_spinal(x, w["kernels"], w["biases"], splits,
                            output_kernel=w.get("output_kernel"),
                            output_bias=w.get("output_bias"))
    assert y.shape == (5, units or depth * width)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_same_function_as_hand_composed_dense_network():
    ref = composed_spinal(321, units=10, width=8, depth=6, splits=2)
    layer = SpinalDense(10, width=8, depth=6)
    layer.build((None, 321))
    layer.set_sublayer_weights({
        "kernels": [ref.get_layer(f"sub_{i}").kernel.numpy() for i in range(6)],
        "biases": [ref.get_layer(f"sub_{i}").bias.numpy() for i in range(6)],
        "output_kernel": ref.get_layer("out").kernel.numpy(),
        "output_bias": ref.get_layer("out").bias.numpy(),
    })
    x = _x(16, 321)
    np.testing.assert_allclose(layer(x), ref(x), rtol=1e-5, atol=1e-5)


def test_every_feature_is_used_with_odd_sizes():
    # The reference drops the last feature when D is odd; here changing the
    # last feature must change the output.
    assert split_sizes(321, 2) == [161, 160]
    assert split_sizes(10, 3) == [4, 3, 3]
    assert sum(split_sizes(1001, 7)) == 1001
    for args, match in [((3, 5), r"\(3\). Received: splits=5"), ((3, 0), "splits=0"),
                        ((0, 1), "features=0")]:
        with pytest.raises(ValueError, match=match):
            split_sizes(*args)
    # tanh: no dead units that could hide the feature by chance
    layer = SpinalDense(4, width=3, depth=2, activation="tanh")
    x = _x(2, 321)
    x2 = x.copy()
    x2[:, -1] += 10.0
    assert not np.allclose(layer(x), layer(x2))


def test_rank_3_input_applies_on_last_axis():
    layer = SpinalDense(6, width=4, depth=3)
    x = _x(2, 7, 11)
    y = layer(x)
    assert tuple(y.shape) == (2, 7, 6)
    flat = layer(x.reshape(14, 11))
    np.testing.assert_allclose(np.reshape(y, (14, 6)), flat, rtol=1e-5, atol=1e-6)
    assert layer.compute_output_shape((None, 7, 11)) == (None, 7, 6)
    assert SpinalDense(width=4, depth=3).compute_output_shape((3, 5, 11)) == (3, 5, 12)


def test_initializer_has_per_sublayer_dense_scale():
    # Glorot uniform on a (h + w, w) Dense kernel: limit sqrt(6 / (h + 2w)).
    layer = SpinalDense(width=64, depth=4)
    layer.build((None, 512))
    limit_first = np.sqrt(6.0 / (256 + 64))
    limit_rest = np.sqrt(6.0 / (256 + 64 + 64))
    k0 = layer.split_kernels[0].numpy()
    assert np.abs(k0[:, :64]).max() <= limit_first
    assert np.abs(k0[:, :64]).max() > 0.95 * limit_first
    assert np.abs(k0[:, 64:]).max() <= limit_rest
    rec = layer.recurrent_kernel.numpy()[:64]  # sub-layer 1's recurrent block
    assert np.abs(rec).max() <= limit_rest
    assert np.abs(rec).max() > 0.9 * limit_rest


def test_sublayers_get_distinct_weights_and_seeds_reproduce():
    # A Keras initializer instance repeats itself for equal shapes; each
    # sub-layer must still get its own draw.
    layer = SpinalDense(width=6, depth=6, bias_initializer="random_normal")
    layer.build((None, 8))
    w = layer.get_sublayer_weights()
    assert len({k.tobytes() for k in w["kernels"]}) == 6
    assert len({b.tobytes() for b in w["biases"]}) == 6
    # With a seeded initializer, sub-layer i is exactly the (h + w, w) Dense
    # kernel of seed + i: split rows and recurrent rows from one draw.
    seeded = SpinalDense(width=3, depth=4, kernel_initializer=keras.initializers.GlorotUniform(seed=7))
    seeded.build((None, 10))
    kernels = seeded.get_sublayer_weights()["kernels"]
    for i, kernel in enumerate(kernels):
        shape = (5, 3) if i == 0 else (8, 3)
        expected = keras.initializers.GlorotUniform(seed=7 + i)(shape)
        np.testing.assert_allclose(kernel, expected, rtol=1e-6)
    again = SpinalDense(width=3, depth=4, kernel_initializer=keras.initializers.GlorotUniform(seed=7))
    again.build((None, 10))
    for a, b in zip(again.get_sublayer_weights()["kernels"], kernels):
        np.testing.assert_array_equal(a, b)


# -- options -----------------------------------------------------------------


def test_wide_sublayers_get_a_kernel_each():
    # Below OWN_KERNEL_WIDTH a split's sub-layers share one stored kernel
    # (one product); from it on each sub-layer has its own, of the shape of
    # its Dense kernel's split rows. The function and the parameters are the
    # same either way.
    narrow = SpinalDense(3, width=OWN_KERNEL_WIDTH - 1, depth=4)
    wide = SpinalDense(3, width=OWN_KERNEL_WIDTH, depth=4, bias_initializer="random_normal")
    for layer in (narrow, wide):
        layer.build((None, 7))
    w = OWN_KERNEL_WIDTH
    assert [tuple(k.shape) for k in narrow.split_kernels] == [(4, 2 * (w - 1)), (3, 2 * (w - 1))]
    assert [tuple(k.shape) for k in wide.split_kernels] == [(4, w), (4, w), (3, w), (3, w)]
    assert [k.path.split("/")[-1] for k in wide.split_kernels] == [
        "kernel_0", "kernel_2", "kernel_1", "kernel_3"]
    assert len(wide.weights) == len(narrow.weights) + 2
    assert wide.count_params() == composed_spinal(7, units=3, width=w, depth=4).count_params()
    # Each kernel is drawn at its own sub-layer's Dense scale (Glorot).
    limit = np.sqrt(6.0 / ((4 + w) + w))
    k2 = wide.split_kernels[1].numpy()  # sub-layer 2: split 0, a (4 + w, w) Dense kernel
    assert limit * 0.9 < np.abs(k2).max() <= limit
    assert not np.allclose(wide.split_kernels[0].numpy(), k2)
    # Reference layout round trip: every block lands where it came from.
    weights = wide.get_sublayer_weights()
    twin = SpinalDense(3, width=w, depth=4)
    twin.build((None, 7))
    twin.set_sublayer_weights(weights)
    x = _x(5, 7)
    np.testing.assert_allclose(twin(x), wide(x), rtol=1e-6)
    expected = numpy_spinal(x, weights["kernels"], weights["biases"], 2,
                            output_kernel=weights["output_kernel"],
                            output_bias=weights["output_bias"])
    np.testing.assert_allclose(wide(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("width", [4, OWN_KERNEL_WIDTH])
def test_dropout_is_active_in_training_only_and_per_sublayer_path_agrees(width):
    layer = SpinalDense(5, width=width, depth=4, dropout=0.5, seed=3)
    x = _x(8, 20)
    infer = keras.ops.convert_to_numpy(layer(x, training=False))
    train = keras.ops.convert_to_numpy(layer(x, training=True))
    assert not np.allclose(infer, train)
    np.testing.assert_allclose(infer, layer(x), rtol=1e-6)
    # With a zero rate the per-sub-layer training path must compute exactly
    # the shared-product path.
    layer.dropout = 0.0
    np.testing.assert_allclose(layer(x, training=True), infer, rtol=1e-5, atol=1e-6)


def test_batch_norm_counts_and_updates():
    layer = SpinalDense(3, width=4, depth=5, batch_norm=True)
    layer.build((None, 10))
    bn_trainable = 2 * 4 * 5
    dense_part = 4 * (5 + 1) + 4 * 4 * (5 + 4 + 1) + 3 * (5 * 4 + 1)
    assert sum(np.prod(w.shape) for w in layer.trainable_weights) == dense_part + bn_trainable
    assert sum(np.prod(w.shape) for w in layer.non_trainable_weights) == bn_trainable
    before = layer._batch_norms[0].moving_mean.numpy().copy()
    layer(_x(32, 10) + 3.0, training=True)
    assert not np.allclose(before, layer._batch_norms[0].moving_mean.numpy())


def test_batch_norm_weights_in_the_sublayer_layout():
    # As the reference scripts' BatchNorm1d (weight, bias, running_mean,
    # running_var) would give them: the layer then computes their inference pass.
    rng = np.random.default_rng(0)
    layer = SpinalDense(3, width=4, depth=3, batch_norm=True, batch_norm_epsilon=1e-5)
    layer.build((None, 7))
    weights = layer.get_sublayer_weights()
    assert [sorted(bn) for bn in weights["batch_norms"]] == [
        ["beta", "gamma", "moving_mean", "moving_variance"]] * 3
    np.testing.assert_array_equal(weights["batch_norms"][0]["moving_variance"], np.ones(4))
    weights["batch_norms"] = [
        {"gamma": rng.uniform(0.5, 2, 4), "beta": rng.normal(size=4),
         "moving_mean": rng.normal(size=4), "moving_variance": rng.uniform(0.5, 2, 4)}
        for _ in range(3)]
    layer.set_sublayer_weights(weights)
    x = _x(6, 7)
    expected = numpy_spinal(x, weights["kernels"], weights["biases"], 2,
                            output_kernel=weights["output_kernel"],
                            output_bias=weights["output_bias"],
                            batch_norms=weights["batch_norms"], epsilon=1e-5)
    np.testing.assert_allclose(layer(x, training=False), expected, rtol=1e-5, atol=1e-5)
    for got, given in zip(layer.get_sublayer_weights()["batch_norms"], weights["batch_norms"]):
        for key in given:
            np.testing.assert_allclose(got[key], given[key], rtol=1e-6)
    # left out: the BatchNorm weights stay; the Dense ones are set
    kept = layer.get_sublayer_weights()
    without = {k: v for k, v in kept.items() if k != "batch_norms"}
    without["output_bias"] = np.full(3, 7.0, "float32")
    layer.set_sublayer_weights(without)
    np.testing.assert_allclose(layer.get_sublayer_weights()["batch_norms"][2]["beta"],
                               kept["batch_norms"][2]["beta"])
    np.testing.assert_array_equal(layer.output_bias.numpy(), 7.0)
    # checked whole before anything is assigned
    before = [v.numpy().copy() for v in layer.weights]
    bn = kept["batch_norms"]
    for bad, match in [
        (bn[:2], r"a list of 3 dicts with the keys \['gamma', 'beta', 'moving_mean', "
         r"'moving_variance'\], each a \(4,\) array. Received: list of 2"),
        ({"gamma": 1}, "Received: dict"),
        (bn[:2] + [{"gamma": bn[2]["gamma"]}], r"Received for sub-layer 2: \['gamma'\]"),
        (bn[:2] + [{**bn[2], "beta": np.zeros(5)}],
         r"Received for sub-layer 2: beta of shape \(5,\)"),
        ([{**bn[0], "moving_variance": -np.ones(4)}] + bn[1:],
         "Sub-layer 0's moving_variance must not be negative"),
        ([{**bn[0], "moving_variance": np.array(["a"] * 4)}] + bn[1:],
         "`weights` must hold numbers: could not convert string to float"),
    ]:
        with pytest.raises(ValueError, match=match):
            layer.set_sublayer_weights({**kept, "output_bias": np.zeros(3), "batch_norms": bad})
    for v, old in zip(layer.weights, before):
        np.testing.assert_array_equal(v.numpy(), old)
    # a layer without BatchNorm has none to take
    plain = SpinalDense(3, width=4, depth=3)
    plain.build((None, 7))
    assert "batch_norms" not in plain.get_sublayer_weights()
    with pytest.raises(ValueError, match=r"keys \['biases', 'kernels', 'output_bias', "
                       r"'output_kernel'\], as get_sublayer_weights\(\) returns. Received: "
                       r"\['batch_norms', "):
        plain.set_sublayer_weights({**plain.get_sublayer_weights(), "batch_norms": bn})


def test_no_bias():
    layer = SpinalDense(3, width=4, depth=2, use_bias=False)
    layer.build((None, 10))
    assert not [w for w in layer.weights if "bias" in w.path]
    assert layer.count_params() == 5 * 4 + 9 * 4 + 8 * 3


def test_regularizers_equal_per_sublayer_penalty():
    layer = SpinalDense(3, width=4, depth=3, kernel_regularizer=keras.regularizers.L2(0.1),
                        bias_regularizer="l1", activity_regularizer="l2")
    y = layer(_x(4, 9))
    w = layer.get_sublayer_weights()
    kernel_sq = sum((k ** 2).sum() for k in w["kernels"]) + (w["output_kernel"] ** 2).sum()
    losses = [float(v) for v in layer.losses]
    # one term per stored variable: 2 split + 1 recurrent + 1 output kernels,
    # the sub-layers' bias + the output bias, and the activity
    assert len(losses) == 4 + 2 + 1
    # The activity term as Keras computes it for any layer's output (Keras
    # 3.14 and later divide it by the batch size, earlier versions do not).
    reference = keras.layers.Identity(activity_regularizer="l2")
    reference(y)
    expected = 0.1 * kernel_sq + 0.01 * np.abs(np.concatenate(w["biases"])).sum() + 0.01 * np.abs(
        w["output_bias"]).sum() + float(reference.losses[0])
    np.testing.assert_allclose(sum(losses), expected, rtol=1e-4)


def test_constraints_are_applied_by_the_optimizer():
    model = keras.Sequential([keras.Input((6,)), SpinalDense(
        2, width=3, depth=2, kernel_constraint="non_neg", bias_constraint="non_neg")])
    model.compile("sgd", "mse")
    model.fit(_x(16, 6), _x(16, 2) * 10, epochs=2, verbose=0)
    assert all((w.numpy() >= 0).all() for w in model.trainable_weights)


def test_regularizers_and_constraints_act_on_each_sublayer_block():
    # Constant weights exceed MaxNorm everywhere; applied per block, every
    # column of every block ends at the bound exactly (applied to a whole
    # stored variable, the row-stacked recurrent blocks would share it).
    bound = 0.05
    layer = SpinalDense(width=3, depth=4, kernel_initializer="ones", bias_initializer="ones",
                        kernel_constraint=keras.constraints.MaxNorm(bound, axis=0),
                        bias_constraint=keras.constraints.MaxNorm(bound, axis=0))
    model = keras.Sequential([keras.Input((10,)), layer])
    model.compile(keras.optimizers.SGD(1e-3), "mse")
    model.fit(_x(8, 10), _x(8, 12), epochs=1, verbose=0)
    w = layer.get_sublayer_weights()
    for i, kernel in enumerate(w["kernels"]):
        blocks = [kernel[:5]] + ([kernel[5:]] if i else [])  # split rows, recurrent rows
        for block in blocks:
            np.testing.assert_allclose(np.linalg.norm(block, axis=0), bound, rtol=1e-4)
        np.testing.assert_allclose(np.linalg.norm(w["biases"][i]), bound, rtol=1e-4)
    # A non-additive regularizer is summed over the sub-layers' blocks.
    peak = SpinalDense(width=3, depth=4, kernel_regularizer=lambda k: keras.ops.max(k))
    peak.build((None, 10))
    w = peak.get_sublayer_weights()
    expected = sum(k[:5].max() for k in w["kernels"]) + sum(k[5:].max() for k in w["kernels"][1:])
    np.testing.assert_allclose(sum(float(v) for v in peak.losses), expected, rtol=1e-6)


def test_layer_activation_such_as_leaky_relu():
    layer = SpinalDense(width=3, depth=2, activation=keras.layers.LeakyReLU(negative_slope=0.01))
    x = _x(6, 8)
    w = None
    y = keras.ops.convert_to_numpy(layer(x))
    w = layer.get_sublayer_weights()
    expected = numpy_spinal(x, w["kernels"], w["biases"], 2,
                            activation=lambda z: np.where(z > 0, z, 0.01 * z))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    assert (y < 0).any()


# -- validation --------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(width=0, depth=2), "width=0"),
        (dict(width=-3, depth=2), "width=-3"),
        (dict(width=2.5, depth=2), "width=2.5"),
        (dict(width=True, depth=2), "width=True"),
        (dict(width=None, depth=2), "width=None"),
        (dict(width=4, depth=0), "depth=0"),
        (dict(width=4, depth="3"), "depth='3'"),
        (dict(units=0, width=4, depth=2), "units=0"),
        (dict(width=4, depth=2, splits=0), "splits=0"),
        (dict(width=4, depth=2, splits=3), "splits=3, depth=2"),
        (dict(width=4, depth=2, dropout=1.0), r"dropout=1.0"),
        (dict(width=4, depth=2, dropout=-0.1), r"dropout=-0.1"),
        (dict(width=4, depth=2, batch_norm="yes"), "batch_norm='yes'"),
        (dict(width=4, depth=2, activation="no_such_fn"), "no_such_fn"),
        # the class would be called on the tensor as its constructor
        (dict(width=4, depth=2, activation=keras.layers.LeakyReLU),
         r"`activation` takes a Keras layer, not its class: pass LeakyReLU\(...\)"),
        (dict(units=3, width=4, depth=2, output_activation=keras.layers.Softmax),
         r"`output_activation` takes a Keras layer, not its class: pass Softmax\(...\)"),
        (dict(width=4, depth=2, batch_norm_momentum=1.5), "batch_norm_momentum=1.5"),
        (dict(width=4, depth=2, batch_norm_momentum="0.9"), "batch_norm_momentum='0.9'"),
        (dict(width=4, depth=2, batch_norm_epsilon=0), "batch_norm_epsilon=0"),
        (dict(width=4, depth=2, batch_norm_epsilon=None), "batch_norm_epsilon=None"),
        (dict(width=4, depth=2, seed="x"), "seed='x'"),  # unused without dropout
        (dict(width=4, depth=2, dropout=0.1, seed=1.5), "seed=1.5"),
        (dict(width=4, depth=2, seed=True), "seed=True"),
        # no output Dense to apply it to: not silently left out
        (dict(width=4, depth=2, output_activation="softmax"),
         r"only with `units`.*output_activation='softmax', units=None"),
        (dict(width=4, depth=2, output_activation=keras.layers.Softmax()),
         r"output_activation=<Softmax.*units=None"),
        # normalising over one output: the same value for every input
        (dict(units=1, width=4, depth=2, output_activation="softmax"),
         r"over a single output it gives the same value for every input.*"
         r"Received: output_activation='softmax' with 1 output"),
        (dict(units=1, width=4, depth=2, output_activation="log_softmax"),
         r"output_activation='log_softmax' with 1 output"),
        (dict(units=1, width=4, depth=2, output_activation=keras.layers.Softmax()),
         r"output_activation=<Softmax.* with 1 output"),
        (dict(units=1, width=4, depth=2, output_activation=keras.activations.softmax),
         r"output_activation=<function softmax.* with 1 output"),
        # Keras would build it and fail at the first call, asking for `_int8_call`
        (dict(width=4, depth=2, dtype="float8_from_mixed_bfloat16"),
         r"SpinalDense's only quantized form is int8.*"
         r"Received: dtype='float8_from_mixed_bfloat16'"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SpinalDense(**kwargs)


def test_a_file_saved_with_an_output_activation_and_no_units_loads_as_it_computed():
    # Version 0.4.0 took output_activation without units and never applied it.
    layer = SpinalDense(width=3, depth=2, name="old")
    config = {**layer.get_config(), "output_activation": "softmax"}
    with pytest.warns(UserWarning, match=r"'old' was saved with output_activation='softmax'"):
        loaded = SpinalDense.from_config(config)
    assert loaded.output_activation is keras.activations.linear
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the usual round trip says nothing
        assert SpinalDense.from_config(layer.get_config()).get_config() == layer.get_config()


def test_more_splits_than_features():
    layer = SpinalDense(width=4, depth=6, splits=5)
    with pytest.raises(ValueError, match=r"number of input features \(3\).*splits=5"):
        layer.build((None, 3))


def test_sequence_mask_passes_through_like_dense():
    tokens = np.array([[3, 5, 0, 0], [2, 0, 0, 0]])
    inputs = keras.Input((4,), dtype="int32")
    hidden = SpinalDense(width=3, depth=2)(keras.layers.Embedding(10, 8, mask_zero=True)(inputs))
    pooled = keras.layers.GlobalAveragePooling1D()(hidden)
    model, per_position = keras.Model(inputs, pooled), keras.Model(inputs, hidden)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Keras warns when a layer destroys a mask
        y, h = model.predict(tokens, verbose=0), per_position.predict(tokens, verbose=0)
    np.testing.assert_allclose(y[0], h[0, :2].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y[1], h[1, 0], rtol=1e-5, atol=1e-6)


def test_batch_norm_leaves_masked_positions_out():
    layer = SpinalDense(4, width=3, depth=3, batch_norm=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 6)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=bool)
    padded = np.where(mask[..., None], x, 100 * rng.normal(size=x.shape)).astype("float32")
    a = keras.ops.convert_to_numpy(layer(x, mask=mask, training=True))
    b = keras.ops.convert_to_numpy(layer(padded, mask=mask, training=True))
    np.testing.assert_allclose(a[mask], b[mask], rtol=1e-4, atol=1e-5)
    # without the mask the padding would move the statistics
    c = keras.ops.convert_to_numpy(layer(padded, training=True))
    assert not np.allclose(a[mask], c[mask], atol=1e-2)


def test_sparse_input_predicts_and_trains_as_its_dense_form():
    import tensorflow as tf  # a TensorFlow SparseTensor, as keras.Input(sparse=True) takes

    rng = np.random.default_rng(0)
    x = (rng.random((8, 21)) * (rng.random((8, 21)) > 0.7)).astype("float32")
    y = rng.normal(size=(8, 3)).astype("float32")

    def model(sparse):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((21,), sparse=sparse)
        m = keras.Model(inputs, SpinalDense(3, width=4, depth=5, splits=3)(inputs))
        m.compile(keras.optimizers.SGD(0.1), "mse")
        return m

    sparse, dense = model(True), model(False)
    sp = tf.sparse.from_dense(x)
    np.testing.assert_allclose(sparse.predict(sp, verbose=0), dense.predict(x, verbose=0), rtol=1e-6)
    sparse.fit(sp, y, batch_size=4, shuffle=False, verbose=0)
    dense.fit(x, y, batch_size=4, shuffle=False, verbose=0)
    for a, b in zip(sparse.get_weights(), dense.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(sparse.get_weights()[0], model(True).get_weights()[0])  # it trained


def test_normalising_output_activations_are_taken_over_several_outputs():
    # softmax over one output is refused above; over two it is the usual head,
    # and an unrelated activation over one output (a sigmoid) is taken
    x = np.random.default_rng(0).normal(size=(3, 6)).astype("float32")
    y = SpinalDense(2, width=3, depth=2, output_activation="softmax")(x)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.ops.sum(y, -1)), 1.0, rtol=1e-6)
    y = SpinalDense(1, width=3, depth=2, output_activation="sigmoid")(x)
    assert y.shape == (3, 1) and np.ptp(keras.ops.convert_to_numpy(y)) > 0
    assert SpinalDense(1, width=3, depth=2, output_activation=keras.layers.Softmax(axis=0)).units == 1


# -- int8 --------------------------------------------------------------------


@pytest.mark.parametrize("width", [3, OWN_KERNEL_WIDTH])  # kernels shared, or one each
def test_int8_rounds_only_the_kernels(width):
    layer = SpinalDense(7, width=width, depth=4, batch_norm=True, dropout=0.2,
                        bias_initializer="random_normal")
    x = _x(6, 11)
    before = keras.ops.convert_to_numpy(layer(x))
    w0 = layer.get_sublayer_weights()
    layer.quantize("int8")  # with sub-layers, Model.quantize does not reach it
    assert layer.dtype_policy.name == "int8_from_float32"
    kernels = layer._kernels()
    assert [v.dtype for v in kernels] == ["int8"] * len(kernels)
    assert not any(v.trainable for v in kernels + layer.kernel_scales)
    for v in kernels:  # each column's largest magnitude is 127
        q = np.abs(keras.ops.convert_to_numpy(v)).astype(int)
        assert q.max(axis=0).min() == 127 if v.name != "recurrent_kernel" else q.max() == 127
    w1 = layer.get_sublayer_weights()
    for k0, k1 in zip(w0["kernels"] + [w0["output_kernel"]], w1["kernels"] + [w1["output_kernel"]]):
        # within half a step of 1/127 of its column's largest magnitude
        assert np.all(np.abs(k1 - k0) <= np.abs(k0).max(axis=0) / 254 + 1e-7)
        assert not np.array_equal(k1, k0)
    for key in ("biases", "output_bias", "batch_norms"):
        np.testing.assert_equal(w1[key], w0[key])  # not rounded
    # the layer computes with the rounded kernels, in float
    expected = numpy_spinal(x, w1["kernels"], w1["biases"], 2, output_kernel=w1["output_kernel"],
                            output_bias=w1["output_bias"], batch_norms=w1["batch_norms"])
    after = keras.ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(after, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(after, before, rtol=0.05, atol=0.05)
    assert keras.ops.convert_to_numpy(layer(x, training=True)).shape == (6, 7)  # dropout's path


def test_model_quantize_reaches_a_spinal_dense_without_batch_norm(tmp_path):
    # dropout draws its masks in the layer itself, so that one is reached too
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8),
                              SpinalDense(4, width=3, depth=3, dropout=0.5, seed=1),
                              SpinalDense(4, width=2, depth=2,
                                          activation=keras.layers.LeakyReLU()),
                              SpinalDense(2, width=2, depth=2, batch_norm=True)])
    x, y = _x(3, 16), _x(3, 2, seed=1)
    before = model.predict(x, verbose=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.quantize("int8")
    messages = [str(w.message) for w in caught]
    assert not any("SpinalDense" in m or "Dropout" in m for m in messages), messages
    # README says so: Keras visits only layers without sub-layers, and warns
    # about the activation and BatchNormalization layers, not the SpinalDense
    # holding them
    for name in ("LeakyReLU", "BatchNormalization"):
        assert any(f"{name} does not have a `quantize` method" in m for m in messages)
    dense, spinal, with_layer_activation, with_bn = model.layers
    assert (dense.quantization_mode, spinal.quantization_mode) == ("int8", "int8")
    assert with_layer_activation.quantization_mode is None and with_bn.quantization_mode is None
    after = model.predict(x, verbose=0)
    np.testing.assert_allclose(after, before, rtol=0.1, atol=0.1)
    # saved and loaded as int8, in safe mode
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert loaded.layers[1].dtype_policy.name == "int8_from_float32"
    assert loaded.layers[1]._kernels()[0].dtype == "int8"
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), after)
    from spinalnet_keras import export_model  # and it serves as a SavedModel

    report = export_model(loaded, tmp_path / "export", formats=("saved_model",))
    assert report["formats"]["saved_model"]["verified"]
    # it trains on, through dropout: the int8 kernels stay as they are, the biases learn
    assert not np.allclose(loaded.layers[1](loaded.layers[0](x), training=True),
                           loaded.layers[1](loaded.layers[0](x)))
    frozen = [keras.ops.convert_to_numpy(k) for k in loaded.layers[1]._kernels()]
    loaded.compile(keras.optimizers.SGD(0.1), "mse")
    loaded.fit(x, y, epochs=2, verbose=0)
    for k, value in zip(loaded.layers[1]._kernels(), frozen):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(k), value)
    assert not np.allclose(loaded.predict(x, verbose=0), after)


def test_int8_refusals():
    layer = SpinalDense(4, width=3, depth=2)
    layer.build((None, 6))
    with pytest.raises(NotImplementedError, match=r"quantizes to 'int8' only.*mode='float8'"):
        layer.quantize("float8")
    model = keras.Sequential([keras.Input((6,)), layer])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.quantize("float8")  # Keras turns it into a warning
    assert any("quantizes to 'int8' only" in str(w.message) for w in caught)
    assert layer.quantization_mode is None and layer._kernels()[0].dtype == "float32"
    layer.quantize("int8")
    with pytest.raises(ValueError, match="already quantized"):  # Keras's own check
        layer.quantize("int8")
    with pytest.raises(ValueError, match="set the weights of the float layer, then quantize"):
        layer.set_sublayer_weights(layer.get_sublayer_weights())
    # built from an int8 config, as when loading: int8 variables, float sub-layers
    made = SpinalDense(4, width=3, depth=2, batch_norm=True, dtype="int8_from_mixed_bfloat16")
    y = made(_x(2, 6))
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"
    assert made._kernels()[0].dtype == "int8"
    assert all(bn.dtype_policy.name == "mixed_bfloat16" for bn in made._batch_norms)


def test_unknown_last_axis_and_low_rank():
    with pytest.raises(ValueError, match="must be known at build time"):
        SpinalDense(width=4, depth=2).build((None, None))
    with pytest.raises(ValueError, match="rank >= 2"):
        SpinalDense(width=4, depth=2).build((5,))


def test_set_sublayer_weights_checks_shapes():
    layer = SpinalDense(width=4, depth=2)
    layer.build((None, 10))
    w = layer.get_sublayer_weights()
    w["kernels"][1] = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"kernel 1 must have shape \(9, 4\)"):
        layer.set_sublayer_weights(w)
    good = layer.get_sublayer_weights()
    before = [v.numpy().copy() for v in layer.weights]
    for bad, match in [
        ({"kernels": good["kernels"]}, r"keys \['biases', 'kernels'\].*Received: \['kernels'\]"),
        ({**good, "output_kernel": None}, r"Received: \['biases', 'kernels', 'output_kernel'\]"),
        ({**good, "biases": good["biases"][:1]}, r"`biases` must be 2 arrays of shape \(4,\). Received: \[\(4,\)\]"),
        ({**good, "kernels": None}, "`kernels` must be a list of 2 arrays, one per sub-layer. "
         "Received: kernels=None"),
        ({**good, "biases": 3}, "`biases` must be a list of 2 arrays.*Received: biases=3"),
        # the kernels would be assigned before the biases failed to convert
        ({"kernels": [k + 1 for k in good["kernels"]], "biases": [np.array(["x"] * 4)] * 2},
         "`weights` must hold numbers: could not "
         "convert string to float"),
    ]:
        with pytest.raises(ValueError, match=match):
            layer.set_sublayer_weights(bad)
    for v, old in zip(layer.weights, before):  # nothing half-assigned
        np.testing.assert_array_equal(v.numpy(), old)
    headed = SpinalDense(3, width=2, depth=2, use_bias=False)
    headed.build((None, 4))
    weights = headed.get_sublayer_weights()
    with pytest.raises(ValueError, match=r"`output_kernel` must have shape \(4, 3\)"):
        headed.set_sublayer_weights({**weights, "output_kernel": np.zeros((3, 4))})
    with pytest.raises(ValueError, match="`biases` must be None: this layer has use_bias=False"):
        headed.set_sublayer_weights({**weights, "biases": [np.zeros(2)] * 2})
    headed.set_sublayer_weights(weights)  # its own weights go back in


# -- LoRA --------------------------------------------------------------------


def _randomize_lora(layer, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    for v in layer._lora_variables():
        v.assign(scale * rng.normal(size=v.shape).astype("float32"))


@pytest.mark.parametrize("width", [3, OWN_KERNEL_WIDTH])  # kernels shared, or one each
def test_lora_updates_each_sublayer_kernel_at_its_rank(width):
    layer = SpinalDense(7, width=width, depth=5, splits=2, bias_initializer="random_normal")
    x = _x(6, 11)
    before = keras.ops.convert_to_numpy(layer(x))
    base = layer.get_sublayer_weights()
    layer.enable_lora(1, lora_alpha=3)
    # B starts at zeros: the layer computes what it did
    np.testing.assert_allclose(layer(x), before, rtol=1e-6, atol=1e-6)
    _randomize_lora(layer)
    merged = layer.get_sublayer_weights()
    sizes = split_sizes(11, 2)
    for i in range(5):
        update = merged["kernels"][i] - base["kernels"][i]
        # one rank-1 update per sub-layer, over its split rows and its
        # recurrent rows together (the same B), reaching both
        assert np.linalg.matrix_rank(update, tol=1e-4) == 1, i
        assert np.abs(update[: sizes[i % 2]]).min() > 0
        if i:
            assert np.abs(update[sizes[i % 2]:]).min() > 0
    a = keras.ops.convert_to_numpy(layer.lora_output_kernel_a)
    b = keras.ops.convert_to_numpy(layer.lora_output_kernel_b)
    np.testing.assert_allclose(merged["output_kernel"] - base["output_kernel"], 3 * a @ b,
                               rtol=1e-4, atol=1e-4)  # scaled by lora_alpha / rank
    for key in ("biases", "output_bias"):
        np.testing.assert_array_equal(np.asarray(merged[key]), np.asarray(base[key]))
    # the forward pass computes with the merged kernels
    expected = numpy_spinal(x, merged["kernels"], merged["biases"], 2,
                            output_kernel=merged["output_kernel"],
                            output_bias=merged["output_bias"])
    np.testing.assert_allclose(layer(x), expected, rtol=1e-4, atol=1e-4)
    # and so does its per-sub-layer dropout path, mask for mask
    dropped = SpinalDense(7, width=width, depth=5, dropout=0.3, seed=4, lora_rank=1,
                          lora_alpha=3)
    dropped.build((None, 11))
    _randomize_lora(dropped)
    plain = SpinalDense(7, width=width, depth=5, dropout=0.3, seed=4)
    plain.build((None, 11))
    plain.set_sublayer_weights(dropped.get_sublayer_weights())
    np.testing.assert_allclose(dropped(x, training=True), plain(x, training=True),
                               rtol=1e-4, atol=1e-4)


def test_lora_trains_the_updates_and_leaves_the_kernels():
    from spinalnet_keras import cost_report

    layer = SpinalDense(3, width=4, depth=3, batch_norm=True, lora_rank=2)
    model = keras.Sequential([keras.Input((10,)), layer])
    kernels = [v.name for v in layer._kernels()]
    assert kernels == ["split_kernel_0", "split_kernel_1", "recurrent_kernel", "output_kernel"]
    assert not any(v.trainable for v in layer._kernels())
    trainable = {v.name for v in layer.trainable_weights}
    assert trainable == {"bias", "output_bias", "gamma", "beta", "lora_split_kernel_0_a",
                         "lora_split_kernel_1_a", "lora_recurrent_kernel_a", "lora_kernel_b",
                         "lora_output_kernel_a", "lora_output_kernel_b"}
    # A's split rows: 5 x 2*2 (sub-layers 0 and 2 read split 0), 5 x 2 (sub-layer
    # 1); its recurrent rows 2*4 x 2; B 3*2 x 4; the output's A 12 x 2, B 2 x 3
    lora_params = 20 + 10 + 16 + 24 + 24 + 6
    # plus the biases (12 + 3) and BatchNorm's gamma and beta (2 * 12)
    assert cost_report(model).trainable_params == lora_params + 12 + 3 + 2 * 12
    frozen = [keras.ops.convert_to_numpy(v) for v in layer._kernels()]
    b = keras.ops.convert_to_numpy(layer.lora_kernel_b)
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    losses = model.fit(_x(64, 10), np.arange(64) % 3, epochs=5, batch_size=16,
                       verbose=0).history["loss"]
    assert losses[-1] < losses[0]
    for v, value in zip(layer._kernels(), frozen):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), value)
    assert not np.allclose(keras.ops.convert_to_numpy(layer.lora_kernel_b), b)
    # the kernel regularizer reaches A and B, as Dense's does (and Keras
    # leaves the frozen kernels out: it regularizes trainable weights)
    regularized = SpinalDense(3, width=4, depth=3, kernel_regularizer=keras.regularizers.L2(0.1),
                              lora_rank=2)
    regularized.build((None, 10))
    _randomize_lora(regularized)
    squares = sum(float(np.sum(keras.ops.convert_to_numpy(v) ** 2))
                  for v in regularized._lora_variables())
    np.testing.assert_allclose(float(sum(regularized.losses)), 0.1 * squares, rtol=1e-5)


def test_lora_saves_its_updates_and_trains_on_after_loading(tmp_path):
    model = keras.Sequential([
        keras.Input((9,)),
        SpinalDense(width=4, depth=3, lora_rank=2, lora_alpha=4),
        SpinalDense(2, width=3, depth=2)])
    model.layers[1].enable_lora(1)  # after building, as for Dense
    for layer in model.layers:
        _randomize_lora(layer, seed=len(layer.name))
    model.compile(keras.optimizers.SGD(0.05), "mse")
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x, y = _x(8, 9), _x(8, 2, seed=1)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    configs = [layer.get_config() for layer in loaded.layers]
    assert [(c["lora_rank"], c["lora_alpha"]) for c in configs] == [(2, 4), (1, 1)]
    assert all(layer.lora_enabled for layer in loaded.layers)
    # the updates were saved as they are, not merged into the kernels: the
    # loaded model takes the same training step
    model.train_on_batch(x, y)
    loaded.train_on_batch(x, y)
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b),
                                   rtol=1e-6, atol=1e-6, err_msg=a.path)
    # a layer without LoRA keeps the config it always had
    assert "lora_rank" not in SpinalDense(width=2, depth=2).get_config()


def test_weights_saved_without_lora_load_into_a_lora_layer(tmp_path):
    def model(**lora):
        return keras.Sequential([keras.Input((9,)), SpinalDense(3, width=4, depth=3, **lora)])

    trained = model()
    trained.save_weights(tmp_path / "pretrained.weights.h5")
    tuned = model(lora_rank=2)
    _randomize_lora(tuned.layers[0])
    tuned.load_weights(tmp_path / "pretrained.weights.h5")
    x = _x(5, 9)
    np.testing.assert_allclose(tuned.predict(x, verbose=0), trained.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-6)
    layer = tuned.layers[0]
    assert not keras.ops.convert_to_numpy(layer.lora_kernel_b).any()  # the update is zero
    assert keras.ops.convert_to_numpy(layer.lora_recurrent_kernel_a).all()  # A is not
    # and setting sub-layer weights makes the layer compute exactly those
    _randomize_lora(layer)
    layer.set_sublayer_weights(trained.layers[0].get_sublayer_weights())
    np.testing.assert_allclose(tuned.predict(x, verbose=0), trained.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-6)


def test_lora_on_int8_kernels(tmp_path):
    # QLoRA's way: quantize a trained layer, then train low-rank updates of
    # its frozen int8 kernels
    def model(**options):
        return keras.Sequential([keras.Input((9,)), SpinalDense(
            3, width=4, depth=3, batch_norm=True, bias_initializer="random_normal", **options)])

    x, y = _x(16, 9), np.arange(16) % 3
    tuned = model()
    tuned.layers[0].quantize("int8")  # with sub-layers, Model.quantize does not reach it
    int8_out = tuned.predict(x, verbose=0)
    tuned.save_weights(tmp_path / "int8.weights.h5")
    layer = tuned.layers[0]
    base = layer.get_sublayer_weights()  # the int8 kernels times their scales
    layer.enable_lora(2, lora_alpha=4)
    np.testing.assert_allclose(layer(x), int8_out, rtol=1e-5, atol=1e-5)  # B at zeros
    _randomize_lora(layer, scale=0.3)
    merged = layer.get_sublayer_weights()
    for i in range(3):  # each sub-layer's kernel moves by a rank-2 update
        assert np.linalg.matrix_rank(merged["kernels"][i] - base["kernels"][i], tol=1e-4) == 2
    np.testing.assert_allclose(
        merged["output_kernel"] - base["output_kernel"],
        2 * keras.ops.convert_to_numpy(layer.lora_output_kernel_a)
        @ keras.ops.convert_to_numpy(layer.lora_output_kernel_b), rtol=1e-4, atol=1e-4)
    expected = numpy_spinal(x, merged["kernels"], merged["biases"], 2,
                            output_kernel=merged["output_kernel"],
                            output_bias=merged["output_bias"], batch_norms=merged["batch_norms"])
    np.testing.assert_allclose(layer(x), expected, rtol=1e-4, atol=1e-4)
    # training moves the updates and biases; the int8 kernels and scales stay
    frozen = [keras.ops.convert_to_numpy(v) for v in layer._kernels() + layer.kernel_scales]
    assert {v.name for v in layer.trainable_weights} == {
        "bias", "output_bias", "gamma", "beta", "lora_split_kernel_0_a",
        "lora_split_kernel_1_a", "lora_recurrent_kernel_a", "lora_kernel_b",
        "lora_output_kernel_a", "lora_output_kernel_b"}
    b = keras.ops.convert_to_numpy(layer.lora_kernel_b)
    tuned.compile(keras.optimizers.SGD(0.1),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    losses = tuned.fit(x, y, epochs=5, verbose=0).history["loss"]
    assert losses[-1] < losses[0]
    for v, value in zip(layer._kernels() + layer.kernel_scales, frozen):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), value)
    assert layer._kernels()[0].dtype == "int8"
    assert not np.allclose(keras.ops.convert_to_numpy(layer.lora_kernel_b), b)
    # saved with its updates apart from the int8 kernels: the loaded model
    # computes the same and takes the same next training step
    tuned.save(tmp_path / "tuned.keras")
    loaded = keras.saving.load_model(tmp_path / "tuned.keras", safe_mode=True)
    config = loaded.layers[0].get_config()
    assert (loaded.layers[0].dtype_policy.name, config["lora_rank"], config["lora_alpha"]) == (
        "int8_from_float32", 2, 4)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), tuned.predict(x, verbose=0))
    tuned.train_on_batch(x, y)
    loaded.train_on_batch(x, y)
    for a, b in zip(tuned.weights, loaded.weights):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b),
                                   rtol=1e-6, atol=1e-6, err_msg=a.path)
    # int8 weights saved without LoRA load into an int8 LoRA layer, updates at zero
    fresh = model(dtype="int8_from_float32", lora_rank=2)
    _randomize_lora(fresh.layers[0])
    fresh.load_weights(tmp_path / "int8.weights.h5")
    np.testing.assert_allclose(fresh.predict(x, verbose=0), int8_out, rtol=1e-6, atol=1e-6)
    assert not keras.ops.convert_to_numpy(fresh.layers[0].lora_kernel_b).any()
    with pytest.raises(ValueError, match=r"int8 SpinalDense '.*' stores arrays of shapes "
                       r"\[\(3, 4\), \(4,\).*\(then LoRA's \[\(3, 2\).*the file holds \[\(5, 8\)"):
        model(dtype="int8_from_float32", lora_rank=2, splits=3).load_weights(
            tmp_path / "int8.weights.h5")


def test_quantizing_a_lora_layer_rounds_its_kernels_and_keeps_the_updates():
    layer = SpinalDense(3, width=4, depth=3, lora_rank=2)
    x = _x(8, 9)
    layer.build((None, 9))
    _randomize_lora(layer, scale=0.3)
    updates = [keras.ops.convert_to_numpy(v) for v in layer._lora_variables()]
    float_out = keras.ops.convert_to_numpy(layer(x))
    base = [keras.ops.convert_to_numpy(k) for k in layer._kernels()]
    layer.quantize("int8")
    assert [k.dtype for k in layer._kernels()] == ["int8"] * 4 and layer.lora_enabled
    for v, value in zip(layer._lora_variables(), updates):  # not folded in, not rounded
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), value)
    # the kernels alone were rounded, within half a step of their column's scale
    rounded = [layer._dequantized(k, s, "float32")
               for k, s in zip(layer._kernels(), layer.kernel_scales)]
    for k0, k1 in zip(base, rounded):
        assert np.all(np.abs(keras.ops.convert_to_numpy(k1) - k0) <= np.abs(k0).max() / 254 + 1e-7)
    after = keras.ops.convert_to_numpy(layer(x))
    assert not np.array_equal(after, float_out)
    np.testing.assert_allclose(after, float_out, rtol=0.05, atol=0.05)
    # built from that config, as when loading: int8 kernels, float32 updates
    made = SpinalDense(3, width=4, depth=3, lora_rank=2, dtype="int8_from_mixed_bfloat16")
    out = made(_x(2, 9))
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert made._kernels()[0].dtype == "int8"
    assert {v.dtype for v in made._lora_variables()} == {"float32"}


@pytest.mark.parametrize("make,match", [
    (lambda: SpinalDense(width=2, depth=2, lora_rank=0), r"`lora_rank` must be a positive integer. Received: lora_rank=0"),
    (lambda: SpinalDense(width=2, depth=2, lora_rank=True), r"Received: lora_rank=True"),
    (lambda: SpinalDense(width=2, depth=2, lora_rank=2.0), r"Received: lora_rank=2.0"),
    (lambda: SpinalDense(width=2, depth=2, lora_alpha=8),
     r"`lora_alpha` scales the LoRA update, which the layer has only with `lora_rank`. "
     r"Received: lora_alpha=8, lora_rank=None"),
    (lambda: SpinalDense(width=2, depth=2, lora_rank=2, lora_alpha=0),
     r"`lora_alpha` must be a positive number. Received: lora_alpha=0"),
    (lambda: SpinalDense(width=2, depth=2, lora_rank=2, lora_alpha="8"), r"lora_alpha='8'"),
    (lambda: SpinalDense(width=2, depth=2, lora_rank=2, kernel_constraint="non_neg"),
     r"a kernel constraint cannot bound. Received: kernel_constraint=<.*NonNeg"),
    (lambda: SpinalDense(width=2, depth=2).enable_lora(2), r"not built yet"),
])
def test_lora_options_are_checked(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_enable_lora_checks_its_arguments():
    layer = SpinalDense(width=2, depth=2)
    layer.build((None, 4))
    for kwargs, match in [
        (dict(rank=-1), r"`rank` must be a positive integer. Received: rank=-1"),
        (dict(rank=2, lora_alpha=-1.5), r"Received: lora_alpha=-1.5"),
        (dict(rank=2, a_initializer="no_such"),
         r"`a_initializer` must be an initializer name, instance or callable. "
         r"Received: a_initializer='no_such'"),
    ]:
        with pytest.raises(ValueError, match=match):
            layer.enable_lora(**kwargs)
    assert not layer.lora_enabled and len(layer.weights) == 4  # nothing half-added
    layer.enable_lora(2)
    with pytest.raises(ValueError, match=r"LoRA is already enabled on '.*' \(rank 2\)"):
        layer.enable_lora(1)
    constrained = SpinalDense(width=2, depth=2, kernel_constraint="non_neg")
    constrained.build((None, 4))
    with pytest.raises(ValueError, match="kernel constraint"):
        constrained.enable_lora(1)


# -- serialization -----------------------------------------------------------


def test_config_round_trip_is_complete():
    layer = SpinalDense(
        7, width=5, depth=4, splits=3, activation="tanh", output_activation="softmax",
        dropout=0.25, batch_norm=True, batch_norm_momentum=0.9, batch_norm_epsilon=1e-5,
        use_bias=False, kernel_initializer="he_normal", bias_initializer="ones",
        kernel_regularizer="l2", bias_regularizer="l1", activity_regularizer="l2",
        kernel_constraint="max_norm", bias_constraint="non_neg", seed=11, name="spine",
    )
    config = layer.get_config()
    clone = SpinalDense.from_config(config)
    assert clone.get_config() == config
    for key in ("units", "width", "depth", "splits", "dropout", "batch_norm", "use_bias", "seed"):
        assert getattr(clone, key) == getattr(layer, key)
    assert config["activity_regularizer"] is not None


def test_keras_file_round_trip_in_safe_mode(tmp_path):
    inputs = keras.Input((30,))
    x = SpinalDense(width=6, depth=4, dropout=0.2, batch_norm=True,
                    activation=keras.layers.LeakyReLU(negative_slope=0.05))(inputs)
    outputs = SpinalDense(3, width=2, depth=2, output_activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(_x(32, 30), np.arange(32) % 3, epochs=1, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)  # no custom_objects
    x = _x(10, 30, seed=5)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    assert isinstance(loaded.layers[1], SpinalDense)


def test_keras_file_loads_in_a_fresh_process_that_imports_the_package(tmp_path):
    # What the README promises: importing spinalnet_keras is all a loading
    # process needs; without it Keras names the missing class.
    import subprocess
    import sys

    model = keras.Sequential([keras.Input((6,)), SpinalDense(2, width=3, depth=2)])
    path = tmp_path / "m.keras"
    model.save(path)
    load = f"import keras; print(keras.saving.load_model({str(path)!r}).layers[0].width)"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    ok = subprocess.run([sys.executable, "-c", "import spinalnet_keras; " + load],
                        capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0 and ok.stdout.strip().endswith("3"), ok.stderr[-2000:]
    bare = subprocess.run([sys.executable, "-c", load],
                          capture_output=True, text=True, env=env, timeout=300)
    assert bare.returncode != 0
    assert "Could not locate class 'SpinalDense'" in bare.stderr


def test_tensorflow_keeps_its_graph_optimizations_for_the_layer():
    # TensorFlow 2.21's oneDNN graph rewrite breaks on MatMul -> BiasAdd ->
    # Add -> activation; it then logs this warning and runs the whole
    # function (the training step, predict) without graph optimizations. A
    # sub-layer alone in its kernel group with a recurrent input (any width
    # from OWN_KERNEL_WIDTH up; depth 2 or 3 at 2 splits) made that pattern,
    # and so did the first sub-layer of such a layer with LoRA.
    # TensorFlow writes the warning to stderr below TF_CPP_MIN_LOG_LEVEL 2.
    import subprocess
    import sys

    job = (
        "import keras, numpy as np\n"
        "from spinalnet_keras import SpinalDense\n"
        "for cfg in [dict(width=4, depth=2), dict(width=4, depth=3),\n"
        "            dict(width=128, depth=4), dict(width=128, depth=4, batch_norm=True),\n"
        "            dict(width=4, depth=3, lora_rank=2), dict(width=128, depth=4, lora_rank=2),\n"
        "            dict(width=128, depth=3, lora_rank=2, dtype='int8_from_float32')]:\n"
        "    inputs = keras.Input((260,))\n"
        "    model = keras.Model(inputs, SpinalDense(3, **cfg)(inputs))\n"
        "    model.compile('sgd', 'mse')\n"
        "    model.fit(np.ones((8, 260)), np.ones((8, 3)), batch_size=4, verbose=0)\n"
        "    print(np.isfinite(model.predict(np.ones((2, 260)), verbose=0)).all())\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "1", "KERAS_BACKEND": "tensorflow"}
    proc = subprocess.run([sys.executable, "-c", job], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.split() == ["True"] * 7, proc.stderr[-2000:]
    failures = [line for line in proc.stderr.splitlines()
                if "Ignoring multi-device function optimization failure" in line]
    assert not failures, failures[0]


def _assert_refused_for_newer_stablehlo(message, export_dir):
    # A SavedModel written on JAX holds StableHLO, which TensorFlow reads only
    # up to its own version: TensorFlow 2.21 (StableHLO 1.13.7) cannot run
    # what jax 0.11.2 and later write (1.18.0; the op it trips on is the
    # batch size's shape assertion, which jax 0.12's DisabledSafetyCheck
    # cannot turn off). export_model's fresh-process check must then refuse
    # the export, publish nothing and say how to export from TensorFlow.
    # Any other failure fails the test.
    found = {
        side: re.search(pattern + r"StableHLO_v(\d+)\.(\d+)\.(\d+)", message)
        for side, pattern in [("written", r"produced by: "),
                              ("read", r"failed to deserialize portable artifact using ")]}
    assert all(found.values()), message[-3000:]
    written, read = (tuple(map(int, found[side].groups())) for side in ("written", "read"))
    assert written > read, message[-3000:]
    assert "KERAS_BACKEND=tensorflow spinalnet-keras export" in message
    assert not export_dir.exists()


@pytest.mark.parametrize("backend", ["numpy", "jax", "torch"])
def test_other_keras_backends_load_predict_and_train_alike(backend, tmp_path):
    # The layer is written in keras.ops only, so a file saved under
    # TensorFlow must give the same outputs, and one SGD step the same
    # weights, on every backend. The numpy backend predicts but cannot
    # train, and imports jax; jax is in the [test] extra, torch runs where
    # installed. On JAX the file is also exported (SavedModel and .keras),
    # or, where TensorFlow cannot read the StableHLO that jax writes, refused.
    import importlib.util
    import subprocess
    import sys

    needs = "jax" if backend == "numpy" else backend
    if importlib.util.find_spec(needs) is None:
        pytest.skip(f"the {backend} backend needs {needs}, which is not installed")
    model = keras.Sequential([
        keras.Input((12,)),
        SpinalDense(width=6, depth=4, splits=3, batch_norm=True),
        SpinalDense(width=3, depth=3, lora_rank=2),  # with LoRA's updates saved
        SpinalDense(width=3, depth=3),  # int8, below
        SpinalDense(3, width=OWN_KERNEL_WIDTH, depth=2)])  # a kernel per sub-layer
    _randomize_lora(model.layers[1], scale=0.3)
    model.layers[2].quantize("int8")
    x, y = _x(16, 12, seed=3), np.arange(16) % 3
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "data.npz", x=x, y=y)
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    model.train_on_batch(x, y)
    job = os.path.join(os.path.dirname(__file__), "scripts", "backend_job.py")
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, job, str(tmp_path / "m.keras"), str(tmp_path / "data.npz"),
         str(tmp_path / "out.npz"), *(["--without-tensorflow"] if backend == "numpy" else [])],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    assert str(out["backend"]) == backend
    np.testing.assert_allclose(out["prediction"], expected, rtol=1e-5, atol=1e-5)
    if backend == "numpy":
        return
    if backend == "jax" and "export_error" in out.files:
        _assert_refused_for_newer_stablehlo(str(out["export_error"]), tmp_path / "export")
    elif backend == "jax":
        # The SavedModel written from JAX serves TensorFlow's predictions.
        assert bool(out["export_verified"])
        import tensorflow as tf

        serve = tf.saved_model.load(str(tmp_path / "export" / "m" / "1")).signatures[
            "serving_default"]
        (name,) = serve.structured_input_signature[1]
        (served,) = serve(**{name: tf.constant(x)}).values()
        np.testing.assert_allclose(served.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert len(out.files) == 3 + (backend == "jax") + len(model.weights)
    # after quantize_int8 the model trained on, saved, and its optimizer's
    # state loaded back (2 steps) without Keras's warning
    assert out["int8_reloaded"].tolist() == [2, 0]
    for n, weight in enumerate(model.weights):  # kernels, biases, batch-norm statistics
        np.testing.assert_allclose(out[f"weight_{n}"], keras.ops.convert_to_numpy(weight),
                                   rtol=1e-5, atol=1e-6, err_msg=weight.path)


def _rewrite_weights(src, dst, edit):
    """Copy the .keras file `src` to `dst` with `edit(h5_file)` applied to
    its weights."""
    import io
    import zipfile

    import h5py

    with zipfile.ZipFile(src) as z:
        files = {name: z.read(name) for name in z.namelist()}
    buffer = io.BytesIO(files["model.weights.h5"])
    with h5py.File(buffer, "r+") as h5:
        edit(h5)
    files["model.weights.h5"] = buffer.getvalue()
    with zipfile.ZipFile(dst, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)


def _rewrite_layer_vars(src, dst, arrays):
    """Copy the .keras file `src` to `dst` with the SpinalDense layer's stored
    variables replaced by `arrays`."""
    def edit(h5):
        del h5["layers/spinal_dense/vars"]
        group = h5.create_group("layers/spinal_dense/vars")
        for n, array in enumerate(arrays):
            group.create_dataset(str(n), data=array)

    _rewrite_weights(src, dst, edit)


def test_files_saved_with_a_dropout_sub_layer_still_load(tmp_path):
    # Earlier versions drew the masks with a Dropout sub-layer, which left an
    # empty group in the file; the layer now draws the same masks itself.
    layer = SpinalDense(3, width=4, depth=3, dropout=0.5, seed=2)
    model = keras.Sequential([keras.Input((9,)), layer])
    x = _x(6, 9)
    expected = model.predict(x, verbose=0)
    model.save(tmp_path / "now.keras")
    _rewrite_weights(tmp_path / "now.keras", tmp_path / "old.keras",
                     lambda h5: h5.create_group("layers/spinal_dense/_dropout_layer/vars"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = keras.saving.load_model(tmp_path / "old.keras", safe_mode=True)
    assert not caught, [str(w.message) for w in caught]
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)
    fresh = SpinalDense.from_config(layer.get_config())
    fresh.build((None, 9))
    fresh.set_weights(layer.get_weights())
    # the same seed draws the same masks in the loaded layer as in a new one
    np.testing.assert_array_equal(loaded.layers[0](x, training=True), fresh(x, training=True))


def test_files_saved_in_the_0_1_layout_still_load(tmp_path):
    # 0.1 stored, in order: per split its kernel and bias, then one
    # (width, width) recurrent kernel per sub-layer, then the output Dense.
    layer = SpinalDense(3, width=4, depth=3, bias_initializer="random_normal")
    model = keras.Sequential([keras.Input((9,)), layer])
    x = _x(6, 9)
    expected = model.predict(x, verbose=0)
    model.save(tmp_path / "now.keras")
    w, sizes = layer.get_sublayer_weights(), layer.split_sizes  # sizes [5, 4]
    legacy = []
    for j in range(2):
        sub = range(j, 3, 2)
        legacy.append(np.concatenate([w["kernels"][i][: sizes[j]] for i in sub], axis=1))
        legacy.append(np.concatenate([w["biases"][i] for i in sub]))
    legacy += [w["kernels"][i][sizes[i % 2]:] for i in (1, 2)]
    legacy += [w["output_kernel"], w["output_bias"]]
    assert [a.shape for a in legacy] == [(5, 8), (8,), (4, 4), (4,), (4, 4), (4, 4), (12, 3), (3,)]
    _rewrite_layer_vars(tmp_path / "now.keras", tmp_path / "v0_1.keras", legacy)
    loaded = keras.saving.load_model(tmp_path / "v0_1.keras", safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-6, atol=1e-7)
    # A file in neither layout is refused, naming the counts.
    _rewrite_layer_vars(tmp_path / "now.keras", tmp_path / "bad.keras", legacy[:-1])
    with pytest.raises(ValueError, match="expected 6 variables"):
        keras.saving.load_model(tmp_path / "bad.keras", safe_mode=True)


def test_files_saved_in_the_shared_layout_of_wide_layers_still_load(tmp_path):
    # 0.2 gave each split one kernel at every width, 0.3 below a width of
    # 256 (so from OWN_KERNEL_WIDTH = 128 this is both): here (4, 2w) and (3, w),
    # then the bias in storage order (sub-layers 0, 2, 1), the stacked
    # recurrent kernel and the output Dense.
    w = OWN_KERNEL_WIDTH
    layer = SpinalDense(2, width=w, depth=3, bias_initializer="random_normal")
    model = keras.Sequential([keras.Input((7,)), layer])
    x = _x(6, 7)
    expected = model.predict(x, verbose=0)
    model.save(tmp_path / "now.keras")
    sub = layer.get_sublayer_weights()
    kernels, biases = sub["kernels"], sub["biases"]
    old = [np.concatenate([kernels[0][:4], kernels[2][:4]], axis=1), kernels[1][:3],
           np.concatenate([biases[0], biases[2], biases[1]]),
           np.concatenate([kernels[1][3:], kernels[2][4:]], axis=0),
           sub["output_kernel"], sub["output_bias"]]
    assert [a.shape for a in old] == [(4, 2 * w), (3, w), (3 * w,), (2 * w, w), (3 * w, 2), (2,)]
    _rewrite_layer_vars(tmp_path / "now.keras", tmp_path / "shared.keras", old)
    loaded = keras.saving.load_model(tmp_path / "shared.keras", safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-6, atol=1e-6)
    assert [tuple(k.shape) for k in loaded.layers[0].split_kernels] == [(4, w), (4, w), (3, w)]


# -- models, precision, compilation -----------------------------------------


class SubclassedNet(keras.Model):
    def __init__(self):
        super().__init__()
        self.spinal = SpinalDense(width=4, depth=3)
        self.out = keras.layers.Dense(2)

    def call(self, x):
        return self.out(self.spinal(x))


@pytest.mark.parametrize("kind", ["sequential", "functional", "subclassed"])
def test_trains_in_every_model_style_with_jit(kind):
    x = _x(128, 12)
    y = (x[:, :6].sum(1) > x[:, 6:].sum(1)).astype("int32")
    if kind == "sequential":
        model = keras.Sequential([keras.Input((12,)), SpinalDense(2, width=8, depth=4)])
    elif kind == "functional":
        i = keras.Input((12,))
        model = keras.Model(i, SpinalDense(2, width=8, depth=4)(i))
    else:
        model = SubclassedNet()
    model.compile(keras.optimizers.Adam(0.02), keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), jit_compile=True)
    hist = model.fit(x, y, epochs=8, batch_size=32, verbose=0).history["loss"]
    assert hist[-1] < 0.7 * hist[0]


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy):
    keras.config.set_dtype_policy(policy)
    compute = policy.split("_")[1]
    x = _x(16, 20)
    # dtypes, with every sub-layer kind present
    full = SpinalDense(4, width=8, depth=4, batch_norm=True, dropout=0.1, lora_rank=2)
    y = full(x, training=True)
    assert keras.backend.standardize_dtype(y.dtype) == compute
    assert all(w.dtype == "float32" for w in full.weights)  # LoRA's too
    assert all(bn.dtype_policy.name == policy for bn in full._batch_norms)
    # numbers: the low-precision result is the float32 one, rounded (also
    # with LoRA's updates added to the kernels)
    tol = 2e-2 if compute == "float16" else 1e-1
    for lora in ({}, {"lora_rank": 2}):
        layer = SpinalDense(4, width=8, depth=4, **lora)
        layer.build(x.shape)
        _randomize_lora(layer, scale=0.3)
        y = keras.ops.convert_to_numpy(keras.ops.cast(layer(x), "float32"))
        w = layer.get_sublayer_weights()
        y32 = numpy_spinal(x, w["kernels"], w["biases"], 2, output_kernel=w["output_kernel"],
                           output_bias=w["output_bias"])
        np.testing.assert_allclose(y, y32, rtol=tol, atol=tol)
    model = keras.Sequential([keras.Input((20,)), SpinalDense(4, width=8, depth=4),
                              keras.layers.Activation("linear", dtype="float32")])
    model.compile("adam", "mse", jit_compile=True)
    loss = model.fit(x, _x(16, 4), epochs=2, verbose=0).history["loss"]
    assert np.isfinite(loss).all()
