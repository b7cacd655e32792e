"""Files the package writes where another process may be reading them."""

import os


def write_atomically(path, text):
    """Write `text` to `path` so that a reader sees the old file or the new
    one, never a part: through a temporary file beside it (`path.tmp-<pid>`,
    one per process, so processes racing do not share it), renamed over
    `path`. The workers of a multi-worker run share the output directory,
    and processes decoding the same split share the data directory."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
