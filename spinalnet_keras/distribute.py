"""`tf.distribute` for training: strategy selection and a multi-worker loop.

`get_strategy(name)` picks a `tf.distribute.Strategy`:

| name | strategy |
|---|---|
| `auto` | TPU if one is reachable, else `MirroredStrategy` over all GPUs when there are several, `OneDeviceStrategy` on a single GPU, the default strategy on CPU |
| `mirrored` | `MirroredStrategy` (all GPUs, or all logical CPU devices when there is no GPU) |
| `multi_worker` | `MultiWorkerMirroredStrategy`, configured by the `TF_CONFIG` environment variable |
| `tpu` | `TPUStrategy` (error when no TPU is found) |
| `one_device` | `OneDeviceStrategy` on the first GPU, else the CPU |
| `default` | `tf.distribute.get_strategy()` (no distribution) |

A `MirroredStrategy`, `MultiWorkerMirroredStrategy` or `TPUStrategy` is
made once per process and returned again by later calls: TensorFlow's
mirrored strategies made anew over the same devices collide when they
train models of different shapes (tensorflow/tensorflow#62790), and a TPU
system initialized again loses the variables on it.

Batch sizes in this package are *global*: the per-replica batch is the
global batch divided by `strategy.num_replicas_in_sync`.

Keras 3's `Model.fit` fails under `MultiWorkerMirroredStrategy` (keras
issue 20585), so `multi_worker_fit` is a training loop of its own: each
step runs under `strategy.run` on a dataset distributed by the strategy,
losses and metrics are reduced across workers, a validation set is
evaluated after each epoch, Keras callbacks run as `fit` runs them (a
stop asked for on any worker stops all), and checkpoints (model,
optimizer, epoch) are written by the chief; the other workers write to a
temporary directory they delete, as `tf.distribute` requires every worker
to take part in a save. A run started again (all workers, same
`checkpoint_dir`) resumes from the last checkpoint; with the data of the
epochs from there on (`dataset` as a function of the epoch) and each
epoch's random draws (dropout's) set from its number, as an uninterrupted
run would have them.
"""

import json
import math
import os
import shutil
import warnings

import keras
import numpy as np
import tensorflow as tf

from spinalnet_keras import _validation
from spinalnet_keras._randomness import EpochRandomness

STRATEGIES = ("auto", "mirrored", "multi_worker", "tpu", "one_device", "default")


def _tpu_resolver():
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return resolver
    except (ValueError, RuntimeError, tf.errors.OpError):
        return None


def _tpu():
    """The TPUStrategy of this process, or None where no TPU is reachable.
    Made once: initializing the TPU system again wipes the TPU's memory,
    the variables of the models trained so far with it."""

    def make():
        resolver = _tpu_resolver()
        return None if resolver is None else tf.distribute.TPUStrategy(resolver)

    return _once(("tpu", os.environ.get("TPU_NAME")), make)


def get_strategy(name="auto"):
    """The `tf.distribute.Strategy` called `name` (see the module docstring).

    Raises:
        ValueError: an unknown `name`, or `multi_worker` without `TF_CONFIG`.
        RuntimeError: Keras does not run on its TensorFlow backend.
    """
    _validation.choice("strategy", name, STRATEGIES)
    _validation.tensorflow_backend(f"get_strategy({name!r})")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "multi_worker":
        _check_tf_config()
        return _multi_worker()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "tpu" or (name == "auto" and os.environ.get("TPU_NAME")):
        tpu = _tpu()
        if tpu is not None:
            return tpu
        if name == "tpu":
            raise RuntimeError("strategy='tpu' but no TPU was found.")
    if name == "mirrored":
        return _mirrored([d.name for d in gpus or tf.config.list_logical_devices("CPU")])
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    # auto
    if len(gpus) > 1:
        return _mirrored([d.name for d in gpus])
    if len(gpus) == 1:
        return tf.distribute.OneDeviceStrategy(gpus[0].name)
    return tf.distribute.get_strategy()


# The mirrored and TPU strategies made, each once per process (by its
# devices, or its cluster). A second mirrored strategy over the same
# devices numbers its collective operations from the same start as the
# first, so a model of another shape trained under it fails ("Shape
# mismatch in the collective instance 100", tensorflow/tensorflow#62790;
# seen with TensorFlow 2.21 on CPU devices, and across two workers).
_STRATEGIES = {}


def _once(key, make):
    """The strategy stored for `key`, else `make()`'s, stored unless None
    (nothing reachable: a later call tries again)."""
    if key not in _STRATEGIES:
        strategy = make()
        if strategy is None:
            return None
        _STRATEGIES[key] = strategy
    return _STRATEGIES[key]


def _mirrored(devices):
    return _once(("mirrored", tuple(devices)), lambda: tf.distribute.MirroredStrategy(devices))


def _multi_worker():
    return _once(("multi_worker", os.environ.get("TF_CONFIG")),
                 tf.distribute.MultiWorkerMirroredStrategy)


_TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                      '"task": {"type": "worker", "index": 0}}')


def _check_tf_config():
    """Refuse a missing or malformed `TF_CONFIG` by name (json's own error
    names nothing; without a cluster, TensorFlow would train on this
    machine alone)."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise ValueError(
            "strategy='multi_worker' needs the TF_CONFIG environment variable "
            f"(e.g. {_TF_CONFIG_EXAMPLE}) on every worker."
        )
    try:
        config, error = json.loads(text), ""
    except ValueError as e:
        config, error = None, f" ({e})"
    task = config.get("task") if isinstance(config, dict) else None
    if not (isinstance(config, dict) and isinstance(config.get("cluster"), dict)
            and isinstance(task, dict) and "type" in task and "index" in task):
        raise ValueError(
            "TF_CONFIG must be a JSON object with the cluster and this worker's "
            f"task, e.g. {_TF_CONFIG_EXAMPLE}. Received: TF_CONFIG={text!r}{error}"
        )


def check_strategy(strategy, name="strategy", what="Training under a tf.distribute strategy"):
    """Return `strategy` if it is a `tf.distribute.Strategy` or None, else
    raise naming it (a strategy's name, such as `"mirrored"`, is pointed to
    `get_strategy`). `what` names the use in the backend error.

    Raises:
        TypeError: `strategy` is neither.
        RuntimeError: a strategy, and Keras does not run on its TensorFlow backend.
    """
    if strategy is None:
        return None
    if not isinstance(strategy, tf.distribute.Strategy):
        named = isinstance(strategy, str) and strategy in STRATEGIES
        example = f"get_strategy({strategy!r})" if named else "get_strategy('mirrored')"
        raise TypeError(
            f"`{name}` must be a tf.distribute.Strategy or None, e.g. {example}. "
            f"Received: {name}={strategy!r}"
        )
    _validation.tensorflow_backend(what)
    return strategy


def supported_steps_per_execution(requested, strategy=None):
    """`requested`, or 1 where Keras cannot run several steps per execution.

    Keras 3's TensorFlow trainer runs `steps_per_execution > 1` as a while
    loop with a conditional around `strategy.run`. Under a
    `MirroredStrategy` with more than one replica the compiled step fails
    ("You must feed a value for placeholder tensor", keras-team/keras#19246;
    seen with Keras 3.15.1 and TensorFlow 2.21, in `fit`). One step per
    execution works, so that is what such a strategy gets, with a warning.

    Args:
        requested: the steps per execution asked for.
        strategy: default: the strategy of the current scope.
    """
    requested = _validation.positive_int("steps_per_execution", requested)
    strategy = check_strategy(strategy, what="supported_steps_per_execution(strategy=...)")
    strategy = strategy or tf.distribute.get_strategy()
    if requested > 1 and _runs_one_step_per_execution(strategy):
        warnings.warn(
            f"steps_per_execution={requested} becomes 1 under MirroredStrategy with "
            f"{strategy.num_replicas_in_sync} replicas: Keras 3's multi-step loop fails there "
            "(keras-team/keras#19246).",
            stacklevel=2,
        )
        return 1
    return requested


def _runs_one_step_per_execution(strategy):
    """Whether Keras 3's fit runs one step per compiled call only under
    `strategy` (a `MirroredStrategy` of several replicas; see
    `supported_steps_per_execution`)."""
    return (isinstance(strategy, tf.distribute.MirroredStrategy)
            and strategy.num_replicas_in_sync > 1)


def set_virtual_cpus(count):
    """Split the CPU into `count` logical devices (to try strategies on one
    machine). Must run before TensorFlow initialises its devices."""
    count = _validation.positive_int("count", count)
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * count
    )


def worker_info():
    """`(task_type, task_index, is_chief, num_workers)` from `TF_CONFIG`."""
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = config.get("task", {})
    cluster = config.get("cluster", {})
    task_type, index = task.get("type", "worker"), int(task.get("index", 0))
    is_chief = task_type == "chief" or (
        task_type == "worker" and index == 0 and "chief" not in cluster
    )
    workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    return task_type, index, is_chief, max(workers, 1)


def multi_worker_fit(
    build_and_compile,
    dataset,
    epochs,
    global_batch_size,
    checkpoint_dir,
    strategy=None,
    steps_per_epoch=None,
    verbose=1,
    validation_data=None,
    on_epoch_end=None,
    callbacks=None,
):
    """Train under `strategy.run` (works with `MultiWorkerMirroredStrategy`).

    Args:
        build_and_compile: function returning a compiled Keras model; it is
            called inside the strategy's scope. The loop trains with its
            optimizer, its `steps_per_execution` (steps per compiled call,
            as Keras's fit) and its one loss (a Keras loss object, name or
            function, without `loss_weights`), and reports the loss and,
            for a categorical loss, the accuracy (on integer labels with the
            sparse loss, one-hot targets otherwise); so its metrics must be
            none, or `["accuracy"]` with a categorical loss. As with fit,
            each step's loss is the mean over all its values (one per
            example, or one per position for outputs of rank 3 and more)
            and the accuracy is counted at every position. With
            `compile(jit_compile=True)` XLA compiles each replica's forward
            and backward pass as one function (not the all-reduces, which
            XLA cannot compile on CPU).
        dataset: `tf.data.Dataset` of `(inputs, targets)` batches of the
            global batch size, identical on every worker (the strategy
            shards it); or a function that takes the epoch training starts
            from (0, or the epoch a checkpoint resumes) and returns the
            Dataset of the epochs from there on, so that a resumed run
            reads the batches an uninterrupted one would (called once, and
            not when the checkpoint holds all `epochs`). The loop reads it
            for training only, and checks the first batch's size after its
            first compiled call: a look ahead at a dataset that tf.data
            reshuffles on every pass would change the orders of the passes
            after it.
        epochs: total number of epochs (a resumed run does the rest).
        global_batch_size: the dataset's batch size.
        checkpoint_dir: where the chief keeps checkpoints (and resumes).
        strategy: default: `get_strategy("multi_worker")` where `TF_CONFIG`
            is set, else a `MultiWorkerMirroredStrategy` of this process
            alone (either made once per process).
        steps_per_epoch: batches per epoch (default: the whole dataset;
            needed for a dataset that repeats without end, and at most the
            dataset's batches otherwise). As with Keras's fit, epochs then
            read on through the dataset (a dataset holding several epochs
            back to back is read once); where it ends, a new pass begins.
        verbose: 0, or 1 or 2 to print a line per epoch on the chief.
        validation_data: optional `tf.data.Dataset` of `(inputs, targets)`
            batches (of at most the global batch size), evaluated under the
            strategy after every epoch: `val_loss` (with the model's
            regularization losses, as Keras's fit reports it) and, for a
            categorical loss, `val_accuracy`, over all its examples.
        on_epoch_end: optional function `(epoch, logs)` called on every
            worker after each epoch (from 0, as Keras's callbacks number
            them), before its checkpoint, with that epoch's figures
            (reduced over all workers, so the same on each); its return
            value is not used. Write files from the chief only
            (`worker_info()[2]`). A run killed before the checkpoint does
            the epoch again and calls it again.
        callbacks: optional list of `keras.callbacks.Callback`s, run as
            Keras's fit runs them (`EarlyStopping`, `ReduceLROnPlateau`,
            `LearningRateScheduler`, `TensorBoard`, ...) with the figures
            reduced over all workers: train begin and end, each epoch's
            begin and end (before `on_epoch_end` and the checkpoint), the
            train batch hooks once per compiled call (as fit does with
            `steps_per_execution`; begin with the call's first step, end
            with its last and the epoch's figures so far), and the
            evaluation's test hooks. They run on every worker that is
            given them: make those that write files (`ModelCheckpoint`,
            `CSVLogger`, `TensorBoard`) on the chief only. A callback
            that sets `model.stop_training` on any worker stops every
            worker (they must stop together) where Keras's fit would stop:
            after the compiled call whose batch hook asked, or at the end
            of the epoch, which is then evaluated, handed to the epoch-end
            hooks and checkpointed as done. Where any worker's callbacks
            have train batch or epoch begin hooks, the workers agree after
            every call (one collective of a scalar); otherwise after every
            epoch only. Keras's own callbacks that never stop before an
            epoch's end (all but `TerminateOnNaN`; their exact classes,
            not subclasses) do not count. The stopped epoch is checkpointed, and a
            call with the same `checkpoint_dir` resumes after it; the
            callbacks' own state (e.g. `EarlyStopping`'s count of epochs
            without improvement) is not in the checkpoint, as with Keras's
            `BackupAndRestore`.

    Each epoch's random draws (dropout's masks) are made from the model's
    seed generators as they stood before training and the epoch's number
    alone, as `train` does with Keras's fit: the generators' states are
    not in a checkpoint.

    Returns:
        `(model, history)`; `history` maps `"loss"` (and `"accuracy"` for
        classifiers, `"acc"` where compiled with `metrics=["acc"]`, as fit
        names it; and `"val_loss"`, `"val_accuracy"` with
        `validation_data`) to one value per epoch of this session, reduced
        over all workers. An epoch whose loss is not finite (NaN or infinite)
        is the last, as with Keras's `TerminateOnNaN`: it is checkpointed,
        so a later call resumes after it, from weights that are no longer
        numbers.

    Raises:
        TypeError: `build_and_compile` is not a function or returns no
            compiled model, `dataset` is neither a `tf.data.Dataset` nor a
            function returning one, `validation_data` is not a Dataset,
            `on_epoch_end` not a function, a callback not a
            `keras.callbacks.Callback`, or `strategy` is not a
            `tf.distribute.Strategy`.
        ValueError: a bad number or `checkpoint_dir`, an empty dataset,
            batches of another size than `global_batch_size` (larger, for
            `validation_data`) or not `(inputs, targets)` pairs, or a
            compiled loss, metric or loss weight that the loop would not
            compute.
        RuntimeError: Keras does not run on its TensorFlow backend.
    """
    _validation.tensorflow_backend("multi_worker_fit")
    if not callable(build_and_compile):
        raise TypeError(
            "`build_and_compile` must be a function returning a compiled model. "
            f"Received: {build_and_compile!r}"
        )
    if not (isinstance(dataset, tf.data.Dataset) or callable(dataset)):
        raise TypeError(
            "`dataset` must be a tf.data.Dataset or a function of the first epoch "
            f"returning one. Received: {type(dataset).__name__}"
        )
    epochs = _validation.positive_int("epochs", epochs)
    global_batch_size = _validation.positive_int("global_batch_size", global_batch_size)
    steps_per_epoch = _validation.positive_int("steps_per_epoch", steps_per_epoch, allow_none=True)
    checkpoint_dir = _validation.path("checkpoint_dir", checkpoint_dir)
    verbose = _validation.choice("verbose", verbose, (0, 1, 2))  # as Keras's fit
    if validation_data is not None and not isinstance(validation_data, tf.data.Dataset):
        raise TypeError("`validation_data` must be a tf.data.Dataset or None. "
                        f"Received: {type(validation_data).__name__}")
    if on_epoch_end is not None and not callable(on_epoch_end):
        raise TypeError("`on_epoch_end` must be a function (epoch, logs) or None. "
                        f"Received: on_epoch_end={on_epoch_end!r}")
    callbacks = _validation.callbacks("callbacks", callbacks)
    check_strategy(strategy, what="multi_worker_fit")
    if strategy is None and os.environ.get("TF_CONFIG"):
        _check_tf_config()
    # Made before any tensor: collectives are configured at start-up.
    strategy = strategy or _multi_worker()
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    start_epoch = _checkpointed_epoch(latest)
    if not isinstance(dataset, tf.data.Dataset):
        dataset = _dataset_from(dataset, start_epoch) if start_epoch < epochs else None
    if dataset is not None:
        _check_elements(dataset)
        _check_steps(dataset, steps_per_epoch)
    if validation_data is not None:
        _check_elements(validation_data, "validation_data")
        _check_validation_batch(validation_data, global_batch_size)
    _, index, is_chief, _ = worker_info()
    with strategy.scope():
        model = build_and_compile()
        if not isinstance(model, keras.Model) or getattr(model, "optimizer", None) is None:
            raise TypeError(
                "`build_and_compile` must return a compiled keras.Model (its optimizer "
                f"and loss are what this loop trains with). It returned {model!r}"
            )
        optimizer = model.optimizer
        loss_obj = _single_loss(model.loss)
        if isinstance(loss_obj, keras.losses.Loss):
            # Unreduced values; the mean over the step's values on all
            # replicas is taken below, so every worker's gradient has the
            # right scale.
            loss_obj = loss_obj.__class__.from_config(
                {**loss_obj.get_config(), "reduction": None}
            )
            # The class, not the object's name, which the user may have set.
            loss_kind = type(loss_obj).__name__.lower()
        else:  # "mse" etc.: functions return unreduced values
            loss_kind = getattr(loss_obj, "__name__", "").lower()
        classifier = "categorical" in loss_kind
        sparse_labels = "sparse" in loss_kind
        compiled_metrics = _check_compile_options(model, classifier)
        # named as compiled ("acc" or "accuracy"), as fit names it
        accuracy = compiled_metrics[0] if compiled_metrics else "accuracy"
        if compiled_metrics:
            _build_compiled_metrics(model, sparse_labels)
        epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        optimizer.build(model.trainable_variables)
        randomness = EpochRandomness(model)  # before any step draws
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_var)

    # Only the chief's checkpoints count; the others must still write (saving
    # is collective) and delete. Their folder sits inside `checkpoint_dir`
    # under a fixed name, as Keras's own callbacks do, so that a worker killed
    # mid-run leaves nothing in the system's temporary folder and its restart
    # clears what it left.
    write_dir = checkpoint_dir
    if not is_chief:
        write_dir = os.path.join(checkpoint_dir, f"workertemp_{index}")
        shutil.rmtree(write_dir, ignore_errors=True)
    manager = tf.train.CheckpointManager(checkpoint, write_dir, max_to_keep=2)
    if latest:
        checkpoint.restore(latest)
    if verbose and is_chief and start_epoch:
        print(f"resuming from epoch {start_epoch} ({latest})", flush=True)

    # Not made when no epoch is left, which may have no dataset.
    dist_ds = (strategy.experimental_distribute_dataset(dataset)
               if dataset is not None else None)
    dist_val = (strategy.experimental_distribute_dataset(validation_data)
                if validation_data is not None else None)

    def examples_in(x):
        return tf.cast(tf.shape(tf.nest.flatten(x)[0])[0], tf.float32)

    def hits(y, pred):
        # Matches and the positions compared (examples, or examples x
        # positions for outputs of rank > 2), as Keras's accuracy counts.
        if not classifier:
            return tf.constant(0.0), tf.constant(0.0)
        predicted = tf.argmax(pred, -1)
        labels = (tf.reshape(tf.cast(y, tf.int64), tf.shape(predicted)) if sparse_labels
                  else tf.argmax(y, -1))  # one-hot targets
        return (tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.float32)),
                tf.cast(tf.size(predicted), tf.float32))

    def forward(x, y, training):
        # The replica's sum of the loss's values and their count (one per
        # example, or more for outputs of rank > 2), the regularization
        # loss, the hits and the positions they were counted over.
        pred = model(x, training=training)
        values = loss_obj(y, pred)
        reg = tf.add_n(model.losses) if model.losses else tf.constant(0.0, values.dtype)
        return (tf.reduce_sum(values), tf.cast(tf.size(values), values.dtype),
                tf.cast(reg, values.dtype), *hits(y, pred))

    def forward_backward(x, y):
        # The replica's own pass, forward and backward, with no collective
        # (XLA cannot compile them on CPU: "not yet implemented", measured
        # with TF 2.21). Its loss is the mean over its own loss values; the
        # step's mean is over all replicas' values, a count known only
        # after every forward pass, so the caller rescales this gradient.
        # The regularization loss's gradient stays apart: it is not rescaled.
        with tf.GradientTape(persistent=True) as tape:
            total, values, reg, correct, positions = forward(x, y, training=True)
            # As Keras's train_step: a LossScaleOptimizer (mixed_float16) or
            # an optimizer's loss_scale_factor unscales the gradients it is
            # given, so they must come from the scaled loss.
            own = optimizer.scale_loss(total / values)
            regularization = optimizer.scale_loss(tf.nn.scale_regularization_loss(reg))
        variables = model.trainable_variables
        grads = tape.gradient(own, variables)
        # (None for a model without regularization losses)
        reg_grads = tape.gradient(regularization, variables) if model.losses else None
        return total, values, reg, correct, positions, grads, reg_grads

    # compile(jit_compile=...), as Keras's fit honours it: XLA compiles the
    # replica's pass as one function, forward and backward (as it does
    # Keras's train step), outside the step's collectives.
    if model.jit_compile:
        forward_backward = tf.function(forward_backward, jit_compile=True)

    def step_fn(x, y):
        here = examples_in(x)
        total, values, reg, correct, positions, grads, reg_grads = forward_backward(x, y)
        # The step's examples and loss values over all replicas, in one
        # collective.
        examples, all_values = tf.unstack(tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, tf.stack([here, tf.cast(values, tf.float32)])))
        # The mean over the step's loss values, as fit's over its batch: the
        # replicas' gradients add up to the batch mean's, and a last, smaller
        # batch weighs what it holds. (reg is 0 without regularization losses)
        share = values / tf.cast(all_values, values.dtype)
        loss = total / tf.cast(all_values, total.dtype) + tf.nn.scale_regularization_loss(reg)
        grads = [_scaled(g, share) for g in grads]
        if reg_grads is not None:
            grads = [_added(g, r) for g, r in zip(grads, reg_grads)]
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        # The replica's share of the batch's loss x its examples: summed over
        # replicas and steps and divided by the examples, the epoch's loss
        # as fit's (batch losses weighted by their sizes).
        return tf.cast(loss, tf.float32) * examples, correct, here, positions

    @tf.function
    def train_steps(iterator, wanted):
        # Up to `wanted` steps in one call (compile's steps_per_execution),
        # fewer where the pass ends. Returns the sums of the loss, hits,
        # examples and positions of the hits, the steps done and the first
        # step's examples (over all workers), which the loop checks against
        # the global batch size.
        reduce = tf.distribute.ReduceOp.SUM
        sums = [tf.constant(0.0)] * 4
        first = tf.constant(0.0)
        done = tf.constant(0)
        for _ in tf.range(wanted):
            batch = iterator.get_next_as_optional()
            if not batch.has_value():
                break
            values = strategy.run(step_fn, args=batch.get_value())
            values = [strategy.reduce(reduce, v, axis=None) for v in values]
            sums = [t + v for t, v in zip(sums, values)]
            if done == 0:
                first = values[2]
            done += 1
        return sums, done, first

    @tf.function
    def evaluate_step(x, y):
        # As Keras's evaluate: the batch's loss is the mean over its loss
        # values plus the regularization loss, weighted by its examples.
        def replica(x, y):
            return (examples_in(x),
                    *[tf.cast(v, tf.float32) for v in forward(x, y, training=False)])

        sums = [strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                for v in strategy.run(replica, args=(x, y))]
        examples, total, values, reg, correct, positions = sums
        reg /= strategy.num_replicas_in_sync  # the same on every replica
        return (total / values + reg) * examples, correct, examples, positions

    def figures(total, correct, count, positions):
        # Means of sums, as Python floats: the loss per example, the
        # accuracy per position.
        logs = {"loss": float(total) / max(float(count), 1.0)}
        if classifier:
            logs[accuracy] = float(correct) / max(float(positions), 1.0)
        return logs

    def evaluate():
        # Sums over every example, so a last batch that is smaller (or
        # empty on some replicas) weighs what it holds.
        totals = [tf.constant(0.0)] * 4
        hooks.on_test_begin()
        ended = True
        for step, (x, y) in enumerate(dist_val):
            # The test batch hooks once per `per_execution` batches, as
            # Keras's evaluate calls them.
            if step % per_execution == 0:
                hooks.on_test_batch_begin(step)
            totals = [t + v for t, v in zip(totals, evaluate_step(x, y))]
            ended = (step + 1) % per_execution == 0
            if ended:
                hooks.on_test_batch_end(step, figures(*totals) if test_batch_logs else None)
        if not ended:
            hooks.on_test_batch_end(step, figures(*totals) if test_batch_logs else None)
        logs = figures(*totals)
        hooks.on_test_end(logs)
        return {f"val_{k}": v for k, v in logs.items()}

    @tf.function
    def replicas_with(flag):
        # How many replicas' workers hold `flag` (0 or 1): a collective.
        held = strategy.run(lambda: tf.identity(flag))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, held, axis=None)

    def any_worker(flag):
        # Whether `flag` holds on any worker, decided alike on every worker.
        return float(replicas_with(tf.constant(float(bool(flag))))) > 0

    steps_known = steps_per_epoch
    if not steps_known and dataset is not None:
        batches_in = int(dataset.cardinality())
        steps_known = batches_in if batches_in > 0 else None
    # Keras's fit gives its callbacks these params.
    hooks = keras.callbacks.CallbackList(callbacks, model=model, verbose=verbose,
                                         epochs=epochs, steps=steps_known)
    # The running figures cost a read from the device per call: made for
    # callbacks that look at them only.
    train_batch_logs = _overrides([c for c in callbacks if _reads_batch_figures(c)],
                                  "on_train_batch_end", "on_batch_end")
    test_batch_logs = _overrides(callbacks, "on_test_batch_end")
    # Keras's fit stops after the batch in which a callback asks: where any
    # worker has a callback that may ask before an epoch ends, every worker
    # checks after every call (all or none of them, or one would wait).
    stops_in_epoch = any_worker(_overrides(
        [c for c in callbacks if type(c) not in _NEVER_STOP_IN_EPOCH],
        "on_epoch_begin", "on_train_batch_begin", "on_train_batch_end",
        "on_batch_begin", "on_batch_end"))

    metrics = ["loss"] + ([accuracy] if classifier else [])
    if validation_data is not None:
        metrics += [f"val_{m}" for m in metrics]
    history = {m: [] for m in metrics}
    batches = None  # with steps_per_epoch, read on from epoch to epoch
    first_batch = True
    # compile's, as Keras's fit honours it (`train` sets it to divide the epoch)
    per_execution = int(model.steps_per_execution or 1)
    model.stop_training = False
    logs = None
    stop = False
    hooks.on_train_begin()
    try:
        for epoch in range(start_epoch, epochs):
            randomness.start_epoch(epoch)
            hooks.on_epoch_begin(epoch)
            # Sums stay on the device; the host reads a step count per call.
            totals = [tf.constant(0.0)] * 4  # loss, hits, examples, positions
            steps = 0
            new_pass = not steps_per_epoch or batches is None
            if new_pass:
                batches = iter(dist_ds)
            # Without steps_per_epoch, a pass of known length ends without a
            # call that finds it ended (and callbacks told of a batch).
            epoch_steps = steps_per_epoch or steps_known
            while not epoch_steps or steps < epoch_steps:
                wanted = per_execution
                if epoch_steps:
                    wanted = min(wanted, epoch_steps - steps)
                hooks.on_train_batch_begin(steps)
                sums, done, first = train_steps(batches, tf.constant(wanted))
                done = int(done)
                if first_batch and done:
                    _check_global_batch(int(first), dataset, global_batch_size)
                    first_batch = False
                totals = [t + v for t, v in zip(totals, sums)]
                steps += done
                if done:
                    hooks.on_train_batch_end(
                        steps - 1, figures(*totals) if train_batch_logs else None)
                    if stops_in_epoch and any_worker(model.stop_training):
                        break  # the epoch ends here, evaluated and checkpointed
                if done == wanted:
                    new_pass = False
                    continue
                # The pass ended: the epoch too, or a new pass goes on with it.
                if not steps_per_epoch:
                    break
                if new_pass and not done:
                    raise ValueError("`dataset` yielded no batches on a new pass.")
                batches, new_pass = iter(dist_ds), True
            if not steps:
                raise ValueError("`dataset` yielded no batches.")
            logs = figures(*totals)
            if dist_val is not None:
                logs.update(evaluate())
            for key, value in logs.items():
                history[key].append(value)
            # Before the checkpoint: a run killed in between does the epoch,
            # and calls these, again, rather than skip it.
            hooks.on_epoch_end(epoch, dict(logs))
            if on_epoch_end is not None:
                on_epoch_end(epoch, dict(logs))
            # On every worker, callbacks or not: a worker that stopped alone
            # would leave the others waiting in their next collective.
            stop = any_worker(model.stop_training)
            epoch_var.assign(epoch + 1)
            manager.save()
            if verbose and is_chief:
                shown = " ".join(f"{k} {v:.4f}" if accuracy in k else f"{k} {v:.5f}"
                                 for k, v in logs.items())
                print(f"epoch {epoch + 1}/{epochs} {shown}", flush=True)
            # As Keras's TerminateOnNaN: the weights are no longer numbers,
            # so the epochs left would train nothing. The loss is reduced
            # over all workers, so every worker stops at the same epoch.
            if not math.isfinite(history["loss"][-1]):
                if verbose and is_chief:
                    print(f"epoch {epoch + 1}: the loss is not finite; training stops",
                          flush=True)
                break
            if stop:
                if verbose and is_chief and epoch + 1 < epochs:
                    print(f"epoch {epoch + 1}: a callback stopped training", flush=True)
                break
        model.stop_training = stop
        hooks.on_train_end(logs)
    finally:
        if not is_chief:
            shutil.rmtree(write_dir, ignore_errors=True)
    return model, history


def _scaled(grad, factor):
    # A gradient times a scalar; an embedding's is IndexedSlices.
    if grad is None:
        return None
    factor = tf.cast(factor, grad.dtype)
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(grad.values * factor, grad.indices, grad.dense_shape)
    return grad * factor


def _added(grad, other):
    # The sum of two gradients of one variable, either of which may be None
    # (the loss does not reach it) or IndexedSlices.
    if grad is None or other is None:
        return other if grad is None else grad
    return tf.convert_to_tensor(grad) + tf.convert_to_tensor(other)


# Keras's callbacks that never set `model.stop_training` before an epoch's
# end (of Keras's own, TerminateOnNaN does, after a batch; EarlyStopping at
# the end). Their batch hooks need no check for a stop after every call, a
# collective (with the figures that TensorBoard drops, a tenth of the epoch
# at one step per call, RESULTS §4). Exact classes: a subclass may ask.
_NEVER_STOP_IN_EPOCH = (
    keras.callbacks.TensorBoard, keras.callbacks.ModelCheckpoint,
    keras.callbacks.BackupAndRestore, keras.callbacks.CSVLogger,
    keras.callbacks.ProgbarLogger, keras.callbacks.History,
    keras.callbacks.LearningRateScheduler, keras.callbacks.ReduceLROnPlateau,
    keras.callbacks.EarlyStopping, keras.callbacks.RemoteMonitor,
)


def _reads_batch_figures(callback):
    # Keras's TensorBoard writes a batch's figures only with a batch-level
    # update_freq; with "epoch" (its default, and train's), it drops them.
    return not (type(callback) is keras.callbacks.TensorBoard
                and callback.update_freq == "epoch")


def _overrides(callbacks, *methods):
    """Whether any of `callbacks` has its own form of one of `methods`:
    in its class, or set on the object (as `LambdaCallback` sets them)."""
    base = keras.callbacks.Callback
    return any(getattr(getattr(c, m), "__func__", None) is not getattr(base, m)
               for c in callbacks for m in methods)


def _checkpointed_epoch(checkpoint):
    """The epochs done by the run of `checkpoint` (a path; None: 0)."""
    if not checkpoint:
        return 0
    return int(tf.train.load_variable(checkpoint, "epoch/.ATTRIBUTES/VARIABLE_VALUE"))


def _dataset_from(function, epoch):
    dataset = function(epoch)
    if not isinstance(dataset, tf.data.Dataset):
        raise TypeError(
            f"`dataset`, a function, must return a tf.data.Dataset; called with the "
            f"first epoch {epoch}, it returned {dataset!r}"
        )
    return dataset


def _single_loss(loss):
    # One loss for one output: the loop computes nothing else.
    shown = list(loss) if isinstance(loss, list) else loss  # not TF's ListWrapper
    message = ("`build_and_compile` must compile its model with one loss (a Keras loss "
               f"object, name or function); multi_worker_fit trains one output. "
               f"Received: loss={shown!r}")
    if loss is None or isinstance(loss, (list, tuple, dict)):
        raise ValueError(message)
    try:
        loss_obj = keras.losses.get(loss)
    except (ValueError, TypeError):
        raise ValueError(message) from None
    if not callable(loss_obj):
        raise ValueError(message)
    return loss_obj


def _check_compile_options(model, classifier):
    # The loop computes the loss, and the accuracy for categorical losses;
    # compile's other options would be silently left out. Returns the
    # compiled metrics (none, or the accuracy under one of its names).
    config = model.get_compile_config() or {}
    for key in ("loss_weights", "weighted_metrics"):
        if config.get(key):
            raise ValueError(
                f"multi_worker_fit does not apply compile's `{key}`; compile without "
                f"it. Received: {key}={config[key]!r}"
            )
    metrics = config.get("metrics") or []
    allowed = ("accuracy", "acc") if classifier else ()
    if not isinstance(metrics, (list, tuple)) or any(m not in allowed for m in metrics):
        raise ValueError(
            "multi_worker_fit reports the loss, and the accuracy with a categorical "
            "loss, only; compile's other metrics would not be computed. Compile with "
            + ("metrics=['accuracy'] or none" if classifier else "no metrics")
            + f". Received: metrics={metrics!r}"
        )
    return list(metrics)


def _build_compiled_metrics(model, sparse_labels):
    # The loop computes its accuracy itself, so Keras's compiled metrics
    # would stay unbuilt, and callbacks that tell from them which way a
    # metric improves (EarlyStopping's mode "auto") would fail. Built on
    # stand-in values, then cleared; a model with its own compute_metrics
    # is left alone.
    if type(model).compute_metrics is not keras.Model.compute_metrics:
        return
    y_true = keras.ops.zeros((1,) if sparse_labels else (1, 2))
    model.compute_metrics(None, y_true, keras.ops.zeros((1, 2)))
    model.reset_metrics()


def _check_elements(dataset, name="dataset"):
    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2):
        raise ValueError(
            f"`{name}` must yield (inputs, targets) batches; multi_worker_fit takes "
            f"no sample weights. Received elements: {spec!r}"
        )


def _check_steps(dataset, steps_per_epoch):
    # An endless dataset never ends an epoch; one too short for the steps
    # asked ends it early, and the loop cannot say so as Keras's fit does.
    batches = int(dataset.cardinality())
    if batches == int(tf.data.INFINITE_CARDINALITY) and steps_per_epoch is None:
        raise ValueError(
            "`dataset` repeats without end, so an epoch needs `steps_per_epoch`. "
            "Received: steps_per_epoch=None"
        )
    if steps_per_epoch is not None and 0 <= batches < steps_per_epoch:
        raise ValueError(
            f"`dataset` holds {batches} batches, fewer than steps_per_epoch="
            f"{steps_per_epoch}; repeat it, or pass at most {batches}."
        )


def _check_global_batch(size, dataset, global_batch_size):
    """Refuse a first batch of `size` examples (over all workers) where
    every batch should hold `global_batch_size`.

    Batches of another size would train on another batch than the caller
    means (and than a learning rate may be set for), without an error. It is
    checked after the first call trains (an error then ends the run before
    any checkpoint), not on a look ahead: a look at a dataset that
    reshuffles on every pass (tf.data's default) would change the order of
    the passes after it, and a resumed run would read other batches than
    an uninterrupted one.
    """
    # A smaller first batch is the whole data when there is one batch (or
    # when tf.data cannot tell how many there are).
    one_batch = int(dataset.cardinality()) in (1, int(tf.data.UNKNOWN_CARDINALITY))
    if size > global_batch_size or (size < global_batch_size and not one_batch):
        raise ValueError(
            f"`dataset` yields batches of {size}, but global_batch_size="
            f"{global_batch_size}; batch the dataset with the global batch size."
        )


def _check_validation_batch(dataset, global_batch_size):
    # Evaluation sums over examples, so smaller batches are fine; a larger
    # one would not split over the replicas as the model was built for.
    first = next(iter(dataset), None)
    if first is None:
        raise ValueError("`validation_data` holds no batches.")
    size = int(tf.shape(tf.nest.flatten(first)[0])[0])
    if size > global_batch_size:
        raise ValueError(
            f"`validation_data` yields batches of {size}, but global_batch_size="
            f"{global_batch_size}; batch it with the global batch size or less."
        )


def weights_digest(model):
    """A float64 vector of all of a model's weights (to compare workers)."""
    return np.concatenate([np.ravel(w) for w in model.get_weights()]).astype("float64")
