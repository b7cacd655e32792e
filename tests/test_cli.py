import csv
import dataclasses
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import REPO
from conftest import is_png
from spinalnet_keras import SpinalDense
from spinalnet_keras.cli import main
from spinalnet_keras.training import TrainConfig
from spinalnet_keras.training import build_training_state
from spinalnet_keras.training import read_history
from spinalnet_keras.training import train


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_train_writes_every_artifact(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "regression", "--dataset", "table1/sum", "--epochs", "3",
                 "--optimizer", "adam", "--learning-rate", "0.01", "--output-dir", str(out),
                 "--verbose", "0"]) == 0
    printed = capsys.readouterr().out
    assert "regression (spinal) on table1/sum" in printed and "14,301 trainable" in printed
    for name in ("config.json", "history.csv", "best.keras", "final.keras", "result.json"):
        assert (out / name).is_file(), name
    assert is_png(out / "curves.png")
    assert [r["epoch"] for r in _rows(out / "history.csv")] == ["0", "1", "2"]
    assert any(f.startswith("events") for _, _, fs in os.walk(out / "logs") for f in fs)
    result = json.loads((out / "result.json").read_text())
    assert result["epochs"] == 3 and result["metric"] == "mse"
    assert result["head_multiplications"] == 14_000
    model = keras.saving.load_model(out / "final.keras", safe_mode=True)
    assert isinstance(model.get_layer("head_spinal"), SpinalDense)


def test_train_on_real_mnist_tiny(tmp_path, mnist_data_dir, capsys):
    out = tmp_path / "mnist"
    assert main(["train", "--model", "mnist_cnn", "--head", "dense", "--dataset", "mnist",
                 "--data-dir", mnist_data_dir, "--epochs", "1", "--train-examples", "512",
                 "--test-examples", "256", "--output-dir", str(out), "--verbose", "0"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["trainable_params"] == 21_840 and result["head_multiplications"] == 16_500
    assert 0.1 < result["final"] <= 1.0


class _Crash(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("simulated interruption after epoch 2")


class _CountEpochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_interrupted_train_resumes_where_it_stopped(tmp_path):
    config = TrainConfig(model="regression", dataset="table1/prod", epochs=5, optimizer="adam",
                         learning_rate=0.01, output_dir=str(tmp_path / "r"), verbose=0)
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[_Crash()])
    assert not (tmp_path / "r" / "result.json").exists()
    assert (tmp_path / "r" / "backup").is_dir()
    counter = _CountEpochs()
    result = train(config, callbacks=[counter])
    assert counter.epochs == [2, 3, 4]  # resumed after the two finished epochs
    assert result["epochs"] == 5
    assert [r["epoch"] for r in read_history(tmp_path / "r" / "history.csv")] == [0, 1, 2, 3, 4]
    # a complete run is not trained again
    again = _CountEpochs()
    assert train(config, callbacks=[again])["epochs"] == 5 and again.epochs == []


def test_a_resumed_run_draws_the_uninterrupted_runs_dropout_masks(tmp_path):
    # Keras's seed generators are not in the backup's weights: resumed at
    # epoch 3, the run drew epoch 3's masks from the states it began with.
    config = TrainConfig(model="regression", dataset="table1/prod", epochs=3, optimizer="adam",
                         learning_rate=0.01, dropout=0.5, train_examples=256, verbose=0)
    train(dataclasses.replace(config, output_dir=str(tmp_path / "whole")))
    with pytest.raises(KeyboardInterrupt):
        train(dataclasses.replace(config, output_dir=str(tmp_path / "resumed")),
              callbacks=[_Crash()])
    train(dataclasses.replace(config, output_dir=str(tmp_path / "resumed")))
    whole, resumed = (keras.saving.load_model(tmp_path / run / "final.keras").get_weights()
                      for run in ("whole", "resumed"))
    for a, b in zip(whole, resumed):
        np.testing.assert_array_equal(a, b)


def test_a_resumed_run_on_a_task_of_all_its_epochs_reads_the_uninterrupted_runs_batches(
        tmp_path):
    # Keras's fit reads the handed-in pipeline from its start, whatever the
    # epoch it resumes: it trained epoch 2 on epoch 0's batches.
    from spinalnet_keras.data import load_task

    config = TrainConfig(model="regression", dataset="table1/prod", epochs=3, optimizer="adam",
                         learning_rate=0.01, train_examples=256, verbose=0)
    train(dataclasses.replace(config, output_dir=str(tmp_path / "whole")))
    keras.utils.set_random_seed(config.seed)  # as train does before it loads
    task = load_task("table1/prod", batch_size=64, train_examples=256, epochs=3)
    resumed = dataclasses.replace(config, output_dir=str(tmp_path / "resumed"))
    with pytest.raises(KeyboardInterrupt):
        train(resumed, task=task, callbacks=[_Crash()])
    counter = _CountEpochs()
    train(resumed, task=task, callbacks=[counter])
    assert counter.epochs == [2]
    whole, resumed = (keras.saving.load_model(tmp_path / run / "final.keras").get_weights()
                      for run in ("whole", "resumed"))
    for a, b in zip(whole, resumed):
        np.testing.assert_array_equal(a, b)


def test_a_folder_holds_one_configuration(tmp_path):
    from spinalnet_keras.data import load_task

    config = TrainConfig(model="regression", dataset="table1/sum", epochs=1, optimizer="adam",
                         output_dir=str(tmp_path / "r"), verbose=0)
    first = train(config)
    # how the run is shown or executed may change; the stored result comes back
    again = train(dataclasses.replace(config, verbose=2, steps_per_execution=4))
    assert again == first
    # Version 0.4 stored SGD's default momentum for any optimizer; to Adam
    # it means nothing, so such a folder is still this run.
    stored = json.loads((tmp_path / "r" / "config.json").read_text())
    assert stored["momentum"] is None
    (tmp_path / "r" / "config.json").write_text(json.dumps({**stored, "momentum": 0.5}))
    assert train(config) == first
    # what it computes may not: neither reported as done nor resumed
    with pytest.raises(ValueError, match=r"another configuration \(width: None there, 10 here, "
                                         r"epochs: 1 there, 2 here\)"):
        train(dataclasses.replace(config, epochs=2, width=10))
    task = load_task("table1/sum", batch_size=32)
    with pytest.raises(ValueError, match="another batch size than config.batch_size=64"):
        train(dataclasses.replace(config, output_dir=str(tmp_path / "t")), task=task)
    with pytest.raises(ValueError, match="`task` is 'table1/sum' but config.dataset is 'table1/prod'"):
        train(dataclasses.replace(config, dataset="table1/prod", output_dir=str(tmp_path / "t")),
              task=task)
    assert not (tmp_path / "t").exists()


def test_train_on_a_task_loaded_as_its_config_says(tmp_path):
    from spinalnet_keras.data import load_task

    config = TrainConfig(model="regression", dataset="table1/sum", epochs=1, optimizer="adam",
                         batch_size=32, train_examples=96, steps_per_execution=1,
                         output_dir=str(tmp_path / "r"),
                         verbose=0)
    task = load_task("table1/sum", batch_size=32, train_examples=96)
    counter = _CountBatches()
    result = train(config, task=task, callbacks=[counter])
    assert (result["epochs"], counter.batches) == (1, 3)  # 96 examples in batches of 32
    # a task of other data: the run's files would describe data it never saw
    out = str(tmp_path / "other")
    for kwargs, shown in [
        (dict(seed=1), "seed: 1 there, 0 here"),
        (dict(train_examples=96, test_examples=50), "test_examples: 50 there, None here"),
        (dict(train_examples=96, epochs=2), "epochs: 2 there, None or 1 here"),
        (dict(train_examples=96, epochs=1, initial_epoch=0), None),
        (dict(train_examples=96, epochs=3, initial_epoch=1),
         "initial_epoch: 1 there, 0 here, epochs: 3 there, None or 1 here"),
    ]:
        other = load_task("table1/sum", batch_size=32, **{"train_examples": 96, **kwargs})
        if shown is None:  # all the run's epochs, in order: taken
            continue
        with pytest.raises(ValueError, match="`task` was loaded with other data options than "
                           rf"`config` gives \({shown}\)"):
            train(dataclasses.replace(config, output_dir=out), task=other)
    with pytest.raises(TypeError, match="`task` must be a Task, as load_task returns"):
        train(dataclasses.replace(config, output_dir=out), task=(task.train, task.test))
    assert not (tmp_path / "other").exists()


class _CountBatches(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1


def test_a_run_that_fails_before_training_leaves_its_folder_free(tmp_path, mnist_data_dir,
                                                                capsys):
    # MNIST's 28x28 images are below MobileNetV2's minimum, which shows only
    # when the model is built, after the data is loaded. The folder must not
    # be marked as that run, or the corrected command would be refused there.
    out = tmp_path / "r"
    args = ["train", "--model", "MobileNetV2", "--dataset", "mnist", "--data-dir",
            mnist_data_dir, "--width", "4", "--depth", "2", "--epochs", "1",
            "--train-examples", "64", "--test-examples", "64", "--output-dir", str(out),
            "--verbose", "0"]
    assert main(args) == 2
    assert re.search(r"MobileNetV2: Input size must be at least 32x32.*--image-size",
                     capsys.readouterr().err)
    assert not (out / "config.json").exists()
    assert main(args + ["--image-size", "32"]) == 0
    assert json.loads((out / "config.json").read_text())["image_size"] == [32, 32]
    assert json.loads((out / "result.json").read_text())["head_label"] == "spinal 2 x 4"


def test_resume_is_exact_with_several_steps_per_execution(tmp_path):
    from spinalnet_keras.training import steps_per_execution_for

    # the divisor nearest on a log scale (938 = 2 x 7 x 67)
    assert steps_per_execution_for(32, 938) == 67 and steps_per_execution_for(32, 16) == 16
    assert steps_per_execution_for(5, 7) == 7 and steps_per_execution_for(2, 7) == 1
    assert steps_per_execution_for(4, 16) == 4 and steps_per_execution_for(4, 8 * 9) == 4
    assert steps_per_execution_for(6, 16) == 8 and steps_per_execution_for(3, 8) == 4
    assert steps_per_execution_for(32, None) == 32
    for args, match in [((0, 10), "steps_per_execution=0"), ((4, 0), "steps_per_epoch=0")]:
        with pytest.raises(ValueError, match=match):
            steps_per_execution_for(*args)
    # (op determinism is process-wide and cannot be switched off again, so
    # this test relies on these CPU ops being deterministic; the SIGKILL
    # test in test_distribute.py runs --deterministic in its own process)

    def config(out):
        return TrainConfig(model="regression", dataset="table1/prod", epochs=3, optimizer="adam",
                           learning_rate=0.001, output_dir=str(out), verbose=0, seed=7,
                           train_examples=1500, steps_per_execution=32)

    reference = train(config(tmp_path / "a"))
    assert reference["steps_per_execution"] == 24  # 24 steps per epoch
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path / "b"), callbacks=[_Crash()])
    train(config(tmp_path / "b"))
    a = keras.saving.load_model(tmp_path / "a" / "final.keras").get_weights()
    b = keras.saving.load_model(tmp_path / "b" / "final.keras").get_weights()
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_compare_prints_and_writes_the_table(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--model", "regression", "--dataset", "table1/sin_sum",
                 "--optimizer", "adam", "--epochs", "2", "--seeds", "0", "1",
                 "--output-dir", str(out), "--verbose", "0"]) == 0
    printed = capsys.readouterr().out
    assert "| dense 200-100 | 2 | 22,001 (22,001) | 21,700 (21,700)" in printed
    assert "| spinal 6 x 50 | 2 | 14,301 (14,301) | 14,000 (14,000)" in printed
    assert "head 35.5% fewer multiplications" in printed
    rows = _rows(out / "comparison.csv")
    assert [r["head"] for r in rows] == ["dense 200-100", "spinal 6 x 50"]
    assert all(float(r["final_sd"]) > 0 for r in rows)  # two seeds differ
    assert "± n/a" not in printed
    assert is_png(out / "comparison.png")
    assert sorted(os.listdir(out / "table1_sin_sum")) == ["dense", "spinal"]


def test_demo_runs_offline(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--epochs", "2", "--seeds", "0", "--datasets", "table1/sum",
                 "table1/prod", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "regression on table1/sum" in printed and "regression on table1/prod" in printed
    # one seed: no spread to report, rather than a standard deviation of 0
    assert re.search(r"\| dense 200-100 \| 1 \|[^\n]* \d+\.\d{3} ± n/a \|", printed)
    assert is_png(out / "comparison.png")
    rows = _rows(out / "comparison.csv")
    assert len(rows) == 4 and all(r["final_sd"] == "nan" for r in rows)


@pytest.mark.parametrize("argv,message", [
    (["train", "--model", "resnet49"], "unknown model 'resnet49'; choose from: mnist_cnn"),
    (["train", "--dataset", "mnist3"], "unknown dataset 'mnist3'; choose from: caltech101"),
    (["train", "--epochs", "0"], "expected a positive integer, got '0'"),
    (["train", "--dropout", "1.5"], "expected a number in [0, 1), got '1.5'"),
    (["train", "--augment", "rotate,blur"], "unknown augmentation(s) ['blur']"),
    (["train", "--learning-rate", "-1"], "expected a positive number, got '-1'"),
    (["compare", "--seeds", "-2"], "expected an integer >= 0"),
    (["train", "--image-size", "big"], "expected a size like 224 or 224x224"),
])
def test_bad_arguments_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


_REGRESSION = dict(model="regression", dataset="table1/sum")


@pytest.mark.parametrize("kwargs,match", [
    (dict(seed=True), "seed=True"),
    (dict(seed=-1), "seed=-1"),
    # keras.utils.set_random_seed hands it to NumPy, whose error names nothing
    (dict(seed=2**32), r"`seed` must be an integer from 0 to 2\*\*32 - 1 \(NumPy's seeds\). "
     "Received: seed=4294967296"),
    (dict(momentum="0.9"), "momentum='0.9'"),
    (dict(optimizer="adam", momentum=0.9), "`momentum` applies to optimizer='sgd' only; "
     "'adam' is made without one. Received: momentum=0.9"),
    (dict(learning_rate=float("inf")), "learning_rate=inf"),
    (dict(learning_rate=True), "learning_rate=True"),
    (dict(verbose=3), r"one of \[0, 1, 2\]. Received: verbose=3"),
    (dict(verbose=True), r"one of \[0, 1, 2\]. Received: verbose=True"),  # not taken for 1
    (dict(jit_compile=1), r"one of \['auto', 'off', 'on'\]. Received: jit_compile=1"),
    (dict(data_dir=3), "`data_dir` must be a path. Received: data_dir=3"),
    (dict(output_dir=""), "`output_dir` must be a path. Received: output_dir=''"),
    (dict(train_examples=0), "train_examples=0"),
    (dict(width=0), "width=0"),
    # a spinal head's split count against its depth, the paper's or the given one
    (dict(splits=7), r"between 1 and `depth`.*Received: splits=7, depth=6"),
    (dict(model="ResNet50", dataset="mnist", depth=2, splits=4), r"splits=4, depth=2"),
    # and the regression network's against table1's 8 inputs, which it reads itself
    (dict(model="regression", depth=9, splits=9), r"input features \(8\). Received: splits=9"),
    (dict(dropout=1.0), "dropout=1.0"),
    (dict(batch_norm="yes"), "batch_norm='yes'"),
    (dict(deterministic=1), "deterministic=1"),
    # Keras would compile without XLA, and the run's files would say "on"
    (dict(deterministic=True, jit_compile=True), "`jit_compile='on'` cannot go with "
     r"`deterministic=True`: under TensorFlow's op determinism Keras compiles without XLA"),
    (dict(output_dir=None), "output_dir=None"),
    (dict(dataset="mnist3"), "Unknown dataset 'mnist3'"),
    # names in a list: the look-ups would fail as "unhashable", naming nothing
    (dict(dataset=["mnist"]), r"Unknown dataset \['mnist'\]"),
    (dict(model=["vgg5"]), r"Unknown model \['vgg5'\]. Available: \['mnist_cnn'"),
    (dict(model="mnist_cnn", dataset="table1/sum"), "is a regression task"),
    (dict(model="regression", dataset="mnist"), "needs a regression dataset"),
    (dict(model="mnist_cnn", dataset="mnist", augment=("blur",)), "augment='blur'"),
    (dict(model="mnist_cnn", dataset="mnist", image_size=(0, 32)), r"image_size=\(0, 32\)"),
    # a paper network's smallest image, before the data is loaded
    (dict(model="vgg19", dataset="cifar10", image_size=(32, 16)),
     r"'vgg19' takes images of at least 32x32. Received: image_size=\(32, 16\)"),
    (dict(augment=("flip",)), r"image datasets only.*augment=\('flip',\)"),
    (dict(manual_dir="/tmp/files"), r"image datasets only.*manual_dir='/tmp/files'"),
    (dict(data_dir=3), "`data_dir` must be a path. Received: data_dir=3"),
    (dict(model="ResNet50", dataset="mnist", pooling="mean"), "pooling='mean'"),
    (dict(model="ResNet50", dataset="mnist", freeze_backbone="no"), "freeze_backbone='no'"),
    (dict(model="ResNet50", dataset="mnist", weights="nope.h5"), "weights='nope.h5' .no such"),
])
def test_train_config_checks_every_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{**_REGRESSION, **kwargs})


@pytest.mark.filterwarnings("ignore:Model doesn't support `jit_compile=True`")  # Keras's, expected
def test_xla_asked_for_and_not_given_by_keras_is_an_error(tmp_path, monkeypatch):
    # Keras compiles without XLA, with a warning only, where a layer does not
    # support it or op determinism is on (turned on by an earlier
    # deterministic run: TensorFlow cannot turn it off).
    from spinalnet_keras import training

    def without_xla(config, task):
        model = build_model(config, task)
        model.layers[-1].supports_jit = False
        return model

    build_model = training.build_model
    monkeypatch.setattr(training, "build_model", without_xla)
    config = TrainConfig(model="regression", dataset="table1/sum", epochs=1, jit_compile="on",
                         output_dir=str(tmp_path / "run"), verbose=0)
    with pytest.raises(ValueError, match="jit_compile='on' cannot be honoured: Keras compiles "
                       "this model without XLA"):
        train(config)
    assert not (tmp_path / "run" / "config.json").exists()  # the folder stays free
    # "auto" is Keras's to resolve, and trains
    assert train(dataclasses.replace(config, jit_compile="auto"))["epochs"] == 1


def test_train_config_normalises_what_it_accepts():
    config = TrainConfig(model="resnet50", dataset="mnist", augment="rotate,flip",
                         image_size=[64, 48])
    assert (config.model, config.augment, config.image_size) == (
        "ResNet50", ("rotate", "flip"), (64, 48))


def test_numpy_scalars_and_path_objects_train_and_are_stored_plain(tmp_path):
    # A sweep such as `for width in np.arange(...)` hands numpy scalars; they
    # are checked as numbers, and config.json must still hold plain values.
    given = TrainConfig(**_REGRESSION, width=np.int64(6), epochs=np.int64(1),
                        dropout=np.float32(0.25), batch_norm=np.True_, seed=np.int64(3),
                        learning_rate=np.float64(0.01), optimizer=np.str_("adam"),
                        verbose=np.int64(0), jit_compile=False, train_examples=np.int32(256),
                        output_dir=tmp_path / "np")
    plain = TrainConfig(**_REGRESSION, width=6, epochs=1, dropout=0.25, batch_norm=True,
                        seed=3, learning_rate=0.01, optimizer="adam", verbose=0,
                        jit_compile="off", train_examples=256,
                        output_dir=str(tmp_path / "np"))
    assert given == plain
    assert [type(getattr(given, f.name)) for f in dataclasses.fields(given)] == [
        type(getattr(plain, f.name)) for f in dataclasses.fields(plain)]
    result = train(given)
    stored = json.loads((tmp_path / "np" / "config.json").read_text())
    assert stored == json.loads(plain.to_json())
    assert train(plain) == result  # the same run, found done


def test_every_train_option_reaches_the_config():
    # Each field set from the command line to a value other than its default;
    # a field the command forgot would keep the default unnoticed.
    from spinalnet_keras.cli import _config
    from spinalnet_keras.cli import build_parser

    expected = dict(
        model="MobileNetV2", head="spinal", width=4, depth=3, splits=2, dropout=0.1,
        batch_norm=True, dataset="cifar10", epochs=2, batch_size=16, optimizer="sgd",
        learning_rate=0.5, momentum=0.9, seed=7, output_dir="o", data_dir="d",
        manual_dir="m", augment=("flip",), image_size=(48, 40), weights="imagenet",
        freeze_backbone=True, pooling="max", deterministic=True, steps_per_execution=3,
        jit_compile="off", train_examples=10, test_examples=5, verbose=2)
    assert set(expected) == {f.name for f in dataclasses.fields(TrainConfig)}
    # The head options need the spinal head, and momentum SGD: both defaults.
    defaults = TrainConfig()
    assert [k for k, v in expected.items() if getattr(defaults, k) == v] == ["head", "optimizer"]
    argv = ["train", "--model", "mobilenetv2", "--head", "spinal", "--width", "4",
            "--depth", "3", "--splits", "2", "--dropout", "0.1", "--batch-norm",
            "--dataset", "cifar10", "--epochs", "2", "--batch-size", "16",
            "--optimizer", "sgd", "--learning-rate", "0.5", "--momentum", "0.9",
            "--seed", "7", "--output-dir", "o", "--data-dir", "d", "--manual-dir", "m",
            "--augment", "flip", "--image-size", "48x40", "--weights", "imagenet",
            "--freeze-backbone", "--pooling", "max", "--deterministic",
            "--steps-per-execution", "3", "--jit-compile", "off", "--train-examples", "10",
            "--test-examples", "5", "--verbose", "2"]
    args = build_parser().parse_args(argv)
    config = _config(args, head=args.head, seed=args.seed)
    assert dataclasses.asdict(config) == expected
    other = build_parser().parse_args(["train", "--optimizer", "rmsprop"])
    assert (_config(other).optimizer, _config(other).momentum) == ("rmsprop", None)


def test_help_gives_every_default(monkeypatch):
    # The defaults differ between commands (train's optimizer is the paper's
    # SGD at 0.01, tune's Adam at 1e-3), so each command's help shows its own.
    from spinalnet_keras.cli import build_parser

    monkeypatch.setenv("COLUMNS", "400")  # no help text wrapped
    commands = build_parser()._subparsers._group_actions[0].choices
    texts = {name: command.format_help() for name, command in commands.items()}

    def help_of(command, option):
        # the option's entry: its line and the indented lines under it
        (entry,) = re.findall(rf"^  {option}[ ,\n].*?(?=^  -|^\S|\Z)", texts[command],
                              re.MULTILINE | re.DOTALL)
        return " ".join(entry.split())

    assert help_of("train", "--optimizer").endswith("default: sgd")
    assert help_of("tune", "--optimizer").endswith("default: adam")
    assert help_of("tune", "--learning-rate").endswith("default: 0.001")
    assert help_of("compare", "--seeds").endswith("default: 0 1 2 3 4")
    assert help_of("demo", "--epochs").endswith("default: 100")
    assert help_of("demo", "--verbose").endswith("default: 0")  # 0 is a default too
    assert help_of("train", "--strategy").endswith("one_device, default (default: auto)")
    # a default the help gives in its own words is not given twice
    assert help_of("train", "--pooling").endswith("(default avg)")
    # the head's options default to the model's own head
    for command in ("train", "compare"):
        assert help_of(command, "--width").endswith(
            "(default: the paper network's spinal head: mnist_cnn 8, vgg5 128, vgg19 512, "
            "regression 50; a backbone's 20)")
        assert "mnist_cnn off, vgg5 on, vgg19 off" in help_of(command, "--batch-norm")
        assert "vgg5 0.5, vgg19 0.5, regression 0; a backbone's 0)" in help_of(command, "--dropout")
    # and every option that has a default shows it
    for name, command in commands.items():
        for action in command._actions:
            default = action.default
            if (action.option_strings and default not in (None, False, (), "==SUPPRESS==")
                    and action.dest != "func"):
                shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) \
                    else str(default)
                assert shown.replace(",", " ") in help_of(name, action.option_strings[0]) \
                    .replace(",", " "), (name, action.option_strings, default)


def test_compare_refuses_repeated_seeds_and_datasets(tmp_path):
    from spinalnet_keras.training import compare

    config = TrainConfig(**_REGRESSION, epochs=1, output_dir=str(tmp_path / "c"), verbose=0)
    with pytest.raises(ValueError, match=r"`seeds` names 0 more than once; a repeated seed would "
                       r"count one run twice in the means. Received: seeds=\[0, 1, 0\]"):
        compare(config, seeds=[0, 1, 0])
    with pytest.raises(ValueError, match=r"`datasets` names 'table1/sum' more than once"):
        compare(config, seeds=[0], datasets=["table1/sum", "table1/sum"])
    for name in (["table1/sum"], {"table1/sum": 1}):  # not "unhashable type"
        with pytest.raises(ValueError, match=rf"Unknown dataset {re.escape(repr(name))}. Available"):
            compare(config, seeds=[0], datasets=["table1/sum", name])
    with pytest.raises(ValueError, match="Unknown dataset 'table1/cube'"):
        compare(config, seeds=[0], datasets=["table1/sum", "table1/cube"])
    with pytest.raises(ValueError, match="non-empty list, tuple, range or 1-D array. Received: seeds=0"):
        compare(config, seeds=0)
    # before the first run trains, not when its seed comes
    with pytest.raises(ValueError, match=r"from 0 to 2\*\*32 - 1 .* Received: seeds\[1\]=4294967296"):
        compare(config, seeds=[0, 2**32])
    with pytest.raises(TypeError, match="get_strategy.*Received: strategy='mirrored'"):
        compare(config, seeds=range(2), strategy="mirrored")
    # an empty list is not the default dataset, and a number is no list
    for datasets in ([], 3):
        with pytest.raises(ValueError, match="`datasets` must be a non-empty list.*"
                           + re.escape(f"Received: datasets={datasets}")):
            compare(config, seeds=[0], datasets=datasets)
    with pytest.raises(TypeError, match="`config` must be a TrainConfig. Received: dict"):
        compare({"model": "regression"}, seeds=[0])
    assert not (tmp_path / "c").exists()  # nothing trained


def test_train_checks_config_strategy_and_callbacks_before_writing(tmp_path):
    config = TrainConfig(**_REGRESSION, epochs=1, output_dir=str(tmp_path / "t"), verbose=0)
    with pytest.raises(TypeError, match="`config` must be a TrainConfig. Received: dict"):
        train({"model": "regression"})
    with pytest.raises(TypeError, match="Received: strategy='mirrored'"):
        train(config, strategy="mirrored")
    with pytest.raises(TypeError, match=r"`callbacks` must be a list of "
                       r"keras.callbacks.Callback objects or None. Received: callbacks=<keras"):
        train(config, callbacks=keras.callbacks.History())
    with pytest.raises(TypeError, match=r"`callbacks\[0\]` must be a keras.callbacks.Callback. "
                       r"Received: callbacks\[0\]='csv'"):
        train(config, callbacks=["csv"])
    assert not (tmp_path / "t").exists()


def test_model_dataset_mismatch_is_a_clear_error(tmp_path, capsys):
    code = main(["train", "--model", "vgg5", "--dataset", "table1/sum", "--output-dir",
                 str(tmp_path / "x"), "--verbose", "0"])
    assert code == 2
    assert "is a regression task; use model='regression'" in capsys.readouterr().err


def test_spinal_option_on_a_dense_head_is_refused_before_loading_data(tmp_path, capsys,
                                                                      monkeypatch):
    import spinalnet_keras.training as training

    def no_data(*args, **kwargs):
        raise AssertionError("data loaded before the options were checked")

    monkeypatch.setattr(training, "load_task", no_data)
    code = main(["train", "--model", "mnist_cnn", "--dataset", "mnist", "--head", "dense",
                 "--width", "8", "--output-dir", str(tmp_path / "x"), "--verbose", "0"])
    assert code == 2
    assert "`width`: spinal heads only; this head is 'dense'. Received: width=8" in (
        capsys.readouterr().err)
    # likewise an option the dense head would not use
    code = main(["train", "--model", "mnist_cnn", "--dataset", "mnist", "--head", "dense",
                 "--dropout", "0.2", "--output-dir", str(tmp_path / "x"), "--verbose", "0"])
    assert code == 2
    assert "`dropout` of a dense head acts before each hidden Dense after the first" in (
        capsys.readouterr().err)


def test_console_script_and_module_entry_points():
    exe = os.path.join(os.path.dirname(sys.executable), "spinalnet-keras")
    for cmd in ([exe, "--help"], [sys.executable, "-m", "spinalnet_keras", "train", "--help"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "spinalnet-keras" in proc.stdout


def test_console_script_exits_quickly_with_everything_written(tmp_path):
    # `run` skips the interpreter's teardown (os._exit); piped output is
    # block-buffered, so a missing flush would lose the summary line, and a
    # file left open would lose its tail.
    exe = os.path.join(os.path.dirname(sys.executable), "spinalnet-keras")
    out = tmp_path / "run"
    proc = subprocess.run(
        [exe, "train", "--model", "regression", "--dataset", "table1/sum", "--epochs", "2",
         "--optimizer", "adam", "--output-dir", str(out), "--verbose", "0"],
        capture_output=True, text=True, timeout=300,
        env={**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
             "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert proc.returncode == 0, proc.stderr
    assert f"Files in {out}" in proc.stdout
    assert [int(r["epoch"]) for r in _rows(out / "history.csv")] == [0, 1]
    assert json.loads((out / "result.json").read_text())["epochs"] == 2
    events = [os.path.join(d, f) for d, _, fs in os.walk(out / "logs") for f in fs
              if f.startswith("events.out.tfevents")]
    import tensorflow as tf

    epochs_logged = {e.step for path in events for e in tf.compat.v1.train.summary_iterator(path)
                     for v in e.summary.value if v.tag == "epoch_loss"}
    assert epochs_logged == {0, 1}
    assert keras.saving.load_model(out / "final.keras").count_params() > 0

    bad = subprocess.run([exe, "train", "--model", "vgg5", "--dataset", "table1/sum",
                          "--output-dir", str(tmp_path / "bad"), "--verbose", "0"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert "is a regression task" in bad.stderr


def test_console_command_freezes_what_it_imported(tmp_path):
    # run() hands what is alive at its start (Keras, TensorFlow) to gc.freeze,
    # so the collector does not scan it again in each full collection. The
    # line comes from an atexit handler: run() flushes after the handlers,
    # so what they print survives os._exit (piped output is buffered).
    code = ("import atexit, gc, sys\n"
            "from spinalnet_keras.cli import run\n"
            "atexit.register(lambda: print('frozen', gc.get_freeze_count(), gc.isenabled()))\n"
            "sys.argv[0] = 'spinalnet-keras'\n"
            "run()\n")
    proc = subprocess.run(
        [sys.executable, "-c", code, "train", "--model", "regression", "--dataset",
         "table1/sum", "--epochs", "1", "--output-dir", str(tmp_path / "run"), "--verbose", "0"],
        capture_output=True, text=True, timeout=300,
        env={**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
             "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    frozen, count, enabled = proc.stdout.split()[-3:]
    assert frozen == "frozen" and int(count) > 100_000 and enabled == "True"


def test_build_training_state_gives_one_trace_of_the_training_step():
    import tensorflow as tf

    model = keras.Sequential([keras.Input((6,)), SpinalDense(3, width=4, depth=3)])
    model.compile(keras.optimizers.SGD(0.1, momentum=0.5), "sparse_categorical_crossentropy",
                  metrics=["accuracy"], steps_per_execution=2)
    rng = np.random.default_rng(0)
    ds = tf.data.Dataset.from_tensor_slices(
        (rng.random((32, 6), dtype="float32"), rng.integers(0, 3, 32))).batch(8)
    build_training_state(model, ds)
    assert model.optimizer.built
    traces = []
    step = model.train_step

    def counting_step(data):  # runs once per trace of the compiled step
        traces.append(1)
        return step(data)

    model.train_step = counting_step
    model.fit(ds, epochs=2, verbose=0, shuffle=False)
    assert len(traces) == 1


def test_build_training_state_needs_a_compiled_model():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="Compile model 'sequential.*' before build_training_state"):
        build_training_state(model, None)
    with pytest.raises(TypeError, match="compiled keras.Model. Received: model='m'"):
        build_training_state("m", None)
    # data it cannot build from: named, not Keras's "'NoneType' object has no attribute 'shape'"
    import tensorflow as tf

    model.compile("adam", "sparse_categorical_crossentropy")
    x = np.zeros((8, 4), "float32")
    for data, shown in [(tf.data.Dataset.from_tensor_slices(x).batch(2), "a _BatchDataset of "
                         r"TensorSpec\(shape=\(None, 4\)"),
                        (x, r"a ndarray of shape \(8, 4\)"), (None, "data=None")]:
        with pytest.raises(ValueError, match=r"`data` must be the tf.data.Dataset that fit will "
                           rf"read, of \(inputs, targets\) batches.*Received: {shown}"):
            build_training_state(model, data)
    build_training_state(model, (x, np.zeros(8, "int32")))  # arrays, as a batch
    assert model.optimizer.built


def test_train_builds_the_training_state_before_fit(tmp_path):
    seen = {}

    class Probe(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):  # before the first trace
            seen["optimizer_built"] = self.model.optimizer.built
            seen["optimizer_variables"] = len(self.model.optimizer.variables)
            seen["trainable_variables"] = len(self.model.trainable_variables)

    config = TrainConfig(model="regression", dataset="table1/sum", epochs=1, optimizer="sgd",
                         output_dir=str(tmp_path / "run"), verbose=0)
    train(config, callbacks=[Probe()])
    # iterations, learning rate, and one momentum per trainable variable
    assert seen["optimizer_built"] is True
    assert seen["optimizer_variables"] == seen["trainable_variables"] + 2


def test_run_files_are_replaced_whole_never_truncated(tmp_path):
    # The workers of a multi-worker run share the output directory, and one
    # reads config.json while another writes it: a writer that truncated the
    # file first made the reader fail ("Expecting value: line 1 column 1").
    from spinalnet_keras._files import write_atomically

    path = tmp_path / "config.json"
    write_atomically(str(path), '{"seed": 1}')
    with open(path) as reader:
        write_atomically(str(path), '{"seed": 2}')
        assert json.load(reader) == {"seed": 1}  # what it opened stays whole
    assert json.loads(path.read_text()) == {"seed": 2}
    assert os.listdir(tmp_path) == ["config.json"]  # no temporary file left


def test_a_diverged_run_stops_and_says_so(tmp_path, capsys):
    # SGD at 1e30: the loss is NaN within the first epoch. The epochs left
    # would train nothing; the run stops, its result says where, and the
    # command fails instead of reporting a NaN model as trained.
    out = tmp_path / "nan"
    argv = ["train", "--model", "regression", "--dataset", "table1/sum", "--optimizer", "sgd",
            "--learning-rate", "1e30", "--epochs", "3", "--output-dir", str(out),
            "--verbose", "0"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "test mse after the last epoch nan, no epoch with a finite one" in captured.out
    assert ("training diverged: the loss was not finite in epoch 1, where the run "
            "stopped") in captured.err
    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    # strict JSON: NaN, which JSON has not, is written null
    result = json.loads((out / "result.json").read_text(), parse_constant=refuse)
    assert (result["epochs"], result["diverged_at_epoch"], result["best_epoch"]) == (1, 1, None)
    assert (result["final"], result["best"]) == (None, None)
    assert len(read_history(out / "history.csv")) == 1
    assert main(argv) == 2  # the finished run, found again, fails alike
    assert "test mse after the last epoch nan" in capsys.readouterr().out
    # and train returns it as it did the first time, NaN for the figures
    config = TrainConfig(model="regression", dataset="table1/sum", optimizer="sgd",
                         learning_rate=1e30, epochs=3, output_dir=str(out), verbose=0)
    found = train(config)
    assert np.isnan(found["final"]) and np.isnan(found["train_loss_min"])
    assert found["best_epoch"] is None and found["diverged_at_epoch"] == 1
    # a file written before, with NaN, is read alike
    (out / "result.json").write_text(json.dumps({**found, "final": float("nan")}))
    assert np.isnan(train(config)["final"])


def test_summaries_and_comparisons_skip_what_diverged():
    from spinalnet_keras.training import comparison_markdown
    from spinalnet_keras.training import comparison_rows
    from spinalnet_keras.training import summarize_history

    nan = float("nan")
    rows = [{"epoch": 0, "loss": 0.4, "val_loss": 0.5}, {"epoch": 1, "loss": 0.3, "val_loss": 0.25},
            {"epoch": 2, "loss": nan, "val_loss": nan}]
    summary = summarize_history(rows, "regression")
    assert (summary["best"], summary["best_epoch"], summary["diverged_at_epoch"]) == (0.25, 2, 3)
    assert summary["train_loss_min"] == 0.3 and np.isnan(summary["final"])
    accuracy = summarize_history([{"epoch": 0, "loss": 1.0, "val_accuracy": 0.75}], "accuracy")
    assert (accuracy["best"], accuracy["best_epoch"], accuracy["diverged_at_epoch"]) == (0.75, 1, None)

    def run(head, final, diverged=None):
        return {"model": "regression", "head": head, "metric": "mse", "final": final,
                "best": final, "trainable_params": 10, "multiplications": 10,
                "head_params": 10, "head_multiplications": 10, "diverged_at_epoch": diverged}

    dense, spinal = comparison_rows([run("dense", 0.5), run("dense", 0.25),
                                     run("spinal", 0.125), run("spinal", nan, 4)])
    assert (dense["final_mean"], dense["final_best"], dense["diverged"]) == (0.375, 0.25, 0)
    assert np.isnan(spinal["final_mean"]) and np.isnan(spinal["final_sd"])
    assert (spinal["final_best"], spinal["diverged"]) == (0.125, 1)  # the finite run's
    text = comparison_markdown([dense, spinal], "t")
    assert "\nspinal: 1 of 2 run(s) diverged" in text and "\ndense: " not in text
