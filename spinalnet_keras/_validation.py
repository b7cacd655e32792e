"""Argument checks shared by the package; errors quote the received value."""

import numbers
import os

import numpy as np

IMAGE_DIMS = ("height", "width", "channels")


def is_int(value):
    """An integer that is not a bool (True is no size or seed)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value):
    """A real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def tensorflow_backend(what):
    """Raise unless Keras runs on its TensorFlow backend.

    A tf.distribute strategy's scope does not reach the variables of
    another backend: the model would train on one device while the
    strategy reports several replicas.
    """
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise RuntimeError(
            f"{what} needs Keras's TensorFlow backend, and Keras runs on {backend!r}: a "
            "tf.distribute strategy does not distribute a model of another backend. Set "
            "KERAS_BACKEND=tensorflow before Keras is imported, or train without a "
            "strategy (on JAX, keras.distribution distributes)."
        )


def positive_int(name, value, allow_none=False):
    """Return `value` as an int if it is a positive integer, else raise."""
    if value is None and allow_none:
        return None
    if not is_int(value) or value <= 0:
        raise ValueError(
            f"`{name}` must be a positive integer. Received: {name}={value!r}"
        )
    return int(value)


def non_negative_int(name, value):
    """Return `value` as an int if it is an integer >= 0, else raise."""
    if not is_int(value) or value < 0:
        raise ValueError(
            f"`{name}` must be an integer >= 0. Received: {name}={value!r}"
        )
    return int(value)


def numpy_seed(name, value, allow_none=False):
    """Return `value` as an int if it is a seed NumPy takes (what
    `keras.utils.set_random_seed` and scikit-learn pass it to), else raise:
    NumPy's own error names no argument."""
    if value is None and allow_none:
        return None
    if not is_int(value) or not 0 <= value < 2**32:
        raise ValueError(
            f"`{name}` must be an integer from 0 to 2**32 - 1 (NumPy's seeds). "
            f"Received: {name}={value!r}"
        )
    return int(value)


def values(name, value, check):
    """Return the tuple of `value`'s items, each passed through
    `check(f"{name}[{i}]", item)`, so that an error names the item (its
    message would otherwise say the whole list must be, e.g., a positive
    integer); `value` must be a non-empty list, tuple, range or 1-D numpy
    array (`np.arange(4, 33, 4)`)."""
    sequence = isinstance(value, (list, tuple, range)) or (
        isinstance(value, np.ndarray) and value.ndim == 1)
    if not sequence or not len(value):
        raise ValueError(
            f"`{name}` must be a non-empty list, tuple, range or 1-D array. "
            f"Received: {name}={value!r}"
        )
    return tuple(check(f"{name}[{i}]", v) for i, v in enumerate(value))


def callbacks(name, value):
    """The list of Keras callbacks `value` (None or empty: none), each
    checked to be a `keras.callbacks.Callback`."""
    import keras

    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"`{name}` must be a list of keras.callbacks.Callback objects or "
                        f"None. Received: {name}={value!r}")

    def check(item_name, item):
        if not isinstance(item, keras.callbacks.Callback):
            raise TypeError(f"`{item_name}` must be a keras.callbacks.Callback. "
                            f"Received: {item_name}={item!r}")
        return item

    return list(values(name, value, check)) if value else []


def shape(name, value, form):
    """Return `value` as a tuple of positive ints of the length of `form`
    (e.g. `("height", "width", "channels")`), else raise."""
    try:
        dims = tuple(value)
    except TypeError:
        dims = None
    if dims is None or len(dims) != len(form) or not all(is_int(d) and d > 0 for d in dims):
        raise ValueError(
            f"`{name}` must be a tuple ({', '.join(form)}{',' if len(form) == 1 else ''}) "
            f"of positive integers. Received: {name}={value!r}"
        )
    return tuple(int(d) for d in dims)


def rate(name, value):
    """Return `value` as a float in [0, 1), else raise."""
    if not is_real(value) or not 0.0 <= float(value) < 1.0:
        raise ValueError(
            f"`{name}` must be a number in [0, 1). Received: {name}={value!r}"
        )
    return float(value)


def sgd_momentum(optimizer, momentum, default):
    """The momentum `optimizer` is made with: SGD's (`default` when None, a
    rate otherwise); None for the others, which take none, so a value given
    for them is refused rather than ignored."""
    if optimizer == "sgd":
        return rate("momentum", default if momentum is None else momentum)
    if momentum is not None:
        raise ValueError(
            f"`momentum` applies to optimizer='sgd' only; {optimizer!r} is made "
            f"without one. Received: momentum={momentum!r}"
        )
    return None


def unit_interval(name, value):
    """Return `value` as a float in [0, 1] (e.g. a momentum), else raise."""
    if not is_real(value) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(
            f"`{name}` must be a number in [0, 1]. Received: {name}={value!r}"
        )
    return float(value)


def positive_number(name, value):
    """Return `value` as a float if it is a finite number > 0, else raise."""
    if not is_real(value) or not 0.0 < float(value) < float("inf"):
        raise ValueError(
            f"`{name}` must be a positive number. Received: {name}={value!r}"
        )
    return float(value)


def non_negative_number(name, value):
    """Return `value` as a float if it is a finite number >= 0, else raise."""
    if not is_real(value) or not 0.0 <= float(value) < float("inf"):
        raise ValueError(
            f"`{name}` must be a number >= 0. Received: {name}={value!r}"
        )
    return float(value)


def seed(name, value):
    """Return `value` if it is None or an integer (Keras's seeds), else raise."""
    if value is not None and not is_int(value):
        raise ValueError(
            f"`{name}` must be an integer or None. Received: {name}={value!r}"
        )
    return None if value is None else int(value)


def is_bool(value):
    # numpy's bool is no Python bool, yet a flag read from an array is one
    return isinstance(value, (bool, np.bool_))


def boolean(name, value, allow_none=False):
    """Return `value` as a Python bool if it is True or False, else raise."""
    if value is None and allow_none:
        return None
    if not is_bool(value):
        raise ValueError(
            f"`{name}` must be True or False. Received: {name}={value!r}"
        )
    return bool(value)


def path(name, value, allow_none=False):
    """Return `value` as a str if it is a path (str or os.PathLike), else raise."""
    if value is None and allow_none:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise ValueError(f"`{name}` must be a path. Received: {name}={value!r}")
    return value


def plain_name(name, value):
    """Return `value` if it names one file or folder (no path separator, not
    hidden, not empty), else raise."""
    if (not isinstance(value, str) or not value or value.startswith(".")
            or "/" in value or os.sep in value):
        raise ValueError(
            f"`{name}` must be a plain file or folder name. Received: {name}={value!r}"
        )
    return value


def keras_name(name, value, role):
    """Return `value` if it serves as a Keras layer or model name, else raise
    (`role` says what it names). Keras would take 3 or None as the text
    "3" or "None", and "" as no name at all."""
    if not isinstance(value, str) or not value or "/" in value:
        raise ValueError(
            f"`{name}` must be a non-empty string without '/' ({role}). "
            f"Received: {name}={value!r}"
        )
    return value


def comma_list(value):
    """`value` cut at its commas if it is a str (`"rotate,flip"`, as on the
    command line), empty items dropped, as a tuple; anything else as it is."""
    if isinstance(value, str):
        return tuple(item for item in value.split(",") if item)
    return value


def each_once(name, items, why, received):
    """Raise naming the items that `items` holds more than once (`why`
    says what one of them does); `received` is the value as given."""
    repeated = sorted({i for i in items if items.count(i) > 1}, key=repr)
    if repeated:
        raise ValueError(
            f"`{name}` names {', '.join(map(repr, repeated))} more than once; {why}. "
            f"Received: {name}={received!r}"
        )


def refuse(given, why, received=None):
    """Raise a ValueError naming the options in `given` (a dict, name ->
    value) and `why` they cannot be given; do nothing if it is empty.
    `received` replaces the default `name=value, ...` text."""
    if given:
        names = ", ".join(f"`{k}`" for k in given)
        if received is None:
            received = ", ".join(f"{k}={v!r}" for k, v in given.items())
        raise ValueError(f"{names}: {why}. Received: {received}")


def choice(name, value, allowed):
    """Return the item of `allowed` that `value` equals, else raise listing
    them. The item itself comes back, so a numpy scalar becomes the plain
    value a JSON file can hold; True and 1 are told apart."""
    for item in allowed:
        if item == value and is_bool(item) == is_bool(value):
            return item
    raise ValueError(
        f"`{name}` must be one of {sorted(allowed, key=repr)}. Received: {name}={value!r}"
    )
