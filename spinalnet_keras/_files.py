"""Files the package writes where another process may be reading them."""

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
