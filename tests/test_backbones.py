import re
import urllib.error

import keras
import numpy as np
import pytest

from spinalnet_keras import ImagePreprocessing
from spinalnet_keras import backbones
from spinalnet_keras import SpinalDense
from spinalnet_keras import available_backbones
from spinalnet_keras import backbone_model
from spinalnet_keras import make_backbone


def test_required_backbones_are_available():
    names = set(available_backbones())
    for name in ["VGG16", "VGG19", "ResNet50", "ResNet101", "ResNet152",
                 "ResNet50V2", "ResNet101V2", "ResNet152V2", "EfficientNetB0", "MobileNetV2"]:
        assert name in names


def test_unknown_backbone_lists_available_ones():
    with pytest.raises(ValueError, match=r"Unknown backbone 'VGG20'.*'ResNet50'.*'VGG19'"):
        backbone_model("VGG20", (32, 32, 3), 10)


# one of each family, smallest input the family accepts
@pytest.mark.parametrize("name,size,mode", [
    ("VGG16", 32, "caffe"), ("ResNet50", 32, "caffe"), ("ResNet50V2", 32, "tf"),
    ("DenseNet121", 32, "torch"), ("MobileNetV2", 32, "tf"), ("EfficientNetB0", 32, "none"),
])
def test_forward_and_training_step_per_family(name, size, mode):
    model = backbone_model(name, (size, size, 3), 5, head="spinal", width=4, depth=4,
                           splits=2)
    assert model.get_layer("preprocessing").mode == mode
    head = [l for l in model.layers if isinstance(l, SpinalDense)][0]
    assert (head.units, head.width, head.depth) == (5, 4, 4)
    model.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    # batch 4: a batch of 2 makes BatchNorm statistics degenerate at 1x1
    x = np.random.default_rng(0).uniform(0, 255, (4, size, size, 3)).astype("float32")
    before = [w.numpy().copy() for w in model.get_layer("backbone").trainable_weights[:1]]
    loss = model.train_on_batch(x, np.array([0, 3, 1, 4]))
    assert np.isfinite(loss)
    probs = model.predict(x, verbose=0)
    assert probs.shape == (4, 5)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    # the backbone is trained, not frozen, by default (transferred init)
    after = model.get_layer("backbone").trainable_weights[0].numpy()
    assert not np.allclose(before[0], after)


def test_dense_head_flatten_and_frozen_backbone():
    model = backbone_model("VGG19", (32, 32, 3), 7, head="dense", pooling="flatten",
                           freeze_backbone=True, hidden_units=(16,), batch_norm=True,
                           input_dropout=0.5)
    assert not model.get_layer("backbone").trainable
    assert model.get_layer("flatten").output.shape == (None, 512)
    assert [l.units for l in model.layers if isinstance(l, keras.layers.Dense)] == [16, 7]
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 512 * 16 + 16 + 32 + 16 * 7 + 7


def test_bad_options():
    for kwargs, match in [
        (dict(pooling="mean"), "pooling='mean'"),
        (dict(head="wide"), "head='wide'"),
        (dict(widht=3), r"Unknown head option\(s\) \['widht'\]"),
        (dict(weights="/no/such/file.weights.h5"), "no such file"),
        (dict(weights=5), r"weights=5$"),
        (dict(freeze_backbone="yes"), "freeze_backbone='yes'"),
    ]:
        with pytest.raises(ValueError, match=match):
            backbone_model("VGG16", (32, 32, 3), 3, **kwargs)
    with pytest.raises(ValueError, match="num_classes=0"):
        backbone_model("VGG16", (32, 32, 3), 0)


def test_bad_output_activation_fails_before_the_backbone_is_made(monkeypatch):
    # A pretrained backbone takes seconds to build and load; a typo in the
    # head's activation must not wait for it, nor surface as Keras's error
    # that names no argument.
    def no_backbone(*args):
        raise AssertionError("the backbone was made")

    monkeypatch.setattr(backbones, "make_backbone", no_backbone)
    with pytest.raises(ValueError, match=r"`output_activation`.*output_activation='softmx'"):
        backbone_model("VGG16", (32, 32, 3), 3, output_activation="softmx")
    with pytest.raises(ValueError, match=r"output_activation='softmax' with 1 output"):
        backbone_model("VGG16", (32, 32, 3), 1)  # the default softmax over one class
    for shape in [(32, 32), (32, 32, 3.5), (32, 0, 3), "abc", None]:
        with pytest.raises(ValueError, match=re.escape(f"input_shape={shape!r}")):
            backbone_model("VGG16", shape, 3)
    with pytest.raises(ValueError, match=re.escape("input_shape=(32, 32)")):
        make_backbone("VGG16", (32, 32))


def test_images_below_the_backbones_minimum_say_how_to_resize():
    # MNIST is 28x28; keras.applications wants 32x32 (75x75 for Inception).
    for name, size in [("VGG19", "32x32"), ("InceptionV3", "75x75")]:
        with pytest.raises(ValueError) as err:
            backbone_model(name, (28, 28, 3), 10)
        message = str(err.value)
        assert message.startswith(f"{name}: Input size must be at least {size}")
        assert "input_shape=(28, 28, 3)" in message and "--image-size" in message


def test_grayscale_needs_rgb_preprocessing_off():
    # VGG's caffe preprocessing subtracts a mean per colour channel: one
    # channel would have become three and broken the call.
    with pytest.raises(ValueError, match=r"must end in 3 channels.*include_preprocessing=False"):
        backbone_model("VGG16", (32, 32, 1), 3)
    with pytest.raises(ValueError, match=r"3 channels. Received: input_shape=\(1, 4, 4, 1\)"):
        ImagePreprocessing("caffe")(np.zeros((1, 4, 4, 1)))
    model = backbone_model("VGG16", (32, 32, 1), 3, include_preprocessing=False, width=2, depth=2)
    assert model.predict(np.zeros((2, 32, 32, 1)), verbose=0).shape == (2, 3)
    # MobileNetV2 scales to [-1, 1], which any channel count allows
    model = backbone_model("MobileNetV2", (32, 32, 1), 3, width=2, depth=2)
    assert model.predict(np.zeros((2, 32, 32, 1)), verbose=0).shape == (2, 3)


def test_imagenet_offline_error_says_where_weights_go(tmp_path, monkeypatch):
    # No network: Keras's downloader fails as it does offline.
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    with pytest.raises(RuntimeError) as err:
        make_backbone("VGG16", (32, 32, 3), weights="imagenet")
    message = str(err.value)
    assert str(tmp_path / "kh" / "models") in message
    assert "weights=<path" in message and "vgg16_weights" in message


def test_weights_from_a_local_file(tmp_path):
    source = keras.applications.ResNet50V2(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "resnet50v2_notop.weights.h5"
    source.save_weights(path)
    model = backbone_model("resnet50v2", (32, 32, 3), 4, weights=str(path))
    loaded = model.get_layer("backbone")
    for a, b in zip(source.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_preprocessing_layer_matches_keras_and_round_trips(tmp_path):
    x = np.random.default_rng(2).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    for mode, fn in [("caffe", keras.applications.vgg16.preprocess_input),
                     ("tf", keras.applications.resnet_v2.preprocess_input),
                     ("torch", keras.applications.densenet.preprocess_input)]:
        np.testing.assert_allclose(ImagePreprocessing(mode)(x), fn(x.copy()), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="mode='bgr'"):
        ImagePreprocessing("bgr")
    model = backbone_model("MobileNetV2", (32, 32, 3), 3, width=2, depth=2)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(model.predict(np.zeros((1, 32, 32, 3)) + x[:1, :1, :1], verbose=0),
                               loaded.predict(np.zeros((1, 32, 32, 3)) + x[:1, :1, :1], verbose=0),
                               rtol=1e-6)
