import glob
import os
import sys
import types
import warnings

import keras
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import SHARED_DATA
from spinalnet_keras import data
from spinalnet_keras.data import load_task
from spinalnet_keras.data import regression_data

# MNIST test-set label counts, from the official files.
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_regression_data_refuses_negative_noise():
    with pytest.raises(ValueError, match="noise=-0.2"):
        data.regression_data("sum", noise=-0.2)


def test_regression_data_follows_the_paper():
    x, y = regression_data("prod", seed=3)
    assert x.shape == (1000, 8) and y.shape == (1000, 1)
    assert x.dtype == np.float32 and y.dtype == np.float32
    noise = y[:, 0] - x.astype("float64").prod(axis=1)
    assert noise.min() >= -1e-5 and noise.max() < 0.2 + 1e-5
    assert 0.08 < noise.mean() < 0.12  # 0.2 * U[0, 1)
    assert abs(x.mean()) < 0.05 and abs(x.std() - 1) < 0.05
    np.testing.assert_array_equal(regression_data("prod", seed=3)[0], x)
    assert not np.array_equal(regression_data("prod", seed=4)[0], x)
    xs, ys = regression_data("sin_sum", num_samples=10)
    np.testing.assert_allclose(ys[:, 0] - np.sin(xs.sum(1)), (ys[:, 0] - np.sin(xs.sum(1))).clip(0, 0.2), atol=1e-5)
    with pytest.raises(ValueError, match="target='cube'"):
        regression_data("cube")


def test_regression_task_pipelines():
    task = load_task("table1/sin_prod", batch_size=64, seed=1)
    assert task.kind == "regression" and task.input_shape == (8,) and task.num_outputs == 1
    batches = list(task.train)
    assert [b[0].shape[0] for b in batches] == [64] * 15 + [40]
    assert task.train_size == task.test_size == 1000
    test_x = np.concatenate([b[0] for b in task.test])
    train_x = np.concatenate([b[0] for b in batches])
    assert not np.isin(test_x[:, 0], train_x[:, 0]).any()  # fresh test samples


def test_resumed_epochs_see_the_uninterrupted_order():
    full = load_task("table1/sum", batch_size=100, seed=5, epochs=4)
    resumed = load_task("table1/sum", batch_size=100, seed=5, epochs=4, initial_epoch=2)
    assert full.steps_per_epoch == 10
    a = [b[1].numpy() for b in full.train]
    b = [b[1].numpy() for b in resumed.train]
    assert len(a) == 40 and len(b) == 20
    for x, y in zip(a[20:], b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], a[10])  # each epoch has its own order
    with pytest.raises(ValueError, match="initial_epoch=4"):
        load_task("table1/sum", epochs=4, initial_epoch=4)


def test_real_mnist_pipeline(mnist_data_dir):
    task = load_task("mnist", batch_size=64, seed=0, data_dir=mnist_data_dir)
    assert (task.train_size, task.test_size) == (60000, 10000)
    assert task.input_shape == (28, 28, 1) and task.num_outputs == 10
    x, y = next(iter(task.train))
    assert x.shape == (64, 28, 28, 1) and x.dtype == "float32" and y.dtype == "int32"
    # the paper's normalisation: (x/255 - 0.1307) / 0.3081
    np.testing.assert_allclose(float(np.min(x)), -0.1307 / 0.3081, rtol=1e-4)
    np.testing.assert_allclose(float(np.max(x)), (1 - 0.1307) / 0.3081, rtol=1e-4)
    labels = np.concatenate([b[1] for b in task.test])
    assert np.bincount(labels).tolist() == MNIST_TEST_COUNTS
    # same seed, same order; another seed, another order
    again = load_task("mnist", batch_size=64, seed=0, data_dir=mnist_data_dir)
    other = load_task("mnist", batch_size=64, seed=1, data_dir=mnist_data_dir)
    np.testing.assert_array_equal(next(iter(again.train))[1], y)
    assert not np.array_equal(next(iter(other.train))[1], y)


def test_mnist_for_backbones_and_augmentation(mnist_data_dir):
    task = load_task("mnist", batch_size=8, normalization="none", image_size=(32, 32),
                     channels=3, augment=("rotate", "perspective", "crop", "flip"),
                     data_dir=mnist_data_dir, train_examples=64, test_examples=16)
    assert task.input_shape == (32, 32, 3) and (task.train_size, task.test_size) == (64, 16)
    x, _ = next(iter(task.train))
    assert x.shape == (8, 32, 32, 3)
    assert float(np.max(x)) > 100 and float(np.min(x)) >= -1e-3  # raw 0..255
    np.testing.assert_allclose(x[..., 0], x[..., 2])  # grey -> RGB
    # numpy and float spellings of the same options give the same plain shape
    plain = load_task("mnist", batch_size=8, normalization="none", image_size=np.array([32, 32]),
                      channels=3.0, data_dir=mnist_data_dir, train_examples=np.int64(64),
                      test_examples=16)
    assert plain.input_shape == (32, 32, 3) and all(type(d) is int for d in plain.input_shape)
    assert plain.train_size == 64
    assert not np.allclose(next(iter(plain.train))[0], x)
    xt, _ = next(iter(task.test))  # no augmentation at test time
    np.testing.assert_allclose(next(iter(plain.test))[0], xt)
    unit = load_task("mnist", batch_size=8, normalization="unit", data_dir=mnist_data_dir,
                     train_examples=64, test_examples=16)
    xu, _ = next(iter(unit.train))
    assert float(np.min(xu)) >= 0 and float(np.max(xu)) <= 1
    # more than the split holds is refused, not quietly cut to what there is
    with pytest.raises(ValueError, match=r"more examples than the 'train' split of 'mnist' "
                       r"holds \(60000\). Received: train_examples=60001"):
        load_task("mnist", data_dir=mnist_data_dir, train_examples=60001)


def test_first_examples_of_a_union_of_splits():
    # oxford_flowers102 trains on "train+validation": a slice at the end of
    # that string would cut the validation part only.
    info = types.SimpleNamespace(name="oxford_flowers102", splits={
        "train": types.SimpleNamespace(num_examples=1020),
        "validation": types.SimpleNamespace(num_examples=1020)})
    for limit, split in [(100, "train[:100]"), (1020, "train"),
                         (1500, "train+validation[:480]"), (2040, "train+validation")]:
        assert data._first_examples(info, "train+validation", limit, "train_examples") == split
    with pytest.raises(ValueError, match=r"the 'train\+validation' split of 'oxford_flowers102' "
                       r"holds \(2040\). Received: train_examples=2041"):
        data._first_examples(info, "train+validation", 2041, "train_examples")


@pytest.mark.parametrize("image_size", [None, (32, 32)])
def test_decoded_splits_are_read_without_opening_tfds_again(mnist_data_dir, monkeypatch,
                                                             image_size):
    def load():
        return load_task("mnist", batch_size=16, seed=3, image_size=image_size,
                         data_dir=mnist_data_dir, train_examples=96, test_examples=48)

    first = load()  # decodes (and resizes) both splits, once
    opened = []
    original = tfds.core.DatasetBuilder.as_dataset
    monkeypatch.setattr(tfds.core.DatasetBuilder, "as_dataset",
                        lambda self, *a, **k: opened.append(k["split"]) or original(self, *a, **k))
    again = load()
    assert opened == []
    assert (again.train_size, again.test_size, again.steps_per_epoch) == (96, 48, 6)
    assert again.input_shape == first.input_shape
    for a, b in zip(again.train, first.train):
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[0], b[0])
    # A split without a decoded copy is opened, once.
    changed = load_task("mnist", batch_size=16, image_size=image_size, data_dir=mnist_data_dir,
                        train_examples=96, test_examples=40)
    assert opened == ["test[:40]"] and changed.test_size == 40


def test_other_datasets_with_tfds_mock_data(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "_network_reachable", lambda builder: True)
    for name, shape, classes in [("cifar10", (32, 32, 3), 10), ("fashion_mnist", (28, 28, 1), 10),
                                 ("emnist/letters", (28, 28, 1), 37), ("svhn_cropped", (32, 32, 3), 10)]:
        with tfds.testing.mock_data(num_examples=20, data_dir=str(tmp_path)):
            task = load_task(name, batch_size=5, data_dir=str(tmp_path))
            x, y = next(iter(task.train))
        assert task.input_shape == shape and task.num_outputs == classes
        assert x.shape == (5,) + shape and x.dtype == "float32"
        # the decoded splits are kept, their folder made where tfds has none
        written = sorted(os.path.basename(p) for p in glob.glob(
            str(tmp_path / name / "*" / "decoded-*.json")))
        assert written == ["decoded-test-orig.json", "decoded-train-orig.json"], name
    with tfds.testing.mock_data(num_examples=6, data_dir=str(tmp_path)):
        with pytest.raises(ValueError, match="images of varying size; pass image_size"):
            load_task("caltech101", data_dir=str(tmp_path))
        task = load_task("caltech101", batch_size=3, image_size=(40, 40), data_dir=str(tmp_path))
        assert next(iter(task.train))[0].shape == (3, 40, 40, 3)


def test_offline_errors_say_which_files_go_where(tmp_path, monkeypatch):
    empty = tmp_path / "manual"
    empty.mkdir()
    with pytest.raises(RuntimeError) as err:
        data.prepare("kmnist", data_dir=str(tmp_path / "tfds"), manual_dir=str(empty))
    message = str(err.value)
    for f in ["train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]:
        assert f in message
    assert str(empty) in message and "SPINALNET_KERAS_MANUAL_DIR" in message
    monkeypatch.setattr(data, "_network_reachable", lambda builder: False)
    monkeypatch.delenv("SPINALNET_KERAS_MANUAL_DIR", raising=False)
    with pytest.raises(RuntimeError, match=r"no network.*cifar-10-binary.tar.gz"):
        data.prepare("cifar10", data_dir=str(tmp_path / "tfds"))


def test_a_tfds_that_fails_to_import_is_named_with_its_cause(tmp_path, monkeypatch):
    # What tensorflow 2.19 (protobuf < 6) with the current tensorflow-metadata
    # gives: tfds logs the error of its own import and stays half-loaded.
    package = tmp_path / "tensorflow_datasets"
    package.mkdir()
    (package / "public_api.py").write_text(
        "raise RuntimeError('gencode 6.31.1 runtime 5.29.6')\n")
    broken = types.ModuleType("tensorflow_datasets")
    broken.__path__ = [str(package)]
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", broken)
    monkeypatch.delitem(sys.modules, "tensorflow_datasets.public_api", raising=False)
    with pytest.raises(ImportError) as err:
        data.prepare("mnist", data_dir=str(tmp_path / "tfds"))
    message = str(err.value)
    assert "failed to import (RuntimeError: gencode 6.31.1 runtime 5.29.6)" in message
    assert "protobuf " in message and "tensorflow-metadata " in message
    assert "pip install -U tensorflow tensorflow-datasets" in message
    assert isinstance(err.value.__cause__, RuntimeError)


def test_manual_dir_from_environment_and_subfolder(monkeypatch, tmp_path):
    if not os.path.isdir(os.path.join(SHARED_DATA, "mnist")):
        pytest.skip("real MNIST files not available")
    monkeypatch.setenv("SPINALNET_KERAS_MANUAL_DIR", SHARED_DATA)
    assert data._manual_dir_for("mnist", None) == os.path.join(SHARED_DATA, "mnist")
    assert data._manual_dir_for("mnist", os.path.join(SHARED_DATA, "mnist")).endswith("mnist")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data._manual_dir_for("mnist", str(tmp_path / "nope"))


_MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def _raw_train_images(name):
    import gzip

    with gzip.open(os.path.join(SHARED_DATA, name, _MNIST_FILES[0])) as f:
        raw = np.frombuffer(f.read()[16:], np.uint8)
    return {bytes(image) for image in raw.reshape(-1, 28 * 28)}


def test_mnist_is_not_built_from_fashion_mnist_files_of_the_same_names(tmp_path):
    # tfds names a file's extraction by the file's name alone and reuses it:
    # in a data folder where Fashion-MNIST was prepared from a manual
    # directory first, MNIST was built from Fashion-MNIST's files.
    import gzip
    import shutil

    if not os.path.isdir(os.path.join(SHARED_DATA, "fashion_mnist")):
        pytest.skip("real Fashion-MNIST files not available")
    data_dir = tmp_path / "tfds"
    shared = data_dir / "downloads" / "extracted"
    shared.mkdir(parents=True)
    for file in _MNIST_FILES:  # as preparing fashion_mnist left them
        with gzip.open(os.path.join(SHARED_DATA, "fashion_mnist", file)) as f:
            (shared / f"GZIP.{file}").write_bytes(f.read())
    builder = data.prepare("mnist", data_dir=str(data_dir), manual_dir=SHARED_DATA)
    examples = [bytes(x.numpy().ravel()) for x, _ in
                builder.as_dataset(split="train[:20]", as_supervised=True)]
    assert set(examples) <= _raw_train_images("mnist")
    assert not set(examples) & _raw_train_images("fashion_mnist")
    # Prepared as before (from the shared extractions), it is refused with
    # what to do; prepared here, it is taken.
    assert data.prepare("mnist", data_dir=str(data_dir), manual_dir=SHARED_DATA).is_prepared()
    earlier = tmp_path / "earlier"
    shutil.copytree(data_dir / "mnist", earlier / "mnist")
    shutil.copytree(shared, earlier / "downloads" / "extracted", ignore=lambda d, names: [
        n for n in names if not n.startswith("GZIP.")])
    with pytest.raises(RuntimeError, match=(
            r"The prepared 'mnist' data in '.*earlier/mnist/3.0.1' may hold another "
            r"dataset's examples: .*GZIP.t10k-images-idx3-ubyte.gz' does not hold "
            r"'.*mnist/t10k-images-idx3-ubyte.gz''s contents .* Delete "
            r"'.*earlier/mnist/3.0.1' and run again")):
        data.prepare("mnist", data_dir=str(earlier), manual_dir=SHARED_DATA)
    # without a manual directory there is nothing to compare with
    assert data.prepare("mnist", data_dir=str(earlier)).is_prepared()


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"Unknown dataset 'mnist2'.*table1/sum"):
        load_task("mnist2")
    with pytest.raises(ValueError, match=r"Unknown dataset \['mnist'\].*table1/sum"):
        load_task(["mnist"])
    with pytest.raises(ValueError, match=r"Unknown dataset \{'mnist': 1\}"):
        data.prepare({"mnist": 1})
    with pytest.raises(ValueError, match="batch_size=0"):
        load_task("table1/sum", batch_size=0)
    with pytest.raises(ValueError, match="augment='blur'"):
        data.image_pipeline(None, data.DATASETS["mnist"], 4, True, augment=("blur",))
    with pytest.raises(ValueError, match="normalization='z'"):
        data.image_pipeline(None, data.DATASETS["mnist"], 4, True, normalization="z")
    for kwargs, match in [
        (dict(normalization="z"), "normalization='z'"),
        (dict(augment=("blur",)), "augment='blur'"),
        (dict(channels=2), r"`channels` must be one of \[1, 3, None\]. Received: channels=2"),
        (dict(channels=True), "Received: channels=True"),  # not taken as 1
        (dict(image_size=(32,)), r"image_size=\(32,\)"),
        (dict(seed=-1), "seed=-1"),
        (dict(rotation_degrees=0), "rotation_degrees=0"),
        (dict(rotation_degrees=30), r"rotation_degrees: image datasets only.*rotation_degrees=30"),
        (dict(augment=3), r"list of \['crop', 'flip', 'perspective', 'rotate'\] or a comma "
         "list such as 'rotate,flip'. Received: augment=3"),
        (dict(data_dir=3), "`data_dir` must be a path. Received: data_dir=3"),
        # initial_epoch means something only within `epochs`
        (dict(initial_epoch=1), "give `epochs` with it. Received: initial_epoch=1, epochs=None"),
        (dict(epochs=3, initial_epoch=1.5), "Received: initial_epoch=1.5"),
        # options for images are refused on the regression data, not ignored
        (dict(augment=("flip",)), r"augment: image datasets only.*augment=\('flip',\)"),
        (dict(channels=3, normalization="none"),
         r"channels, normalization: image datasets only.*channels=3, normalization='none'"),
        # the data is generated: no folder is read
        (dict(data_dir="/tmp/tfds", manual_dir="/tmp/files"),
         r"data_dir, manual_dir: image datasets only.*data_dir='/tmp/tfds', "
         "manual_dir='/tmp/files'"),
    ]:
        with pytest.raises(ValueError, match=match):
            load_task("table1/sum", **kwargs)
    # checked before any image is read: no data needed
    for kwargs, match in [
        (dict(rotation_degrees=30), "the range of the 'rotate' augmentation, which `augment` "
         r"does not ask for. Received: rotation_degrees=30, augment=\(\)"),
        (dict(augment="rotate,flip,rotate"), "`augment` names 'rotate' more than once"),
    ]:
        with pytest.raises(ValueError, match=match):
            load_task("mnist", data_dir="/nonexistent", **kwargs)


def _digits(n=10):
    import tensorflow as tf

    # image i is filled with i, label i % 3
    return tf.data.Dataset.range(n).map(
        lambda i: (tf.fill([2, 2, 1], tf.cast(i, tf.uint8)), i % 3))


def test_decoded_split_is_written_once_and_atomically(tmp_path):
    path = str(tmp_path / "decoded-train-orig")
    for old in (".index", ".complete", ".data-00000-of-00001"):  # version 0.1's cache
        (tmp_path / ("decoded-train-orig" + old)).write_text("")
    (tmp_path / "decoded-test-orig.index").write_text("")  # another split's: kept
    first = data.decode_split(_digits(), path)
    names = sorted(os.listdir(tmp_path))
    # no temporary files left, and the superseded cache of this split is gone
    assert names == ["decoded-test-orig.index", "decoded-train-orig.images.npy",
                     "decoded-train-orig.json", "decoded-train-orig.labels.npy"]
    assert first.count == 10 and first.image_shape == (2, 2, 1)
    assert first.images[:, 0, 0, 0].tolist() == list(range(10))
    assert first.labels.tolist() == [i % 3 for i in range(10)]
    # a later run reads the finished files, not the source
    again = data.decode_split(_digits().map(lambda x, y: (x + 100, y)), path)
    np.testing.assert_array_equal(again.images, first.images)
    # a location that cannot be written (here: below a file, so even root
    # cannot) decodes into memory instead
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.warns(UserWarning, match="Could not write the decoded split"):
        in_memory = data.decode_split(_digits(), str(blocker / "decoded"))
    np.testing.assert_array_equal(in_memory.images, first.images)
    # above the memory budget, the split streams from disk
    streamed = data.decode_split(_digits(), path, in_memory_bytes=39)
    assert streamed.images is None and streamed.path == path and streamed.count == 10
    # a split of unknown length (filtered) is written to disk as well
    unknown = _digits().filter(lambda x, y: True)
    assert int(unknown.cardinality()) < 0
    filtered_path = str(tmp_path / "filtered" / "decoded-train-orig")
    os.makedirs(os.path.dirname(filtered_path))
    filtered = data.decode_split(unknown, filtered_path, in_memory_bytes=39)
    assert filtered.path == filtered_path and filtered.count == 10
    assert sorted(os.listdir(tmp_path / "filtered")) == [
        "decoded-train-orig.images.npy", "decoded-train-orig.json",
        "decoded-train-orig.labels.npy"]
    np.testing.assert_array_equal(np.load(filtered_path + ".images.npy"), first.images)


def test_a_decode_that_fails_part_way_leaves_no_temporary_file(tmp_path, monkeypatch):
    # The images and labels are complete under their temporary names when
    # the rename fails (a full disk, a permission): they are removed.
    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(data.os, "replace", refuse)
    with pytest.warns(UserWarning, match="No space left on device"):
        split = data.decode_split(_digits(), str(tmp_path / "decoded-train-orig"))
    assert split.count == 10 and split.images[:, 0, 0, 0].tolist() == list(range(10))
    assert os.listdir(tmp_path) == []


def _epoch_labels(ds, epochs, steps):
    batches = [b[1].numpy() for b in ds]
    assert len(batches) == epochs * steps
    return [np.concatenate(batches[e * steps:(e + 1) * steps]) for e in range(epochs)]


@pytest.mark.parametrize("augment", [(), ("crop",)])  # per batch, per example
@pytest.mark.parametrize("in_memory_bytes", [None, 0])  # held in memory, streamed
def test_training_epochs_shuffle_every_example_from_seed_and_epoch(tmp_path, in_memory_bytes,
                                                                    augment):
    import tensorflow as tf

    # constant images: a crop keeps the value, the example's label
    images = tf.data.Dataset.range(50).map(lambda i: (tf.fill([4, 4, 1], tf.cast(i, tf.uint8)), i))

    def pipeline(**kwargs):
        return data.image_pipeline(images, data.DATASETS["cifar10"], 8, True, seed=4,
                                   normalization="none", cache_path=str(tmp_path / "d"),
                                   in_memory_bytes=in_memory_bytes, augment=augment, **kwargs)

    # 50 = 6 x 8 + 2: every epoch ends with its own short batch (a batch
    # spanning two epochs would leave the last epoch short of its 7 steps),
    # and tf.data knows the count
    assert int(pipeline(epoch_range=(0, 3)).cardinality()) == 21
    epochs = _epoch_labels(pipeline(epoch_range=(0, 3)), 3, 7)
    for labels in epochs:
        assert sorted(labels.tolist()) == list(range(50))  # every example once
    assert not np.array_equal(epochs[0], epochs[1])  # each epoch its own order
    resumed = _epoch_labels(pipeline(epoch_range=(1, 3)), 2, 7)
    np.testing.assert_array_equal(resumed[0], epochs[1])
    np.testing.assert_array_equal(resumed[1], epochs[2])
    # images travel with their labels
    x, y = next(iter(pipeline(epoch_range=(0, 1))))
    np.testing.assert_array_equal(x.numpy()[:, 0, 0, 0], y.numpy())
    # without an epoch range: one epoch, reshuffled on every pass
    one = pipeline()
    a, b = _epoch_labels(one, 1, 7)[0], _epoch_labels(one, 1, 7)[0]
    assert sorted(a.tolist()) == list(range(50)) and not np.array_equal(a, b)
    # ... whose length is known (also with per-example crops), so that
    # Keras's fit need not run out of data to learn it, warning so
    assert int(one.cardinality()) == 7
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(50, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(one, epochs=2, verbose=0)
    assert [str(w.message) for w in caught if "ran out of data" in str(w.message)] == []
    assert len(history.history["loss"]) == 2
    # evaluation keeps the split's order
    test = data.image_pipeline(images, data.DATASETS["cifar10"], 8, False,
                               cache_path=str(tmp_path / "d"), in_memory_bytes=in_memory_bytes)
    assert np.concatenate([b[1] for b in test]).tolist() == list(range(50))


@pytest.mark.parametrize("in_memory_bytes", [None, 0])  # held in memory, streamed
def test_augmentations_are_drawn_from_the_seed_and_the_batch_alone(tmp_path, in_memory_bytes):
    # Keras's random layers drew from one generator's state: batches that
    # tf.data prepared in parallel took one another's draws (a repeated run
    # differed), and a resumed run drew afresh (it differed from the
    # uninterrupted one).
    import tensorflow as tf

    pictures = np.random.default_rng(0).integers(0, 256, (50, 12, 12, 1), dtype=np.uint8)
    images = tf.data.Dataset.from_tensor_slices((pictures, np.arange(50)))

    def pipeline(seed=4, **kwargs):
        return data.image_pipeline(
            images, data.DATASETS["cifar10"], 8, True, seed=seed, normalization="none",
            cache_path=str(tmp_path / "d"), in_memory_bytes=in_memory_bytes,
            augment=("rotate", "perspective", "flip"), **kwargs)

    def batches(seed=4, **kwargs):
        return [x.numpy() for x, _ in pipeline(seed, **kwargs)]

    full = batches(epoch_range=(0, 3))
    assert len(full) == 21
    for again, batch in zip(batches(epoch_range=(0, 3)), full):
        np.testing.assert_array_equal(again, batch)
    for resumed, batch in zip(batches(epoch_range=(1, 3)), full[7:]):
        np.testing.assert_array_equal(resumed, batch)
    assert not np.array_equal(batches(seed=5, epoch_range=(0, 1))[0], full[0])
    # a crop is drawn from the seed too, not from the epoch and position alone
    one_picture = tf.data.Dataset.from_tensor_slices((pictures[:1], np.arange(1)))
    crops = [next(iter(data.image_pipeline(
        one_picture, data.DATASETS["cifar10"], 1, True, seed=seed, augment=("crop",),
        epoch_range=(0, 1), cache_path=str(tmp_path / "one"),
        in_memory_bytes=in_memory_bytes)))[0].numpy() for seed in (4, 5)]
    assert not np.array_equal(*crops)
    # without an epoch range: drawn afresh on every pass of one pipeline; a
    # new pipeline of the same seed repeats the first pass
    one = pipeline()
    passes = [np.concatenate([x for x, _ in one]) for _ in range(2)]
    assert not np.array_equal(passes[0], passes[1])
    np.testing.assert_array_equal(np.concatenate(batches()), passes[0])


def test_augmentations_are_torchvisions():
    # The paper's scripts: RandomRotation(10), RandomPerspective(), and a
    # horizontal flip, each drawn per image, black outside the image.
    import tensorflow as tf

    def augmented(images, augment, degrees=10.0, seed=(3, 1)):
        return data._augmented(tf.constant(images, tf.float32), tf.constant(seed, tf.int64),
                               augment, degrees).numpy()

    # the geometry: a quarter turn is numpy's rot90 (counter-clockwise)
    square = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
    quarter = data._rotations(tf.constant([np.pi / 2]), 5.0, 5.0)
    turned = tf.raw_ops.ImageProjectiveTransformV3(
        images=square, transforms=quarter, output_shape=[5, 5], fill_value=0.0,
        interpolation="NEAREST", fill_mode="CONSTANT")
    np.testing.assert_array_equal(turned.numpy()[0, :, :, 0], np.rot90(square[0, :, :, 0]))

    white = np.full((64, 15, 15, 1), 255.0)
    rotated = augmented(white, ("rotate",), degrees=45.0)
    assert set(np.unique(rotated)) == {0.0, 255.0}  # nearest neighbour, black fill
    assert (rotated[:, 7, 7] == 255).all()  # about the centre
    corners = rotated[:, [0, 0, -1, -1], [0, -1, 0, -1], 0]
    # each image its own angle: a corner is cut off once the turn exceeds
    # about 6 degrees (45 at most); a few images turn less
    cut = (corners == 0).all(axis=1)
    assert 40 < cut.sum() < 64
    assert np.array_equal(augmented(white, ("rotate",), degrees=45.0), rotated)  # its seed alone

    moved = augmented(white, ("perspective",))
    changed = (moved != 255).any(axis=(1, 2, 3))
    assert 16 < changed.sum() < 48  # p = 0.5, per image
    # corners move inwards by at most a quarter of the side (3 of 15 pixels)
    assert (moved[changed][:, 4:-4, 4:-4] == 255).all() and moved.min() == 0

    halves = np.zeros((64, 4, 6, 1))
    halves[:, :, :3] = 255.0
    flipped = augmented(halves, ("flip",))
    mirrored = (flipped == halves[:, :, ::-1]).all(axis=(1, 2, 3))
    assert ((flipped == halves).all(axis=(1, 2, 3)) | mirrored).all()
    assert 16 < mirrored.sum() < 48  # p = 0.5, per image
