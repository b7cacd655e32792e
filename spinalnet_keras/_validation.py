"""Argument checks shared by the package; errors quote the received value."""

import numbers


def positive_int(name, value, allow_none=False):
    """Return `value` as an int if it is a positive integer, else raise."""
    if value is None and allow_none:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value <= 0
    ):
        raise ValueError(
            f"`{name}` must be a positive integer. Received: {name}={value!r}"
        )
    return int(value)


def rate(name, value):
    """Return `value` as a float in [0, 1), else raise."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not 0.0 <= float(value) < 1.0
    ):
        raise ValueError(
            f"`{name}` must be a number in [0, 1). Received: {name}={value!r}"
        )
    return float(value)


def boolean(name, value):
    if not isinstance(value, bool):
        raise ValueError(
            f"`{name}` must be True or False. Received: {name}={value!r}"
        )
    return value


def choice(name, value, allowed):
    """Return `value` if it is one of `allowed`, else raise listing them."""
    if value not in allowed:
        raise ValueError(
            f"`{name}` must be one of {sorted(allowed)}. Received: {name}={value!r}"
        )
    return value
