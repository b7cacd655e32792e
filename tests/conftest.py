import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")


@pytest.fixture(scope="session", autouse=True)
def _temporary_folder_inside_pytests(tmp_path_factory):
    # What the suite cannot clean up itself (AutoGraph's files of processes
    # the tests kill and Python's bytecode of AutoGraph's files,
    # tensorflow-datasets' empty folder per fresh data directory) lands under
    # pytest's own base folder, which pytest prunes, instead of piling up in
    # /tmp run after run.
    import tempfile

    folder = str(tmp_path_factory.mktemp("system_tmp"))
    saved = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = folder, folder
    yield
    if saved[0] is None:
        del os.environ["TMPDIR"]
    else:
        os.environ["TMPDIR"] = saved[0]
    tempfile.tempdir = saved[1]


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    # Imported here, not at the top: under pytest-xdist the controlling
    # process loads this file too but runs no test, and importing Keras
    # would cost it TensorFlow's start-up (and print TensorFlow's start-up
    # messages, which TensorFlow 2.21 writes whatever TF_CPP_MIN_LOG_LEVEL
    # says, at the end of the run).
    import keras

    keras.utils.set_random_seed(1234)
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")
    keras.backend.clear_session()


def tensorboard_scalars(logdir):
    """{(folder, tag): {step: value}} of the event files in `logdir`'s
    subfolders ("train", "validation"); a summary that is not a float
    (the model's config, the hyperparameters) as None."""
    import tensorflow as tf

    found = {}
    for folder in sorted(os.listdir(logdir)):
        if not os.path.isdir(os.path.join(logdir, folder)):
            continue
        for name in os.listdir(os.path.join(logdir, folder)):
            for event in tf.compat.v1.train.summary_iterator(os.path.join(logdir, folder, name)):
                for v in event.summary.value:
                    value = tf.make_ndarray(v.tensor)
                    found.setdefault((folder, v.tag), {})[event.step] = (
                        float(value) if value.dtype.kind == "f" else None)
    return found


MNIST_DIR = os.path.join(SHARED_DATA, "mnist")


@pytest.fixture(scope="session")
def mnist_data_dir(tmp_path_factory):
    """A tfds data directory with MNIST prepared from ../shared/data/mnist."""
    if not os.path.isdir(MNIST_DIR):
        pytest.skip(f"real MNIST files not found at {MNIST_DIR} (a workplace-only folder)")
    from spinalnet_keras.data import prepare

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    prepare("mnist", data_dir=data_dir, manual_dir=SHARED_DATA)
    return data_dir


def is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def install_broken_module(monkeypatch, folder, name, error):
    """Make `import name` run `error` (a `raise ...` line) from a package in
    `folder`, as an installed module that fails to import does, even if the
    real one is already imported."""
    import sys

    package = folder / "site" / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(error + "\n")
    monkeypatch.syspath_prepend(str(folder / "site"))
    monkeypatch.delitem(sys.modules, name, raising=False)
