"""Spinal (or dense) classification heads on `keras.applications` backbones.

The paper's transfer-learning experiments put a SpinalNet head on VGG and
ResNet backbones and train the whole network from ImageNet weights
("transferred initialization"). `backbone_model` does that for every
`keras.applications` model that has `include_top=False`, with the
backbone's own input preprocessing inside the model so users feed raw
images (0..255).
"""

import functools
import inspect
import os

import keras
import numpy as np
from keras import ops

from spinalnet_keras import _validation
from spinalnet_keras.heads import Head
from spinalnet_keras.heads import build_head
from spinalnet_keras.heads import check_output_activation
from spinalnet_keras.spinal_dense import PACKAGE

POOLINGS = ("flatten", "avg", "max")

# keras.applications preprocessing modes (keras/src/applications/
# imagenet_utils.py): "caffe" = RGB->BGR then subtract the ImageNet mean,
# "tf" = scale to [-1, 1], "torch" = scale to [0, 1] then ImageNet
# mean/std, "none" = the model preprocesses inside itself.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
PREPROCESSING_MODES = ("caffe", "tf", "torch", "none")


@keras.saving.register_keras_serializable(package=PACKAGE)
class ImagePreprocessing(keras.layers.Layer):
    """The input preprocessing of a `keras.applications` backbone, as a layer.

    Serializable and free of `Lambda`, so a model that holds it loads with
    `safe_mode=True` and exports to SavedModel/ONNX.

    Args:
        mode: `"caffe"`, `"tf"`, `"torch"` or `"none"` (see
            `keras.applications.imagenet_utils.preprocess_input`).

    Input shape:
        `(batch, height, width, 3)` RGB images with values in [0, 255].

    Output shape:
        Same as the input.
    """

    def __init__(self, mode, **kwargs):
        super().__init__(**kwargs)
        self.mode = _validation.choice("mode", mode, PREPROCESSING_MODES)

    def build(self, input_shape):
        # The ImageNet means and the RGB->BGR flip are per colour channel.
        channels = input_shape[-1]
        if self.mode in ("caffe", "torch") and channels is not None and channels != 3:
            raise ValueError(
                f"ImagePreprocessing(mode={self.mode!r}) is defined for RGB images: "
                "the input must end in 3 channels. Received: input_shape="
                f"{tuple(input_shape)}. Repeat grayscale images to 3 channels, or "
                "(backbone_model) pass include_preprocessing=False and "
                "preprocess them yourself."
            )
        super().build(input_shape)

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_IMAGENET_MEAN, self.compute_dtype)
            std = ops.convert_to_tensor(_IMAGENET_STD, self.compute_dtype)
            return (x / 255.0 - mean) / std
        if self.mode == "caffe":
            mean = ops.convert_to_tensor(_CAFFE_MEAN_BGR, self.compute_dtype)
            return ops.flip(x, axis=-1) - mean
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@functools.lru_cache(maxsize=None)
def available_backbones():
    """Names of the `keras.applications` constructors with `include_top`."""
    names = {}
    for name in dir(keras.applications):
        fn = getattr(keras.applications, name)
        if name[:1].isupper() and callable(fn) and not inspect.isclass(fn):
            try:
                params = inspect.signature(fn).parameters
            except (TypeError, ValueError):
                continue
            if "include_top" in params:
                names[name] = fn
    return names


def _lookup(name):
    backbones = available_backbones()
    by_lower = {n.lower(): n for n in backbones}
    key = by_lower.get(str(name).lower())
    if key is None:
        raise ValueError(
            f"Unknown backbone {name!r}. Available keras.applications "
            f"backbones: {sorted(backbones)}"
        )
    return key, backbones[key]


@functools.lru_cache(maxsize=None)
def preprocessing_mode(name):
    """The preprocessing mode of backbone `name`, found by running its
    module's `preprocess_input` on a probe image and matching the result."""
    key, fn = _lookup(name)
    module = getattr(keras.applications, fn.__module__.rsplit(".", 1)[-1])
    probe = np.random.default_rng(0).uniform(0, 255, (1, 2, 2, 3)).astype("float32")
    expected = np.asarray(module.preprocess_input(probe.copy()))
    for mode in PREPROCESSING_MODES:
        got = ops.convert_to_numpy(ImagePreprocessing(mode)(probe))
        if got.shape == expected.shape and np.allclose(got, expected, atol=1e-3):
            return mode
    raise ValueError(
        f"The preprocessing of backbone {key!r} is not one of "
        f"{PREPROCESSING_MODES}; build it with include_preprocessing=False "
        "and preprocess the images yourself."
    )


def _keras_cache_dir():
    base = os.environ.get("KERAS_HOME") or os.path.join(
        os.path.expanduser("~"), ".keras"
    )
    return os.path.join(base, "models")


def check_weights(weights):
    """Return `weights` (None, `"imagenet"` or a weights file path as a str)
    or raise naming it."""
    if weights in (None, "imagenet"):
        return weights
    path = os.fspath(weights) if isinstance(weights, (str, os.PathLike)) else None
    if path is None or not os.path.isfile(path):
        raise ValueError(
            "`weights` must be None, 'imagenet' or the path of an existing "
            f"weights file. Received: weights={weights!r}"
            + (" (no such file)" if path is not None else "")
        )
    return path


def make_backbone(name, input_shape, weights=None):
    """A `keras.applications` backbone without its top.

    Args:
        name: backbone name, case-insensitive (`"VGG19"`, `"resnet50"`, ...).
        input_shape: `(height, width, channels)`.
        weights: None (random), `"imagenet"`, or a path to a weights file
            (e.g. one written by `backbone.save_weights(...)`).

    Raises:
        ValueError: unknown name, missing weights file, images smaller than
            the backbone's minimum (32x32 for most, 75x75 for Inception).
        RuntimeError: `"imagenet"` with no network and no cached file.
    """
    key, fn = _lookup(name)
    input_shape = _validation.shape("input_shape", input_shape, _validation.IMAGE_DIMS)
    weights = check_weights(weights)
    try:
        return fn(include_top=False, weights=weights, input_shape=input_shape)
    except Exception as e:  # keras.applications raises a bare Exception offline
        if isinstance(e, ValueError) and "input size must be at least" in str(e).lower():
            # Keras's message gives the minimum; the way round is ours.
            raise ValueError(
                f"{key}: {e}. Resize the images: `image_size=(height, width)` "
                "in load_task or TrainConfig (`--image-size` on the command line)."
            ) from e
        if weights == "imagenet" and "fetch failure" in str(e).lower():
            raise RuntimeError(
                f"Could not download the ImageNet weights of {key} (no network?). "
                f"Keras caches downloaded weights under {_keras_cache_dir()} "
                "(set KERAS_HOME to move it): copy the weights file named in the "
                "message below there, or pass weights=<path to a weights file>, "
                "for instance one saved with backbone.save_weights(). "
                f"Original error: {e}"
            ) from e
        raise


def backbone_model(
    backbone,
    input_shape,
    num_classes,
    head="spinal",
    weights=None,
    freeze_backbone=False,
    pooling="avg",
    include_preprocessing=True,
    output_activation="softmax",
    **head_options,
):
    """A `keras.applications` backbone with a dense or spinal head.

    Args:
        backbone: backbone name (see `available_backbones()`), e.g.
            `"VGG19"`, `"ResNet50"`, `"ResNet101V2"`, `"EfficientNetB0"`.
        input_shape: `(height, width, 3)`.
        num_classes: number of classes.
        head: `"spinal"`, `"dense"` or a `Head`.
        weights: None (random), `"imagenet"` or a weights file path. The
            whole network trains from them unless `freeze_backbone`.
        freeze_backbone: mark the backbone non-trainable (feature
            extraction) instead of the paper's fine-tuning.
        pooling: how backbone features become a vector: `"flatten"` (the
            paper's VGG heads), `"avg"` or `"max"` global pooling.
        include_preprocessing: put the backbone's own input preprocessing
            (an `ImagePreprocessing` layer) in the model, so it takes raw
            RGB images in [0, 255].
        output_activation: `"softmax"` (default) or None for logits.
        **head_options: `Head` fields, e.g. `width=512, depth=4, dropout=0.5,
            batch_norm=True, splits=2, hidden_units=(1024,)`.

    Returns:
        An uncompiled functional model named `"{backbone}_{head}"`, whose
        backbone is the nested model `model.get_layer("backbone")` (set its
        `trainable` to freeze or unfreeze it later).

    Example:

    >>> model = backbone_model("ResNet50", (64, 64, 3), 10, head="spinal",
    ...                        width=20, depth=4)
    """
    key, _ = _lookup(backbone)
    num_classes = _validation.positive_int("num_classes", num_classes)
    check_output_activation(output_activation, num_classes)
    pooling = _validation.choice("pooling", pooling, POOLINGS)
    freeze_backbone = _validation.boolean("freeze_backbone", freeze_backbone)
    include_preprocessing = _validation.boolean("include_preprocessing", include_preprocessing)
    if isinstance(head, Head):
        head_spec = head.replace(**head_options)
    else:
        head = _validation.choice("head", head, ("dense", "spinal"))
        head_spec = Head(head).replace(**head_options)
    input_shape = _validation.shape("input_shape", input_shape, _validation.IMAGE_DIMS)
    inputs = keras.Input(input_shape, name="images")
    x = inputs
    if include_preprocessing:
        # Before the backbone is built: a channel count the preprocessing
        # cannot take fails at once.
        x = ImagePreprocessing(preprocessing_mode(key), name="preprocessing")(x)
    base = make_backbone(key, input_shape, weights)
    # A stable handle whatever keras.applications calls it
    # ("mobilenetv2_1.00_224", ...): model.get_layer("backbone").
    base.name = "backbone"
    base.trainable = not freeze_backbone
    # training=False keeps a frozen backbone's BatchNorm in inference mode,
    # the usual fine-tuning practice; a trainable backbone trains normally.
    x = base(x, training=False) if freeze_backbone else base(x)
    if pooling == "flatten":
        x = keras.layers.Flatten(name="flatten")(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    else:
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    outputs = build_head(x, num_classes, head_spec, output_activation)
    return keras.Model(inputs, outputs, name=f"{key.lower()}_{head_spec.kind}")
