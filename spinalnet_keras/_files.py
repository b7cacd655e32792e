"""Files the package writes where another process may be reading them."""

import json
import math
import os


def temporary_path(path):
    """Where `path` is written before it is renamed into place: beside it
    (a rename within one file system is atomic), one per process, so that
    processes racing do not share it and a process that failed part-way
    finds its own leftovers."""
    return f"{path}.tmp-{os.getpid()}"


def write_atomically(path, text):
    """Write `text` to `path` so that a reader sees the old file or the new
    one, never a part: through `temporary_path(path)`, renamed over `path`.
    The workers of a multi-worker run share the output directory, and
    processes decoding the same split share the data directory."""
    tmp = temporary_path(path)
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _null_for_non_finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _null_for_non_finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_null_for_non_finite(v) for v in value]
    return value


def json_text(value, **kwargs):
    """`json.dumps(value, **kwargs)` as strict JSON (RFC 8259): a float
    that is not finite (a diverged run's metric) is written `null`. Python
    would write `NaN`, which JSON has not, and strict readers (JavaScript's
    `JSON.parse`, jq before 1.7) refuse the whole file for it."""
    return json.dumps(_null_for_non_finite(value), allow_nan=False, **kwargs)
