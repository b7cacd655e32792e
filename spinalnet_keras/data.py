"""Datasets of the paper as `tf.data` pipelines, and the Table I regression.

Image datasets come from tensorflow-datasets by name (`DATASETS`). Offline,
point `manual_dir` (or the `SPINALNET_KERAS_MANUAL_DIR` environment
variable) at a folder holding the dataset's original files: either the
files themselves or a sub-folder named after the dataset (so one folder can
serve several datasets: `<dir>/mnist/`, `<dir>/fashion_mnist/`).

The regression datasets of the paper's Table I (`table1/sum`,
`table1/sin_sum`, `table1/prod`, `table1/sin_prod`) are generated from the
paper's definition and need no download.

Everything here is TensorFlow-specific by nature (tf.data, tf.image).
"""

import dataclasses
import functools
import glob
import gzip
import json
import math
import os
import socket
import urllib.parse
import warnings

import numpy as np
import tensorflow as tf

from spinalnet_keras import _validation
from spinalnet_keras._files import temporary_path
from spinalnet_keras._files import write_atomically
from spinalnet_keras._dependencies import describe_error
from spinalnet_keras._dependencies import installed_versions

MANUAL_DIR_ENV = "SPINALNET_KERAS_MANUAL_DIR"
DATA_DIR_ENV = "SPINALNET_KERAS_DATA_DIR"
NORMALIZATIONS = ("paper", "unit", "none")
# Decoded splits up to this many image bytes are held in memory and batched
# by index (one gather per batch, no per-example work: less than half the
# CPU time per MNIST epoch, benchmarks/RESULTS.md); larger ones stream from
# disk.
IN_MEMORY_BYTES = 1 << 30
AUGMENTATIONS = ("rotate", "perspective", "crop", "flip")
ROTATION_DEGREES = 10.0  # the paper's VGG-5 recipe (MNIST family) rotates by up to 10 degrees


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """One tensorflow-datasets image classification dataset."""

    tfds_name: str
    train_split: str = "train"
    test_split: str = "test"
    # The paper's normalisation where its scripts give one, else None
    # (scale to [0, 1]).
    mean: tuple = None
    std: tuple = None


_MNIST_STATS = {"mean": (0.1307,), "std": (0.3081,)}

DATASETS = {
    "mnist": ImageDataset("mnist", **_MNIST_STATS),
    "fashion_mnist": ImageDataset("fashion_mnist", **_MNIST_STATS),
    "kmnist": ImageDataset("kmnist", **_MNIST_STATS),
    "emnist/letters": ImageDataset("emnist/letters", **_MNIST_STATS),
    "emnist/digits": ImageDataset("emnist/digits", **_MNIST_STATS),
    "emnist/balanced": ImageDataset("emnist/balanced", **_MNIST_STATS),
    "cifar10": ImageDataset("cifar10"),
    "cifar100": ImageDataset("cifar100"),
    "svhn_cropped": ImageDataset("svhn_cropped"),
    "stl10": ImageDataset("stl10"),
    "caltech101": ImageDataset("caltech101"),
    "oxford_flowers102": ImageDataset(
        "oxford_flowers102", train_split="train+validation"
    ),
}


def _regression_targets():
    return {
        "sum": lambda x: x.sum(axis=1),
        "sin_sum": lambda x: np.sin(x.sum(axis=1)),
        "prod": lambda x: x.prod(axis=1),
        "sin_prod": lambda x: np.sin(x.prod(axis=1)),
    }


REGRESSION_TARGETS = tuple(_regression_targets())
REGRESSION_DATASETS = tuple(f"table1/{t}" for t in REGRESSION_TARGETS)


def dataset_names():
    """All dataset names `load_task` accepts."""
    return sorted(DATASETS) + list(REGRESSION_DATASETS)


@dataclasses.dataclass
class Task:
    """Train and test pipelines plus what a model needs to know."""

    name: str
    kind: str  # "classification" or "regression"
    train: object  # tf.data.Dataset of (inputs, targets) batches
    test: object
    input_shape: tuple
    num_outputs: int
    train_size: int
    test_size: int
    steps_per_epoch: int
    # What `load_task` made the data with (its checked arguments, but the
    # data's location), so that `train` can tell a task from another.
    options: dict = None


# -- the paper's Table I regression -------------------------------------------


def regression_data(target, num_samples=1000, seed=0, noise=0.2):
    """The paper's Table I data: 8 inputs ~ N(0, 1), target f(x) + noise.

    Args:
        target: `"sum"`, `"sin_sum"`, `"prod"` or `"sin_prod"`.
        num_samples: number of examples (the paper uses 1000).
        seed: NumPy seed of the draw.
        noise: scale of the per-sample U[0, 1) noise (the paper: 0.2).

    Returns:
        `(x, y)`: float32 arrays of shapes `(num_samples, 8)` and
        `(num_samples, 1)`.
    """
    targets = _regression_targets()
    target = _validation.choice("target", target, tuple(targets))
    num_samples = _validation.positive_int("num_samples", num_samples)
    noise = _validation.non_negative_number("noise", noise)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((num_samples, 8))
    y = targets[target](x) + noise * rng.random(num_samples)
    return x.astype("float32"), y[:, None].astype("float32")


# -- tensorflow-datasets -------------------------------------------------------


def _manual_dir_for(name, manual_dir):
    manual_dir = manual_dir or os.environ.get(MANUAL_DIR_ENV)
    if not manual_dir:
        return None
    manual_dir = os.path.abspath(os.path.expanduser(os.fspath(manual_dir)))
    if not os.path.isdir(manual_dir):
        raise FileNotFoundError(
            f"The manual directory {manual_dir!r} does not exist."
        )
    # One folder per dataset (the same file names serve mnist, kmnist and
    # fashion_mnist), or the dataset's files directly.
    for sub in (name, name.split("/")[0], name.replace("/", "_")):
        candidate = os.path.join(manual_dir, sub)
        if os.path.isdir(candidate):
            return candidate
    return manual_dir


def _expected_files(builder):
    infos = getattr(builder, "url_infos", None) or {}
    return {url: info.filename for url, info in infos.items()}


def _offline_error(name, builder, manual_dir, reason):
    files = sorted(set(_expected_files(builder).values()))
    listed = ", ".join(files) if files else "(see the tfds catalogue)"
    where = manual_dir or f"<dir>/{name}"
    return RuntimeError(
        f"Cannot prepare dataset {name!r}: {reason}. To work offline, put its "
        f"original files ({listed}) in {where} and pass that folder as "
        f"manual_dir (--manual-dir), or set {MANUAL_DIR_ENV} to a folder that "
        f"holds a '{name}' sub-folder with them."
    )


def _network_reachable(builder, timeout=5.0):
    """Whether the host of the dataset's first file answers. tfds itself
    retries for minutes before failing when there is no network."""
    for url in _expected_files(builder):
        parsed = urllib.parse.urlparse(url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            socket.create_connection((parsed.hostname, port), timeout).close()
            return True
        except OSError:
            return False
    return True


def _import_tfds():
    """tensorflow_datasets, or an ImportError that says why it is unusable.

    tfds catches any error while importing its own modules, logs it and
    leaves a module without its API; the first use then fails with an
    AttributeError that names neither the cause nor the fix.
    """
    import tensorflow_datasets as tfds

    if hasattr(tfds, "builder"):
        return tfds
    try:
        # Failed imports leave no trace in sys.modules: this repeats the
        # error that tfds swallowed, to chain it to ours.
        import tensorflow_datasets.public_api  # noqa: F401
    except Exception as e:
        cause = e
    else:
        cause = None
    versions = installed_versions(
        "tensorflow", "tensorflow-datasets", "tensorflow-metadata", "protobuf"
    )
    reason = describe_error(cause) if cause else "cause not known"
    raise ImportError(
        f"tensorflow_datasets is installed but failed to import ({reason}). "
        f"Installed: {versions}. "
        "A protobuf older than the one tensorflow-metadata was generated "
        "with is the usual cause (tensorflow 2.19 and older cap protobuf "
        "below 6); `pip install -U tensorflow tensorflow-datasets` installs "
        "a set that works together."
    ) from cause


def prepare(name, data_dir=None, manual_dir=None):
    """Download (or read from `manual_dir`) and prepare a tfds dataset.

    Returns:
        The prepared `tfds` builder.

    Raises:
        ValueError: unknown name (the message lists the known ones).
        RuntimeError: files missing from `manual_dir`, or no network and no
            `manual_dir`; the message lists the files to put where. Also a
            dataset prepared earlier in `data_dir` from another dataset's
            files of the same names (tfds reuses extractions by file name;
            this function gives each dataset its own): the message names
            the folder to delete.
        ImportError: tensorflow_datasets is installed but does not import
            (the message names the versions and the usual fix).
    """
    tfds = _import_tfds()

    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(
            f"Unknown dataset {name!r}. Available: {dataset_names()}"
        )
    spec = DATASETS[name]
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
    builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
    manual = _manual_dir_for(name, manual_dir)
    if builder.is_prepared():
        if manual is not None:
            _check_not_built_from_another_dataset(name, builder, manual)
        return builder
    if manual is not None:
        missing = [
            f
            for f in sorted(set(_expected_files(builder).values()))
            if not os.path.exists(os.path.join(manual, f))
        ]
        if missing:
            raise _offline_error(
                name, builder, manual, f"{missing} missing from {manual!r}"
            )
    elif not _network_reachable(builder):
        raise _offline_error(name, builder, None, "no network")
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=manual, extract_dir=_own_extract_dir(builder))
        )
    except (OSError, tfds.download.DownloadError) as e:
        raise _offline_error(name, builder, manual, f"download failed ({e})") from e
    return builder


def _shared_extract_dir(builder):
    # Where tfds extracts downloads by default, for every dataset alike.
    return os.path.join(builder.data_dir_root, "downloads", "extracted")


def _own_extract_dir(builder):
    # tfds names a file's extraction by the file's name alone and reuses any
    # extraction of that name: MNIST, Fashion-MNIST and KMNIST files share
    # their names, so in one data directory the dataset prepared second from
    # a manual directory was built from the first one's files, silently.
    return os.path.join(_shared_extract_dir(builder), f"{builder.name}-{builder.version}")


def _check_not_built_from_another_dataset(name, builder, manual):
    """Raise if `builder`'s prepared data was built, by tfds's shared
    extraction folder, from another dataset's files of the same names
    (what earlier versions of this package, and tfds used directly, did).
    Compares the start of each extracted file there with this dataset's own
    file in `manual`; reads about 64 KiB a file."""
    if os.path.isdir(_own_extract_dir(builder)):
        return  # prepared here, from its own files
    shared = _shared_extract_dir(builder)
    for file in sorted(set(_expected_files(builder).values())):
        extracted = os.path.join(shared, f"GZIP.{file}")
        own = os.path.join(manual, file)
        if not (file.endswith(".gz") and os.path.isfile(extracted) and os.path.isfile(own)):
            continue
        try:
            with gzip.open(own) as mine, open(extracted, "rb") as theirs:
                same = mine.read(1 << 16) == theirs.read(1 << 16)
        except (OSError, EOFError):
            continue  # not this check's to judge; tfds checks the files it reads
        if not same:
            raise RuntimeError(
                f"The prepared {name!r} data in {builder.data_dir!r} may hold another "
                f"dataset's examples: tensorflow-datasets reuses extracted files by "
                f"name, and {extracted!r} does not hold {own!r}'s contents (MNIST, "
                f"Fashion-MNIST and KMNIST files share their names). Delete "
                f"{builder.data_dir!r} and run again to prepare it from its own files."
            )


def _augmented(images, seed, augment, rotation_degrees):
    """A batch of float images (0..255, before normalisation) augmented as
    the paper's scripts augment with torchvision, each image its own draw.

    Every draw comes from `seed` (a [2] integer tensor) alone, with
    stateless ops: a batch's augmentation depends on its seed only, not on
    what the pipeline drew before, how many batches tf.data prepared in
    parallel, or whether the run resumed.

    - `"rotate"`: RandomRotation(rotation_degrees): an angle uniform in
      [-rotation_degrees, rotation_degrees] about the image centre,
      nearest-neighbour, black outside the image.
    - `"perspective"`: RandomPerspective(distortion_scale=0.5, p=0.5): each
      corner moved inwards by up to a quarter of the side, bilinear, black
      outside.
    - `"flip"`: RandomHorizontalFlip(p=0.5).
    """
    rotate_seed, perspective_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 3))
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)

    def transformed(transforms, interpolation):
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=images, transforms=transforms, output_shape=shape[1:3],
            fill_value=0.0, interpolation=interpolation, fill_mode="CONSTANT")

    if "rotate" in augment:
        degrees = tf.random.stateless_uniform(
            [batch], rotate_seed, -rotation_degrees, rotation_degrees)
        images = transformed(_rotations(degrees * (math.pi / 180.0), h, w), "NEAREST")
    if "perspective" in augment:
        images = transformed(_perspectives(perspective_seed, batch, h, w), "BILINEAR")
    if "flip" in augment:
        flip = tf.random.stateless_uniform([batch], flip_seed) < 0.5
        images = tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)
    return images


def _rotations(angles, height, width):
    # For each output pixel (x, y), the input pixel it shows (the projective
    # transforms' convention): rotated back about the centre, so that the
    # image turns counter-clockwise by `angles` (radians), as torchvision's.
    cos, sin = tf.cos(angles), tf.sin(angles)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    zeros = tf.zeros_like(angles)
    return tf.stack([cos, -sin, cx - cos * cx + sin * cy,
                     sin, cos, cy - sin * cx - cos * cy, zeros, zeros], axis=1)


def _perspectives(seed, batch, height, width, distortion_scale=0.5, p=0.5):
    # torchvision's RandomPerspective.get_params: each corner moves inwards
    # by a whole number of pixels up to distortion_scale * half the side;
    # then the coefficients that take the moved corners (output) back to
    # the image's corners (input), as its _get_perspective_coeffs.
    coin_seed, corner_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    most = tf.floor(distortion_scale * tf.floor(tf.stack([width, height]) / 2))
    inwards = tf.floor(tf.random.stateless_uniform([batch, 4, 2], corner_seed) * (most + 1))
    right, bottom = width - 1, height - 1
    start = tf.constant([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]) * tf.stack([right, bottom])
    # top-left, top-right, bottom-right, bottom-left: the sign that moves inwards
    end = start + inwards * tf.constant([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
    start = tf.broadcast_to(tf.cast(start, tf.float64), [batch, 4, 2])
    end = tf.cast(end, tf.float64)
    ex, ey, sx, sy = end[..., 0], end[..., 1], start[..., 0], start[..., 1]
    ones, zeros = tf.ones_like(ex), tf.zeros_like(ex)
    rows_x = tf.stack([ex, ey, ones, zeros, zeros, zeros, -sx * ex, -sx * ey], axis=-1)
    rows_y = tf.stack([zeros, zeros, zeros, ex, ey, ones, -sy * ex, -sy * ey], axis=-1)
    system = tf.reshape(tf.stack([rows_x, rows_y], axis=2), [batch, 8, 8])
    targets = tf.reshape(tf.stack([sx, sy], axis=2), [batch, 8, 1])
    coefficients = tf.cast(tf.linalg.solve(system, targets)[..., 0], tf.float32)
    identity = tf.constant([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    applied = tf.random.stateless_uniform([batch], coin_seed) < p
    return tf.where(applied[:, None], coefficients, identity)


def _random_resized_crop(image, seed, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    # torchvision's RandomResizedCrop: a random box of `scale` area and
    # `ratio` aspect, resized back to the image size.
    shape = tf.shape(image)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        area_range=scale,
        aspect_ratio_range=ratio,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.image.resize(tf.slice(image, begin, size), shape[:2])
    crop.set_shape(image.shape)  # keep the static shape for later stages
    return crop


def _over_epochs(one_epoch, seed, epoch_range):
    """`one_epoch(epoch_seed, reshuffle)` for each epoch of `epoch_range`,
    back to back; without a range, one epoch reshuffled on every pass.

    tf.data's shuffle takes only Python seeds, so each epoch is its own
    dataset, seeded by (seed, epoch) (and, as every tf.data shuffle,
    TensorFlow's global seed), joined in a balanced tree of
    `concatenate` (depth log2 of the number of epochs)."""
    if epoch_range is None:
        return one_epoch(seed, True)
    epochs = [one_epoch(seed * 1_000_003 + e, False) for e in range(*epoch_range)]
    while len(epochs) > 1:
        epochs = [
            epochs[i].concatenate(epochs[i + 1]) if i + 1 < len(epochs) else epochs[i]
            for i in range(0, len(epochs), 2)
        ]
    return epochs[0]


def from_epoch(data, initial_epoch, epochs, steps_per_epoch):
    """The part of `data` that a fit from `initial_epoch` reads: a resumed
    run's, or a continued trial's (Hyperband's).

    Keras's fit reads a pipeline from its start whatever the initial epoch,
    so the later epochs would train on the first epochs' batches again. A
    pipeline that holds all `epochs` back to back (`load_task(epochs=...)`'s)
    or repeats without end is read from `initial_epoch`'s first batch
    instead, the batches an uninterrupted fit would have trained on; one
    that holds fewer (one epoch, read again each epoch) is left as it is.
    """
    if not (initial_epoch and steps_per_epoch and isinstance(data, tf.data.Dataset)):
        return data
    batches = int(data.cardinality())
    if batches == int(tf.data.INFINITE_CARDINALITY) or batches >= epochs * steps_per_epoch:
        return data.skip(initial_epoch * steps_per_epoch)
    return data


# The pipeline's functions are straight-line TensorFlow (their only
# branches test Python values), so tf.data need not run them through
# AutoGraph, which costs about 0.25 s of every process
# (benchmarks/RESULTS.md).
_plain = tf.autograph.experimental.do_not_convert


@dataclasses.dataclass(frozen=True)
class DecodedSplit:
    """A split decoded to uint8 images and integer labels.

    `images` and `labels` are NumPy arrays when the split is held in memory;
    both are None when it streams from `<path>.images.npy` (too large to
    hold, see `IN_MEMORY_BYTES`).
    """

    count: int
    image_shape: tuple
    images: object = None
    labels: object = None
    path: str = None


def _npy_files(path):
    return path + ".images.npy", path + ".labels.npy", path + ".json"


def _opened(ds):
    """`ds`, or what it returns if it is a function (a split opened late)."""
    return ds() if callable(ds) else ds


def _decoded_meta(path):
    """`(count, image_shape)` of the split decoded at `path` (`decode_split`),
    or None while there is none."""
    meta_file = _npy_files(path)[2]
    if not os.path.exists(meta_file):
        return None
    with open(meta_file) as f:
        meta = json.load(f)
    return int(meta["count"]), tuple(meta["image_shape"])


def _decode_to_memory(ds):
    images, labels = [], []
    for x, y in ds.batch(1024).prefetch(tf.data.AUTOTUNE):
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


def _save_npy(name, array):
    # np.save appends ".npy" to a file name that lacks it (the temporary
    # names do); an open file is written as it is.
    with open(name, "wb") as f:
        np.save(f, array)


def _write_decoded(ds, path):
    """Decode `ds` into the .npy files of `path`: under temporary names,
    renamed when complete, the metadata last, so a partial cache is never
    read. The images go to disk batch by batch (constant memory)."""
    images_file, labels_file, meta_file = _npy_files(path)
    images_tmp, labels_tmp = temporary_path(images_file), temporary_path(labels_file)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    count = int(ds.cardinality())
    shape = tuple(ds.element_spec[0].shape)
    if count < 0:  # unknown length: decode first, then write
        decoded, labels = _decode_to_memory(ds)
        _save_npy(images_tmp, decoded)
        count = len(labels)
    else:
        decoded = np.lib.format.open_memmap(
            images_tmp, mode="w+", dtype=np.uint8, shape=(count, *shape)
        )
        labels, done = np.empty(count, np.int64), 0
        for x, y in ds.batch(1024).prefetch(tf.data.AUTOTUNE):
            decoded[done : done + len(y)] = x.numpy()
            labels[done : done + len(y)] = y.numpy()
            done += len(y)
        decoded.flush()
        del decoded
        if done != count:
            raise RuntimeError(f"Decoded {done} examples where {count} were announced.")
    _save_npy(labels_tmp, labels)
    # Two processes racing here write identical bytes; each rename is atomic.
    os.replace(images_tmp, images_file)
    os.replace(labels_tmp, labels_file)
    write_atomically(meta_file, json.dumps({"count": count, "image_shape": list(shape)}))
    # Version 0.1 kept the decoded split as a tf.data cache at the same stem;
    # those files are no longer read.
    stale = glob.glob(glob.escape(path) + ".data-*") + [path + ".index", path + ".complete"]
    for name in stale:
        if os.path.exists(name):
            os.remove(name)


def decode_split(ds, path=None, in_memory_bytes=None):
    """The (image, label) split `ds`, decoded to uint8 arrays.

    With `path`, the arrays are written once, atomically, to
    `<path>.images.npy` and `<path>.labels.npy` (then `<path>.json`), and
    later calls, in any process, read those files instead of decoding the
    dataset's PNG/JPEG files again. Without `path`, they are decoded into
    memory; where it cannot be written (a read-only data directory), too,
    after a `UserWarning` that names the path and the reason.

    Args:
        ds: a `tf.data.Dataset` of `(uint8 image, integer label)` pairs with
            a fixed image shape, or a function returning one (called only
            if the split has to be decoded).
        path: optional file stem for the decoded files.
        in_memory_bytes: splits with more image bytes stream from disk
            instead of being loaded (default `IN_MEMORY_BYTES`).

    Returns:
        A `DecodedSplit`.
    """
    limit = IN_MEMORY_BYTES if in_memory_bytes is None else in_memory_bytes
    decoded = _decoded_meta(path) if path else None
    if path and decoded is None:
        ds = _opened(ds)
        try:
            _write_decoded(ds, path)
            decoded = _decoded_meta(path)
        except OSError as e:
            for name in glob.glob(temporary_path(glob.escape(path) + ".*")):
                os.remove(name)
            warnings.warn(
                f"Could not write the decoded split to {path!r} ({e}); decoding "
                "it in memory for this run. Pass a writable data directory to "
                "keep it for later runs.",
                stacklevel=2,
            )
            path = None
    if not path:
        images, labels = _decode_to_memory(_opened(ds))
        return DecodedSplit(len(labels), images.shape[1:], images, labels)
    count, shape = decoded
    if count * math.prod(shape) > limit:
        return DecodedSplit(count, shape, path=path)
    images_file, labels_file, _ = _npy_files(path)
    return DecodedSplit(count, shape, np.load(images_file), np.load(labels_file))


def _streamed_examples(split):
    """(image, label) pairs of a split streamed from its .npy files."""
    images_file, labels_file, _ = _npy_files(split.path)
    with open(images_file, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            np.lib.format.read_array_header_1_0(f)
        else:
            np.lib.format.read_array_header_2_0(f)
        header_bytes = f.tell()
    records = tf.data.FixedLengthRecordDataset(
        images_file, record_bytes=math.prod(split.image_shape), header_bytes=header_bytes
    )
    images = records.map(
        _plain(lambda r: tf.reshape(tf.io.decode_raw(r, tf.uint8), split.image_shape)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    labels = tf.data.Dataset.from_tensor_slices(np.load(labels_file))
    # The records' count is not known to tf.data (see _epoch_orders on why
    # fit needs it); the labels' is, and it is the split's.
    return tf.data.Dataset.zip((images, labels)).apply(
        tf.data.experimental.assert_cardinality(split.count))


def _epoch_orders(count, seed, epoch_range, batch_size, per_example=None):
    """Example indices in a random order per epoch, in batches, all epochs in
    one dataset.

    With `epoch_range=(start, stop)`, epochs start..stop-1 back to back, the
    order of epoch e drawn from (seed, e) alone; without, one epoch with a
    new order on every pass. Each element is a batch of indices (no
    per-example work); with `per_example(index, seed)`, each example's
    result instead, seeded from `(seed, epoch key, position)` for per-example
    augmentation, batched within its epoch: a batch never spans two epochs,
    so every epoch has the same batches (`fit`'s `steps_per_epoch`) and a
    resumed run starts where the interrupted one stopped.
    """
    full, rest = divmod(count, batch_size)
    run_seed = tf.constant(seed, tf.int64)

    def one_epoch(key):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(count, dtype=tf.int64), seed=tf.stack([key, run_seed])
        )
        if per_example is not None:
            positions = tf.range(count, dtype=tf.int64)
            # one seed per (run seed, epoch, position): unique for each
            seeds = tf.stack([tf.fill([count], key), run_seed * count + positions], axis=1)
            return tf.data.Dataset.from_tensor_slices((order, seeds)).map(
                _plain(per_example), num_parallel_calls=tf.data.AUTOTUNE
            ).batch(batch_size)
        batches = tf.data.Dataset.from_tensor_slices(
            tf.reshape(order[: full * batch_size], (full, batch_size))
        )
        if rest:
            batches = batches.concatenate(
                tf.data.Dataset.from_tensors(order[full * batch_size :])
            )
        return batches

    if epoch_range is None:
        keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
    else:
        keys = tf.data.Dataset.range(*epoch_range)
    # flat_map hides the length, which Keras's fit needs: given no
    # steps_per_epoch, it would learn an epoch's only by running out of data
    # ("Your input ran out of data" in every search trial), and a search's
    # Hyperband continuation tells from it that the data holds all epochs.
    return keys.flat_map(_plain(one_epoch)).apply(
        tf.data.experimental.assert_cardinality((full + (rest > 0)) * len(keys)))


def _validate_augment(augment):
    items = _validation.comma_list(augment)
    if items is None:
        items = ()
    if isinstance(items, np.ndarray) and items.ndim == 1:
        items = items.tolist()
    if not isinstance(items, (list, tuple)):
        raise ValueError(
            f"`augment` must be a list of {sorted(AUGMENTATIONS)} or a comma list such as "
            f"'rotate,flip'. Received: augment={augment!r}"
        )
    checked = tuple(_validation.choice("augment", a, AUGMENTATIONS) for a in items)
    # Each is one layer of the augmenter, applied once however often it is named.
    _validation.each_once("augment", checked, "each augmentation is applied once", augment)
    return checked


def check_options(name, normalization="paper", image_size=None, channels=None,
                  augment=(), rotation_degrees=None, data_dir=None, manual_dir=None):
    """Check `load_task`'s data options for dataset `name`, before anything
    is read; return `(image_size, channels, augment)` as checked, the size
    and the augmentations as tuples. Options for images (and the folders
    tfds reads them from) are refused on the regression data, which is
    generated, rather than ignored, and `rotation_degrees` without the
    `"rotate"` it sets."""
    # a list or dict would fail the look-up as "unhashable", naming nothing
    if not isinstance(name, str) or (name not in DATASETS and name not in REGRESSION_DATASETS):
        raise ValueError(f"Unknown dataset {name!r}. Available: {dataset_names()}")
    normalization = _validation.choice("normalization", normalization, NORMALIZATIONS)
    augment = _validate_augment(augment)
    if rotation_degrees is not None:
        _validation.positive_number("rotation_degrees", rotation_degrees)
    if image_size is not None:
        image_size = _validation.shape("image_size", image_size, ("height", "width"))
    # The allowed item comes back: channels=3.0 or True would otherwise reach
    # the input shape as a float or a bool.
    channels = _validation.choice("channels", channels, (None, 1, 3))
    if name in REGRESSION_DATASETS:
        given = {k: v for k, v in (("image_size", image_size), ("channels", channels),
                                   ("augment", augment), ("rotation_degrees", rotation_degrees),
                                   ("data_dir", data_dir), ("manual_dir", manual_dir))
                 if v}
        if normalization != "paper":
            given["normalization"] = normalization
        if given:
            raise ValueError(
                f"{', '.join(given)}: image datasets only; {name!r} is the paper's "
                f"regression data. Received: "
                + ", ".join(f"{k}={v!r}" for k, v in given.items())
            )
    if rotation_degrees is not None and "rotate" not in augment:
        raise ValueError(
            "`rotation_degrees` is the range of the 'rotate' augmentation, which `augment` "
            f"does not ask for. Received: rotation_degrees={rotation_degrees!r}, "
            f"augment={augment!r}"
        )
    return image_size, channels, augment


def image_pipeline(
    ds,
    spec,
    batch_size,
    training,
    seed=0,
    normalization="paper",
    image_size=None,
    channels=None,
    augment=(),
    rotation_degrees=ROTATION_DEGREES,
    epoch_range=None,
    cache_path=None,
    in_memory_bytes=None,
):
    """Batches of `(float32 images, int32 labels)` from a tfds split.

    `ds` is the split, a `tf.data.Dataset` of `(uint8 image, label)`, or a
    function that returns it; a function is called only if the split has to
    be decoded (no decoded copy at `cache_path` yet).

    Normalisation, resizing and augmentation run as tf.data/tf.image/Keras
    preprocessing ops (never Python loops). Augmentation and shuffling only
    when `training`; then, with `epoch_range=(start, stop)`, the dataset
    holds epochs `start..stop-1` back to back, each shuffled from
    `(seed, epoch)` (a streamed split's shuffle buffer also from
    TensorFlow's global seed) for `fit(steps_per_epoch=...)` and exact
    resumption; without it, one epoch, reshuffled on every pass.

    The split is decoded (and resized) to uint8 once (`decode_split`; with
    `cache_path`, on disk for later runs). A split of at most
    `in_memory_bytes` image bytes (default `IN_MEMORY_BYTES`) is held in
    memory: each training epoch is a random permutation of all of it,
    gathered batch by batch. A larger one streams from disk through a
    shuffle buffer of 10,000 examples.
    """
    normalization = _validation.choice("normalization", normalization, NORMALIZATIONS)
    augment = _validate_augment(augment)

    per_batch = tuple(a for a in augment if a != "crop") if training else ()

    def to_float(images, labels, augment_seed=None):
        # Runs on whole batches: memory and the shuffle buffer hold raw
        # uint8 images (4x less memory traffic than float32), and the
        # conversion is one vectorised op per batch instead of per image.
        images = tf.cast(images, tf.float32)
        if channels == 3 and images.shape[-1] == 1:
            images = tf.image.grayscale_to_rgb(images)
        if augment_seed is not None:  # before normalising: black fills, as torchvision's
            images = _augmented(images, augment_seed, per_batch, rotation_degrees)
        if normalization != "none":
            images = images / 255.0
        if normalization == "paper" and spec.mean is not None:
            images = (images - spec.mean) / spec.std
        return images, tf.cast(labels, tf.int32)

    def cropped(image, label, crop_seed):
        crop = _random_resized_crop(tf.cast(image, tf.float32), crop_seed)
        return tf.cast(crop, image.dtype), label

    if image_size is not None:
        # Per image, before batching (datasets of varying image size), and
        # back to uint8 so that the decoded split stays small.
        def resize(image, label):
            image = tf.image.resize(image, image_size)
            return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8), label

        def resized(source=ds):
            return _opened(source).map(_plain(resize), num_parallel_calls=tf.data.AUTOTUNE)

        ds = resized
    split = decode_split(ds, cache_path, in_memory_bytes)
    crop = training and "crop" in augment
    parallel = tf.data.AUTOTUNE
    if split.images is not None:
        images, labels = tf.constant(split.images), tf.constant(split.labels)
        if not training:
            out = tf.data.Dataset.range(0, split.count, batch_size).map(
                _plain(lambda i: (images[i : i + batch_size], labels[i : i + batch_size]))
            )
        elif crop:  # per example, with stateless seeds (seed, epoch key, position)
            out = _epoch_orders(split.count, seed, epoch_range, batch_size,
                                lambda i, s: cropped(images[i], labels[i], s))
        else:
            out = _epoch_orders(split.count, seed, epoch_range, batch_size).map(
                _plain(lambda i: (tf.gather(images, i), tf.gather(labels, i))),
                num_parallel_calls=parallel,
            )
    else:
        examples = _streamed_examples(split)

        def one_epoch(epoch_seed, reshuffle):
            out = examples.shuffle(
                10_000, seed=epoch_seed, reshuffle_each_iteration=reshuffle
            )
            if crop:  # stateless seeds (epoch seed, position)
                crop_seeds = tf.data.Dataset.range(2**62).map(
                    _plain(lambda i: tf.stack([tf.cast(epoch_seed, tf.int64), i]))
                )
                out = tf.data.Dataset.zip((out, crop_seeds)).map(
                    _plain(lambda xy, s: cropped(xy[0], xy[1], s)), num_parallel_calls=parallel
                )
            return out.batch(batch_size)

        out = (
            _over_epochs(one_epoch, seed, epoch_range)
            if training
            else examples.batch(batch_size)
        )
    if per_batch:
        # A batch's augmentation is seeded by its number in the run (epoch
        # e's batches numbered from e times the epoch's), so a resumed run
        # draws what the uninterrupted one would have; without an epoch
        # range, afresh on every pass.
        if epoch_range is None:
            numbers = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        else:
            steps = -(-split.count // batch_size)
            numbers = tf.data.Dataset.range(epoch_range[0] * steps, epoch_range[1] * steps)
        run_seed = tf.constant(seed, tf.int64)
        out = tf.data.Dataset.zip((out, numbers)).map(
            _plain(lambda batch, n: to_float(*batch, augment_seed=tf.stack([n, run_seed]))),
            num_parallel_calls=parallel,
        )
    else:
        out = out.map(_plain(to_float), num_parallel_calls=parallel)
    return out.prefetch(tf.data.AUTOTUNE)


def _first_examples(info, split, limit, what):
    """The tfds split of the first `limit` examples of `split`, which may be a
    union such as "train+validation" (where a slice at the end of the string
    would cut only its last part). More than the split holds is an error."""
    chosen, left = [], limit
    for part in split.split("+"):
        size = info.splits[part].num_examples
        if left <= size:
            return "+".join(chosen + [part if left == size else f"{part}[:{left}]"])
        chosen.append(part)
        left -= size
    raise ValueError(
        f"`{what}` asks for more examples than the {split!r} split of {info.name!r} "
        f"holds ({limit - left}). Received: {what}={limit}"
    )


def load_task(
    name,
    batch_size=64,
    seed=0,
    normalization="paper",
    image_size=None,
    channels=None,
    augment=(),
    rotation_degrees=None,
    data_dir=None,
    manual_dir=None,
    train_examples=None,
    test_examples=None,
    epochs=None,
    initial_epoch=0,
):
    """The train/test pipelines of dataset `name` (see `dataset_names()`).

    Args:
        name: a tfds dataset of `DATASETS` or a `table1/<target>` task.
        batch_size: batch size of both pipelines.
        seed: shuffling, augmentation and (regression) data seed. The same
            seed gives the same data order, so dense and spinal models can
            be trained on identical batches.
        normalization: `"paper"` (the paper's mean/std where it gives them,
            else [0, 1]), `"unit"` ([0, 1]) or `"none"` (raw 0..255, for
            backbones that preprocess inside the model).
        image_size: `(height, width)` to resize to, or None.
        channels: 3 converts grayscale images to RGB (backbones).
        augment: any of `"rotate"` (a random rotation of up to
            `rotation_degrees` either way, default 10; `rotation_degrees`
            without `"rotate"` is an error),
            `"perspective"`, `"crop"` (random resized crop), `"flip"`, as a
            list or a comma list such as `"rotate,flip"`: torchvision's
            RandomRotation, RandomPerspective, RandomResizedCrop and
            RandomHorizontalFlip as the paper's scripts use them, drawn
            per image from `seed` and the batch's place in the run alone
            (a repeated or resumed run draws the same). Image options
            (`image_size`, `channels`, `augment`, a `normalization` other
            than `"paper"`) are refused for the `table1/*` data.
        data_dir: tfds data directory (refused for the `table1/*` data,
            which is generated).
        manual_dir: folder with the dataset's original files (offline;
            refused for `table1/*`).
        train_examples, test_examples: keep only the first N examples
            (quick runs and tests); for `table1/*`, the number of examples
            generated (default 1000 each).
        epochs, initial_epoch: when `epochs` is given, `task.train` holds
            epochs `initial_epoch..epochs-1` back to back, to be used with
            `fit(steps_per_epoch=task.steps_per_epoch)`; an interrupted run
            resumed at epoch k then sees exactly the batches an
            uninterrupted run would. Each epoch is shuffled from
            `(seed, epoch)`: alone for image splits held in memory; with
            TensorFlow's global seed at this call as well for the
            `table1/*` data and splits streamed from disk, which tf.data's
            shuffle orders (`train` and `tune` call
            `keras.utils.set_random_seed(seed)` first).

    Returns:
        A `Task`.

    Example:

    >>> task = load_task("table1/sum", batch_size=64)  # generated, no download
    >>> task.input_shape, task.num_outputs, task.steps_per_epoch
    ((8,), 1, 16)
    """
    batch_size = _validation.positive_int("batch_size", batch_size)
    train_examples = _validation.positive_int("train_examples", train_examples, allow_none=True)
    test_examples = _validation.positive_int("test_examples", test_examples, allow_none=True)
    data_dir = _validation.path("data_dir", data_dir, allow_none=True)
    manual_dir = _validation.path("manual_dir", manual_dir, allow_none=True)
    epoch_range = None
    if epochs is None and initial_epoch != 0:
        raise ValueError(
            "`initial_epoch` picks the first of `epochs` epochs of training data; "
            f"give `epochs` with it. Received: initial_epoch={initial_epoch!r}, epochs=None"
        )
    if epochs is not None:
        epochs = _validation.positive_int("epochs", epochs)
        if not _validation.is_int(initial_epoch) or not 0 <= initial_epoch < epochs:
            raise ValueError(
                f"`initial_epoch` must be in [0, epochs={epochs}). Received: "
                f"initial_epoch={initial_epoch!r}"
            )
        epoch_range = (initial_epoch, epochs)
    seed = _validation.non_negative_int("seed", seed)
    image_size, channels, augment = check_options(
        name, normalization, image_size, channels, augment, rotation_degrees,
        data_dir, manual_dir,
    )
    options = dict(batch_size=batch_size, seed=seed, normalization=normalization,
                   image_size=image_size, channels=channels, augment=augment,
                   rotation_degrees=rotation_degrees, train_examples=train_examples,
                   test_examples=test_examples, epochs=epochs, initial_epoch=initial_epoch)
    if name in REGRESSION_DATASETS:
        target = name.split("/", 1)[1]
        x, y = regression_data(target, num_samples=train_examples or 1000, seed=seed)
        xt, yt = regression_data(
            target, num_samples=test_examples or 1000, seed=seed + 1_000_003
        )
        base = tf.data.Dataset.from_tensor_slices((x, y))
        train = _over_epochs(
            lambda s, reshuffle: base.shuffle(
                len(x), seed=s, reshuffle_each_iteration=reshuffle
            ).batch(batch_size),
            seed,
            epoch_range,
        ).prefetch(tf.data.AUTOTUNE)
        test = tf.data.Dataset.from_tensor_slices((xt, yt)).batch(batch_size)
        return Task(name, "regression", train, test, (8,), 1, len(x), len(xt),
                    math.ceil(len(x) / batch_size), options)
    builder = prepare(name, data_dir=data_dir, manual_dir=manual_dir)
    spec = DATASETS[name]
    info = builder.info
    native_channels = info.features["image"].shape[-1]
    if channels == 1 and native_channels != 1:
        raise ValueError(
            f"channels=1, but {name!r} has {native_channels}-channel images; "
            "`channels` converts grayscale to RGB (3), not back."
        )
    if image_size is None and None in info.features["image"].shape:
        raise ValueError(
            f"Dataset {name!r} has images of varying size; pass image_size "
            "(--image-size), e.g. (224, 224)."
        )
    splits = {}
    sizes = {}
    for key, split, limit in (
        ("train", spec.train_split, train_examples),
        ("test", spec.test_split, test_examples),
    ):
        if limit:
            split = _first_examples(info, split, limit, f"{key}_examples")
        # Opened only if its decoded copy is missing: opening both MNIST
        # splits took 0.07 s of every run (benchmarks/RESULTS.md).
        source = functools.partial(
            builder.as_dataset, split=split, as_supervised=True, shuffle_files=False
        )
        size_tag = "x".join(map(str, image_size)) if image_size else "orig"
        cache_path = os.path.join(
            builder.data_dir, f"decoded-{split.replace(':', '_').replace('[', '_').replace(']', '')}-{size_tag}"
        )
        splits[key] = image_pipeline(
            source,
            spec,
            batch_size,
            training=key == "train",
            seed=seed,
            normalization=normalization,
            image_size=image_size,
            channels=channels,
            augment=augment,
            rotation_degrees=ROTATION_DEGREES if rotation_degrees is None else rotation_degrees,
            epoch_range=epoch_range,
            cache_path=cache_path,
        )
        decoded = _decoded_meta(cache_path)
        # None: the data directory is read-only, the split was decoded in memory.
        sizes[key] = decoded[0] if decoded else int(source().cardinality())
    shape = info.features["image"].shape
    if image_size is not None:
        shape = tuple(image_size) + shape[-1:]
    if channels is not None:
        shape = shape[:-1] + (channels,)
    return Task(
        name,
        "classification",
        splits["train"],
        splits["test"],
        tuple(shape),
        int(info.features["label"].num_classes),
        sizes["train"],
        sizes["test"],
        math.ceil(sizes["train"] / batch_size),
        options,
    )
