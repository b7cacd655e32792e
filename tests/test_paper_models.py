import keras
import numpy as np
import pytest

from spinalnet_keras import Head
from spinalnet_keras import PAPER_MODELS
from spinalnet_keras import SpinalDense
from spinalnet_keras import build_head
from spinalnet_keras import cost_report
from spinalnet_keras import paper_model


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.mark.parametrize(
    "name,head,options,params",
    [
        ("mnist_cnn", "dense", {}, 21_840),
        ("mnist_cnn", "spinal", {}, 13_818),
        ("mnist_cnn", "spinal", {"width": 10}, 16_050),
        ("vgg5", "dense", {}, 3_646_154),
        ("vgg5", "spinal", {}, 3_629_770),
    ],
)
def test_paper_parameter_counts(name, head, options, params):
    assert _trainable(paper_model(name, head=head, **options)) == params


def test_vgg19_and_regression_shapes_and_counts():
    # VGG-19 (BN) convolutions: 20,035,264 trainable + BN 2*5504.
    spinal = paper_model("vgg19", head="spinal", num_classes=100)
    assert spinal.output_shape == (None, 100)
    head = spinal.get_layer("head_spinal")
    assert (head.width, head.depth, head.split_sizes) == (512, 4, [256, 256])
    # spinal FC of the paper: w(h+1) + 3w(h+w+1) + C(4w+1)
    fc = 512 * 257 + 3 * 512 * (256 + 512 + 1) + 100 * (4 * 512 + 1)
    dense = paper_model("vgg19", head="dense", num_classes=100)
    dense_fc = 512 * 4096 + 4096 + 4096 * 4097 + 100 * 4097
    assert _trainable(dense) - _trainable(spinal) == dense_fc - fc
    reg_d = paper_model("regression", head="dense")
    reg_s = paper_model("regression", head="spinal")
    assert _trainable(reg_d) == 8 * 200 + 200 + 200 * 100 + 100 + 101
    assert _trainable(reg_s) == 50 * 5 + 5 * 50 * 55 + 301
    # six distinct sub-layers (the reference reuses layers 3-4 for 5-6)
    sub = reg_s.get_layer("head_spinal").get_sublayer_weights()["kernels"]
    assert len({k.tobytes() for k in sub}) == 6
    assert reg_s.output_shape == (None, 1)


def test_mnist_cnn_flattens_channel_first():
    model = paper_model("mnist_cnn", head="spinal")
    features = keras.Model(model.input, model.get_layer("flatten").output)
    x = np.random.default_rng(0).random((2, 28, 28, 1)).astype("float32")
    conv = keras.Model(model.input, model.get_layer("relu_2").output)(x).numpy()
    flat = features(x).numpy()
    # first half = channels 0-9 (reference's x[:, :160]), second = 10-19
    np.testing.assert_allclose(flat[:, :160], conv[..., :10].transpose(0, 3, 1, 2).reshape(2, 160))
    np.testing.assert_allclose(flat[:, 160:], conv[..., 10:].transpose(0, 3, 1, 2).reshape(2, 160))


@pytest.mark.parametrize("name,shape,classes", [
    ("mnist_cnn", (28, 28, 1), 47), ("vgg5", (28, 28, 1), 26), ("vgg19", (32, 32, 3), 10),
    ("regression", (8,), 1)])
def test_every_paper_model_trains_one_step(name, shape, classes):
    for head in ("dense", "spinal"):
        model = paper_model(name, head=head, input_shape=shape, num_classes=classes,
                            output_activation=None)
        loss = "mse" if name == "regression" else keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model.compile("adam", loss)
        x = np.random.default_rng(1).random((4,) + shape).astype("float32")
        y = np.zeros((4, 1)) if name == "regression" else np.arange(4) % classes
        assert np.isfinite(model.train_on_batch(x, y))
        assert model.predict(x, verbose=0).shape == (4, classes)


def test_head_options_and_errors():
    model = paper_model("mnist_cnn", head="spinal", width=5, depth=3, splits=3, dropout=0.1)
    layer = model.get_layer("head_spinal")
    assert (layer.width, layer.depth, layer.splits, layer.dropout) == (5, 3, 3, 0.1)
    assert isinstance(layer, SpinalDense)
    custom = paper_model("mnist_cnn", head=Head("dense", hidden_units=(64, 32)))
    assert [l.units for l in custom.layers if isinstance(l, keras.layers.Dense)] == [64, 32, 10]
    with pytest.raises(ValueError, match=r"Unknown paper model 'vgg6'.*mnist_cnn"):
        paper_model("vgg6")
    with pytest.raises(ValueError, match=r"Unknown paper model \['vgg5'\]"):
        paper_model(["vgg5"])  # not Python's "unhashable type"
    # the default softmax over one class is 1.0 for every image
    with pytest.raises(ValueError, match=r"over a single output.*output_activation='softmax' "
                       "with 1 output"):
        paper_model("mnist_cnn", num_classes=1)
    assert paper_model("mnist_cnn", num_classes=1, output_activation="sigmoid").output_shape == (None, 1)
    with pytest.raises(ValueError, match=r"head='wide'"):
        paper_model("vgg5", head="wide")
    with pytest.raises(ValueError, match=r"Unknown head option\(s\) \['widht'\]"):
        paper_model("vgg5", widht=3)
    with pytest.raises(ValueError, match=r"width=0"):
        paper_model("vgg5", width=0)
    with pytest.raises(ValueError, match=r"num_classes=0"):
        paper_model("vgg5", num_classes=0)
    with pytest.raises(ValueError, match=r"num_classes=2.5"):
        paper_model("vgg5", num_classes=2.5)
    with pytest.raises(ValueError, match=r"`output_activation`.*output_activation='softmx'"):
        paper_model("vgg5", output_activation="softmx")
    with pytest.raises(ValueError, match=r"\(height, width, channels\).*input_shape=\(28, 28\)"):
        paper_model("mnist_cnn", input_shape=(28, 28))
    with pytest.raises(ValueError, match=r"\(features,\).*input_shape=\(8, 1\)"):
        paper_model("regression", input_shape=(8, 1))
    assert paper_model("regression", input_shape=[4]).input_shape == (None, 4)
    # an option of the other kind of head is refused, not ignored
    with pytest.raises(ValueError, match=r"`width`: spinal heads only; this head is 'dense'"):
        paper_model("mnist_cnn", head="dense", width=10)
    with pytest.raises(ValueError, match=r"`hidden_units`: dense heads only.*hidden_units=\(64,\)"):
        paper_model("mnist_cnn", head="spinal", hidden_units=(64,))
    assert (Head().width, Head().depth, Head().splits) == (20, 4, 2)
    # a head's kind stays: the fields of one kind would be refused by the other
    with pytest.raises(ValueError, match=r"A 'spinal' head cannot become another kind.*"
                       r"head='dense' to the model builders. Received: kind='dense'"):
        paper_model("mnist_cnn", kind="dense")
    assert Head("dense").replace(kind="dense", hidden_units=(4,)).hidden_units == (4,)
    # numpy scalars are taken as numbers and kept as plain ones
    head = Head("spinal", width=np.int64(8), dropout=np.float32(0.5), batch_norm=np.True_)
    assert head == Head("spinal", width=8, dropout=0.5, batch_norm=True)
    assert (type(head.width), type(head.dropout), type(head.batch_norm)) == (int, float, bool)
    assert Head("dense", hidden_units=np.int64(7)).hidden_units == (7,)
    with pytest.raises(ValueError, match="activation='swishy'"):
        Head("dense", activation="swishy")
    assert (Head("dense").hidden_units, Head("dense").input_dropout) == ((512,), 0.0)
    # a dense head's dropout acts between hidden layers: with one, it would do nothing
    with pytest.raises(ValueError, match=r"one \(hidden_units=\(50,\)\), so it would change "
                       r"nothing;.*Received: dropout=0.2"):
        paper_model("mnist_cnn", head="dense", dropout=0.2)
    two = paper_model("regression", head="dense", dropout=0.2)  # 200 -> dropout -> 100
    assert [l.rate for l in two.layers if isinstance(l, keras.layers.Dropout)] == [0.2]
    # the dense head's BatchNormalization would take these without a word
    with pytest.raises(ValueError, match=r"\[0, 1\].*batch_norm_momentum=5"):
        paper_model("vgg5", head="dense", batch_norm_momentum=5)
    with pytest.raises(ValueError, match=r"positive number.*batch_norm_epsilon=-1e-05"):
        Head("dense", batch_norm=True, batch_norm_epsilon=-1e-5)
    # no hidden layers: their options would act on nothing
    linear = paper_model("mnist_cnn", head="dense", hidden_units=(), output_dropout=0.3)
    assert [l.name for l in linear.layers[-4:]] == [
        "flatten", "head_output_dropout", "head_output", "head_output_activation"]
    with pytest.raises(ValueError, match=r"`input_dropout`, `batch_norm`: options of a dense "
                       r"head's hidden layers, and this head has none \(hidden_units=\(\)\).*"
                       r"Received: input_dropout=0.5, batch_norm=True"):
        paper_model("vgg5", head="dense", hidden_units=())
    with pytest.raises(ValueError, match="`activation`: .*Received: activation='tanh'"):
        Head("dense", hidden_units=(), activation="tanh")


@pytest.mark.parametrize("name", ["mnist_cnn", "vgg5", "vgg19"])
def test_image_networks_name_their_smallest_input(name):
    spec = PAPER_MODELS[name]
    least, channels = spec.min_image_size, spec.input_shape[-1]
    # the table agrees with Keras: the smallest size has features, one less
    # has none (Keras 3.15 refuses to pool it; Keras 3.10 builds an empty tensor)
    assert spec.features(keras.Input((least, least, channels))).shape[-1] > 0
    try:
        below = spec.features(keras.Input((least - 1, least, channels)))
    except ValueError:
        pass
    else:
        assert below.shape[-1] == 0
    assert paper_model(name, input_shape=(least, least + 5, channels)).output_shape == (None, 10)
    with pytest.raises(ValueError, match=rf"'{name}' takes images of at least {least}x{least}. "
                       rf"Received: input_shape=\({least}, {least - 1}, {channels}\). "
                       r"Resize the images \(load_task's image_size, --image-size\)"):
        paper_model(name, input_shape=(least, least - 1, channels))


def test_build_head_on_a_feature_tensor():
    features = keras.Input((16,))
    # spinal 4 x 20 on 2 splits of 8: 8*20+20, then 3 x ((8+20)*20+20), output 80*3+3;
    # dense (7,): 16*7+7, output 7*3+3
    for head, params in [("spinal", 180 + 3 * 580 + 243), (Head("dense", hidden_units=(7,)), 143)]:
        model = keras.Model(features, build_head(features, 3, head))
        assert model.output_shape == (None, 3)
        assert model.count_params() == params
        probs = model.predict(np.ones((2, 16)), verbose=0)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)  # softmax
        # on a sequence, as Dense: one prediction per step, each step's own
        steps = keras.Input((5, 16))
        tagger = keras.Model(steps, build_head(steps, 3, head))
        tagger.set_weights(model.get_weights())
        x = np.random.default_rng(0).random((2, 5, 16)).astype("float32")
        per_step = tagger.predict(x, verbose=0)
        assert per_step.shape == (2, 5, 3)
        np.testing.assert_allclose(per_step[:, 3], model.predict(x[:, 3], verbose=0),
                                   rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="head='wide'"):
        build_head(features, 3, "wide")
    with pytest.raises(TypeError, match="Received: head=5"):
        build_head(features, 3, 5)
    # errors name this function's own arguments
    with pytest.raises(ValueError, match=r"`num_outputs`.*Received: num_outputs=0"):
        build_head(features, 0, "spinal")
    with pytest.raises(ValueError, match=r"`output_activation`.*output_activation='softmx'"):
        build_head(features, 3, "spinal", output_activation="softmx")
    for kind in ("spinal", "dense"):
        for activation in ("softmax", keras.layers.Softmax(), keras.layers.Activation("softmax")):
            with pytest.raises(ValueError, match=r"over a single output.* with 1 output"):
                build_head(features, 1, kind, output_activation=activation)
    # a layer class, not a layer: it would be called on the tensor as its constructor
    with pytest.raises(ValueError, match=r"`output_activation` takes a Keras layer, not its "
                       r"class: pass Softmax\(...\)"):
        build_head(features, 3, "spinal", output_activation=keras.layers.Softmax)
    with pytest.raises(ValueError, match=r"`activation` takes a Keras layer, not its class"):
        Head("dense", hidden_units=(7,), activation=keras.layers.LeakyReLU)
    for bad in (3, None, "", "a/b"):  # not a prefix such as "3_" or "None_"
        with pytest.raises(ValueError, match=rf"`name` must be a non-empty string.*name={bad!r}"):
            build_head(features, 3, "spinal", name=bad)
    # a Keras layer is taken as an activation, as keras.layers.Activation takes it
    model = keras.Model(features, build_head(features, 3, "dense",
                                             output_activation=keras.layers.Softmax()))
    np.testing.assert_allclose(model.predict(np.ones((2, 16)), verbose=0).sum(axis=1), 1.0,
                               rtol=1e-5)


def test_paper_counts_match_cost_report():
    assert cost_report(paper_model("vgg5", head="spinal")).trainable_params == 3_629_770
