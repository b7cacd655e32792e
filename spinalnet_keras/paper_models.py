"""The networks of the SpinalNet paper's tables, with a dense or spinal head.

One table, `PAPER_MODELS`, holds each network's feature extractor, its
default input and outputs, and its dense and spinal heads as in the
authors' scripts; `paper_model` builds any of them. Input shape and number
of classes are arguments, so the same network serves MNIST, Fashion-MNIST,
KMNIST, QMNIST, EMNIST and CIFAR-10/100.
"""

import dataclasses

import keras

from spinalnet_keras import _validation
from spinalnet_keras.heads import Head
from spinalnet_keras.heads import build_head
from spinalnet_keras.heads import check_output_activation

# PyTorch BatchNorm defaults (momentum 0.1 there, 0.9 in Keras's convention),
# used where the paper's networks have BatchNorm.
_TORCH_BN = {"momentum": 0.9, "epsilon": 1e-5}


def _mnist_cnn_features(x):
    # Reference: conv 1->10 k5, maxpool 2, ReLU; conv 10->20 k5, channel
    # dropout 0.5, maxpool 2, ReLU; flatten channel-first (320 features).
    x = keras.layers.Conv2D(10, 5, name="conv_1")(x)
    x = keras.layers.MaxPooling2D(2, name="pool_1")(x)
    x = keras.layers.ReLU(name="relu_1")(x)
    x = keras.layers.Conv2D(20, 5, name="conv_2")(x)
    x = keras.layers.SpatialDropout2D(0.5, name="conv_2_dropout")(x)
    x = keras.layers.MaxPooling2D(2, name="pool_2")(x)
    x = keras.layers.ReLU(name="relu_2")(x)
    # The reference flattens (C, H, W); so must we, or the two halves of
    # the 320 features would not be the reference's channels 0-9 and 10-19.
    x = keras.layers.Permute((3, 1, 2), name="to_channels_first")(x)
    return keras.layers.Flatten(name="flatten")(x)


def _vgg_features(config):
    def features(x):
        block, conv = 1, 1
        for item in config:
            if item == "M":
                x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
                block, conv = block + 1, 1
                continue
            prefix = f"block{block}_conv{conv}"
            x = keras.layers.Conv2D(
                item,
                3,
                padding="same",
                kernel_initializer=keras.initializers.VarianceScaling(
                    2.0, mode="fan_out", distribution="untruncated_normal"
                ),
                name=prefix,
            )(x)
            x = keras.layers.BatchNormalization(name=f"{prefix}_bn", **_TORCH_BN)(x)
            x = keras.layers.ReLU(name=f"{prefix}_relu")(x)
            conv += 1
        return keras.layers.Flatten(name="flatten")(x)

    return features


def _identity(x):
    return x


@dataclasses.dataclass(frozen=True)
class PaperModel:
    """One row of `PAPER_MODELS`."""

    description: str
    features: object
    input_shape: tuple
    num_outputs: int
    output_activation: object
    dense_head: Head
    spinal_head: Head
    # The smallest height and width the feature extractor takes (None: not
    # an image network); tests check each against Keras.
    min_image_size: int = None


_LEAKY = {
    "module": "keras.layers",
    "class_name": "LeakyReLU",
    "config": {"negative_slope": 0.01},
    "registered_name": None,
}

PAPER_MODELS = {
    "mnist_cnn": PaperModel(
        description="Small MNIST CNN of Table II (2 conv layers, 320 features)",
        features=_mnist_cnn_features,
        input_shape=(28, 28, 1),
        num_outputs=10,
        output_activation="softmax",
        dense_head=Head("dense", hidden_units=(50,), output_dropout=0.5),
        spinal_head=Head("spinal", width=8, depth=6),
        min_image_size=16,  # two 5x5 valid convolutions, each pooled by 2
    ),
    "vgg5": PaperModel(
        description="VGG-5 for 28x28 grayscale images (10 conv+BN layers)",
        features=_vgg_features(
            [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 256, 256, 256, "M"]
        ),
        input_shape=(28, 28, 1),
        num_outputs=10,
        output_activation="softmax",
        dense_head=Head(
            "dense",
            hidden_units=(512,),
            input_dropout=0.5,
            output_dropout=0.5,
            batch_norm=True,
            batch_norm_momentum=0.9,
            batch_norm_epsilon=1e-5,
        ),
        spinal_head=Head(
            "spinal",
            width=128,
            depth=4,
            dropout=0.5,
            output_dropout=0.5,
            batch_norm=True,
            batch_norm_momentum=0.9,
            batch_norm_epsilon=1e-5,
        ),
        min_image_size=16,  # four poolings by 2
    ),
    "vgg19": PaperModel(
        description="VGG-19 with BatchNorm for 32x32 colour images (CIFAR)",
        features=_vgg_features(
            [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"]
            + [512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
        ),
        input_shape=(32, 32, 3),
        num_outputs=10,
        output_activation="softmax",
        dense_head=Head(
            "dense", hidden_units=(4096, 4096), dropout=0.5, output_dropout=0.5
        ),
        spinal_head=Head(
            "spinal", width=512, depth=4, dropout=0.5, output_dropout=0.5
        ),
        min_image_size=32,  # five poolings by 2
    ),
    "regression": PaperModel(
        description="Table I regression network on 8 inputs (LeakyReLU 0.01)",
        features=_identity,
        input_shape=(8,),
        num_outputs=1,
        output_activation=None,
        dense_head=Head("dense", hidden_units=(200, 100), activation=_LEAKY),
        spinal_head=Head("spinal", width=50, depth=6, activation=_LEAKY),
    ),
}


def _resolve_activation(head):
    # The table stores LeakyReLU as a config so it is never shared between
    # models; each build gets a fresh layer.
    if isinstance(head.activation, dict):
        layer = keras.layers.deserialize(dict(head.activation))
        return head.replace(activation=layer)
    return head


def check_image_size(name, size, label="input_shape"):
    """Raise unless paper network `name` takes images of `size` (height,
    width, ...): Keras would fail inside a convolution or pooling, naming
    neither."""
    least = PAPER_MODELS[name].min_image_size
    if least is not None and min(size[:2]) < least:
        raise ValueError(
            f"{name!r} takes images of at least {least}x{least}. Received: {label}="
            f"{tuple(size)}. Resize the images (load_task's image_size, --image-size)."
        )


def paper_model(
    name,
    head="spinal",
    input_shape=None,
    num_classes=None,
    output_activation="default",
    **head_options,
):
    """Build one of the paper's networks with a dense or spinal head.

    Args:
        name: one of `PAPER_MODELS`: `"mnist_cnn"`, `"vgg5"`, `"vgg19"`,
            `"regression"`.
        head: `"spinal"` or `"dense"` (the paper's baseline), or a `Head`.
        input_shape: input shape without the batch axis; defaults to the
            paper's (28x28x1, 32x32x3, or 8 inputs).
        num_classes: number of outputs; defaults to the paper's.
        output_activation: activation of the output layer; `"default"` is
            softmax for classifiers and linear for regression. Use None for
            logits.
        **head_options: `Head` fields that override the paper's head, e.g.
            `width=10`, `depth=6`, `splits=2`, `dropout=0.2`.

    Returns:
        An uncompiled functional `keras.Model` named `"{name}_{head}"`.

    Example:

    >>> model = paper_model("mnist_cnn", head="spinal", width=8, depth=6)
    >>> model.count_params()
    13818
    """
    if not isinstance(name, str) or name not in PAPER_MODELS:
        raise ValueError(
            f"Unknown paper model {name!r}. Available: {sorted(PAPER_MODELS)}"
        )
    spec = PAPER_MODELS[name]
    if isinstance(head, Head):
        head_spec = head.replace(**head_options)
    else:
        head = _validation.choice("head", head, ("dense", "spinal"))
        base = spec.spinal_head if head == "spinal" else spec.dense_head
        head_spec = base.replace(**head_options)
    head_spec = _resolve_activation(head_spec)
    if input_shape is None:
        input_shape = spec.input_shape
    else:
        dims = _validation.IMAGE_DIMS if len(spec.input_shape) == 3 else ("features",)
        input_shape = _validation.shape("input_shape", input_shape, dims)
    check_image_size(name, input_shape)
    num_classes = (
        spec.num_outputs
        if num_classes is None
        else _validation.positive_int("num_classes", num_classes)
    )
    if output_activation == "default":
        output_activation = spec.output_activation
    check_output_activation(output_activation, num_classes)
    inputs = keras.Input(input_shape, name="inputs")
    features = spec.features(inputs)
    outputs = build_head(features, num_classes, head_spec, output_activation)
    return keras.Model(inputs, outputs, name=f"{name}_{head_spec.kind}")
