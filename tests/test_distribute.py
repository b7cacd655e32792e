import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO
from conftest import tensorboard_scalars
from spinalnet_keras import SpinalDense
from spinalnet_keras import distribute
from spinalnet_keras.cli import main
from spinalnet_keras.data import load_task

JOB = os.path.join(REPO, "tests", "scripts", "dist_job.py")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _job(mode, out, *extra, env=None):
    proc = subprocess.run([sys.executable, JOB, mode, str(out), *map(str, extra)],
                          capture_output=True, text=True, timeout=600, env=env or ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _start_workers(mode_args, tmp_path, n=2, tag="w", env=None):
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(n)]}
    procs = []
    tmp = tmp_path / "tmp"  # the workers' temporary folder, to see what is left there
    tmp.mkdir(exist_ok=True)
    for i in range(n):
        worker_env = {**(env or ENV), "TMPDIR": str(tmp),
                      "TF_CONFIG": json.dumps({"cluster": cluster,
                                               "task": {"type": "worker", "index": i}})}
        cmd = [sys.executable, *map(str, mode_args(i))]
        procs.append(subprocess.Popen(cmd, env=worker_env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, cwd=tmp_path))
    return procs


def _wait(procs, timeout=300):
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err[-3000:]
        outs.append(out)
    return outs


# -- strategy selection --------------------------------------------------------


def test_strategy_selection_on_cpu(monkeypatch):
    assert distribute.get_strategy("default") is tf.distribute.get_strategy()
    assert distribute.get_strategy("auto") is tf.distribute.get_strategy()  # no GPU, no TPU
    assert isinstance(distribute.get_strategy("one_device"), tf.distribute.OneDeviceStrategy)
    # one MirroredStrategy over the CPU for the process (a second would
    # collide with it, tensorflow#62790: test_train_under_mirrored_...)
    mirrored = distribute.get_strategy("mirrored")
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert distribute.get_strategy("mirrored") is mirrored
    with pytest.raises(ValueError, match=r"must be one of .*'multi_worker'.*Received: strategy='gpu'"):
        distribute.get_strategy("gpu")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs the TF_CONFIG"):
        distribute.get_strategy("multi_worker")
    # json's own error names nothing; without a cluster TF would train alone
    for text, extra in [("notjson", r" \(Expecting value"),
                        ('{"task": {"type": "worker", "index": 0}}', ""),
                        ('{"cluster": {"worker": ["a:1"]}}', ""), ("[1]", "")]:
        monkeypatch.setenv("TF_CONFIG", text)
        with pytest.raises(ValueError, match=r"TF_CONFIG must be a JSON object with the cluster "
                           r"and this worker's task, .* Received: TF_CONFIG="
                           + re.escape(repr(text)) + extra):
            distribute.get_strategy("multi_worker")
    monkeypatch.delenv("TF_CONFIG")
    with pytest.raises(RuntimeError, match="no TPU"):
        distribute.get_strategy("tpu")


def test_a_tpu_is_initialized_once_per_process(monkeypatch):
    # Initializing the TPU system again would wipe the variables on it, the
    # models trained so far: the second call returns the first strategy.
    initialized = []
    monkeypatch.setattr(tf.distribute, "TPUStrategy", lambda resolver: object())
    monkeypatch.setattr(distribute, "_STRATEGIES", {})
    monkeypatch.setenv("TPU_NAME", "local")
    # a TPU not reachable yet is not remembered as missing
    monkeypatch.setattr(distribute, "_tpu_resolver", lambda: None)
    with pytest.raises(RuntimeError, match="no TPU"):
        distribute.get_strategy("tpu")
    monkeypatch.setattr(distribute, "_tpu_resolver", lambda: initialized.append(1) or "resolver")
    tpu = distribute.get_strategy("tpu")
    assert distribute.get_strategy("tpu") is tpu and distribute.get_strategy("auto") is tpu
    assert initialized == [1]


def test_strategies_are_refused_on_another_keras_backend(tmp_path):
    # A tf.distribute scope does not reach a JAX model's variables: it would
    # train on one device while the strategy reports several replicas. So
    # every way in says so; without a strategy, training runs there.
    job = os.path.join(REPO, "tests", "scripts", "other_backend_job.py")
    proc = subprocess.run([sys.executable, job, str(tmp_path), str(tmp_path / "report.json")],
                          capture_output=True, text=True, timeout=600,
                          env={**ENV, "KERAS_BACKEND": "jax"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["backend"] == "jax"
    for call, what in [("get_strategy", "get_strategy('mirrored')"),
                       ("train", "Training under a tf.distribute strategy"),
                       ("make_tuner", "make_tuner(distribution_strategy=...)"),
                       ("multi_worker_fit", "multi_worker_fit")]:
        assert report[call] is not None, call
        assert report[call].startswith(
            f"{what} needs Keras's TensorFlow backend, and Keras runs on 'jax'"), report[call]
        assert "KERAS_BACKEND=tensorflow" in report[call]
    assert not report["refused_run_folder"]  # refused before anything is written
    mirrored = report["cli_mirrored"]
    assert mirrored["code"] == 2 and not mirrored["result"]
    assert "error: get_strategy('mirrored') needs Keras's TensorFlow backend" in mirrored["stderr"]
    assert report["cli_auto"] == {"code": 0, "stderr": "", "result": True}


def test_worker_info(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({
        "cluster": {"worker": ["a:1", "b:1", "c:1"]}, "task": {"type": "worker", "index": 2}}))
    assert distribute.worker_info() == ("worker", 2, False, 3)
    monkeypatch.setenv("TF_CONFIG", json.dumps({
        "cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "chief", "index": 0}}))
    assert distribute.worker_info() == ("chief", 0, True, 2)


# -- one machine, two replicas -----------------------------------------------


def test_mirrored_fit_matches_single_device(tmp_path):
    single = _job("single", tmp_path / "single.json")
    mirrored = _job("mirrored", tmp_path / "mirrored.json")
    assert mirrored["replicas"] == 2 and single["replicas"] == 1
    assert mirrored["mirrored"] == "MirroredVariable"
    np.testing.assert_allclose(mirrored["loss"], single["loss"], rtol=1e-5)
    np.testing.assert_allclose(mirrored["weights"], single["weights"], atol=1e-5)
    assert single["loss"][-1] < single["loss"][0]


def test_train_under_mirrored_runs_one_step_per_execution(tmp_path):
    # Keras's multi-step loop fails under a 2-replica MirroredStrategy
    # (keras-team/keras#19246); train and the tuner's models fall back to one
    # step per execution, say so where a number was asked for (train's
    # default is 1 there, in silence), and learn what a single device learns.
    mirrored = _job("train_mirrored", tmp_path / "mirrored.json")
    single = _job("train_single", tmp_path / "single.json")
    assert (mirrored["replicas"], single["replicas"]) == (2, 1)
    assert (mirrored["steps_per_execution"], mirrored["asked_steps_per_execution"],
            mirrored["tuner_steps_per_execution"]) == (1, 1, 1)
    assert (single["steps_per_execution"], single["asked_steps_per_execution"],
            single["tuner_steps_per_execution"]) == (16, 8, 4)
    # (the warnings of train and of `spinalnet-keras tune`, with their
    # defaults; the search under a strategy of its own, after train's, in
    # one process)
    assert mirrored["warnings"] == [] and single["warnings"] == []
    assert mirrored["tune_status"] == single["tune_status"] == 0
    assert single["asked_warnings"] == []
    assert [w.split(":")[0] for w in mirrored["asked_warnings"]] == [
        f"steps_per_execution={n} becomes 1 under MirroredStrategy with 2 replicas"
        for n in (8, 4)]
    np.testing.assert_allclose(mirrored["final"], single["final"], rtol=1e-4)
    # Keras's fit fails inside TensorFlow on batches split unevenly: refused first
    assert mirrored["uneven"] == (
        "`batch_size` is the global batch, split over the strategy's 2 replicas, so it "
        "must be a multiple of 2, e.g. 62 or 64: Keras's fit fails on batches that split "
        "unevenly. Received: batch_size=63")
    # a search's own data, under the tuner's strategy: its first trial ends it
    assert mirrored["search_refused"] == (
        "The search data's batch size is the global batch, split over the strategy's 2 "
        "replicas, so it must be a multiple of 2, e.g. 62 or 64: Keras's fit fails on "
        "batches that split unevenly. Received: batch_size=63")
    assert len(mirrored["trials"]) == 1  # no second trial was started
    assert single["search_refused"] is None and single["trials"] == ["COMPLETED"]
    assert mirrored["uneven_dir"] is False


def test_supported_steps_per_execution_in_process():
    one_replica = tf.distribute.MirroredStrategy(["/cpu:0"])
    assert distribute.supported_steps_per_execution(8) == 8  # default strategy
    assert distribute.supported_steps_per_execution(8, one_replica) == 8
    with pytest.raises(ValueError, match="steps_per_execution=0"):
        distribute.supported_steps_per_execution(0)
    with pytest.raises(TypeError, match=r"e.g. get_strategy\('mirrored'\). Received: strategy='mirrored'"):
        distribute.supported_steps_per_execution(8, "mirrored")


def test_quantize_int8_builds_its_new_optimizer_under_the_models_strategy():
    from spinalnet_keras import quantize_int8

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = keras.Sequential([keras.Input((4,)), SpinalDense(2, width=3, depth=2)])
        model.compile(keras.optimizers.SGD(0.1, momentum=0.5), "mse")
    model.fit(np.ones((8, 4), "float32"), np.ones((8, 2), "float32"), verbose=0)
    quantize_int8(model)
    # mirrored, as the old optimizer's were: variables made outside the
    # scope would be one copy that each replica updates
    assert all(isinstance(v.value, tf.distribute.DistributedValues)
               for v in model.optimizer.variables)
    model.fit(np.ones((8, 4), "float32"), np.ones((8, 2), "float32"), verbose=0)
    assert keras.ops.convert_to_numpy(model.optimizer.iterations) == 2


def test_multi_worker_fit_checks_its_arguments(tmp_path, monkeypatch):
    def build(**compile_args):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        model.compile(**{"optimizer": "sgd", "loss": "sparse_categorical_crossentropy",
                         **compile_args})
        return model

    data = tf.data.Dataset.from_tensor_slices((np.zeros((8, 4), "float32"), np.zeros(8, "int32")))
    default = tf.distribute.get_strategy()
    for args, kwargs, error, match in [
        ((5, data.batch(4), 1, 4), {}, TypeError, "`build_and_compile` must be a function"),
        ((build, [1, 2], 1, 4), {}, TypeError,
         "must be a tf.data.Dataset or a function of the first epoch returning one. "
         "Received: list"),
        ((build, lambda epoch: [epoch], 1, 4), {}, TypeError,
         r"a function, must return a tf.data.Dataset; called with the first epoch 0, "
         r"it returned \[0\]"),
        ((build, data.take(0).batch(4), 1, 4), {}, ValueError, "`dataset` yielded no batches"),
        ((build, data.take(0).batch(4), 1, 4), dict(steps_per_epoch=1), ValueError,
         "holds 0 batches, fewer than steps_per_epoch=1"),
        ((build, data.batch(4).filter(lambda x, y: False), 1, 4), dict(steps_per_epoch=1),
         ValueError, "`dataset` yielded no batches on a new pass"),
        ((build, data.batch(4), 1, 4), dict(validation_data=data.take(0).batch(4)), ValueError,
         "`validation_data` holds no batches"),
        ((build, data.batch(4), 1, 4), dict(validation_data=(1, 2)), TypeError,
         "`validation_data` must be a tf.data.Dataset or None. Received: tuple"),
        ((build, data.batch(4), 1, 4), dict(validation_data=data.batch(8)), ValueError,
         "`validation_data` yields batches of 8, but global_batch_size=4; batch it with "
         "the global batch size or less"),
        ((build, data.batch(4), 1, 4), dict(validation_data=data.map(lambda x, y: x).batch(4)),
         ValueError, r"`validation_data` must yield \(inputs, targets\) batches"),
        ((build, data.batch(4), 1, 4), dict(on_epoch_end="print"), TypeError,
         r"`on_epoch_end` must be a function \(epoch, logs\) or None. Received: "
         r"on_epoch_end='print'"),
        ((build, data.batch(4), 1, 4), dict(callbacks=["print"]), TypeError,
         r"`callbacks\[0\]` must be a keras.callbacks.Callback. Received: callbacks\[0\]='print'"),
        ((build, data.batch(4), 1, 4), dict(callbacks=keras.callbacks.History()), TypeError,
         r"`callbacks` must be a list of keras.callbacks.Callback objects or None. "
         r"Received: callbacks=<keras"),
        ((build, data.batch(4), 1, 4), dict(steps_per_epoch=0), ValueError, "steps_per_epoch=0"),
        ((build, data.batch(4), 1, 4), dict(verbose="yes"), ValueError,
         r"`verbose` must be one of \[0, 1, 2\]. Received: verbose='yes'"),
        # batches of 4 averaged as if of 8 would halve every gradient
        ((build, data.batch(4), 1, 8), {}, ValueError, "batches of 4, but global_batch_size=8"),
        ((build, data.batch(8), 1, 4), {}, ValueError, "batches of 8, but global_batch_size=4"),
        ((build, data.batch(4), 1, 4), dict(strategy="multi_worker"), TypeError,
         r"e.g. get_strategy\('multi_worker'\). Received: strategy='multi_worker'"),
        ((lambda: keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), data.batch(4),
          1, 4), {}, TypeError, "must return a compiled keras.Model .* It returned <Sequential"),
        # what the loop would not compute is refused, not left out
        ((lambda: build(metrics=["mae"]), data.batch(4), 1, 4), {}, ValueError,
         r"other metrics would not be computed. Compile with metrics=\['accuracy'\] or none. "
         r"Received: metrics=\['mae'\]"),
        ((lambda: build(loss="mse", metrics=["accuracy"]), data.batch(4), 1, 4), {}, ValueError,
         r"Compile with no metrics. Received: metrics=\['accuracy'\]"),
        ((lambda: build(loss_weights=[2.0]), data.batch(4), 1, 4), {}, ValueError,
         r"does not apply compile's `loss_weights`.*Received: loss_weights=\[2.0\]"),
        ((lambda: build(loss=["mse"]), data.batch(4), 1, 4), {}, ValueError,
         r"with one loss .* Received: loss=\['mse'\]"),
        ((build, data.batch(4).repeat(), 1, 4), {}, ValueError,
         r"repeats without end, so an epoch needs `steps_per_epoch`"),
        ((build, data.batch(4), 1, 4), dict(steps_per_epoch=3), ValueError,
         r"holds 2 batches, fewer than steps_per_epoch=3; repeat it, or pass at most 2"),
        ((build, data.map(lambda x, y: (x, y, 1.0)).batch(4), 1, 4), {}, ValueError,
         r"must yield \(inputs, targets\) batches; .* no sample weights. Received elements: \(Tensor"),
    ]:
        with pytest.raises(error, match=match):
            distribute.multi_worker_fit(*args, str(tmp_path / "ckpt"),
                                        **{"strategy": default, "verbose": 0, **kwargs})
    with pytest.raises(ValueError, match="Received: checkpoint_dir=None"):
        distribute.multi_worker_fit(build, data.batch(4), 1, 4, None, strategy=default)
    with monkeypatch.context() as patch:  # its default strategy reads TF_CONFIG
        patch.setenv("TF_CONFIG", "notjson")
        with pytest.raises(ValueError, match="TF_CONFIG must be a JSON object"):
            distribute.multi_worker_fit(build, data.batch(4), 1, 4, str(tmp_path / "ckpt"))
    # one batch smaller than the global batch is all the data: accepted
    _, history = distribute.multi_worker_fit(build, data.batch(16), 1, 16, str(tmp_path / "one"),
                                             strategy=default, verbose=0)
    assert len(history["loss"]) == 1
    # a repeated dataset with its steps: two epochs of 2 steps each
    _, history = distribute.multi_worker_fit(build, data.batch(4).repeat(), 2, 4,
                                             str(tmp_path / "steps"), strategy=default,
                                             steps_per_epoch=2, verbose=0)
    assert len(history["loss"]) == 2


def _batch_numbers(count):
    # Batch i of 4 examples: inputs 0, targets i. A model that predicts 0 and
    # does not learn has loss mean(i^2) over the batches an epoch reads.
    y = np.repeat(np.arange(count, dtype="float32"), 4)[:, None]
    return tf.data.Dataset.from_tensor_slices((np.zeros((4 * count, 2), "float32"), y)).batch(4)


def _still_zero(steps_per_execution=1):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, bias_initializer="zeros")])
    model.compile(keras.optimizers.SGD(0.0), "mse", steps_per_execution=steps_per_execution)
    return model


@pytest.mark.parametrize("per_execution", [1, 3])
def test_multi_worker_fit_reads_on_from_epoch_to_epoch(tmp_path, per_execution):
    # As Keras's fit: with steps_per_epoch, an epoch reads on where the last
    # one stopped (it read the first batches again and again); a pass that
    # ends mid-epoch is followed by a new one. Several steps per call
    # (compile's steps_per_execution) stop where the epoch or the pass ends.
    default = tf.distribute.get_strategy()

    def build():
        return _still_zero(per_execution)

    _, history = distribute.multi_worker_fit(build, _batch_numbers(6), 4, 4,
                                             str(tmp_path / "a"), strategy=default,
                                             steps_per_epoch=2, verbose=0)
    assert history["loss"] == [0.5, 6.5, 20.5, 0.5]  # batches 0-1, 2-3, 4-5, 0-1
    _, history = distribute.multi_worker_fit(build, _batch_numbers(5), 3, 4,
                                             str(tmp_path / "b"), strategy=default,
                                             steps_per_epoch=2, verbose=0)
    assert history["loss"] == [0.5, 6.5, 8.0]  # batches 0-1, 2-3, 4 and 0
    # of a length tf.data cannot tell: passes end within a call
    unknown = _batch_numbers(2).filter(lambda x, y: True)
    _, history = distribute.multi_worker_fit(build, unknown, 1, 4, str(tmp_path / "d"),
                                             strategy=default, steps_per_epoch=5, verbose=0)
    assert history["loss"] == [0.4]  # batches 0, 1, 0, 1, 0
    # without steps_per_epoch, every epoch is a whole pass
    _, history = distribute.multi_worker_fit(build, _batch_numbers(3), 2, 4,
                                             str(tmp_path / "c"), strategy=default, verbose=0)
    np.testing.assert_allclose(history["loss"], [5 / 3, 5 / 3])


def test_multi_worker_fit_runs_several_steps_per_call_as_one_per_call(tmp_path):
    # compile(steps_per_execution=4), as Keras's fit honours it: the same
    # steps in fewer calls, so the same weights, bit for bit.
    x = np.random.default_rng(0).normal(size=(88, 4)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, (x[:, 0] > 0).astype("int32"))).batch(8)
    runs = []
    for per_execution in (1, 4):
        def build():
            keras.utils.set_random_seed(0)
            model = keras.Sequential([keras.Input((4,)), SpinalDense(2, width=3, depth=3,
                                                                     dropout=0.2)])
            model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(
                from_logits=True), metrics=["accuracy"], steps_per_execution=per_execution)
            return model

        model, history = distribute.multi_worker_fit(
            build, data, 2, 8, str(tmp_path / str(per_execution)),
            strategy=tf.distribute.get_strategy(), verbose=0)
        runs.append((distribute.weights_digest(model), history))
    (one, one_history), (four, four_history) = runs
    np.testing.assert_array_equal(four, one)
    np.testing.assert_allclose(four_history["loss"], one_history["loss"], rtol=1e-6)
    assert four_history["accuracy"] == one_history["accuracy"]


def _softmax_classifier(rate, l2=None, **compile_args):
    """A seeded softmax regression on 4 features for sparse labels, trained
    by SGD at `rate` (with an L2 penalty `l2`), its accuracy reported."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(
        2, "softmax", kernel_regularizer=keras.regularizers.L2(l2) if l2 else None)])
    model.compile(keras.optimizers.SGD(rate), "sparse_categorical_crossentropy",
                  **{"metrics": ["accuracy"], **compile_args})
    return model


def _assert_trains_as_fit(build, data, tmp_path):
    """Two epochs of multi_worker_fit (default strategy) on batches of 16
    end with fit's losses, accuracies and weights."""
    fitted = build()
    expected = fitted.fit(data, epochs=2, verbose=0, shuffle=False).history
    model, history = distribute.multi_worker_fit(build, data, 2, 16, str(tmp_path / "ckpt"),
                                                 strategy=tf.distribute.get_strategy(),
                                                 verbose=0)
    np.testing.assert_allclose(history["loss"], expected["loss"], rtol=1e-5)
    np.testing.assert_allclose(history["accuracy"], expected["accuracy"], rtol=1e-6)
    for ours, theirs in zip(model.get_weights(), fitted.get_weights()):
        np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_multi_worker_fit_trains_on_a_smaller_last_batch_as_fit_does(tmp_path):
    # 70 examples in batches of 16: the last batch of 6 is averaged over its
    # own examples (not as 6 of 16), and the epoch's loss weighs each batch
    # by its size, as Keras's fit does both.
    x = np.random.default_rng(0).normal(size=(70, 4)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, (x[:, 0] > 0).astype("int32"))).batch(16)

    build = functools.partial(_softmax_classifier, 0.5, l2=0.01)

    _assert_trains_as_fit(build, data, tmp_path)


@pytest.mark.parametrize("loss, jit", [
    ("sparse_categorical_crossentropy", False),  # labels (batch, 5)
    ("sparse_1", False),                          # labels (batch, 5, 1)
    ("categorical_crossentropy", True),
    ("mse", False),                               # targets (batch, 5, 2)
])
def test_multi_worker_fit_averages_outputs_of_rank_3_as_fit_does(tmp_path, loss, jit):
    # A head applied at each of 5 positions: the loss is averaged over all
    # its values and the accuracy over all positions, as Keras's fit and
    # evaluate do (they were averaged over the examples: accuracy up to 5).
    rng = np.random.default_rng(0)
    x = rng.normal(size=(70, 5, 4)).astype("float32")
    labels = (x[..., 0] > 0).astype("int32")
    y = {"sparse_1": labels[..., None], "categorical_crossentropy": np.eye(2)[labels],
         "mse": np.eye(2)[labels]}.get(loss, labels).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)  # 4 x 16 + 6
    loss = "sparse_categorical_crossentropy" if loss == "sparse_1" else loss
    classifier = loss != "mse"

    def build():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((5, 4)), keras.layers.Dense(
            2, "softmax", kernel_regularizer=keras.regularizers.L2(0.01))])
        model.compile(keras.optimizers.SGD(0.5), loss, jit_compile=jit,
                      metrics=["accuracy"] if classifier else None)
        return model

    fitted = build()
    expected = fitted.fit(data, epochs=2, verbose=0, shuffle=False).history
    evaluated = fitted.evaluate(data, verbose=0, return_dict=True)
    model, history = distribute.multi_worker_fit(
        build, data, 2, 16, str(tmp_path / "ckpt"), strategy=tf.distribute.get_strategy(),
        verbose=0, validation_data=data)
    assert sorted(history) == sorted(expected) + sorted(f"val_{k}" for k in evaluated)
    np.testing.assert_allclose(history["loss"], expected["loss"], rtol=1e-5)
    np.testing.assert_allclose(history["val_loss"][-1], evaluated["loss"], rtol=1e-5)
    if classifier:
        np.testing.assert_allclose(history["accuracy"], expected["accuracy"], rtol=1e-6)
        assert history["val_accuracy"][-1] == pytest.approx(evaluated["accuracy"])
        assert 0.5 < history["accuracy"][-1] < 1
    for ours, theirs in zip(model.get_weights(), fitted.get_weights()):
        np.testing.assert_allclose(ours, theirs, atol=1e-6)


@pytest.mark.parametrize("jit", [False, True])
def test_multi_worker_fit_trains_embeddings_and_activity_penalties_as_fit_does(tmp_path, jit):
    # An embedding's gradient comes as IndexedSlices, and penalties on
    # weights and on activations add gradients that the step's rescaling
    # of the replica's loss must leave as they are: the weights end as fit's.
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 12, size=(70, 3)).astype("int32")
    labels = (tokens[:, 0] > 5).astype("int32")
    data = tf.data.Dataset.from_tensor_slices((tokens, labels)).batch(16)  # 4 x 16 + 6

    def build():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([
            keras.Input((3,), dtype="int32"),
            keras.layers.Embedding(12, 4, embeddings_regularizer=keras.regularizers.L2(0.01),
                                   activity_regularizer=keras.regularizers.L2(0.01)),
            keras.layers.Flatten(),
            SpinalDense(2, width=3, depth=2, output_activation="softmax",
                        kernel_regularizer=keras.regularizers.L1(0.01))])
        model.compile(keras.optimizers.SGD(0.5), "sparse_categorical_crossentropy",
                      metrics=["accuracy"], jit_compile=jit)
        return model

    _assert_trains_as_fit(build, data, tmp_path)


def test_multi_worker_fit_evaluates_every_epoch_as_keras_does(tmp_path):
    # val_loss and val_accuracy over every example (the last batch is
    # smaller), with the regularization loss added, as Keras's evaluate.
    x = np.random.default_rng(0).normal(size=(70, 4)).astype("float32")
    labels = (x[:, 0] > 0).astype("int32")
    train_data = tf.data.Dataset.from_tensor_slices((x[:64], labels[:64])).batch(16)
    test_data = tf.data.Dataset.from_tensor_slices((x, labels)).batch(16)  # 16 x 4 + 6

    build = functools.partial(_softmax_classifier, 0.1, l2=0.5)

    seen = []
    model, history = distribute.multi_worker_fit(
        build, train_data, 2, 16, str(tmp_path / "ckpt"), strategy=tf.distribute.get_strategy(),
        verbose=0, validation_data=test_data,
        on_epoch_end=lambda epoch, logs: seen.append((epoch, logs)))
    assert sorted(history) == ["accuracy", "loss", "val_accuracy", "val_loss"]
    assert [epoch for epoch, _ in seen] == [0, 1]
    assert seen[1][1] == {k: v[1] for k, v in history.items()}
    expected = model.evaluate(test_data, verbose=0, return_dict=True)
    assert float(model.losses[0]) > 0.01  # the regularization loss counts
    np.testing.assert_allclose(history["val_loss"][1], expected["loss"], rtol=1e-5)
    assert history["val_accuracy"][1] == pytest.approx(expected["accuracy"])
    assert history["val_accuracy"][1] * 70 == pytest.approx(round(history["val_accuracy"][1] * 70))


class _Hooks(keras.callbacks.Callback):
    """Records every hook of training and evaluation, with its arguments."""

    def __init__(self):
        super().__init__()
        self.calls = []


def _recorder(name):
    def hook(self, *args, **logs):  # logs: positional, or by keyword
        self.calls.append((name, *args, *logs.values()))

    return hook


for _name in ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end",
              "on_train_batch_begin", "on_train_batch_end", "on_test_begin", "on_test_end",
              "on_test_batch_begin", "on_test_batch_end"):
    setattr(_Hooks, _name, _recorder(_name))


def _close(call, other):
    # the hooks and step numbers exactly; the figures as floats of the same value
    (name, *args), (name_b, *args_b) = call, other
    figures = [a for a in args if isinstance(a, dict)]
    figures_b = [a for a in args_b if isinstance(a, dict)]
    return (name, [a for a in args if not isinstance(a, dict)]) == (
        name_b, [a for a in args_b if not isinstance(a, dict)]) and all(
        sorted(f) == sorted(g) and all(f[k] == pytest.approx(g[k], rel=1e-5) for k in f)
        for f, g in zip(figures, figures_b, strict=True))


def _batch_ends(calls):
    return [c[1] for c in calls if c[0].endswith("batch_end")]


def _numbered_as(fit_calls, loop_calls):
    """fit's calls with each batch end numbered as the loop's: Keras 3.11+
    gives a compiled call's last step, as the loop does; earlier, its first."""
    ends = iter(_batch_ends(loop_calls))
    return [(c[0], next(ends), *c[2:]) if c[0].endswith("batch_end") else c for c in fit_calls]


@pytest.mark.parametrize("accuracy", ["accuracy", "acc"])
def test_multi_worker_fit_runs_keras_callbacks_as_fit_does(tmp_path, accuracy):
    # The same hooks in the same order, with the same step numbers, params
    # and figures (named as fit names them), two steps per compiled call.
    x = np.random.default_rng(0).normal(size=(96, 4)).astype("float32")
    labels = (x[:, 0] > 0).astype("int32")
    train_data = tf.data.Dataset.from_tensor_slices((x[:64], labels[:64])).batch(16)
    test_data = tf.data.Dataset.from_tensor_slices((x[64:], labels[64:])).batch(16)

    build = functools.partial(_softmax_classifier, 0.1, metrics=[accuracy],
                              steps_per_execution=2)

    by_fit, by_loop = _Hooks(), _Hooks()
    build().fit(train_data, epochs=2, validation_data=test_data, callbacks=[by_fit], verbose=0,
                shuffle=False)
    distribute.multi_worker_fit(build, train_data, 2, 16, str(tmp_path / "ckpt"),
                                strategy=tf.distribute.get_strategy(), verbose=0,
                                validation_data=test_data, callbacks=[by_loop])
    assert by_loop.params == by_fit.params == {"verbose": 0, "epochs": 2, "steps": 4}
    # a call's batch end: its last step (Keras before 3.11 gave its first)
    assert _batch_ends(by_loop.calls) == [1, 3, 1] * 2
    fit_calls = _numbered_as(by_fit.calls, by_loop.calls)
    assert len(by_loop.calls) == len(by_fit.calls) == 22
    assert sorted(by_loop.calls[-1][1]) == sorted(["loss", accuracy, "val_loss", f"val_{accuracy}"])
    assert all(_close(a, b) for a, b in zip(by_loop.calls, fit_calls)), (by_loop.calls, by_fit.calls)


def test_multi_worker_fit_stops_and_schedules_as_keras_callbacks_ask(tmp_path):
    # EarlyStopping (restoring the best weights) and LearningRateScheduler
    # do to the loop's training what they do to fit's.
    x = np.random.default_rng(1).normal(size=(64, 4)).astype("float32")
    labels = (x[:, 0] > 0).astype("int32")
    train_data = tf.data.Dataset.from_tensor_slices((x[:48], labels[:48])).batch(16)
    test_data = tf.data.Dataset.from_tensor_slices((x[48:], labels[48:])).batch(16)

    build = functools.partial(_softmax_classifier, 0.5)

    def callbacks():
        # val_accuracy no higher than its best for one epoch: stop
        return [keras.callbacks.EarlyStopping("val_accuracy", patience=1,
                                              restore_best_weights=True),
                keras.callbacks.LearningRateScheduler(lambda epoch, rate: 0.5 / (1 + epoch))]

    fitted = build()
    expected = fitted.fit(train_data, epochs=20, validation_data=test_data, verbose=0,
                          callbacks=callbacks(), shuffle=False).history
    assert 2 <= len(expected["loss"]) < 20, expected  # it did stop early
    model, history = distribute.multi_worker_fit(
        build, train_data, 20, 16, str(tmp_path / "ckpt"), strategy=tf.distribute.get_strategy(),
        verbose=0, validation_data=test_data, callbacks=callbacks())
    assert len(history["loss"]) == len(expected["loss"])
    np.testing.assert_allclose(history["val_loss"], expected["val_loss"], rtol=1e-5)
    assert model.stop_training is True
    assert float(model.optimizer.learning_rate) == pytest.approx(
        float(fitted.optimizer.learning_rate))
    for ours, theirs in zip(model.get_weights(), fitted.get_weights()):  # the best epoch's
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
    # the stopped epoch is checkpointed: a call again resumes after it
    assert tf.train.latest_checkpoint(str(tmp_path / "ckpt")).endswith(
        f"ckpt-{len(history['loss'])}")


class _StoppingTensorBoard(keras.callbacks.TensorBoard):
    """Keras's TensorBoard, which never stops training, made to ask after
    the 6th step."""

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        self.model.stop_training = int(self.model.optimizer.iterations) >= 6


@pytest.mark.parametrize("per_execution, recorded, asker", [
    (1, False, "lambda"), (2, True, "lambda"), (1, False, "tensorboard subclass")])
def test_multi_worker_fit_stops_within_the_epoch_where_a_batch_hook_asks(
        tmp_path, per_execution, recorded, asker):
    # As in fit, a stop asked at a batch's end (from a LambdaCallback, whose
    # hooks are set on the object, or a subclass of a Keras callback that
    # never asks itself) ends the epoch there: that epoch is evaluated over
    # the batches it trained on, and training ends.
    x = np.random.default_rng(0).normal(size=(96, 4)).astype("float32")
    labels = (x[:, 0] > 0).astype("int32")
    train_data = tf.data.Dataset.from_tensor_slices((x[:64], labels[:64])).batch(16)
    test_data = tf.data.Dataset.from_tensor_slices((x[64:], labels[64:])).batch(16)

    build = functools.partial(_softmax_classifier, 0.1, steps_per_execution=per_execution)

    def callbacks():
        # after the 6th step: the 2nd of the 4 of epoch 1 (of 5)
        if asker == "lambda":
            stop = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: setattr(
                stop.model, "stop_training", int(stop.model.optimizer.iterations) >= 6))
        else:
            stop = _StoppingTensorBoard(tempfile.mkdtemp(dir=tmp_path))
        return [stop, _Hooks()] if recorded else [stop]

    fitted, by_fit = build(), callbacks()
    expected = fitted.fit(train_data, epochs=5, validation_data=test_data, verbose=0,
                          callbacks=by_fit, shuffle=False).history
    by_loop = callbacks()
    model, history = distribute.multi_worker_fit(
        build, train_data, 5, 16, str(tmp_path / "ckpt"), strategy=tf.distribute.get_strategy(),
        verbose=0, validation_data=test_data, callbacks=by_loop)
    assert int(model.optimizer.iterations) == int(fitted.optimizer.iterations) == 6
    assert len(history["loss"]) == len(expected["loss"]) == 2
    for key in expected:
        np.testing.assert_allclose(history[key], expected[key], rtol=1e-5)
    for ours, theirs in zip(model.get_weights(), fitted.get_weights()):
        np.testing.assert_allclose(ours, theirs, atol=1e-6)
    assert model.stop_training is True
    assert tf.train.latest_checkpoint(str(tmp_path / "ckpt")).endswith("ckpt-2")
    if recorded:
        # the same hooks with the same figures; a call's batch end numbered
        # by its last step (Keras before 3.11 gave its first): train, train,
        # test; train, test
        assert _batch_ends(by_loop[1].calls) == [1, 3, 1, 1, 1]
        fit_calls = _numbered_as(by_fit[1].calls, by_loop[1].calls)
        assert all(_close(a, b) for a, b in zip(by_loop[1].calls, fit_calls, strict=True)), (
            by_loop[1].calls, by_fit[1].calls)


def test_multi_worker_fit_gives_tensorboard_the_batch_figures_fit_gives(tmp_path):
    # With a batch-level update_freq, Keras's TensorBoard writes each
    # batch's running figures: the loop hands it fit's. (With "epoch" it
    # drops them, and the loop reads none.)
    x = np.random.default_rng(0).normal(size=(70, 4)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, (x[:, 0] > 0).astype("int32"))).batch(16)
    build = functools.partial(_softmax_classifier, 0.5)
    build().fit(data, epochs=2, verbose=0, shuffle=False,
                callbacks=[keras.callbacks.TensorBoard(tmp_path / "fit", update_freq=1)])
    distribute.multi_worker_fit(
        build, data, 2, 16, str(tmp_path / "ckpt"), strategy=tf.distribute.get_strategy(),
        verbose=0, callbacks=[keras.callbacks.TensorBoard(tmp_path / "loop", update_freq=1)])
    by_fit, by_loop = (tensorboard_scalars(tmp_path / run) for run in ("fit", "loop"))
    for tag in ("batch_loss", "batch_accuracy"):
        assert sorted(by_loop["train", tag]) == sorted(by_fit["train", tag]) == list(range(1, 11))
        for step, value in by_fit["train", tag].items():
            assert by_loop["train", tag][step] == pytest.approx(value, rel=1e-5), (tag, step)


def test_a_resumed_multi_worker_fit_reads_the_data_of_the_epochs_left(tmp_path):
    # `dataset` as a function of the first epoch: a run resumed at epoch 2
    # reads epoch 2's batches, not the first epoch's again.
    default = tf.distribute.get_strategy()
    asked = []

    def epochs_from(epoch):
        asked.append(epoch)
        return _batch_numbers(8).skip(2 * epoch)  # epoch e: batches 2e, 2e + 1

    ckpt = str(tmp_path / "ckpt")
    for epochs, losses in [(2, [0.5, 6.5]), (4, [20.5, 42.5]), (4, [])]:
        _, history = distribute.multi_worker_fit(_still_zero, epochs_from, epochs, 4, ckpt,
                                                 strategy=default, steps_per_epoch=2,
                                                 verbose=0)
        assert history["loss"] == losses
    assert asked == [0, 2]  # not called once all epochs are done


def test_a_resumed_multi_worker_fit_draws_the_uninterrupted_runs_dropout_masks(tmp_path):
    # Keras's seed generators are not in the checkpoint: resumed at epoch 2,
    # the loop drew epoch 2's masks from the states the run began with.
    # The data: epochs that tf.data reshuffles on every pass, read from the
    # resumed one on; a look at the first batch before training (the
    # loop's batch-size check, once) moved the passes' orders.
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")

    def data(epoch):
        keras.utils.set_random_seed(0)  # the shuffle's seed is fixed when it is made
        epochs = tf.data.Dataset.from_tensor_slices((x, x[:, :1] * 2.0)).shuffle(
            64, seed=1, reshuffle_each_iteration=True).batch(16).repeat(3)
        return epochs.skip(4 * epoch)

    def build():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16),
                                  keras.layers.Dropout(0.5), keras.layers.Dense(1)])
        model.compile(keras.optimizers.SGD(0.05), "mse")
        return model

    default = tf.distribute.get_strategy()
    whole, whole_history = distribute.multi_worker_fit(
        build, data, 3, 16, str(tmp_path / "whole"), strategy=default, steps_per_epoch=4,
        verbose=0)
    distribute.multi_worker_fit(build, data, 1, 16, str(tmp_path / "resumed"),
                                strategy=default, steps_per_epoch=4, verbose=0)
    resumed, history = distribute.multi_worker_fit(
        build, data, 3, 16, str(tmp_path / "resumed"), strategy=default, steps_per_epoch=4,
        verbose=0)
    assert history["loss"] == whole_history["loss"][1:]
    np.testing.assert_array_equal(distribute.weights_digest(resumed),
                                  distribute.weights_digest(whole))


def test_multi_worker_fit_stops_where_the_loss_is_not_finite(tmp_path, capsys):
    # As Keras's TerminateOnNaN: the epochs after a NaN loss would train
    # nothing. The epoch is checkpointed; a later call resumes after it.
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, x[:, :1] * 2.0)).batch(16)

    def build():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        model.compile(keras.optimizers.SGD(1e30), "mse")
        return model

    ckpt = str(tmp_path / "ckpt")
    _, history = distribute.multi_worker_fit(build, data, 3, 16, ckpt,
                                             strategy=tf.distribute.get_strategy())
    assert len(history["loss"]) == 1 and np.isnan(history["loss"][0])
    assert "epoch 1: the loss is not finite; training stops" in capsys.readouterr().out
    epoch = tf.train.load_variable(tf.train.latest_checkpoint(ckpt),
                                   "epoch/.ATTRIBUTES/VARIABLE_VALUE")
    assert epoch == 1
    _, history = distribute.multi_worker_fit(build, data, 3, 16, ckpt,
                                             strategy=tf.distribute.get_strategy(), verbose=0)
    assert len(history["loss"]) == 1  # resumed at epoch 2, stopped again


def test_multi_worker_fit_scales_the_loss_as_its_optimizer_asks(tmp_path):
    # A LossScaleOptimizer (what compile makes under mixed_float16) and an
    # optimizer's loss_scale_factor divide the gradients they are given by
    # their scale: the loop must scale the loss first, as Keras's fit does.
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, x[:, :1] * 2.0)).batch(16)
    weights = []
    for i, make in enumerate([
            lambda: keras.optimizers.SGD(0.05),
            lambda: keras.optimizers.SGD(0.05, loss_scale_factor=128.0),
            lambda: keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.05))]):
        def build():
            keras.utils.set_random_seed(0)
            model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
            model.compile(make(), "mse")
            return model

        model, _ = distribute.multi_worker_fit(build, data, 2, 16, str(tmp_path / str(i)),
                                               strategy=tf.distribute.get_strategy(), verbose=0)
        weights.append(distribute.weights_digest(model))
    initial = distribute.weights_digest(build())  # the same seed's starting weights
    assert np.abs(weights[0] - initial).max() > 0.1  # it trained
    np.testing.assert_allclose(weights[1], weights[0], atol=1e-5)
    np.testing.assert_allclose(weights[2], weights[0], atol=1e-5)


def test_multi_worker_fit_takes_one_hot_targets(tmp_path):
    # Categorical losses take one-hot targets: the same run as with integer
    # labels and the sparse loss, accuracy included.
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    labels = (x[:, 0] > 0).astype("int32")
    histories = []
    for loss, y in [("sparse_categorical_crossentropy", labels),
                    ("categorical_crossentropy", np.eye(2, dtype="float32")[labels])]:
        def build():
            keras.utils.set_random_seed(0)
            model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, "softmax")])
            model.compile("sgd", loss, metrics=["accuracy"])
            return model

        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
        histories.append(distribute.multi_worker_fit(
            build, data, 2, 16, str(tmp_path / loss), strategy=tf.distribute.get_strategy(),
            verbose=0)[1])
    sparse, one_hot = histories
    np.testing.assert_allclose(one_hot["loss"], sparse["loss"], rtol=1e-6)
    assert one_hot["accuracy"] == sparse["accuracy"] and 0 < sparse["accuracy"][0] < 1


def test_custom_loop_matches_fit(tmp_path):
    # The loop under 2 replicas, 3 steps per call (each epoch's last call
    # finds its pass ending after 2), against Keras's fit on one device;
    # 241 examples: the last batch of 17 splits 9 and 8 over the replicas.
    single = _job("single", tmp_path / "single.json", "-", "-", 241)
    loop = _job("loop_mirrored", tmp_path / "loop.json", "-", "-", 241)
    np.testing.assert_allclose(loop["loss"], single["loss"], rtol=1e-5)
    np.testing.assert_allclose(loop["weights"], single["weights"], atol=1e-5)


# -- several workers -------------------------------------------------------------


def test_two_workers_end_identical_and_learn(tmp_path):
    ckpt = tmp_path / "ckpt"
    procs = _start_workers(lambda i: [JOB, "worker", str(tmp_path / f"w{i}.json"), 3, ckpt],
                           tmp_path)
    _wait(procs)
    w = [json.loads((tmp_path / f"w{i}.json").read_text()) for i in range(2)]
    np.testing.assert_array_equal(w[0]["weights"], w[1]["weights"])
    assert w[0]["loss"] == w[1]["loss"]  # metrics reduced across workers
    assert w[0]["loss"][-1] < w[0]["loss"][0]
    assert w[0]["info"][2] is True and w[1]["info"][2] is False  # chief, worker
    # the loop's default strategy is get_strategy's, not a second one
    assert w[0]["same_strategy"] is w[1]["same_strategy"] is True
    assert any(f.startswith("ckpt-3") for f in os.listdir(ckpt))
    # The non-chief's own checkpoints are gone; none went to the temporary folder.
    assert not [f for f in os.listdir(ckpt) if f.startswith("workertemp")]
    assert not [f for f in os.listdir(tmp_path / "tmp") if "ckpt" in f]
    single = _job("single", tmp_path / "single.json")  # same global batch
    np.testing.assert_allclose(w[0]["weights"], single["weights"], atol=1e-5)


def test_a_stop_asked_by_one_workers_callback_stops_every_worker(tmp_path):
    # The workers must stop together, where the one that asks stops: one
    # stopping alone would leave the other waiting in its next collective.
    ckpt = tmp_path / "ckpt"
    _wait(_start_workers(lambda i: [JOB, "worker_stop", str(tmp_path / f"w{i}.json"), ckpt],
                         tmp_path), timeout=120)
    w = [json.loads((tmp_path / f"w{i}.json").read_text()) for i in range(2)]
    assert len(w[0]["loss"]) == len(w[1]["loss"]) == 2  # epochs 0 and 1 of 5
    assert w[0]["iterations"] == w[1]["iterations"] == 11  # 8 + 3: where it was asked
    assert w[0]["weights"] == w[1]["weights"]
    assert w[0]["seen"] == [0, 1, "end"]  # the chief's own callbacks, to their end
    # its EarlyStopping told from the compiled metrics that accuracy goes up
    assert w[0]["accuracy"] == w[1]["accuracy"] and len(w[0]["accuracy"]) == 2
    assert w[0]["stop_training"] is w[1]["stop_training"] is True
    assert tf.train.latest_checkpoint(str(ckpt)).endswith("ckpt-2")


def test_two_workers_honour_jit_compile(tmp_path):
    # compile(jit_compile=True): XLA compiles each replica's forward pass
    # and its gradient as one function (as Keras's train step: in two, the
    # epoch took 1.5 times as long, RESULTS §4), not the all-reduces of the
    # step's counts and of the gradients, which XLA cannot compile on CPU.
    dump = tmp_path / "xla"
    env = {**ENV, "XLA_FLAGS": f"--xla_dump_to={dump}"}
    ckpt = tmp_path / "ckpt"
    procs = _start_workers(lambda i: [JOB, "worker_jit", str(tmp_path / f"w{i}.json"), 3, ckpt],
                           tmp_path, env=env)
    _wait(procs)
    compiled = os.listdir(dump) if dump.exists() else []
    assert any("forward_backward" in f for f in compiled)
    assert not any("__backward" in f for f in compiled)
    w = [json.loads((tmp_path / f"w{i}.json").read_text()) for i in range(2)]
    np.testing.assert_array_equal(w[0]["weights"], w[1]["weights"])
    assert w[0]["loss"][-1] < w[0]["loss"][0]
    single = _job("single", tmp_path / "single.json")
    np.testing.assert_allclose(w[0]["weights"], single["weights"], atol=1e-5)


def test_multi_worker_job_killed_and_restarted_resumes(tmp_path):
    # Shuffled epochs (the data as a function of the first epoch) and
    # dropout: the restarted job ends with the uninterrupted job's weights.
    ckpt = tmp_path / "ckpt"

    def args(i, folder=tmp_path, checkpoints=ckpt):
        return [JOB, "worker_dropout", str(folder / f"w{i}.json"), 6, checkpoints, 2_000]

    procs = _start_workers(args, tmp_path)
    deadline = time.time() + 240
    while time.time() < deadline:  # let two epochs be checkpointed
        if (ckpt / "checkpoint").exists() and "ckpt-2" in (ckpt / "checkpoint").read_text():
            break
        time.sleep(0.05)
    else:
        pytest.fail("no checkpoint written")
    procs[1].send_signal(signal.SIGKILL)  # a worker dies mid-run
    procs[1].wait()
    try:  # its peer cannot go on alone; the job is restarted as a whole
        procs[0].wait(timeout=5)
    except subprocess.TimeoutExpired:
        procs[0].kill()
        procs[0].wait()
    assert not (tmp_path / "w0.json").exists()
    # The killed worker's checkpoints stay inside the job's folder, not in the
    # system's temporary one, and its restart removes them.
    assert (ckpt / "workertemp_1").is_dir()
    assert not [f for f in os.listdir(tmp_path / "tmp") if "ckpt" in f]
    done = int((ckpt / "checkpoint").read_text().split('"')[1].split("-")[1])
    assert 2 <= done < 6
    outs = _wait(_start_workers(args, tmp_path))
    assert f"resuming from epoch {done}" in outs[0]
    w = [json.loads((tmp_path / f"w{i}.json").read_text()) for i in range(2)]
    assert len(w[0]["loss"]) == 6 - done  # only the remaining epochs ran
    assert not (ckpt / "workertemp_1").exists()
    np.testing.assert_array_equal(w[0]["weights"], w[1]["weights"])
    whole = tmp_path / "whole"
    whole.mkdir()
    _wait(_start_workers(lambda i: args(i, whole, whole / "ckpt"), tmp_path))
    uninterrupted = json.loads((whole / "w0.json").read_text())
    assert w[0]["loss"] == uninterrupted["loss"][done:]
    np.testing.assert_array_equal(w[0]["weights"], uninterrupted["weights"])


def test_cli_train_multi_worker(tmp_path):
    out = tmp_path / "shared_run"

    def args(i):
        return ["-m", "spinalnet_keras", "train", "--strategy", "multi_worker", "--model",
                "regression", "--dataset", "table1/sum", "--optimizer", "adam", "--epochs", "3",
                "--output-dir", str(out), "--verbose", "1"]

    outs = _wait(_start_workers(args, tmp_path))
    assert "epoch 3/3" in outs[0] and "worker 1 done" in outs[1]
    result = json.loads((out / "result.json").read_text())
    assert result["workers"] == 2 and result["epochs"] == 3
    assert result["steps_per_execution"] == 16  # 32 asked, the divisor of 16 steps nearest
    assert result["head_multiplications"] == 14_000  # what compare tabulates
    assert result["history"]["loss"][-1] < result["history"]["loss"][0]
    assert keras.saving.load_model(out / "final.keras").count_params() == 14_301
    rows = (out / "history.csv").read_text().splitlines()
    assert rows[0] == "epoch,loss,val_loss" and len(rows) == 4 and "nan" not in "".join(rows)
    # every epoch evaluated: the best one is found and kept, as with Keras's fit
    val_loss = [float(r.split(",")[2]) for r in rows[1:]]
    assert result["best"] == min(val_loss) and result["final"] == val_loss[-1]
    assert result["best_epoch"] == val_loss.index(min(val_loss)) + 1
    best = keras.saving.load_model(out / "best.keras")
    assert best.evaluate(load_task("table1/sum").test, verbose=0) == pytest.approx(
        result["best"], rel=1e-5)
    # what README says the chief writes there, as train does on one machine
    assert sorted(os.listdir(out)) == ["best.keras", "checkpoints", "config.json",
                                       "curves.png", "final.keras", "history.csv", "logs",
                                       "result.json"]
    # TensorBoard's figures, as Keras's callback writes them in fit: each
    # epoch's (learning rate too) and the evaluations by optimizer step
    logged = tensorboard_scalars(out / "logs")
    for key, column in [(("train", "epoch_loss"), 1), (("validation", "epoch_loss"), 2)]:
        assert sorted(logged[key]) == [0, 1, 2]
        np.testing.assert_allclose([logged[key][e] for e in range(3)],
                                   [float(r.split(",")[column]) for r in rows[1:]], rtol=1e-6)
    rate = json.loads((out / "config.json").read_text())["learning_rate"]
    assert logged["train", "epoch_learning_rate"] == {e: pytest.approx(rate) for e in range(3)}
    assert sorted(logged["validation", "evaluation_loss_vs_iterations"]) == [16, 32, 48]
    one = tmp_path / "one_machine"
    main(["train", "--model", "regression", "--dataset", "table1/sum", "--optimizer", "adam",
          "--epochs", "3", "--output-dir", str(one), "--verbose", "0"])
    alone = tensorboard_scalars(one / "logs")
    assert {k: sorted(v) for k, v in logged.items()} == {k: sorted(v) for k, v in alone.items()}


def test_distributed_example_on_two_workers(tmp_path):
    # The example as README's cluster runs it: its callbacks on each worker,
    # and the other worker's ending (the chief writes the run).
    example = os.path.join(REPO, "examples", "distributed_training.py")
    out = tmp_path / "run"
    outs = _wait(_start_workers(lambda i: [example, "--strategy", "multi_worker", "--epochs", 3,
                                           "--patience", 0, "--output-dir", out], tmp_path))
    assert "CollectiveAllReduceStrategy: 2 replica(s), global batch 64, 32 per replica" in outs[0]
    assert "test mse after" in outs[0] and f"model: {out}/final.keras" in outs[0]
    assert outs[1].splitlines()[-1] == "worker 1 done"
    result = json.loads((out / "result.json").read_text())
    assert result["workers"] == 2 and 1 <= result["epochs"] <= 3


def test_train_multi_worker_runs_callbacks_and_takes_the_given_task(tmp_path):
    cluster = {"cluster": {"worker": [f"127.0.0.1:{_free_ports(1)[0]}"]},
               "task": {"type": "worker", "index": 0}}
    result = _job("train_one_worker", tmp_path / "one.json",
                  env={**ENV, "TF_CONFIG": json.dumps(cluster)})
    # EarlyStopping ended the run of 6 epochs after 2; the History callback
    # saw those epochs and their figures; the run's files hold them
    assert result["stopped"] == [2, [0, 1], ["loss", "val_loss"], 2]
    # trained on the task handed in, not on one loaded for config
    assert result["loss"] == [0.0, 0.0] and result["workers"] == 1
    # a run that diverged in its first epoch of 3 stopped there, numbered as
    # an epoch of Keras's history (from 0)
    assert result["diverged"] == [1, 1, [0]]
    # one strategy for the cluster in a process: a second one's collective
    # operations would collide with the first's (tensorflow#62790)
    assert result["same_strategy"] is True


def test_train_multi_worker_resumes_as_the_uninterrupted_run(tmp_path):
    # A task loaded by train holds the epochs from the checkpointed one, in
    # an uninterrupted run's order, and dropout draws by epoch: resumed at
    # epoch 3, the run would read epoch 1's batches and draw from its first
    # masks.
    cluster = {"cluster": {"worker": [f"127.0.0.1:{_free_ports(1)[0]}"]},
               "task": {"type": "worker", "index": 0}}
    result = _job("train_one_worker_resumed", tmp_path / "resumed.json",
                  env={**ENV, "TF_CONFIG": json.dumps(cluster)})
    assert result["resumed_loss"] == result["whole_loss"][2:]
    assert result["equal"] == [True] * 6  # bit for bit
    # so does a task handed in that holds all the run's epochs: the loop
    # reads it from the epoch it resumes
    assert result["task_resumed_loss"] == result["whole_loss"][2:]
    assert result["task_equal"] == [True] * 6


def test_cli_compare_multi_worker(tmp_path):
    out = tmp_path / "shared_cmp"

    def args(i):
        return ["-m", "spinalnet_keras", "compare", "--strategy", "multi_worker", "--model",
                "regression", "--dataset", "table1/sum", "--optimizer", "adam", "--epochs", "2",
                "--seeds", "0", "--output-dir", str(out), "--verbose", "0"]

    outs = _wait(_start_workers(args, tmp_path))
    # the chief writes the table; the other worker trained its share and says so
    assert "Table, CSV and plot in" in outs[0] and outs[1].strip().endswith("worker 1 done")
    table = (out / "comparison.md").read_text()
    assert "| dense 200-100 | 1 | 22,001 (22,001) |" in table
    assert "| spinal 6 x 50 | 1 | 14,301 (14,301) |" in table
    for head in ("dense", "spinal"):
        result = json.loads((out / "table1_sum" / head / "seed0" / "result.json").read_text())
        assert result["workers"] == 2 and result["epochs"] == 2


# -- a single machine killed mid-epoch -------------------------------------------


def _cli_train(out):
    return [sys.executable, "-m", "spinalnet_keras", "train", "--model", "regression",
            "--dataset", "table1/sin_prod", "--train-examples", "40000", "--epochs", "3",
            "--optimizer", "adam", "--learning-rate", "0.001", "--deterministic", "--seed", "7",
            "--strategy", "default", "--output-dir", str(out), "--verbose", "0",
            # one step per call: epochs of several seconds, so the kill lands mid-epoch
            "--steps-per-execution", "1"]


def test_sigkill_mid_epoch_resumes_to_the_same_weights(tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(_cli_train(reference), check=True, env=ENV, timeout=600,
                   capture_output=True)
    run = tmp_path / "killed"
    proc = subprocess.Popen(_cli_train(run), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    meta = run / "backup" / "training_metadata.json"
    deadline = time.time() + 300
    while time.time() < deadline and not meta.exists():
        time.sleep(0.02)
    time.sleep(0.5)  # into the second epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "result.json").exists()
    assert json.loads(meta.read_text())["epoch"] == 1  # killed during epoch 2
    subprocess.run(_cli_train(run), check=True, env=ENV, timeout=600, capture_output=True)
    result = json.loads((run / "result.json").read_text())
    assert result["epochs"] == 3
    a = keras.saving.load_model(reference / "final.keras").get_weights()
    b = keras.saving.load_model(run / "final.keras").get_weights()
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
