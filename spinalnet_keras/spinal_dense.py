"""The `SpinalDense` layer: SpinalNet's gradual-input fully connected block."""

import random as _random
import warnings

import keras
import numpy as np
from keras import activations
from keras import constraints
from keras import initializers
from keras import ops
from keras import regularizers

from spinalnet_keras import _validation

PACKAGE = "spinalnet_keras"

# Sub-layers at least this wide get a kernel each instead of sharing their
# split's product: a product per sub-layer is then large enough that its op
# costs little, whereas the shared product's wider kernel ran slower per
# multiplication on the benchmark machine. From a width of 128, training
# steps (SGD or Adam, without XLA) ran mostly faster with a kernel each; at
# 64 that was slower (benchmarks/RESULTS.md, section 2). Narrower sub-layers
# share, since at small sizes the number of ops is what costs.
OWN_KERNEL_WIDTH = 128


def check_sizes(width, depth, splits):
    """Return `(width, depth, splits)` as ints if they make a spinal block
    (positive, splits at most depth), else raise naming the value."""
    width = _validation.positive_int("width", width)
    depth = _validation.positive_int("depth", depth)
    splits = _validation.positive_int("splits", splits)
    if splits > depth:
        raise ValueError(
            "`splits` must be between 1 and `depth`: sub-layer i reads "
            "split i mod splits, so with more splits than sub-layers some "
            f"input features would never be read. Received: "
            f"splits={splits!r}, depth={depth!r}"
        )
    return width, depth, splits


def split_sizes(features, splits):
    """Sizes of `splits` consecutive parts of `features`, differing by <= 1.

    The first `features % splits` parts get one extra feature, so every
    feature is read for any input size (the reference scripts cut `D // 2`
    and silently drop the last feature when `D` is odd).

    >>> split_sizes(321, 2)
    [161, 160]
    """
    features = _validation.positive_int("features", features)
    splits = _validation.positive_int("splits", splits)
    if splits > features:
        raise ValueError(
            "`splits` must be between 1 and the number of input features "
            f"({features}). Received: splits={splits}"
        )
    base, extra = divmod(features, splits)
    return [base + 1 if j < extra else base for j in range(splits)]


def _storage_order(groups):
    """Sub-layer indices in the order kernel `groups` store them."""
    return [i for _, group in groups for i in group]


def _split_last_axis(x, sizes):
    """`x` cut along its last axis into consecutive parts of `sizes`.

    Equal sizes go to `ops.split` as a section count: given split points,
    Keras's TensorFlow backend derives the sizes with about 20 shape ops
    (and their constants) per call, each one traced and optimized with the
    training step.
    """
    if len(sizes) == 1:
        return [x]
    if len(set(sizes)) == 1:
        return ops.split(x, len(sizes), axis=-1)
    return ops.split(x, [int(b) for b in np.cumsum(sizes)[:-1]], axis=-1)


def _serialize_activation(activation):
    if isinstance(activation, keras.layers.Layer):
        return keras.saving.serialize_keras_object(activation)
    return activations.serialize(activation)


def _refuse_layer_class(name, identifier):
    """Raise if `identifier` is a Keras layer class, not a layer: callable,
    it passes `activations.get`, and would be called on the tensor as the
    layer's constructor (Keras's Dense then fails on "the truth value of an
    array")."""
    if isinstance(identifier, type) and issubclass(identifier, keras.layers.Layer):
        raise ValueError(
            f"`{name}` takes a Keras layer, not its class: pass "
            f"{identifier.__name__}(...). Received: {name}={identifier!r}"
        )


# Activations that normalise over the last axis: over a single output they
# give the same value whatever the input (softmax 1.0, log_softmax 0.0), so
# such a model cannot learn.
_NORMALISING = tuple(
    getattr(activations, n) for n in ("softmax", "log_softmax", "sparsemax")
    if hasattr(activations, n)
)


def _refuse_single_output_softmax(name, activation, outputs, received=None):
    """Raise if `activation` normalises over `outputs` == 1 output;
    `received` is what the caller was given, if `activation` is its
    resolved form."""
    if outputs != 1:
        return
    if isinstance(activation, keras.layers.Softmax):
        normalising = activation.axis in (-1, [-1], (-1,))
    elif isinstance(activation, keras.layers.Activation):
        normalising = activation.activation in _NORMALISING
    else:
        try:
            normalising = activations.get(activation) in _NORMALISING
        except (ValueError, TypeError):
            return  # not an activation: the caller's own check says so
    if normalising:
        shown = activation if received is None else received
        raise ValueError(
            f"`{name}` normalises over the outputs, and over a single output it "
            "gives the same value for every input (softmax is always 1.0): "
            f"nothing could be learned. Received: {name}={shown!r} with 1 "
            "output. For two classes use 1 output with 'sigmoid' (binary "
            "crossentropy) or 2 outputs with 'softmax'; for regression, None."
        )


def _get_activation(name, identifier):
    """`activations.get`, plus Keras layers (e.g. `LeakyReLU(0.01)`) and
    their serialized configs, which `activations.get` does not accept."""
    _refuse_layer_class(name, identifier)
    if isinstance(identifier, keras.layers.Layer):
        return identifier
    if isinstance(identifier, dict) and str(
        identifier.get("module", "")
    ).startswith("keras.layers"):
        return keras.saving.deserialize_keras_object(identifier)
    return _resolved(
        name, identifier, activations.get, "an activation name, a callable or a Keras layer"
    )


def _resolved(name, identifier, get, accepted):
    """`get(identifier)`, or a ValueError naming `name` and what it accepts."""
    try:
        return get(identifier)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"`{name}` must be {accepted}. Received: {name}={identifier!r}"
        ) from e


def _sublayer_initializers(initializer, count):
    """One initializer per sub-layer, each drawing different values.

    A Keras initializer instance holds a fixed seed and returns the same
    values on every call with the same shape, so one instance cannot serve
    several sub-layers. Sub-layer i gets a copy seeded `base + i`; `base`
    is the user's seed when given (reproducible), else a draw from Python's
    RNG, which `keras.utils.set_random_seed` seeds.
    """
    config = initializer.get_config()
    seed = config.get("seed", "absent")
    if seed == "absent" or not (seed is None or isinstance(seed, int)):
        # Deterministic (zeros, constant) or driven by a SeedGenerator that
        # advances by itself: the instance can be shared.
        return [initializer] * count
    base = seed if seed is not None else _random.randint(0, 2**30)
    return [
        initializer.__class__.from_config({**config, "seed": base + i})
        for i in range(count)
    ]


def _lora_options(rank, alpha, kernel_constraint, names=("lora_rank", "lora_alpha")):
    """`(rank, alpha)` of a LoRA update, checked; `(None, None)` without a
    rank where the rank is optional (`names[0] == "lora_rank"`)."""
    rank_name, alpha_name = names
    rank = _validation.positive_int(rank_name, rank, allow_none=rank_name == "lora_rank")
    if rank is None:
        if alpha is not None:
            raise ValueError(
                "`lora_alpha` scales the LoRA update, which the layer has only "
                f"with `lora_rank`. Received: lora_alpha={alpha!r}, lora_rank=None"
            )
        return None, None
    if alpha is None:
        alpha = rank
    else:
        value = _validation.positive_number(alpha_name, alpha)
        alpha = int(alpha) if _validation.is_int(alpha) else value
    if kernel_constraint is not None:
        # As Dense: the update of a frozen kernel is not the kernel, so a
        # constraint could bound neither.
        raise ValueError(
            "LoRA trains a low-rank update of frozen kernels, which a kernel "
            f"constraint cannot bound. Received: kernel_constraint={kernel_constraint!r}. "
            "Remove the constraint to use LoRA."
        )
    return rank, alpha


def _product(x, kernel, scale=None):
    """`x @ kernel`, its columns multiplied by `scale` if given."""
    y = ops.matmul(x, kernel)
    return y if scale is None else ops.multiply(y, scale)


def _int8(kernel, scale_shape):
    """`kernel` (NumPy) as int8 values and the float32 scales that give it
    back as `values * scales`: a scale per column of each block, where
    `scale_shape` is `(blocks, columns)` for a kernel of blocks stacked
    along its rows, else `(columns,)`."""
    blocks = kernel.reshape(tuple(scale_shape[:-1]) + (-1, kernel.shape[-1]))
    largest = np.abs(blocks).max(axis=-2, keepdims=True)
    scale = np.where(largest > 0, largest / 127.0, 1.0)
    values = np.clip(np.round(blocks / scale), -127, 127).astype("int8")
    return values.reshape(kernel.shape), scale.squeeze(-2).astype("float32")


# A sub-layer's BatchNormalization variables, as get_sublayer_weights names them.
_BATCH_NORM_KEYS = ("gamma", "beta", "moving_mean", "moving_variance")


class _PerSublayerInitializer:
    """Draws stored kernel blocks as slices of per-sub-layer Dense kernels.

    SpinalDense stores, per split, the kernel blocks of all sub-layers that
    read that split side by side (one GEMM per split at call time). Each
    block is a row slice of the `(inputs_i, width)` kernel that a Dense
    sub-layer i would have, drawn by sub-layer i's own initializer: the
    split rows and the recurrent rows of a sub-layer come from the same
    draw, and fan-in/fan-out based initializers (Glorot, He, LeCun) get
    exactly the scale of a hand-composed network.
    """

    def __init__(self, initializers_, blocks, axis=-1):
        # blocks: (sub-layer index, full shape, row start, row stop),
        # concatenated along `axis`.
        self.initializers = initializers_
        self.blocks = blocks
        self.axis = axis

    def __call__(self, shape, dtype=None):
        parts = []
        for i, full_shape, start, stop in self.blocks:
            value = self.initializers[i](full_shape, dtype=dtype)
            parts.append(value[start:stop] if len(full_shape) == 2 else value)
        value = parts[0] if len(parts) == 1 else ops.concatenate(parts, self.axis)
        return ops.reshape(value, shape)


# A regularizer or constraint acts on each sub-layer's block of a stored
# variable, as it acts on that sub-layer's own Dense weights: the penalties
# add up, the constrained blocks are put back together. (Applied to the
# stored variable whole, `MaxNorm(axis=0)` on row-stacked blocks would mix
# sub-layers, and `OrthogonalRegularizer` would see one matrix.) They
# subclass Keras's base classes because `add_weight` accepts nothing else
# before Keras 3.15.


def _blocks(x, count, axis):
    return [x] if count == 1 else ops.split(x, count, axis=axis)


class _PerBlockRegularizer(keras.regularizers.Regularizer):
    def __init__(self, regularizer, count, axis):
        self.regularizer, self.count, self.axis = regularizer, count, axis

    def __call__(self, x):
        penalties = [self.regularizer(b) for b in _blocks(x, self.count, self.axis)]
        total = penalties[0]
        for penalty in penalties[1:]:
            total = ops.add(total, penalty)
        return total


class _PerBlockConstraint(keras.constraints.Constraint):
    def __init__(self, constraint, count, axis):
        self.constraint, self.count, self.axis = constraint, count, axis

    def __call__(self, w):
        blocks = [self.constraint(b) for b in _blocks(w, self.count, self.axis)]
        return blocks[0] if len(blocks) == 1 else ops.concatenate(blocks, self.axis)


def _per_block(regularizer, constraint, count, axis):
    """`add_weight`'s regularizer and constraint arguments, per block."""
    return {
        "regularizer": regularizer and _PerBlockRegularizer(regularizer, count, axis),
        "constraint": constraint and _PerBlockConstraint(constraint, count, axis),
    }


@keras.saving.register_keras_serializable(package=PACKAGE)
class SpinalDense(keras.layers.Layer):
    """SpinalNet fully connected block, a drop-in replacement for `Dense`.

    The last axis of the input is cut into `splits` consecutive parts of
    sizes that differ by at most one. Spinal sub-layer `i` (of `depth`) reads
    part `i mod splits` and, from the second sub-layer on, the previous
    sub-layer's output:

        h_0 = act(BN(Dense_width(drop(s_0))))
        h_i = act(BN(Dense_width(drop(concat([s_{i mod splits}, h_{i-1}])))))

    Without `units` the output is `concat([h_0, ..., h_{depth-1}])`, of size
    `depth * width`. With `units` it is one linear Dense of `units` over that
    concatenation followed by `output_activation`: the complete SpinalNet
    head of Kabir et al. (arXiv 2007.03347), used where `Dense(units)` was.

    Sub-layers that read the same split share one matrix product, so
    only the small `width x width` recurrent products run in sequence;
    sub-layers of width `OWN_KERNEL_WIDTH` (128) or more each have their
    own product, which ran faster at those sizes (benchmarks/RESULTS.md).

    As on `Dense`, `enable_lora(rank)` trains low-rank updates of frozen
    kernels, and `quantize("int8")` stores the kernels as int8 (weights
    only); see those methods.

    Args:
        units: Optional positive int, size of the linear output Dense.
            `None` returns the concatenated sub-layer outputs.
        width: Positive int, neurons per spinal sub-layer.
        depth: Positive int, number of spinal sub-layers.
        splits: Int in `[1, depth]`, number of parts the input is cut into;
            at build time also at most the number of input features.
        activation: Activation of the sub-layers (name, callable or Keras
            layer such as `LeakyReLU(negative_slope=0.01)`). Default `"relu"`.
        output_activation: Activation of the output Dense, so only with
            `units`. Default linear.
        dropout: Float in `[0, 1)`, dropout rate applied to each sub-layer's
            input (an independent mask per sub-layer, as in the paper's code).
        batch_norm: Whether to apply `BatchNormalization` after each
            sub-layer's Dense, before its activation.
        batch_norm_momentum: Momentum of those BatchNormalization layers
            (Keras convention; PyTorch's default 0.1 is Keras's 0.9).
        batch_norm_epsilon: Epsilon of those BatchNormalization layers.
        use_bias: Whether the sub-layers and the output Dense have biases.
        kernel_initializer, bias_initializer: Initializers, as for `Dense`.
            Kernels are drawn per sub-layer with the shape a `Dense`
            sub-layer would have, `(split_size + width, width)`.
        kernel_regularizer, bias_regularizer: Regularizers, as for `Dense`,
            applied to each sub-layer's blocks (its split rows, its
            recurrent rows, its bias) and to the output Dense, and summed.
            Additive ones (L1, L2) equal those of the composed network.
        activity_regularizer: Regularizer on the layer's output.
        kernel_constraint, bias_constraint: Constraints, as for `Dense`,
            applied to each sub-layer's blocks separately. Elementwise ones
            (NonNeg) act as on composed Dense kernels; a norm constraint
            such as `MaxNorm(axis=0)` bounds a sub-layer unit's split rows
            and its recurrent rows each.
        seed: Optional int, seed of the dropout masks.
        lora_rank: Optional positive int. If set, the layer is built with
            LoRA enabled at this rank (see `enable_lora`): its kernels are
            frozen and each sub-layer, and the output Dense, learns a
            low-rank update. For fine-tuning a trained layer, build it as it
            was, load its weights, then call `enable_lora`.
        lora_alpha: Optional positive number scaling the LoRA updates by
            `lora_alpha / lora_rank` (default `lora_rank`: a scale of 1).
            Only with `lora_rank`.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Input shape:
        N-D tensor with shape `(batch_size, ..., input_dim)`, N >= 2, with a
        known `input_dim`. A sparse input (`keras.Input(sparse=True)`) is
        made dense first.

    Output shape:
        `(batch_size, ..., units)`, or `(batch_size, ..., depth * width)`
        when `units` is None.

    Masking:
        A mask over the leading axes (e.g. from `Embedding(mask_zero=True)`)
        passes through, as for `Dense`; with `batch_norm`, masked positions
        are left out of the batch statistics.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((320,)),
    ...     SpinalDense(10, width=8, depth=6),
    ... ])
    >>> model.output_shape
    (None, 10)
    """

    def __init__(
        self,
        units=None,
        width=None,
        depth=None,
        splits=2,
        activation="relu",
        output_activation=None,
        dropout=0.0,
        batch_norm=False,
        batch_norm_momentum=0.99,
        batch_norm_epsilon=1e-3,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        seed=None,
        lora_rank=None,
        lora_alpha=None,
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        if self.quantization_mode not in (None, "int8"):
            # Keras would accept it here and fail at the first call, asking
            # for a `_float8_call` (or int4, ...) this layer does not have.
            raise ValueError(
                "SpinalDense's only quantized form is int8: its dtype policy must "
                f"be a float one or 'int8_from_...'. Received: dtype={self.dtype_policy.name!r}."
            )
        self.units = _validation.positive_int("units", units, allow_none=True)
        self.width, self.depth, self.splits = check_sizes(width, depth, splits)
        self.activation = _get_activation("activation", activation)
        self.output_activation = _get_activation(
            "output_activation", output_activation
        )
        _refuse_single_output_softmax(
            "output_activation", self.output_activation, self.units, output_activation
        )
        if self.units is None and self.output_activation is not activations.linear:
            raise ValueError(
                "`output_activation` is the activation of the output Dense, which "
                "the layer has only with `units`; without it the output is the "
                "sub-layers' activations, concatenated. Received: output_activation="
                f"{output_activation!r}, units=None. Pass `units`, or put an "
                "activation layer after this one."
            )
        self.dropout = _validation.rate("dropout", dropout)
        self.batch_norm = _validation.boolean("batch_norm", batch_norm)
        self.batch_norm_momentum = _validation.unit_interval(
            "batch_norm_momentum", batch_norm_momentum
        )
        self.batch_norm_epsilon = _validation.positive_number(
            "batch_norm_epsilon", batch_norm_epsilon
        )
        self.use_bias = _validation.boolean("use_bias", use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.kernel_constraint = constraints.get(kernel_constraint)
        self.bias_constraint = constraints.get(bias_constraint)
        self.seed = _validation.seed("seed", seed)
        self.lora_rank, self.lora_alpha = _lora_options(
            lora_rank, lora_alpha, self.kernel_constraint
        )
        self.lora_enabled = False
        self.kernel_scales = []  # int8's, one per kernel
        # The sub-layers compute in floating point under an int8 policy too.
        sub_policy = self.dtype_policy
        if self.quantization_mode:
            sub_policy = keras.dtype_policies.get(sub_policy.name.split("_from_", 1)[1])
        self.input_spec = keras.layers.InputSpec(min_ndim=2)
        # Like Dense, the layer acts on each position's last axis alone, so a
        # sequence mask passes through (and keeps padding out of BatchNorm).
        self.supports_masking = True

        # Dropout draws its masks as Keras's Dropout layer does (the same
        # seed generator, the same draws), but not through one: Keras's
        # Model.quantize skips every layer that holds sub-layers.
        self._dropout_seed = (
            keras.random.SeedGenerator(self.seed) if self.dropout else None
        )
        # Sub-layers get this layer's dtype policy, or mixed precision breaks.
        self._batch_norms = (
            [
                keras.layers.BatchNormalization(
                    momentum=self.batch_norm_momentum,
                    epsilon=self.batch_norm_epsilon,
                    dtype=sub_policy,
                    name=f"batch_norm_{i}",
                )
                for i in range(self.depth)
            ]
            if self.batch_norm
            else []
        )

    # -- structure ---------------------------------------------------------

    def _sublayers_of_split(self, j):
        return list(range(j, self.depth, self.splits))

    @property
    def output_dim(self):
        """Size of the output's last axis."""
        return self.units if self.units else self.depth * self.width

    def build(self, input_shape):
        if len(input_shape) < 2:
            raise ValueError(
                "SpinalDense expects inputs of rank >= 2 (batch, ..., "
                f"features). Received input_shape={tuple(input_shape)}"
            )
        features = input_shape[-1]
        if features is None:
            raise ValueError(
                "The last axis of the input to SpinalDense must be known at "
                "build time (it is cut into splits). Received input_shape="
                f"{tuple(input_shape)}"
            )
        self.input_dim = int(features)
        self.split_sizes = split_sizes(self.input_dim, self.splits)  # checks splits
        w = self.width
        kernel_inits = _sublayer_initializers(self.kernel_initializer, self.depth)
        bias_inits = _sublayer_initializers(self.bias_initializer, self.depth)

        # Storage: one kernel per group of sub-layers reading the same split
        # (the whole split's sub-layers, or each one alone when they are at
        # least OWN_KERNEL_WIDTH wide), holding their split rows side by
        # side: one GEMM per group. One bias vector; one recurrent kernel
        # with the sub-layers' (w, w) blocks stacked along rows, so that
        # cutting it into blocks makes views, not copies. Few variables: the
        # optimizer's update costs ops per variable, traced and run.
        # Regularizers and constraints act on each sub-layer's block, as on
        # per-sub-layer Dense weights.
        self._kernel_groups = self._layouts()["current"][0]
        int8 = self.quantization_mode == "int8"
        self._is_quantized = int8  # as Keras's own quantized layers mark it
        self.split_kernels = []
        for j, group in self._kernel_groups:
            size = self.split_sizes[j]
            # Sub-layer 0 has no recurrent input; the others read w more.
            full = {i: (size + (w if i else 0), w) for i in group}
            own = len(group) < len(self._sublayers_of_split(j))
            self.split_kernels.append(
                self._add_kernel(
                    f"kernel_{group[0]}" if own else f"split_kernel_{j}",
                    (size, len(group) * w),
                    int8,
                    initializer=_PerSublayerInitializer(
                        kernel_inits, [(i, full[i], 0, size) for i in group]
                    ),
                    **_per_block(
                        self.kernel_regularizer, self.kernel_constraint, len(group), -1
                    ),
                )
            )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.depth * w,),
                initializer=_PerSublayerInitializer(
                    bias_inits,
                    [(i, (w,), 0, w) for i in _storage_order(self._kernel_groups)],
                ),
                **_per_block(
                    self.bias_regularizer, self.bias_constraint, self.depth, 0
                ),
            )
        self.recurrent_kernel = None
        if self.depth > 1:
            blocks = []
            for i in range(1, self.depth):
                size = self.split_sizes[i % self.splits]
                blocks.append((i, (size + w, w), size, size + w))
            self.recurrent_kernel = self._add_kernel(
                "recurrent_kernel",
                ((self.depth - 1) * w, w),
                int8,
                initializer=_PerSublayerInitializer(kernel_inits, blocks, axis=0),
                **_per_block(
                    self.kernel_regularizer, self.kernel_constraint, self.depth - 1, 0
                ),
            )
        for i, bn in enumerate(self._batch_norms):
            bn.build(tuple(input_shape[:-1]) + (w,))
        if self.units:
            self.output_kernel = self._add_kernel(
                "output_kernel",
                (self.depth * w, self.units),
                int8,
                initializer=self.kernel_initializer,
                regularizer=self.kernel_regularizer,
                constraint=self.kernel_constraint,
            )
            self.output_bias = (
                self.add_weight(
                    name="output_bias",
                    shape=(self.units,),
                    initializer=self.bias_initializer,
                    regularizer=self.bias_regularizer,
                    constraint=self.bias_constraint,
                )
                if self.use_bias
                else None
            )
        self.input_spec = keras.layers.InputSpec(
            min_ndim=2, axes={-1: self.input_dim}
        )
        self.built = True
        if self.lora_rank:
            self.enable_lora(self.lora_rank, self.lora_alpha)

    # -- int8 --------------------------------------------------------------

    def _add_kernel(self, name, shape, int8, **options):
        """A kernel variable: float with `options` (add_weight's), or int8
        with its scales appended to `kernel_scales` (int8 kernels do not
        train, so `options` do not apply)."""
        if not int8:
            return self.add_weight(name=name, shape=shape, **options)
        kernel = self.add_weight(
            name=name, shape=shape, initializer="zeros", dtype="int8", trainable=False
        )
        # A scale per column of each sub-layer's block: the recurrent kernel
        # stacks depth - 1 blocks along its rows.
        scale_shape = (
            (self.depth - 1, self.width) if name == "recurrent_kernel" else (shape[1],)
        )
        self.kernel_scales.append(self.add_weight(
            name=f"{name}_scale", shape=scale_shape, initializer="ones", trainable=False
        ))
        return kernel

    def quantize(self, mode=None, type_check=True, config=None):
        """Store the kernels as int8, each column of each sub-layer's block
        with a float scale (`model.quantize("int8")` calls this).

        Weight-only: the layer computes in its float compute dtype, each
        product with an int8 kernel cast to it and the product's columns
        then scaled, so only the kernels are rounded (to within half a step
        of 1/127 of their column's largest magnitude), and the inputs are
        not. Biases, BatchNormalization and LoRA's updates stay float (with
        LoRA enabled, the kernels are rounded without their updates, whose
        products are then added, as on an int8 `Dense`). The
        dtype policy becomes `"int8_from_<policy>"`, and the
        layer saves and loads as such. Keras's `Model.quantize` visits only
        layers without sub-layers: a SpinalDense with `batch_norm` or an
        activation layer is quantized by calling this on it, or by
        `quantize_int8(model)`.
        Called on a layer of a model that has already predicted, evaluated
        or trained, this (as `Dense.quantize`) leaves the model's traced
        functions computing with the float kernels; `quantize_int8` and
        `Model.quantize` reset them (or set `model.predict_function =
        None`, and likewise `test_function` and `train_function`).

        Args:
            mode: `"int8"`, the one mode the layer has; others raise
                `NotImplementedError`, which `Model.quantize` turns into a
                warning, leaving the layer in floating point.
            type_check: As Keras's layers take it; unused.
            config: Optional Keras quantization config (Keras 3.15 passes
                its default `Int8QuantizationConfig`). Its
                `weight_quantizer` must be None; its activation quantizer
                does not apply, since the layer quantizes weights only.

        Raises:
            NotImplementedError: another `mode`.
            ValueError: a config's `weight_quantizer`, or Keras's own
                checks (the layer not built or already quantized, a float16
                compute dtype).
        """
        del type_check  # SpinalDense has no subclasses to keep out
        if mode != "int8":
            raise NotImplementedError(
                f"SpinalDense {self.name!r} quantizes to 'int8' only; it stays in "
                f"floating point. Received: mode={mode!r}"
            )
        if getattr(config, "weight_quantizer", None) is not None:
            raise ValueError(
                "SpinalDense's int8 form takes no weight quantizer: its kernels "
                "are stored as int8 with a scale per column of each block. "
                f"Received: weight_quantizer={config.weight_quantizer!r}"
            )
        kernels = self._kernels()
        values = [ops.convert_to_numpy(k) for k in kernels]
        for kernel in kernels:
            self._untrack_variable(kernel)
        self.kernel_scales = []
        new = [self._add_kernel(k.name, k.shape, True) for k in kernels]
        count = len(self.split_kernels)
        self.split_kernels = new[:count]
        if self.recurrent_kernel is not None:
            self.recurrent_kernel = new[count]
        if self.units:
            self.output_kernel = new[-1]
        for kernel, scale, value in zip(new, self.kernel_scales, values):
            q, scales = _int8(value, scale.shape)
            kernel.assign(q)
            scale.assign(scales)
        self._is_quantized = True  # before the policy, whose setter would quantize
        self.dtype_policy = keras.dtype_policies.get(f"int8_from_{self.dtype_policy.name}")

    def quantized_call(self, *args, **kwargs):
        # `call` computes with the int8 kernels (_call_kernels).
        return self.call(*args, **kwargs)

    def _call_kernels(self, dtype):
        """The kernels `call` multiplies by, without LoRA's updates (see
        `_lora_factors`), each with the scales of its product's columns:
        None but under int8, where the kernels are only cast, and the
        products scaled, which costs less than scaling every kernel entry."""
        kernels = self._kernels()
        if not self.quantization_mode:
            return kernels, [None] * len(kernels)
        return (
            [ops.cast(k, dtype) for k in kernels],
            [ops.cast(s, dtype) for s in self.kernel_scales],
        )

    def _dequantized(self, kernel, scale, dtype):
        shape = tuple(scale.shape)
        blocks = ops.reshape(ops.cast(kernel, dtype), shape[:-1] + (-1, shape[-1]))
        scaled = ops.multiply(blocks, ops.expand_dims(ops.cast(scale, dtype), -2))
        return ops.reshape(scaled, kernel.shape)

    # -- LoRA --------------------------------------------------------------

    def enable_lora(
        self, rank, lora_alpha=None, a_initializer="he_uniform", b_initializer="zeros"
    ):
        """Freeze the kernels and train low-rank updates of them (LoRA).

        As `Dense.enable_lora`, per sub-layer: sub-layer `i`'s kernel (its
        split rows and recurrent rows, `(inputs_i, width)`) becomes
        `kernel_i + lora_alpha / rank * A_i @ B_i`, with `A_i` of shape
        `(inputs_i, rank)` and `B_i` of shape `(rank, width)`, and the output
        Dense's kernel likewise. The kernels stop being trainable; biases
        and BatchNormalization stay trainable. With `B` starting at zeros,
        the layer computes what it did before. Saving keeps the updates
        apart from the kernels, so a reloaded model (its config holds
        `lora_rank`) computes the same and trains on from where it was;
        weights saved without LoRA load into the kernels with `B` at zeros.
        `get_sublayer_weights` returns the kernels with the updates added.

        Each product `x @ kernel` gets `lora_alpha / rank * (x @ A) @ B`
        added, as on an int8 `Dense`, so that training makes no gradient of
        a kernel's size. On an int8 layer (`quantize`; QLoRA's way of
        fine-tuning a quantized model) the int8 kernels stay frozen and
        compute as without LoRA; the updates stay float32 and are saved
        apart from the int8 kernels, as above.

        Compile the model again afterwards, as for `Dense.enable_lora`: a
        model that has already trained keeps the training function Keras
        traced before, which goes on training the kernels, not the updates.

        Args:
            rank: Positive int, rank of the updates.
            lora_alpha: Optional positive number; the updates are scaled by
                `lora_alpha / rank`. Default `rank`.
            a_initializer, b_initializer: Initializers of `A` and `B`, as for
                `Dense.enable_lora`. `A` is drawn per sub-layer with its
                full shape, as the kernels are.

        Raises:
            ValueError: the layer is not built, LoRA is already enabled, it
                has a `kernel_constraint`, or a bad `rank` or `lora_alpha`.

        Example:

        >>> layer = SpinalDense(10, width=8, depth=4)
        >>> layer.build((None, 64))
        >>> layer.enable_lora(2)
        >>> sum(int(np.prod(v.shape)) for v in layer.trainable_weights)  # A, B, biases
        494
        """
        if not self.built:
            raise ValueError(
                "Cannot enable LoRA on a SpinalDense that is not built yet: call "
                "it on an input or `build` it first, or pass `lora_rank` to the "
                "constructor."
            )
        if self.lora_enabled:
            raise ValueError(
                f"LoRA is already enabled on {self.name!r} (rank {self.lora_rank}); "
                "it can be enabled once per layer."
            )
        rank, lora_alpha = _lora_options(
            rank, lora_alpha, self.kernel_constraint, names=("rank", "lora_alpha")
        )
        a_inits, b_inits = (
            _sublayer_initializers(
                _resolved(name, value, initializers.get,
                          "an initializer name, instance or callable"),
                self.depth + 1,
            )
            for name, value in (("a_initializer", a_initializer), ("b_initializer", b_initializer))
        )
        w, r = self.width, rank

        def add(name, shape, initializer, blocks=1, axis=0):
            # float32 as Dense's: the updates start small and are added to
            # kernels, which low-precision variables would round away. The
            # kernel regularizer acts on each sub-layer's block, as Dense's
            # on its A and B.
            return self.add_weight(
                name=name, shape=shape, initializer=initializer, dtype="float32",
                **_per_block(self.kernel_regularizer, None, blocks, axis),
            )

        def rows(i):  # sub-layer i's kernel rows: its split's, then w recurrent
            return self.split_sizes[i % self.splits] + (w if i else 0)

        self._tracker.unlock()
        try:
            # A is laid out as the kernels are (one variable per kernel group,
            # one for the recurrent rows), B as one (depth * rank, width) stack.
            self.lora_split_kernels_a = []
            for kernel, (j, group) in zip(self.split_kernels, self._kernel_groups):
                self.lora_split_kernels_a.append(add(
                    f"lora_{kernel.name}_a", (self.split_sizes[j], len(group) * r),
                    _PerSublayerInitializer(
                        a_inits, [(i, (rows(i), r), 0, self.split_sizes[j]) for i in group]
                    ),
                    blocks=len(group), axis=-1,
                ))
            self.lora_recurrent_kernel_a = None
            if self.depth > 1:
                self.lora_recurrent_kernel_a = add(
                    "lora_recurrent_kernel_a", ((self.depth - 1) * w, r),
                    _PerSublayerInitializer(
                        a_inits,
                        [(i, (rows(i), r), rows(i) - w, rows(i)) for i in range(1, self.depth)],
                        axis=0,
                    ),
                    blocks=self.depth - 1,
                )
            self.lora_kernel_b = add(
                "lora_kernel_b", (self.depth * r, w),
                _PerSublayerInitializer(
                    b_inits, [(i, (r, w), 0, r) for i in range(self.depth)], axis=0
                ),
                blocks=self.depth,
            )
            self.lora_output_kernel_a = self.lora_output_kernel_b = None
            if self.units:
                self.lora_output_kernel_a = add(
                    "lora_output_kernel_a", (self.depth * w, r), a_inits[-1]
                )
                self.lora_output_kernel_b = add(
                    "lora_output_kernel_b", (r, self.units), b_inits[-1]
                )
            for kernel in self._kernels():
                kernel.trainable = False
        finally:
            self._tracker.lock()
        self.lora_enabled = True
        self.lora_rank, self.lora_alpha = rank, lora_alpha

    def _kernels(self):
        """The kernels LoRA updates: split kernels, recurrent, output."""
        kernels = list(self.split_kernels)
        if self.recurrent_kernel is not None:
            kernels.append(self.recurrent_kernel)
        if self.units:
            kernels.append(self.output_kernel)
        return kernels

    def _lora_variables(self):
        """LoRA's variables in the order they are saved; [] without LoRA."""
        if not self.lora_enabled:
            return []
        variables = list(self.lora_split_kernels_a)
        if self.lora_recurrent_kernel_a is not None:
            variables.append(self.lora_recurrent_kernel_a)
        variables.append(self.lora_kernel_b)
        if self.units:
            variables += [self.lora_output_kernel_a, self.lora_output_kernel_b]
        return variables

    def _effective_kernels(self, dtype):
        """`_kernels()` as the layer computes with them, in `dtype`: int8
        ones times their scales, and with LoRA each plus its scaled
        low-rank update."""
        kernels = self._kernels()
        if self.quantization_mode:
            kernels = [self._dequantized(k, s, dtype) for k, s in zip(kernels, self.kernel_scales)]
        if not self.lora_enabled:
            return kernels
        r, w, scale = self.lora_rank, self.width, self.lora_alpha / self.lora_rank
        b = ops.reshape(self.lora_kernel_b, (self.depth, r, w))
        updates = []
        for a, (_, group) in zip(self.lora_split_kernels_a, self._kernel_groups):
            # A group's sub-layers are `splits` apart: a strided slice of B.
            b_group = b[group[0] : group[-1] + 1 : self.splits]
            update = ops.einsum(
                "sgr,grw->sgw", ops.reshape(a, (-1, len(group), r)), b_group
            )
            updates.append(ops.reshape(update, (-1, len(group) * w)))
        if self.lora_recurrent_kernel_a is not None:
            a = ops.reshape(self.lora_recurrent_kernel_a, (self.depth - 1, w, r))
            updates.append(ops.reshape(ops.matmul(a, b[1:]), (-1, w)))
        if self.units:
            updates.append(ops.matmul(self.lora_output_kernel_a, self.lora_output_kernel_b))
        return [
            ops.add(ops.cast(kernel, dtype), ops.cast(ops.multiply(update, scale), dtype))
            for kernel, update in zip(kernels, updates)
        ]

    def _lora_factors(self, dtype):
        """LoRA's factors as `call` applies them, in `dtype`, or None
        without LoRA: `"split_a"`, A's split rows per kernel group;
        `"recurrent_a"`, A's recurrent rows per sub-layer after the first;
        `"b"`, each sub-layer's B times `lora_alpha / rank`; and the output
        Dense's `"output_a"` and scaled `"output_b"`.

        `call` adds `(x @ A) @ B` to each product `x @ kernel`, as an int8
        `Dense` does, rather than multiplying by `kernel + A @ B`: the
        gradient then reaches A and B through products of rank `rank`, and
        no gradient of the kernel's size is made, which for wide layers
        costs more than the whole step of a layer without LoRA.
        """
        if not self.lora_enabled:
            return None
        scale = ops.cast(self.lora_alpha / self.lora_rank, dtype)

        def scaled(b):
            return ops.multiply(ops.cast(b, dtype), scale)

        factors = {
            "split_a": [ops.cast(a, dtype) for a in self.lora_split_kernels_a],
            "recurrent_a": [None],
            "b": _blocks(scaled(self.lora_kernel_b), self.depth, 0),
        }
        if self.lora_recurrent_kernel_a is not None:
            factors["recurrent_a"] += _blocks(
                ops.cast(self.lora_recurrent_kernel_a, dtype), self.depth - 1, 0
            )
        if self.units:
            factors["output_a"] = ops.cast(self.lora_output_kernel_a, dtype)
            factors["output_b"] = scaled(self.lora_output_kernel_b)
        return factors

    def _reset_lora_b(self):
        """Zero the LoRA updates (B), so the layer computes its kernels."""
        for variable in (self.lora_kernel_b, self.lora_output_kernel_b):
            if variable is not None:
                variable.assign(ops.zeros(variable.shape, variable.dtype))

    # -- forward -----------------------------------------------------------

    def _split_products(self, parts, training, split_kernels, scales, lora_a):
        """Pre-activations from the input splits, one entry per sub-layer,
        and with LoRA (`lora_a`, A's split rows per kernel group) each
        sub-layer's input times A's split rows (else None)."""
        w, pre, groups = self.width, [None] * self.depth, self._kernel_groups
        lora_in = [None] * self.depth
        r = self.lora_rank
        biases = (
            _split_last_axis(self.bias, [len(group) * w for _, group in groups])
            if self.use_bias
            else [None] * len(groups)
        )
        for g, ((j, group), kernel, scale, bias) in enumerate(
            zip(groups, split_kernels, scales, biases)
        ):
            part, a = parts[j], None if lora_a is None else lora_a[g]
            if self._dropout_seed is not None and training:
                # Each sub-layer draws its own mask, so the group's product
                # cannot be shared: one product per sub-layer.
                kernel = ops.reshape(kernel, (-1, len(group), w))
                for t, i in enumerate(group):
                    dropped = self._dropped(part)
                    z = _product(
                        dropped, kernel[:, t],
                        None if scale is None else scale[t * w : (t + 1) * w],
                    )
                    pre[i] = z if bias is None else z + bias[t * w : (t + 1) * w]
                    if a is not None:
                        lora_in[i] = ops.matmul(dropped, a[:, t * r : (t + 1) * r])
                continue
            z = _product(part, kernel, scale)
            if bias is not None:
                z = self._add_split_bias(z, bias, group)
            # One split op (its gradient is one concat) rather than a slice
            # per sub-layer: at small sizes op count is what costs.
            for i, piece in zip(group, _split_last_axis(z, [w] * len(group))):
                pre[i] = piece
            if a is not None:
                u = ops.matmul(part, a)
                for i, piece in zip(group, _split_last_axis(u, [r] * len(group))):
                    lora_in[i] = piece
        return pre, lora_in

    def _dropped(self, x):
        return keras.random.dropout(x, self.dropout, seed=self._dropout_seed)

    def _add_split_bias(self, z, bias, group):
        """`z + bias` for the input product of the sub-layers in `group`."""
        if len(group) == 1 and (group[0] or self.lora_enabled):
            # A lone sub-layer to which more is added (a recurrent input, or
            # LoRA's product): TensorFlow 2.21's oneDNN graph rewrite breaks
            # on MatMul -> BiasAdd -> Add -> activation, and then logs a
            # warning and runs the whole function (the training step)
            # without graph optimizations. Keras makes add(z, bias) a
            # BiasAdd and add(bias, z) an Add, which it leaves.
            return ops.add(bias, z)
        return ops.add(z, bias)

    def call(self, inputs, training=None, mask=None):
        # Dense takes sparse inputs (TF-IDF, multi-hot) into its one product;
        # here the input is cut into parts first, which sparse tensors do not
        # support on every backend, so they are made dense (a no-op otherwise).
        inputs = ops.convert_to_tensor(inputs, sparse=False)
        parts = _split_last_axis(inputs, self.split_sizes)
        kernels, scales = self._call_kernels(self.compute_dtype)
        lora = self._lora_factors(self.compute_dtype)
        count = len(self.split_kernels)
        pre, lora_in = self._split_products(
            parts, training, kernels[:count], scales[:count], lora and lora["split_a"]
        )
        if self.depth > 1:
            recurrent = _blocks(kernels[count], self.depth - 1, 0)
            scale = scales[count]
            recurrent_scales = (
                [None] * (self.depth - 1) if scale is None
                else [scale[i] for i in range(self.depth - 1)]
            )
        outputs, prev = [], None
        for i in range(self.depth):
            z = pre[i]
            if prev is not None:
                if self._dropout_seed is not None and training:
                    prev = self._dropped(prev)
                z = z + _product(prev, recurrent[i - 1], recurrent_scales[i - 1])
                if lora:
                    lora_in[i] = lora_in[i] + ops.matmul(prev, lora["recurrent_a"][i])
            if lora:
                z = z + ops.matmul(lora_in[i], lora["b"][i])
            if self.batch_norm:
                z = self._batch_norms[i](z, training=training, mask=mask)
            prev = self.activation(z)
            outputs.append(prev)
        y = outputs[0] if self.depth == 1 else ops.concatenate(outputs, -1)
        if self.units:
            hidden, y = y, _product(y, kernels[-1], scales[-1])
            if lora:
                y = y + ops.matmul(ops.matmul(hidden, lora["output_a"]), lora["output_b"])
            if self.output_bias is not None:
                y = ops.add(y, self.output_bias)
            if self.output_activation is not None:
                y = self.output_activation(y)
        return y

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim,)

    # -- reference layout --------------------------------------------------

    def get_sublayer_weights(self):
        """Weights in the layout of the paper's per-sub-layer Dense layers.

        Returns:
            A dict with `"kernels"` (list of `depth` NumPy arrays, kernel `i`
            of shape `(split_size_i + width, width)`, rows of the split
            first, then rows of the previous sub-layer's output; kernel 0 has
            only the split's rows), `"biases"` (list of `(width,)` arrays, or
            None without bias), and, when `units` is set, `"output_kernel"`
            and `"output_bias"`. With `batch_norm`, also `"batch_norms"`: a
            list of `depth` dicts of `(width,)` arrays, `"gamma"`, `"beta"`,
            `"moving_mean"` and `"moving_variance"` (PyTorch's `weight`,
            `bias`, `running_mean` and `running_var`). This is the layout of
            the reference PyTorch scripts' `fc_spinal_layer{i+1}` (transposed)
            and of a hand-composed `Dense`/`Concatenate` network.
        """
        if not self.built:
            raise ValueError("Build the layer before reading its weights.")
        weights = self._unpack(self._float_arrays(), *self._layouts()["current"])
        if self.batch_norm:
            weights["batch_norms"] = [
                {key: ops.convert_to_numpy(getattr(bn, key)) for key in _BATCH_NORM_KEYS}
                for bn in self._batch_norms
            ]
        return weights

    def set_sublayer_weights(self, weights):
        """Inverse of `get_sublayer_weights`: load per-sub-layer weights.

        Use it to import weights from a hand-composed network or from the
        reference PyTorch scripts (transpose `nn.Linear.weight`). With
        `batch_norm`, `"batch_norms"` may be left out to keep the layer's
        BatchNormalization weights as they are.
        """
        if not self.built:
            raise ValueError("Build the layer before setting its weights.")
        if self.quantization_mode:
            raise ValueError(
                f"{self.name!r} is quantized ({self.dtype_policy.name}): set the "
                "weights of the float layer, then quantize it."
            )
        w = self.width
        # Everything is checked before anything is assigned, so a bad dict
        # leaves the layer as it was.
        keys = {"kernels", "biases"} | ({"output_kernel", "output_bias"} if self.units else set())
        optional = {"batch_norms"} if self.batch_norm else set()
        if not isinstance(weights, dict) or not keys <= set(weights) <= keys | optional:
            given = sorted(weights) if isinstance(weights, dict) else type(weights).__name__
            raise ValueError(
                f"`weights` must be a dict with the keys {sorted(keys)}"
                + (f" (and optionally {sorted(optional)})" if optional else "")
                + f", as get_sublayer_weights() returns. Received: {given}"
            )
        batch_norms = self._checked_batch_norms(weights.get("batch_norms"))
        for key in ("kernels", "biases"):
            value = weights[key]
            if not (isinstance(value, (list, tuple, np.ndarray))
                    or (key == "biases" and value is None)):
                raise ValueError(
                    f"`{key}` must be a list of {self.depth} arrays, one per sub-layer. "
                    f"Received: {key}={value!r}"
                )
        kernels = [np.asarray(k) for k in weights["kernels"]]
        if len(kernels) != self.depth:
            raise ValueError(
                f"Expected {self.depth} sub-layer kernels, received {len(kernels)}"
            )
        for i, k in enumerate(kernels):
            size = self.split_sizes[i % self.splits]
            expected = (size + (w if i else 0), w)
            if tuple(k.shape) != expected:
                raise ValueError(
                    f"Sub-layer kernel {i} must have shape {expected}. "
                    f"Received shape {tuple(k.shape)}"
                )
        # Expected shapes; None where the layer has no such weights.
        expected = {"biases": [(w,)] * self.depth if self.use_bias else None}
        if self.units:
            expected["output_kernel"] = (self.depth * w, self.units)
            expected["output_bias"] = (self.units,) if self.use_bias else None
        for key, shape in expected.items():
            value = weights[key]
            if value is None:
                got = None
            elif key == "biases":
                got = [tuple(np.shape(b)) for b in value]
            else:
                got = tuple(np.shape(value))
            if got == shape:
                continue
            if shape is None:
                raise ValueError(f"`{key}` must be None: this layer has use_bias=False.")
            wanted = (f"be {self.depth} arrays of shape {(w,)}" if key == "biases"
                      else f"have shape {shape}")
            raise ValueError(f"`{key}` must {wanted}. Received: {got}")
        arrays = self._pack({**weights, "kernels": kernels}, *self._layouts()["current"])
        pairs = list(zip(self._stored_variables(), arrays))
        for bn, values in zip(self._batch_norms, batch_norms or ()):
            pairs += [(getattr(bn, key), values[key]) for key in _BATCH_NORM_KEYS]
        try:  # all converted before any is assigned
            pairs = [(v, np.asarray(a, dtype=v.dtype)) for v, a in pairs]
        except (TypeError, ValueError) as e:
            raise ValueError(f"`weights` must hold numbers: {e}") from e
        for variable, value in pairs:
            variable.assign(value)
        if self.lora_enabled:
            self._reset_lora_b()

    def _checked_batch_norms(self, batch_norms):
        """`batch_norms` of set_sublayer_weights as arrays, checked."""
        if batch_norms is None:
            return None
        wanted = (f"`batch_norms` must be a list of {self.depth} dicts with the keys "
                  f"{list(_BATCH_NORM_KEYS)}, each a ({self.width},) array")
        if not isinstance(batch_norms, (list, tuple)) or len(batch_norms) != self.depth:
            count = f" of {len(batch_norms)}" if isinstance(batch_norms, (list, tuple)) else ""
            raise ValueError(f"{wanted}. Received: {type(batch_norms).__name__}{count}")
        checked = []
        for i, values in enumerate(batch_norms):
            if not isinstance(values, dict) or set(values) != set(_BATCH_NORM_KEYS):
                given = sorted(values) if isinstance(values, dict) else type(values).__name__
                raise ValueError(f"{wanted}. Received for sub-layer {i}: {given}")
            try:
                arrays = {key: np.asarray(values[key], dtype="float32")
                          for key in _BATCH_NORM_KEYS}
            except (TypeError, ValueError) as e:
                raise ValueError(f"`weights` must hold numbers: {e}") from e
            for key, array in arrays.items():
                if array.shape != (self.width,):
                    raise ValueError(f"{wanted}. Received for sub-layer {i}: {key} of "
                                     f"shape {array.shape}")
            if np.any(arrays["moving_variance"] < 0):
                raise ValueError(f"Sub-layer {i}'s moving_variance must not be negative "
                                 "(PyTorch's running_var).")
            checked.append(arrays)
        return checked

    # -- stored layouts ----------------------------------------------------

    def _stored_variables(self):
        """The layer's own variables, in the order Keras saves them (under
        int8, each kernel followed by its scales, in the order saved)."""
        scales = dict(zip(map(id, self._kernels()), self.kernel_scales))

        def kernel(k):
            return [k, scales[id(k)]] if scales else [k]

        variables = [v for k in self.split_kernels for v in kernel(k)]
        variables += [self.bias] if self.bias is not None else []
        variables += kernel(self.recurrent_kernel) if self.recurrent_kernel is not None else []
        if self.units:
            variables += kernel(self.output_kernel)
            if self.output_bias is not None:
                variables.append(self.output_bias)
        return variables

    def save_own_variables(self, store):
        if not self.quantization_mode:
            return super().save_own_variables(store)
        # A layer quantized after building made its int8 variables last;
        # saved in a fixed order, it loads into one built as int8. LoRA's
        # updates follow, as they are (as for a float layer).
        for n, variable in enumerate(self._stored_variables() + self._lora_variables()):
            store[str(n)] = variable

    def _float_arrays(self):
        """The arrays of a float layer's `_stored_variables()` that computes
        as this one: under int8, the int8 kernels times their scales; with
        LoRA, the kernels plus their updates."""
        computed = dict(zip(map(id, self._kernels()),
                            self._effective_kernels(self.variable_dtype)))
        scales = set(map(id, self.kernel_scales))
        return [ops.convert_to_numpy(computed.get(id(v), v))
                for v in self._stored_variables() if id(v) not in scales]

    def _own_kernels(self):
        """Whether each sub-layer stores its own input kernel."""
        return self.width >= OWN_KERNEL_WIDTH

    def _layouts(self):
        """The stored layouts this version reads, newest first, each as
        `(kernel groups, one bias per group, recurrent blocks stacked)`.

        A kernel group is `(split, sub-layers)`: one stored kernel holding
        those sub-layers' split rows side by side. Version 0.1 stored one
        bias per split (after each split kernel) and one `(width, width)`
        recurrent kernel per sub-layer; 0.2 gave every split one kernel
        whatever the width, and 0.3 did so below a width of 256.
        """
        per_split = [(j, self._sublayers_of_split(j)) for j in range(self.splits)]
        groups = per_split
        if self._own_kernels():
            groups = [(j, [i]) for j, group in per_split for i in group]
        return {
            "current": (groups, False, True),
            "0.2": (per_split, False, True),
            "0.1": (per_split, True, False),
        }

    def _layout_shapes(self, groups, bias_per_group, stacked):
        w, shapes = self.width, []
        for j, group in groups:
            shapes.append((self.split_sizes[j], len(group) * w))
            if self.use_bias and bias_per_group:
                shapes.append((len(group) * w,))
        if self.use_bias and not bias_per_group:
            shapes.append((self.depth * w,))
        if self.depth > 1:
            shapes += [((self.depth - 1) * w, w)] if stacked else [(w, w)] * (self.depth - 1)
        if self.units:
            shapes.append((self.depth * w, self.units))
            if self.use_bias:
                shapes.append((self.units,))
        return shapes

    def _pack(self, weights, groups, bias_per_group, stacked):
        """Per-sub-layer `weights` as the arrays of a stored layout."""
        kernels, biases, arrays = weights["kernels"], weights["biases"], []
        for j, group in groups:
            size = self.split_sizes[j]
            arrays.append(np.concatenate([kernels[i][:size] for i in group], axis=1))
            if self.use_bias and bias_per_group:
                arrays.append(np.concatenate([biases[i] for i in group]))
        if self.use_bias and not bias_per_group:
            arrays.append(np.concatenate([biases[i] for i in _storage_order(groups)]))
        recurrent = [
            kernels[i][self.split_sizes[i % self.splits] :] for i in range(1, self.depth)
        ]
        if recurrent:
            arrays += [np.concatenate(recurrent, axis=0)] if stacked else recurrent
        if self.units:
            arrays.append(weights["output_kernel"])
            if self.use_bias:
                arrays.append(weights["output_bias"])
        return arrays

    def _unpack(self, arrays, groups, bias_per_group, stacked):
        """Inverse of `_pack`."""
        w, arrays = self.width, iter(arrays)
        kernels = [None] * self.depth
        biases = [None] * self.depth if self.use_bias else None
        for _, group in groups:
            kernel = next(arrays)
            bias = next(arrays) if self.use_bias and bias_per_group else None
            for t, i in enumerate(group):
                kernels[i] = kernel[:, t * w : (t + 1) * w]
                if bias is not None:
                    biases[i] = bias[t * w : (t + 1) * w]
        if self.use_bias and not bias_per_group:
            bias = next(arrays)
            for position, i in enumerate(_storage_order(groups)):
                biases[i] = bias[position * w : (position + 1) * w]
        if self.depth > 1:
            blocks = (
                np.split(next(arrays), self.depth - 1)
                if stacked
                else [next(arrays) for _ in range(1, self.depth)]
            )
            for i, block in zip(range(1, self.depth), blocks):
                kernels[i] = np.concatenate([kernels[i], block], axis=0)
        out = {"kernels": kernels, "biases": biases}
        if self.units:
            out["output_kernel"] = next(arrays)
            out["output_bias"] = next(arrays) if self.use_bias else None
        return out

    def load_own_variables(self, store):
        """Load saved variables, also from files of earlier versions.

        Files of versions 0.1, 0.2 and 0.3 (see `_layouts`) load into the
        present layout; a file in none of them gets Keras's own error. With
        LoRA enabled, a file saved with LoRA loads its updates too; one saved
        without loads into the kernels, and the updates start from zero.
        """
        arrays = [store[str(n)] for n in range(len(store.keys()))]
        shapes = [tuple(a.shape) for a in arrays]
        lora = self._lora_variables()
        if self.quantization_mode:
            if not self._assign_stored(arrays):
                wanted = [tuple(v.shape) for v in self._stored_variables()]
                with_lora = f" (then LoRA's {[tuple(v.shape) for v in lora]})" if lora else ""
                raise ValueError(
                    f"int8 SpinalDense {self.name!r} stores arrays of shapes {wanted}"
                    f"{with_lora}; the file holds {shapes}."
                )
            return
        # Keras's own loading would count LoRA's variables as missing.
        if lora and self._assign_stored(arrays):
            return
        layouts = self._layouts()
        current = self._layout_shapes(*layouts.pop("current"))
        if shapes != current:
            for layout in layouts.values():
                if shapes == self._layout_shapes(*layout):
                    weights = self._unpack([np.asarray(a) for a in arrays], *layout)
                    self.set_sublayer_weights(weights)
                    return
        super().load_own_variables(store)

    def _assign_stored(self, arrays):
        """Assign `arrays` to `_stored_variables()`, then to LoRA's if the
        file holds them too (else B starts at zeros), and return True; or
        return False, assigning nothing, if their shapes are not those."""
        stored, lora = self._stored_variables(), self._lora_variables()
        wanted = [tuple(v.shape) for v in stored]
        if [tuple(a.shape) for a in arrays] not in (
            wanted, wanted + [tuple(v.shape) for v in lora]
        ):
            return False
        for variable, array in zip(stored + lora, arrays):
            variable.assign(array)
        if lora and len(arrays) == len(stored):
            self._reset_lora_b()
        return True

    # -- serialization -----------------------------------------------------

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        activation = config.get("output_activation")
        if config.get("units") is None and activation not in (None, "linear"):
            # Saved by a version that took it without a word (0.4.0 and
            # before): it was never applied, so the model computes the same.
            warnings.warn(
                f"SpinalDense {config.get('name')!r} was saved with output_activation="
                f"{activation!r} but no `units`; that activation never applied "
                "(there is no output Dense) and is dropped.",
                stacklevel=2,
            )
            config["output_activation"] = None
        return super().from_config(config)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "width": self.width,
                "depth": self.depth,
                "splits": self.splits,
                "activation": _serialize_activation(self.activation),
                "output_activation": _serialize_activation(
                    self.output_activation
                ),
                "dropout": self.dropout,
                "batch_norm": self.batch_norm,
                "batch_norm_momentum": self.batch_norm_momentum,
                "batch_norm_epsilon": self.batch_norm_epsilon,
                "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "kernel_regularizer": regularizers.serialize(
                    self.kernel_regularizer
                ),
                "bias_regularizer": regularizers.serialize(self.bias_regularizer),
                "kernel_constraint": constraints.serialize(self.kernel_constraint),
                "bias_constraint": constraints.serialize(self.bias_constraint),
                "seed": self.seed,
            }
        )
        if self.lora_rank:  # as Dense: configs without LoRA stay as they were
            config.update({"lora_rank": self.lora_rank, "lora_alpha": self.lora_alpha})
        return config

