"""Helper run in a subprocess by test_distribute.py (strategies need
TensorFlow's devices configured before it initialises)."""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
mode, out = sys.argv[1], sys.argv[2]

import tensorflow as tf  # noqa: E402

from spinalnet_keras import distribute  # noqa: E402

if mode in ("mirrored", "single", "loop_mirrored", "loop_single", "train_mirrored",
            "train_single"):
    distribute.set_virtual_cpus(2)
if mode in ("worker", "worker_jit", "worker_dropout", "worker_stop", "train_one_worker",
            "train_one_worker_resumed"):
    # Before any tensor exists: collectives are configured at TF start-up.
    worker_strategy = distribute.get_strategy("multi_worker")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from spinalnet_keras import SpinalDense  # noqa: E402


def build():
    keras.utils.set_random_seed(0)
    dropout = 0.5 if mode == "worker_dropout" else 0.0
    model = keras.Sequential([keras.Input((12,)), SpinalDense(3, width=6, depth=4,
                                                              dropout=dropout)])
    # The package's loop runs several steps per call in the loop modes.
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=mode == "worker_jit",
                  # the loop builds Keras's compiled metrics for callbacks
                  metrics=["accuracy"] if mode == "worker_stop" else None,
                  steps_per_execution=3 if mode.startswith("loop") else 1)
    return model


rng = np.random.default_rng(0)
samples = int(sys.argv[5]) if len(sys.argv) > 5 else 256
x = rng.normal(size=(samples, 12)).astype("float32")
y = (x[:, :4].sum(1) > 0).astype("int32") + (x[:, 4:8].sum(1) > 1).astype("int32")
ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
result = {}
if mode in ("mirrored", "single"):
    strategy = distribute.get_strategy("mirrored" if mode == "mirrored" else "default")
    with strategy.scope():
        model = build()
    hist = model.fit(ds, epochs=3, verbose=0, shuffle=False).history["loss"]
    variable = model.trainable_variables[0]
    result = {"loss": hist, "replicas": strategy.num_replicas_in_sync,
              "mirrored": type(variable.value).__name__,
              "weights": distribute.weights_digest(model).tolist()}
elif mode in ("train_mirrored", "train_single"):
    # The package's train (Keras fit) with its default steps per execution,
    # and a tuner's model built under the same strategy.
    import dataclasses
    import warnings

    import keras_tuner as kt

    from spinalnet_keras import SearchSpace, SpinalHyperModel, TrainConfig, train

    strategy = distribute.get_strategy("mirrored" if mode == "train_mirrored" else "default")
    config = TrainConfig(model="regression", dataset="table1/sum", epochs=2, optimizer="adam",
                         output_dir=out + "_run", verbose=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = train(config, strategy=strategy)  # nothing asked: nothing to warn of
        from spinalnet_keras.cli import main

        tune_status = main(["tune", "--model", "regression", "--dataset", "table1/sum",
                            "--strategy", "mirrored" if mode == "train_mirrored" else "default",
                            "--widths", "4", "--depths", "2", "--split-counts", "1",
                            "--max-trials", "1", "--epochs", "1", "--optimizer", "adam",
                            "--output-dir", out + "_cli_tune", "--verbose", "0"])
    # a number asked for, of train and of the tuner's model
    with warnings.catch_warnings(record=True) as asked:
        warnings.simplefilter("always")
        asked_run = train(dataclasses.replace(config, epochs=1, steps_per_execution=8,
                                              output_dir=out + "_asked"), strategy=strategy)
        hypermodel = SpinalHyperModel("regression", (8,), 1, loss="mse", metrics=(),
                                      space=SearchSpace(widths=(4,), depths=(2,), splits=(1,)),
                                      steps_per_execution=4)
        with strategy.scope():
            tuned = hypermodel.build(kt.HyperParameters())
    # a global batch that splits unevenly over the replicas: refused before anything
    uneven = dataclasses.replace(config, batch_size=63, output_dir=out + "_uneven")
    try:
        train(uneven, strategy=strategy)
        refused = None
    except ValueError as e:
        refused = str(e)
    # a search under the strategy on such batches: the first trial ends it
    from spinalnet_keras import make_tuner

    tuner = make_tuner(hypermodel, objective="val_loss", max_trials=2, directory=out + "_tune",
                       distribution_strategy=strategy)
    odd = ds.map(lambda a, b: (a[:, :8], tf.cast(b, "float32"))).unbatch().batch(63)
    try:
        tuner.search(odd, validation_data=odd, epochs=1, verbose=0)
        search_refused = None
    except kt.errors.FatalValueError as e:
        search_refused = str(e)
    result = {"uneven": refused, "uneven_dir": os.path.exists(uneven.output_dir),
              "search_refused": search_refused,
              "trials": [t.status for t in tuner.oracle.trials.values()],
              "final": run["final"], "steps_per_execution": run["steps_per_execution"],
              "tuner_steps_per_execution": tuned.steps_per_execution,
              "replicas": strategy.num_replicas_in_sync,
              "asked_steps_per_execution": asked_run["steps_per_execution"],
              "tune_status": tune_status,
              "warnings": [str(w.message) for w in caught if "steps_per_execution" in str(w.message)],
              "asked_warnings": [str(w.message) for w in asked
                                 if "steps_per_execution" in str(w.message)]}
elif mode in ("loop_mirrored", "loop_single"):
    strategy = distribute.get_strategy("mirrored" if mode == "loop_mirrored" else "default")
    model, hist = distribute.multi_worker_fit(build, ds, 3, 32, os.path.join(out + "_ckpt"),
                                              strategy=strategy, verbose=0)
    result = {"loss": hist["loss"], "weights": distribute.weights_digest(model).tolist()}
elif mode in ("worker", "worker_jit", "worker_dropout"):
    epochs = int(sys.argv[3])
    data, steps = ds, None
    if mode == "worker_dropout":  # epochs reshuffled, read from the resumed one on
        steps = -(-samples // 32)
        shuffled = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(
            samples, seed=1, reshuffle_each_iteration=True).batch(32).repeat(epochs)
        data = lambda epoch: shuffled.skip(epoch * steps)  # noqa: E731

    # "worker": the loop's default strategy, the one get_strategy made
    model, hist = distribute.multi_worker_fit(
        build, data, epochs, 32, sys.argv[4],
        strategy=None if mode == "worker" else worker_strategy, steps_per_epoch=steps)
    result = {"loss": hist["loss"], "accuracy": hist.get("accuracy"),
              "weights": distribute.weights_digest(model).tolist(),
              "info": list(distribute.worker_info()),
              "same_strategy": model.distribute_strategy is worker_strategy}
elif mode == "worker_stop":
    # Only the non-chief's callback asks to stop, at a batch's end: after
    # the 11th step, the 3rd of the 8 of epoch 1 (of 5). The chief has no
    # batch hooks, so it checks after every call only because the other asks.
    class StopAfterSecond(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.model.stop_training = int(self.model.optimizer.iterations.numpy()) >= 11

    class Epochs(keras.callbacks.Callback):
        seen = []

        def on_epoch_end(self, epoch, logs=None):
            self.seen.append(epoch)

        def on_train_end(self, logs=None):
            self.seen.append("end")

    chief = distribute.worker_info()[2]
    model, hist = distribute.multi_worker_fit(
        build, ds, 5, 32, sys.argv[3], strategy=worker_strategy, verbose=0,
        callbacks=[Epochs(), keras.callbacks.EarlyStopping("accuracy", patience=9)] if chief
        else [StopAfterSecond()])
    result = {"loss": hist["loss"], "accuracy": hist["accuracy"],
              "weights": distribute.weights_digest(model).tolist(),
              "seen": Epochs.seen, "stop_training": model.stop_training,
              "iterations": int(model.optimizer.iterations.numpy())}
elif mode == "train_one_worker":
    # train under a (one-worker) MultiWorkerMirroredStrategy: its own loop.
    from spinalnet_keras import TrainConfig, train
    from spinalnet_keras.data import Task

    config = TrainConfig(model="regression", dataset="table1/sum", epochs=2, optimizer="adam",
                         output_dir=out + "_run", verbose=0)
    # The caller's callbacks run: EarlyStopping stops a run of 6 epochs
    # after the second (val_loss that does not fall by 1e9).
    import dataclasses

    stopping = dataclasses.replace(config, epochs=6, output_dir=out + "_stopping")
    seen = keras.callbacks.History()
    stopped = train(stopping, strategy=worker_strategy, callbacks=[
        keras.callbacks.EarlyStopping(min_delta=1e9, patience=1), seen])
    # A task of zeros: a model whose biases start at zero predicts 0 there,
    # so its loss is exactly 0 on that task, and > 0 on config's own data.
    zeros = tf.data.Dataset.from_tensor_slices(
        (np.zeros((64, 8), "float32"), np.zeros((64, 1), "float32"))).batch(config.batch_size)
    task = Task("table1/sum", "regression", zeros, zeros, (8,), 1, 64, 64,
                -(-64 // config.batch_size))
    run = train(config, strategy=worker_strategy, task=task)
    # SGD at 1e30: NaN in the first epoch, where the loop stops.
    from spinalnet_keras.training import read_history

    diverging = dataclasses.replace(config, optimizer="sgd", learning_rate=1e30, epochs=3,
                                    output_dir=out + "_nan")
    nan_run = train(diverging, strategy=worker_strategy)
    result = {"stopped": [stopped["epochs"], seen.epoch, sorted(seen.history),
                          len(read_history(os.path.join(stopping.output_dir, "history.csv")))],
              "loss": run["history"]["loss"], "workers": run["workers"],
              "diverged": [nan_run["epochs"], nan_run["diverged_at_epoch"],
                           [r["epoch"] for r in read_history(
                               os.path.join(diverging.output_dir, "history.csv"))]],
              "same_strategy": distribute.get_strategy("multi_worker") is worker_strategy}
elif mode == "train_one_worker_resumed":
    # train's own loop resumed at epoch 3 of 3 ends as the uninterrupted run.
    import dataclasses

    from spinalnet_keras import TrainConfig, load_task, train

    config = TrainConfig(model="regression", dataset="table1/prod", epochs=3, optimizer="adam",
                         learning_rate=0.01, dropout=0.5, train_examples=256, verbose=0)
    whole = train(dataclasses.replace(config, output_dir=out + "_whole"), strategy=worker_strategy)

    def resumed_at_epoch_3(folder, task=None):
        resumed = dataclasses.replace(config, output_dir=folder)
        train(resumed, strategy=worker_strategy, task=task)
        # What a chief killed after checkpointing epoch 2 leaves behind: the
        # checkpoints up to epoch 2, none of the files written at the end.
        checkpoints = os.path.join(folder, "checkpoints")
        with open(os.path.join(checkpoints, "checkpoint"), "w") as f:
            f.write('model_checkpoint_path: "ckpt-2"\n')
        for name in ("result.json", "history.csv", "final.keras"):
            os.remove(os.path.join(folder, name))
        return train(resumed, strategy=worker_strategy, task=task)

    rerun = resumed_at_epoch_3(out + "_resumed")
    # a task handed in that holds all the run's epochs, loaded as train loads
    keras.utils.set_random_seed(config.seed)
    task = load_task("table1/prod", batch_size=64, train_examples=256, epochs=3)
    rerun_task = resumed_at_epoch_3(out + "_task", task)
    weights = [keras.saving.load_model(os.path.join(out + run, "final.keras")).get_weights()
               for run in ("_whole", "_resumed", "_task")]
    result = {"whole_loss": whole["history"]["loss"], "resumed_loss": rerun["history"]["loss"],
              "equal": [np.array_equal(a, b) for a, b in zip(weights[0], weights[1])],
              "task_resumed_loss": rerun_task["history"]["loss"],
              "task_equal": [np.array_equal(a, b) for a, b in zip(weights[0], weights[2])]}
with open(out, "w") as f:
    json.dump(result, f)
