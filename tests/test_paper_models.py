import keras
import numpy as np
import pytest

from spinalnet_keras import Head
from spinalnet_keras import SpinalDense
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
    with pytest.raises(ValueError, match=r"head='wide'"):
        paper_model("vgg5", head="wide")
    with pytest.raises(ValueError, match=r"Unknown head option\(s\) \['widht'\]"):
        paper_model("vgg5", widht=3)
    with pytest.raises(ValueError, match=r"width=0"):
        paper_model("vgg5", width=0)
    with pytest.raises(ValueError, match=r"num_classes=0"):
        paper_model("vgg5", num_classes=0)


def test_paper_counts_match_cost_report():
    assert cost_report(paper_model("vgg5", head="spinal")).trainable_params == 3_629_770
