"""Training runs and dense-vs-spinal comparisons, with everything on disk.

`train` runs one model on one dataset and writes, in its output directory:
`config.json`, TensorBoard logs (`logs/`), the history (`history.csv`),
the best and final models (`best.keras`, `final.keras`), learning curves
(`curves.png`) and `result.json`. An interrupted run started again with the
same directory resumes from its last completed epoch (`BackupAndRestore`),
on the batches, augmentations and dropout masks that the uninterrupted run
would have drawn (each drawn from the seed and the epoch's number).

`compare` trains the dense and the spinal variant of one network on the
same data order over several seeds and writes the paper-style table
(`comparison.md`, `comparison.csv`) and a bar plot (`comparison.png`).

The paper's figures are the best test accuracy over epochs (model
selection on the test set). Both that and the accuracy after the last
epoch are reported; the last-epoch one is the honest estimate.
"""

import contextlib
import csv
import dataclasses
import io
import json
import logging
import math
import os
import statistics
import time

import keras
import numpy as np

from spinalnet_keras import _validation
from spinalnet_keras._files import json_text
from spinalnet_keras._files import write_atomically
from spinalnet_keras._randomness import EpochRandomness
from spinalnet_keras.backbones import available_backbones
from spinalnet_keras.backbones import backbone_model
from spinalnet_keras.costs import cost_report
from spinalnet_keras.data import Task
from spinalnet_keras.data import from_epoch
from spinalnet_keras.data import load_task
from spinalnet_keras.heads import Head
from spinalnet_keras.paper_models import PAPER_MODELS
from spinalnet_keras.paper_models import check_image_size
from spinalnet_keras.paper_models import paper_model

_OPTIMIZER_CLASSES = {
    "sgd": keras.optimizers.SGD,
    "adam": keras.optimizers.Adam,
    "adamw": keras.optimizers.AdamW,
    "rmsprop": keras.optimizers.RMSprop,
}
OPTIMIZERS = tuple(_OPTIMIZER_CLASSES)
HEAD_OPTIONS = ("width", "depth", "splits", "dropout", "batch_norm")
# TrainConfig.jit_compile (as on the command line) -> Model.compile's.
JIT_COMPILE = {"auto": "auto", "on": True, "off": False}


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run (see `spinalnet-keras train -h`).

    `batch_size` is the global batch size (all replicas together).
    `momentum` is SGD's (0.5, the paper's, unless given); other optimizers
    take none. `jit_compile` is `"auto"`, `"on"` or `"off"` (True and False
    are taken for `"on"` and `"off"`). `deterministic` turns on TensorFlow's
    op determinism when `train` starts; it stays on for the rest of the
    process (TensorFlow has no switch to turn it off). Keras compiles
    without XLA under it, so `jit_compile="on"` is refused with it, and
    by `train` in a process where it is on.
    `steps_per_execution` (training steps per compiled call) becomes the
    divisor of an epoch's steps nearest to it; left as None, it is 32, or
    1 under a `MirroredStrategy` of several replicas, where Keras's fit runs
    one (a number given there becomes 1 with a warning).
    Head options left as None keep the network's own (the paper's) values.
    """

    model: str = "mnist_cnn"
    head: str = "spinal"
    width: int = None
    depth: int = None
    splits: int = None
    dropout: float = None
    batch_norm: bool = None
    dataset: str = "mnist"
    epochs: int = 8
    batch_size: int = 64
    optimizer: str = "sgd"
    learning_rate: float = 0.01
    momentum: float = None
    seed: int = 0
    output_dir: str = "runs/train"
    data_dir: str = None
    manual_dir: str = None
    augment: tuple = ()
    image_size: tuple = None
    weights: str = None
    freeze_backbone: bool = False
    pooling: str = "avg"
    deterministic: bool = False
    steps_per_execution: int = None
    jit_compile: str = "auto"
    train_examples: int = None
    test_examples: int = None
    verbose: int = 1

    def __post_init__(self):
        # Everything is checked here, before any data is loaded or any
        # directory written.
        from spinalnet_keras.backbones import POOLINGS, check_weights
        from spinalnet_keras.data import REGRESSION_DATASETS, check_options

        # Each value is kept as its check returns it: numpy scalars and path
        # objects become the plain values config.json holds.
        self.model = resolve_model_name(self.model)
        self.head = _validation.choice("head", self.head, ("dense", "spinal"))
        for name in ("width", "depth", "splits", "train_examples", "test_examples"):
            value = _validation.positive_int(name, getattr(self, name), allow_none=True)
            setattr(self, name, value)
        if self.dropout is not None:
            self.dropout = _validation.rate("dropout", self.dropout)
        self.batch_norm = _validation.boolean("batch_norm", self.batch_norm, allow_none=True)
        # The options, checked against the head they change (a spinal head's
        # splits against its depth, a dense head refuses spinal sizes).
        spec = PAPER_MODELS.get(self.model)
        base = (Head(self.head) if spec is None
                else spec.dense_head if self.head == "dense" else spec.spinal_head)
        base.replace(**self.head_options())
        if self.model == "regression" and self.head == "spinal" and self.splits:
            # Its head reads the data itself: table1's 8 inputs, the paper's.
            from spinalnet_keras.spinal_dense import split_sizes

            split_sizes(spec.input_shape[-1], self.splits)
        # The data options, as load_task will check them.
        for name in ("data_dir", "manual_dir"):
            setattr(self, name, _validation.path(name, getattr(self, name), allow_none=True))
        self.image_size, _, self.augment = check_options(
            self.dataset, image_size=self.image_size, augment=self.augment,
            data_dir=self.data_dir, manual_dir=self.manual_dir,
        )
        if spec is not None and self.image_size is not None:
            check_image_size(self.model, self.image_size, "image_size")
        self.optimizer = _validation.choice("optimizer", self.optimizer, OPTIMIZERS)
        for name in ("epochs", "batch_size"):
            setattr(self, name, _validation.positive_int(name, getattr(self, name)))
        self.steps_per_execution = _validation.positive_int(
            "steps_per_execution", self.steps_per_execution, allow_none=True)
        if _validation.is_bool(self.jit_compile):  # Model.compile's spelling
            self.jit_compile = "on" if self.jit_compile else "off"
        self.jit_compile = _validation.choice("jit_compile", self.jit_compile, tuple(JIT_COMPILE))
        self.learning_rate = _validation.positive_number("learning_rate", self.learning_rate)
        # The paper's 0.5 unless given.
        self.momentum = _validation.sgd_momentum(self.optimizer, self.momentum, 0.5)
        self.seed = _validation.numpy_seed("seed", self.seed)
        self.deterministic = _validation.boolean("deterministic", self.deterministic)
        if self.deterministic and self.jit_compile == "on":
            raise ValueError(
                "`jit_compile='on'` cannot go with `deterministic=True`: under "
                "TensorFlow's op determinism Keras compiles without XLA (not every "
                "XLA op is deterministic), so XLA would not be used. Received: "
                "jit_compile='on', deterministic=True"
            )
        self.verbose = _validation.choice("verbose", self.verbose, (0, 1, 2))
        self.output_dir = _validation.path("output_dir", self.output_dir)
        _check_pairing(self.model, self.dataset, self.dataset in REGRESSION_DATASETS)
        self.freeze_backbone = _validation.boolean("freeze_backbone", self.freeze_backbone)
        self.pooling = _validation.choice("pooling", self.pooling, POOLINGS)
        if not is_backbone(self.model) and (
            self.weights is not None or self.freeze_backbone or self.pooling != "avg"
        ):
            raise ValueError(
                "weights, freeze_backbone and pooling apply to keras.applications "
                f"backbones only; {self.model!r} is one of the paper's networks. "
                f"Received: weights={self.weights!r}, freeze_backbone="
                f"{self.freeze_backbone!r}, pooling={self.pooling!r}"
            )
        self.weights = check_weights(self.weights)

    def head_options(self):
        return {
            k: getattr(self, k) for k in HEAD_OPTIONS if getattr(self, k) is not None
        }

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, default=list)


def model_names():
    """Paper networks and keras.applications backbones `train` accepts."""
    return sorted(PAPER_MODELS) + sorted(available_backbones())


def resolve_model_name(name):
    if not isinstance(name, str):  # a list would fail the look-up as "unhashable"
        raise ValueError(f"Unknown model {name!r}. Available: {model_names()}")
    if name in PAPER_MODELS:
        return name
    for backbone in available_backbones():
        if backbone.lower() == str(name).lower():
            return backbone
    raise ValueError(f"Unknown model {name!r}. Available: {model_names()}")


def is_backbone(name):
    return name not in PAPER_MODELS


def _data_options(config):
    """The `load_task` arguments that make `config`'s data (not where it
    lives, nor which epochs)."""
    backbone = is_backbone(config.model)
    return dict(
        batch_size=config.batch_size,
        seed=config.seed,
        # Backbones hold their own preprocessing and take raw 0..255 RGB.
        normalization="none" if backbone else "paper",
        image_size=config.image_size,
        channels=3 if backbone else None,
        augment=config.augment,
        train_examples=config.train_examples,
        test_examples=config.test_examples,
    )


def load_config_task(config, initial_epoch=None):
    """The `Task` of `config`, with the input format its model needs; with
    `initial_epoch`, its training data covers epochs initial_epoch..epochs-1
    in the order of an uninterrupted run."""
    epoch_args = {} if initial_epoch is None else {
        "epochs": config.epochs, "initial_epoch": initial_epoch}
    return load_task(config.dataset, **_data_options(config), data_dir=config.data_dir,
                     manual_dir=config.manual_dir, **epoch_args)


def _backed_up_epoch(backup_dir):
    """The epoch BackupAndRestore will resume from (0 for a new run)."""
    path = os.path.join(backup_dir, "training_metadata.json")
    try:
        with open(path) as f:
            return int(json.load(f)["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def _check_pairing(model, dataset, regression):
    if model == "regression" and not regression:
        raise ValueError(
            f"Model 'regression' needs a regression dataset "
            f"(table1/...); received dataset={dataset!r}"
        )
    if model != "regression" and regression:
        raise ValueError(
            f"Dataset {dataset!r} is a regression task; use model='regression'."
        )


def build_model(config, task):
    """The model of `config` for `task` (uncompiled)."""
    options = config.head_options()
    _check_pairing(config.model, task.name, task.kind == "regression")
    if is_backbone(config.model):
        return backbone_model(
            config.model,
            task.input_shape,
            task.num_outputs,
            head=config.head,
            weights=config.weights,
            freeze_backbone=config.freeze_backbone,
            pooling=config.pooling,
            **options,
        )
    return paper_model(
        config.model,
        head=config.head,
        input_shape=task.input_shape,
        num_classes=task.num_outputs,
        **options,
    )


def head_label(model, head):
    """A short description of a model's head: "spinal 6 x 8", "dense 50"."""
    from spinalnet_keras.spinal_dense import SpinalDense

    spinal = [l for l in model.layers if isinstance(l, SpinalDense)]
    if head == "spinal" and spinal:
        return f"spinal {spinal[-1].depth} x {spinal[-1].width}"
    hidden = [l.units for l in model.layers if type(l) is keras.layers.Dense][:-1]
    return "dense " + "-".join(str(u) for u in hidden) if hidden else "dense"


def new_optimizer(name, learning_rate, momentum=None):
    """A fresh optimizer of `OPTIMIZERS`; `momentum` as resolved by
    `_validation.sgd_momentum` (None for all but SGD)."""
    extra = {} if momentum is None else {"momentum": momentum}
    return _OPTIMIZER_CLASSES[name](learning_rate=learning_rate, **extra)


def make_optimizer(config):
    return new_optimizer(config.optimizer, config.learning_rate, config.momentum)


# The steps per compiled call of a TrainConfig that leaves them as None,
# where the strategy runs more than one.
DEFAULT_STEPS_PER_EXECUTION = 32


def _steps_per_execution(requested, strategy=None):
    """`requested`, or where None the default: 32, or 1 under a strategy
    whose fit Keras runs one step per call (`strategy`, or the current
    scope's). Only a number asked for is worth the warning of
    `supported_steps_per_execution` when it cannot run."""
    if requested is not None:
        return requested
    import tensorflow as tf

    from spinalnet_keras.distribute import _runs_one_step_per_execution

    strategy = strategy or tf.distribute.get_strategy()
    return 1 if _runs_one_step_per_execution(strategy) else DEFAULT_STEPS_PER_EXECUTION


def steps_per_execution_for(requested, steps_per_epoch):
    """The divisor of `steps_per_epoch` nearest to `requested`.

    When the steps per execution do not divide an epoch, Keras's epochs no
    longer line up with the data's epochs and a resumed run is not exact
    (measured); a divisor keeps every epoch on its own batches. Nearest on a
    log scale, because the largest divisor below `requested` can be far off:
    MNIST's 938 steps (2 x 7 x 67) would turn 32 into 14, less than half of
    what was asked, where 67 is nearer. (On 2 CPU cores 14 and 67 train an
    MNIST epoch equally fast within the noise, benchmarks/RESULTS.md.)
    """
    requested = _validation.positive_int("steps_per_execution", requested)
    if steps_per_epoch is None:
        return requested
    steps_per_epoch = _validation.positive_int("steps_per_epoch", steps_per_epoch)
    divisors = [d for d in range(1, steps_per_epoch + 1) if steps_per_epoch % d == 0]
    return min(divisors, key=lambda d: abs(math.log(d / requested)))


def compile_model(model, config, task, steps_per_execution=None):
    """Compile for `task` as `config` says, in the current strategy's scope
    (where several steps per execution fail, one is used; see
    `distribute.supported_steps_per_execution`)."""
    from spinalnet_keras.distribute import supported_steps_per_execution

    if task.kind == "regression":
        loss, metrics = "mse", []
    else:
        loss, metrics = "sparse_categorical_crossentropy", ["accuracy"]
    model.compile(
        optimizer=make_optimizer(config),
        loss=loss,
        metrics=metrics,
        steps_per_execution=supported_steps_per_execution(
            steps_per_execution or _steps_per_execution(config.steps_per_execution)
        ),
        jit_compile=JIT_COMPILE[config.jit_compile],
    )
    if config.jit_compile == "on":
        # Keras only warned: the run's files would say XLA compiled it.
        require_xla(model, "jit_compile='on'", "'auto' or 'off'")
    return model


def require_xla(model, asked, instead):
    """Raises where Keras compiled `model` without the XLA it was asked for.

    Keras only warns when it drops XLA: while TensorFlow's op determinism is
    on (which TensorFlow cannot turn off again) or for a layer without XLA
    support. `asked` and `instead` name the option as the caller takes it.
    """
    if not model.jit_compile:
        raise ValueError(
            f"{asked} cannot be honoured: Keras compiles this model without "
            "XLA, as it does while TensorFlow's op determinism is on (an earlier "
            "deterministic run in this process turned it on, and it cannot be turned "
            f"off) or for a layer without XLA support. Use jit_compile={instead}, "
            "or a new process."
        )


class _RandomnessByEpoch(keras.callbacks.Callback):
    """Draws each epoch's dropout masks (and any other random numbers the
    model's layers draw) from the epoch's number and the generators'
    starting states alone, as the data order is drawn: a run resumed at
    epoch k draws what the uninterrupted run drew (see `_randomness`)."""

    def on_train_begin(self, logs=None):
        self._randomness = EpochRandomness(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        self._randomness.start_epoch(epoch)


class _KerasStepRetracing(logging.Filter):
    """Drops TensorFlow's warning that a Keras training or test step
    "triggered tf.function retracing"."""

    def filter(self, record):
        message = record.getMessage()
        return not ("triggered tf.function retracing" in message
                    and "TensorFlowTrainer" in message)


@contextlib.contextmanager
def new_models_in_turn():
    """Silence TensorFlow's retracing warning about Keras's step functions
    while models, each new, train one after another (`train`'s runs, as
    compare makes them, and a search's trials).

    TensorFlow counts traces per Python function *code*, not per function:
    each new model's `fit` makes its own step function and traces it once
    (tested), yet all of them share Keras's code, so from about the fifth
    model TensorFlow warns "5 out of the last 9 calls to ...
    multi_step_on_iterator triggered tf.function retracing", as if one
    function were traced again and again, and advises changes that do not
    apply. A retracing of any other function still warns.
    """
    logger = logging.getLogger("tensorflow")  # tf.get_logger()'s
    quiet = _KerasStepRetracing()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def build_training_state(model, data):
    """Create a compiled model's optimizer and metric variables before `fit`.

    Without a tf.distribute strategy, Keras 3 creates the optimizer's slots
    and the metrics' state while tracing the first training step, and a
    `tf.function` that creates variables on its first call is traced a
    second time (tensorflow/tensorflow#48851). Building them first, as Keras
    itself does under a strategy, saves that second trace: a quarter to
    a third of fit's first compiled call in the paper's MNIST recipe
    (`benchmarks/RESULTS.md`).

    Args:
        model: a compiled Keras model.
        data: the `tf.data.Dataset` of `(inputs, targets)` batches that
            `fit` will read, or its `element_spec`.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a compiled keras.Model. Received: model={model!r}")
    if getattr(model, "optimizer", None) is None:
        raise ValueError(
            f"Compile model '{model.name}' before build_training_state: its "
            "optimizer and metrics are what it builds."
        )
    spec = getattr(data, "element_spec", data)
    if not (isinstance(spec, (tuple, list)) and len(spec) in (2, 3)):
        # Keras would fail on "'NoneType' object has no attribute 'shape'".
        if hasattr(data, "element_spec"):
            received = f"a {type(data).__name__} of {spec!r}"
        elif hasattr(data, "shape"):  # an array: its shape, not its values
            received = f"a {type(data).__name__} of shape {tuple(data.shape)}"
        else:
            received = f"data={data!r}"
        raise ValueError(
            "`data` must be the tf.data.Dataset that fit will read, of (inputs, "
            "targets) batches or (inputs, targets, sample_weights), or its "
            f"element_spec. Received: {received}"
        )
    # Keras's own pre-trace build; a Keras without it keeps its deferral.
    build = getattr(model, "_symbolic_build", None)
    if build is None:
        return
    # Variables belong in the strategy the model was built under (keras-tuner
    # calls fit outside that scope).
    strategy = getattr(model, "distribute_strategy", None)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        build(data_batch=spec)


def _monitor(task):
    return ("val_loss", "min") if task.kind == "regression" else ("val_accuracy", "max")


def read_history(path):
    """History rows from `history.csv`, one per epoch (the last row wins
    when a resumed run wrote an epoch twice)."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        rows = {int(r["epoch"]): r for r in csv.DictReader(f) if r.get("epoch")}
    return [
        {k: (int(v) if k == "epoch" else float(v)) for k, v in rows[e].items()}
        for e in sorted(rows)
    ]


def _write_history(path, rows):
    # Whole or not at all: the multi-worker chief rewrites it every epoch.
    if not rows:
        return
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(path, text.getvalue())


def plot_history(rows, path, title):
    """Learning curves (loss and accuracy, train and test) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in ("loss", "accuracy") if rows and m in rows[0]]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.5))
    axes = np.atleast_1d(axes)
    epochs = [r["epoch"] + 1 for r in rows]
    for ax, metric in zip(axes, metrics):
        ax.plot(epochs, [r[metric] for r in rows], label="train")
        if f"val_{metric}" in rows[0]:
            ax.plot(epochs, [r[f"val_{metric}"] for r in rows], label="test")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def diverged_at_epoch(rows):
    """The first epoch (from 1) whose training loss is not finite, or None."""
    for i, r in enumerate(rows):
        if not math.isfinite(r["loss"]):
            return i + 1
    return None


def _best(values, higher):
    """The best finite value and its epoch (from 1); NaN and None where no
    epoch has a finite value (a run that diverged at once)."""
    finite = [(v, i) for i, v in enumerate(values) if math.isfinite(v)]
    if not finite:
        return float("nan"), None
    value, i = (max if higher else min)(finite, key=lambda pair: pair[0])
    return value, i + 1


def summarize_history(rows, kind, epochs_of_interest=(100, 200)):
    """Final and best test metric of a run, the first epoch whose training
    loss was not finite (`diverged_at_epoch`, None if none), and the paper's
    Table I figure (running minimum of the training loss at given epochs)
    for regression. The best is the best finite value: epochs of a diverged
    run are NaN."""
    regression = kind == "regression"
    test = [r["val_loss" if regression else "val_accuracy"] for r in rows]
    best, best_epoch = _best(test, higher=not regression)
    summary = {
        "metric": "mse" if regression else "accuracy",
        "final": test[-1],
        "best": best,
        "best_epoch": best_epoch,
        "diverged_at_epoch": diverged_at_epoch(rows),
    }
    if regression:
        losses = [r["loss"] for r in rows]
        for e in epochs_of_interest:
            if e <= len(losses):
                summary[f"train_loss_min_at_{e}"] = _best(losses[:e], higher=False)[0]
        summary["train_loss_min"] = _best(losses, higher=False)[0]
    return summary


# Fields that change how a run is executed or shown, not what it computes:
# a run may be resumed with other values.
_EXECUTION_FIELDS = ("output_dir", "data_dir", "manual_dir", "verbose",
                     "steps_per_execution", "jit_compile", "deterministic")


def _check_same_run(out, config):
    """Refuse to resume or report, in `out`, a run of another config."""
    path = os.path.join(out, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        stored = json.load(f)
    current = json.loads(config.to_json())
    differ = {k: (stored[k], current[k]) for k in stored
              if k in current and k not in _EXECUTION_FIELDS and stored[k] != current[k]}
    if current["optimizer"] != "sgd":
        # Means nothing there; version 0.4 stored its default 0.5 for any optimizer.
        differ.pop("momentum", None)
    if differ:
        raise ValueError(
            f"{out} holds a run of another configuration ("
            + ", ".join(f"{k}: {a!r} there, {b!r} here" for k, (a, b) in differ.items())
            + "). Use another output directory, or delete that one to start afresh."
        )


def _write_config(out, config):
    """Mark `out` as a run of `config`. Only once its data is loaded and its
    model built: a run that fails before that (images below a backbone's
    minimum size, a dataset that needs `image_size`, weights that cannot be
    had offline) must not keep the corrected rerun out of the same directory
    (`_check_same_run`)."""
    write_atomically(os.path.join(out, "config.json"), config.to_json())


def _check_config(config):
    if not isinstance(config, TrainConfig):
        raise TypeError(f"`config` must be a TrainConfig. Received: {type(config).__name__}")


def _check_strategy(strategy):
    from spinalnet_keras.distribute import check_strategy

    check_strategy(strategy)


def _check_even_split(batch_size, replicas, what="`batch_size`"):
    # Keras 3's fit under a MirroredStrategy fails inside TensorFlow ("Inputs
    # to operation AddN ... must have the same size and shape") when every
    # batch splits unevenly over the replicas, as 3 does over 2 (measured with
    # TF 2.21, Dense models too). The multi-worker loop is the package's own
    # and takes such batches.
    if batch_size % replicas:
        below = batch_size - batch_size % replicas
        raise ValueError(
            f"{what} is the global batch, split over the strategy's {replicas} "
            f"replicas, so it must be a multiple of {replicas}, e.g. "
            f"{below or replicas} or {below + replicas}: Keras's fit fails on batches "
            f"that split unevenly. Received: batch_size={batch_size}"
        )


def _check_task(config, task):
    if not isinstance(task, Task):
        raise TypeError(f"`task` must be a Task, as load_task returns. Received: {task!r}")
    if task.name != config.dataset:
        raise ValueError(
            f"`task` is {task.name!r} but config.dataset is {config.dataset!r}."
        )
    if task.steps_per_epoch != math.ceil(task.train_size / config.batch_size):
        raise ValueError(
            f"`task` was loaded with another batch size than config.batch_size="
            f"{config.batch_size} ({task.steps_per_epoch} steps for "
            f"{task.train_size} examples)."
        )
    if task.options is None:  # a Task made by hand: its data is the caller's
        return
    # train would run on that data and record config's: the run folder,
    # config.json and result.json would describe data it never saw.
    wanted = {**_data_options(config), "rotation_degrees": None, "initial_epoch": 0}
    differ = {k: f"{task.options.get(k)!r} there, {v!r} here" for k, v in wanted.items()
              if task.options.get(k) != v}
    # One epoch that tf.data reshuffles, or all the run's epochs in order.
    if task.options.get("epochs") not in (None, config.epochs):
        differ["epochs"] = (f"{task.options.get('epochs')!r} there, None or "
                            f"{config.epochs!r} here")
    if differ:
        raise ValueError(
            "`task` was loaded with other data options than `config` gives ("
            + ", ".join(f"{k}: {both}" for k, both in differ.items())
            + "); load it with load_task(config.dataset, ...) as config says, or "
            "leave `task` out and train loads it."
        )


def _handed_in_data(config, task):
    """For a checked `task` handed to train: a function of the epoch the
    run starts from that gives the training data it reads, and the steps
    per epoch to train with (None for a task of one epoch, which tf.data
    reshuffles and which is read whole every epoch)."""
    if task.options is not None and task.options.get("epochs") == config.epochs:
        # all the run's epochs in order: read from the one the run resumes
        steps = task.steps_per_epoch
        return (lambda epoch: from_epoch(task.train, epoch, config.epochs, steps)), steps
    return (lambda epoch: task.train), None


def train(config, strategy=None, task=None, callbacks=None):
    """Train one model as `config` says; resumable; returns `result.json`'s dict
    (with NaN where the file, strict JSON, holds a diverged run's figures as null).

    Args:
        config: a `TrainConfig`.
        strategy: optional `tf.distribute.Strategy`; the model is built,
            compiled and restored inside its scope.
        task: optional pre-loaded `Task` of `config.dataset`, loaded as
            `config` says (batch size, seed, examples, image options; a task
            of `load_task` with other options is refused, since the run's
            files would describe data it did not see). Loaded with
            `epochs=config.epochs`, it holds the run's epochs in order and
            an interrupted run resumes on the batches an uninterrupted one
            would have trained on, as with a task `train` loads itself;
            loaded without `epochs`, it is one epoch that tf.data reshuffles,
            and a resumed run trains on other batches.
        callbacks: extra Keras callbacks, run after the package's own
            (among them `TerminateOnNaN`: a loss that is not finite ends the
            run, and the result's `diverged_at_epoch` says where). Under a
            `MultiWorkerMirroredStrategy`, train runs the package's own
            loop (`multi_worker_fit`, as Keras's fit fails there), which
            runs them as fit does, on every worker they are given to: give
            those that write files to the chief only. A stop asked for by
            any worker's callback stops all where fit would stop: at the
            end of the epoch (`EarlyStopping`), or after the compiled call
            whose batch hook asked (`TerminateOnNaN`).

    Raises:
        ValueError: `config.output_dir` holds a run of another configuration
            (fields that only change how it runs, such as `verbose` or
            `steps_per_execution`, may differ), or `task` does not match.
        TypeError: `config` is not a TrainConfig, `task` not a Task, or a
            callback not a `keras.callbacks.Callback`.
        RuntimeError: a `strategy` while Keras runs on a backend other than
            TensorFlow, where the strategy would not distribute the model.

    Example:

    >>> config = TrainConfig(model="regression", dataset="table1/sum", epochs=2,
    ...                      verbose=0, output_dir="runs/sum")
    >>> result = train(config)  # writes runs/sum/: best.keras, history.csv, ...
    >>> result["head_label"], result["epochs"], result["metric"]
    ('spinal 6 x 50', 2, 'mse')
    >>> train(config) == result  # a finished run is found, not trained again
    True
    >>> # a task loaded beforehand with all the run's epochs: as train's own (resumable)
    >>> keras.utils.set_random_seed(config.seed)  # as train does before it loads
    >>> task = load_task("table1/sum", batch_size=64, epochs=2)
    >>> again = train(dataclasses.replace(config, output_dir="runs/sum_task"), task=task)
    >>> again["final"] == result["final"]  # the same data, in the same order
    True
    """
    _check_config(config)
    _check_strategy(strategy)
    # Under it, train runs the package's own loop instead of Keras's fit.
    multi_worker = _is_multi_worker(strategy)
    if strategy is not None and not multi_worker:
        _check_even_split(config.batch_size, strategy.num_replicas_in_sync)
    callbacks = _validation.callbacks("callbacks", callbacks)
    out = os.path.abspath(config.output_dir)
    if task is not None:
        _check_task(config, task)
    _check_same_run(out, config)
    os.makedirs(out, exist_ok=True)
    result_path = os.path.join(out, "result.json")
    if os.path.exists(result_path):
        result = _read_result(result_path)
        if config.verbose:
            print(f"{out}: already complete ({result['epochs']} epochs), not rerun.")
        return result

    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    if multi_worker:
        return _train_multi_worker(config, strategy, out, task, callbacks)
    backup_dir = os.path.join(out, "backup")
    initial_epoch = min(_backed_up_epoch(backup_dir), config.epochs - 1)
    # A task built here holds the epochs left in an uninterrupted run's
    # order; one handed in holds all the run's epochs, or one epoch that
    # tf.data reshuffles (and fit reads from its start every epoch).
    if task is None:
        task = load_config_task(config, initial_epoch=initial_epoch)
        train_data, steps_per_epoch = task.train, task.steps_per_epoch
    else:
        data_from, steps_per_epoch = _handed_in_data(config, task)
        train_data = data_from(initial_epoch)
    per_execution = steps_per_execution_for(
        _steps_per_execution(config.steps_per_execution, strategy), steps_per_epoch)
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        model = compile_model(build_model(config, task), config, task, per_execution)
        build_training_state(model, task.train)
    per_execution = model.steps_per_execution  # what the strategy allows
    _write_config(out, config)

    history_path = os.path.join(out, "history.csv")
    previous = read_history(history_path)
    _write_history(history_path, previous)  # drop a half-written last row
    monitor, mode = _monitor(task)
    best_so_far = None
    if previous and monitor in previous[0]:
        values = [r[monitor] for r in previous]
        best_so_far = max(values) if mode == "max" else min(values)
    callbacks = [
        # double_checkpoint: a backup torn by a kill falls back to the
        # previous one.
        keras.callbacks.BackupAndRestore(backup_dir, double_checkpoint=True),
        keras.callbacks.CSVLogger(history_path, append=True),
        keras.callbacks.TensorBoard(os.path.join(out, "logs")),
        keras.callbacks.ModelCheckpoint(
            os.path.join(out, "best.keras"),
            monitor=monitor,
            mode=mode,
            save_best_only=True,
            initial_value_threshold=best_so_far,
        ),
        # A loss that is NaN or infinite stays so: the epochs left would
        # train nothing. The run ends there, and result.json says so.
        keras.callbacks.TerminateOnNaN(),
        _RandomnessByEpoch(),
        *(callbacks or []),
    ]
    start = time.perf_counter()
    with new_models_in_turn():  # each run's model is new: compare's, or a caller's loop
        model.fit(
            train_data,
            validation_data=task.test,
            epochs=config.epochs,
            steps_per_epoch=steps_per_epoch,
            callbacks=callbacks,
            verbose=config.verbose,
            shuffle=False,  # the pipeline shuffles, with the run's seed
        )
    seconds = time.perf_counter() - start
    model.save(os.path.join(out, "final.keras"))
    rows = read_history(history_path)
    _write_history(history_path, rows)
    plot_history(rows, os.path.join(out, "curves.png"), f"{model.name} on {task.name}")
    return _write_result(
        result_path, config, model, rows, seconds,
        steps_per_execution=per_execution, **summarize_history(rows, task.kind),
    )


def _write_result(path, config, model, rows, seconds, **extra):
    """`result.json` of a run: what ran, its costs, plus `extra`."""
    report = cost_report(model)
    # The fully connected head alone (layers named "head_*" by the
    # builders): where the paper's 48.6% cut is measured.
    head = [c for c in report.layers if c.name.startswith("head_")]
    result = {
        "model": config.model,
        "head": config.head,
        "head_label": head_label(model, config.head),
        "dataset": config.dataset,
        "seed": config.seed,
        "epochs": len(rows),
        "trainable_params": report.trainable_params,
        "multiplications": report.multiplications,
        "head_params": sum(c.trainable_params for c in head),
        "head_multiplications": sum(c.multiplications or 0 for c in head),
        "train_seconds_this_session": round(seconds, 2),
        **extra,
    }
    write_atomically(path, json_text(result, indent=2))
    return result


def _is_metric_value(key):
    # summarize_history's figures: NaN where a run diverged (its other
    # values that may be None, such as best_epoch, mean "none")
    return key in ("final", "best") or key.startswith("train_loss_min")


def _read_result(path):
    """`result.json` as `train` returned it: the file holds a diverged
    run's NaN figures as null (strict JSON); files written before hold NaN."""
    with open(path) as f:
        result = json.load(f)
    return {k: float("nan") if v is None and _is_metric_value(k) else v
            for k, v in result.items()}


def _is_multi_worker(strategy):
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def _train_multi_worker(config, strategy, out, task=None, callbacks=()):
    """`train` under MultiWorkerMirroredStrategy, where Keras's fit fails:
    the package's own loop (see distribute.multi_worker_fit). `out` must be
    the same (shared) directory on every worker; only the chief writes the
    model, history and result. `task`, if given, must be the same on every
    worker (the strategy shards it). `callbacks` run on every worker after
    the chief's own (see multi_worker_fit)."""
    import tensorflow as tf

    from spinalnet_keras.distribute import _checkpointed_epoch
    from spinalnet_keras.distribute import multi_worker_fit
    from spinalnet_keras.distribute import worker_info

    checkpoints = os.path.join(out, "checkpoints")
    # A task built here holds the epochs from the one the loop resumes
    # (it reads the same checkpoint) in an uninterrupted run's order; one
    # handed in holds all the run's epochs, which the loop reads from the
    # epoch it resumes, or one epoch that tf.data reshuffles.
    if task is None:
        done = _checkpointed_epoch(tf.train.latest_checkpoint(checkpoints))
        task = load_config_task(config, initial_epoch=min(done, config.epochs - 1))
        train_data, steps_per_epoch = task.train, task.steps_per_epoch
    else:  # the loop calls it with the epoch it resumes
        train_data, steps_per_epoch = _handed_in_data(config, task)

    _, index, is_chief, workers = worker_info()
    history_path = os.path.join(out, "history.csv")
    rows = read_history(history_path)
    monitor, mode = _monitor(task)
    built = []

    # As in fit: a divisor of the epoch's steps (the loop's calls stop at
    # an epoch's end anyway), recorded in result.json.
    per_execution = steps_per_execution_for(
        _steps_per_execution(config.steps_per_execution, strategy), steps_per_epoch)

    def build():
        model = compile_model(build_model(config, task), config, task, per_execution)
        _write_config(out, config)
        built.append(model)
        return model

    def record(epoch, logs):
        # What Keras's CSVLogger and ModelCheckpoint(save_best_only) do in
        # train's fit, on the chief. Rows of a redone epoch (the chief died
        # before its checkpoint) are replaced.
        nonlocal rows
        earlier = [r for r in rows if r["epoch"] < epoch]
        rows = earlier + [{"epoch": epoch, **dict(sorted(logs.items()))}]
        _write_history(history_path, rows)
        # _best keeps the first of equal values: a tie with an earlier epoch
        # is no new best, as for ModelCheckpoint.
        _, at = _best([r.get(monitor, math.nan) for r in rows], higher=mode == "max")
        if at == len(rows):
            built[-1].save(os.path.join(out, "best.keras"))

    # The chief's files, written by the callbacks train's fit would run
    # (TensorBoard: the same tags and folders as a run on one machine).
    own = [keras.callbacks.TensorBoard(os.path.join(out, "logs")),
           keras.callbacks.LambdaCallback(on_epoch_end=record)] if is_chief else []
    start = time.perf_counter()
    model, history = multi_worker_fit(
        build, train_data, config.epochs, config.batch_size, checkpoints,
        strategy=strategy, steps_per_epoch=steps_per_epoch, verbose=config.verbose,
        validation_data=task.test, callbacks=[*own, *callbacks],
    )
    seconds = time.perf_counter() - start
    if not is_chief:
        return {"worker": index, "chief": False, "history": history}
    model.save(os.path.join(out, "final.keras"))
    plot_history(rows, os.path.join(out, "curves.png"), f"{model.name} on {task.name}")
    return _write_result(
        os.path.join(out, "result.json"), config, model, rows, seconds,
        workers=workers, steps_per_execution=model.steps_per_execution, history=history,
        **summarize_history(rows, task.kind),
    )


# -- comparison ------------------------------------------------------------


def _mean_sd(values):
    """Mean and sample standard deviation; the deviation of one value is
    NaN (one run measures no spread), and both are NaN if a value is."""
    if not all(math.isfinite(v) for v in values):
        # a diverged run; statistics.stdev fails on NaN ("no attribute 'numerator'")
        return float("nan"), float("nan")
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return mean, sd


def comparison_rows(results):
    """One summary row per head from a list of run results (`final_sd` is
    NaN for a head of one run)."""
    rows = []
    by_head = {}
    for r in results:
        by_head.setdefault(r["head"], []).append(r)
    for head in ("dense", "spinal"):
        runs = by_head.get(head)
        if not runs:
            continue
        higher = runs[0]["metric"] == "accuracy"

        def pick(values):  # the best run's value; NaN (a diverged run) is no best
            return _best(list(values), higher)[0]

        final_mean, final_sd = _mean_sd([r["final"] for r in runs])
        best_mean, _ = _mean_sd([r["best"] for r in runs])
        row = {
            "model": runs[0]["model"],
            "head": runs[0].get("head_label", head),
            "metric": runs[0]["metric"],
            "runs": len(runs),
            "trainable_params": runs[0]["trainable_params"],
            "multiplications": runs[0]["multiplications"],
            "head_params": runs[0]["head_params"],
            "head_multiplications": runs[0]["head_multiplications"],
            "final_mean": final_mean,
            "final_sd": final_sd,
            "final_best": pick(r["final"] for r in runs),
            "best_epoch_mean": best_mean,
            "best_epoch_best": pick(r["best"] for r in runs),
            # runs whose training loss stopped being finite
            "diverged": sum(r.get("diverged_at_epoch") is not None for r in runs),
        }
        for key in ("train_loss_min_at_100", "train_loss_min_at_200"):
            if all(key in r for r in runs):
                row[key + "_mean"] = statistics.fmean(r[key] for r in runs)
        rows.append(row)
    if len(rows) == 2:
        dense, spinal = rows
        def err(row, key):
            return 1 - row[key] if row["metric"] == "accuracy" else row[key]
        for key in ("final_mean", "best_epoch_mean"):
            base = err(dense, key)
            spinal[f"error_reduction_{key}"] = (
                (base - err(spinal, key)) / base if base else float("nan")
            )
        for key in ("multiplications", "trainable_params", "head_multiplications", "head_params"):
            spinal[f"{key}_cut"] = 1 - spinal[key] / dense[key]
    return rows


def comparison_markdown(rows, title):
    metric = rows[0]["metric"]
    scale, unit = (100, "%") if metric == "accuracy" else (1000, " (1e-3)")
    lines = [
        f"### {title}",
        "",
        f"| head | runs | trainable params (head) | multiplications (head) | test {metric} after last epoch, mean ± sd{unit} | best run{unit} | best-epoch {metric}, mean{unit} | best-epoch, best run{unit} | error reduction (last epoch / best epoch) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        sd = "n/a" if r["runs"] == 1 else f"{scale * r['final_sd']:.3f}"
        red = ""
        if "error_reduction_final_mean" in r:
            red = (
                f"{100 * r['error_reduction_final_mean']:+.1f}% / "
                f"{100 * r['error_reduction_best_epoch_mean']:+.1f}%"
            )
        lines.append(
            f"| {r['head']} | {r['runs']} | {r['trainable_params']:,} ({r['head_params']:,}) | "
            f"{r['multiplications']:,} ({r['head_multiplications']:,}) | {scale * r['final_mean']:.3f} ± "
            f"{sd} | {scale * r['final_best']:.3f} | "
            f"{scale * r['best_epoch_mean']:.3f} | {scale * r['best_epoch_best']:.3f} | {red} |"
        )
    for r in rows:
        if r.get("diverged"):
            # A regression run's figures are then NaN; a classifier's accuracy
            # stays a number (chance level), so the note says which runs.
            lines += ["", f"{r['head']}: {r['diverged']} of {r['runs']} run(s) diverged "
                      "(a training loss that was not finite); a lower learning rate "
                      "may help."]
    if any("train_loss_min_at_100_mean" in r for r in rows):
        lines += ["", "Paper's Table I figure (running minimum of the training loss, 1e-3):", ""]
        for r in rows:
            parts = [
                f"epoch {e}: {1000 * r[f'train_loss_min_at_{e}_mean']:.3f}"
                for e in (100, 200)
                if f"train_loss_min_at_{e}_mean" in r
            ]
            lines.append(f"- {r['head']}: " + ", ".join(parts))
    if len(rows) == 2 and "multiplications_cut" in rows[1]:
        s = rows[1]
        lines += [
            "",
            f"Spinal vs dense: head {100 * s['head_multiplications_cut']:.1f}% fewer "
            f"multiplications and {100 * s['head_params_cut']:.1f}% fewer parameters; "
            f"whole model {100 * s['multiplications_cut']:.1f}% fewer multiplications and "
            f"{100 * s['trainable_params_cut']:.1f}% fewer parameters.",
        ]
    return "\n".join(lines)


def _write_csv(path, rows):
    keys = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def plot_comparison(tables, path):
    """Bar plot of the last-epoch test metric per head (mean ± sd)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(3.2 * len(tables), 3.2), squeeze=False)
    for ax, (title, rows) in zip(axes[0], tables.items()):
        heads = [r["head"] for r in rows]
        # no error bar where there is no spread to show (one run, or diverged)
        sds = [r["final_sd"] if math.isfinite(r["final_sd"]) else 0.0 for r in rows]
        ax.bar(heads, [r["final_mean"] for r in rows], yerr=sds,
               color=["#888", "#2a7"][: len(rows)])
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(f"test {rows[0]['metric']} (last epoch)")
        if rows[0]["metric"] == "accuracy":
            low = min(r["final_mean"] - sd for r, sd in zip(rows, sds))
            ax.set_ylim(max(0.0, low - 0.02), 1.0)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _run_label(config, head):
    # Spinal runs with other sizes live beside each other, so comparisons
    # of several spinal variants in one directory share the dense runs.
    if head == "dense":
        return "dense"
    return "spinal" + "".join(f"_{k}{v}" for k, v in config.head_options().items())


def compare(config, seeds, datasets=None, strategy=None):
    """Dense vs spinal on the same data order over `seeds`.

    Args:
        config: a `TrainConfig` (its `head` and `seed` are overridden; its
            head options apply to the spinal variant only).
        seeds: distinct ints from 0 to 2**32 - 1 (a list, tuple or range).
        datasets: optional dataset name or list of distinct names (default
            `[config.dataset]`), one table each.
        strategy: optional `tf.distribute.Strategy`.

    Returns:
        dict: dataset name -> list of summary rows (see `comparison_rows`).
        Runs live in `output_dir/<dataset>/<head>/seed<k>/` (`<head>` is
        `dense`, `spinal`, or e.g. `spinal_width10` with head options) and
        are resumed or skipped when complete. The table is also written as
        `comparison<_options>.md/.csv/.png` in `output_dir`. On a worker
        other than the chief of a multi-worker run, `{}`: the chief writes
        the runs' results and the tables.
    """
    _check_config(config)
    seeds = list(_validation.values("seeds", seeds, _validation.numpy_seed))
    if isinstance(datasets, str):
        datasets = [datasets]
    # Each name is checked as a config's dataset, so that every run's config
    # is valid before the first one trains.
    datasets = list(_validation.values(
        "datasets", datasets, lambda _, name: dataclasses.replace(config, dataset=name).dataset)
        if datasets is not None else [config.dataset])
    _check_strategy(strategy)
    _validation.each_once("seeds", seeds, "a repeated seed would count one run twice in the "
                          "means", seeds)
    _validation.each_once("datasets", datasets, "each dataset is compared once", datasets)
    tables, chief = {}, True
    for dataset in datasets:
        results = []
        for seed in seeds:
            for head in ("dense", "spinal"):
                run = dataclasses.replace(
                    config,
                    dataset=dataset,
                    head=head,
                    seed=seed,
                    output_dir=os.path.join(
                        config.output_dir, dataset.replace("/", "_"),
                        _run_label(config, head), f"seed{seed}",
                    ),
                    **({k: None for k in HEAD_OPTIONS} if head == "dense" else {}),
                )
                results.append(train(run, strategy=strategy))
        if any(r.get("chief") is False for r in results):
            chief = False  # a worker of a multi-worker run: the chief has the results
            continue
        tables[dataset] = comparison_rows(results)
    if not chief:
        return {}
    out = config.output_dir
    stem = "comparison" + _run_label(config, "spinal")[len("spinal"):]
    text = "\n\n".join(
        comparison_markdown(rows, f"{config.model} on {name}, {len(seeds)} seed(s), "
                            f"{config.epochs} epochs")
        for name, rows in tables.items()
    )
    with open(os.path.join(out, stem + ".md"), "w") as f:
        f.write(text + "\n")
    _write_csv(
        os.path.join(out, stem + ".csv"),
        [{"dataset": name, **row} for name, rows in tables.items() for row in rows],
    )
    plot_comparison(tables, os.path.join(out, stem + ".png"))
    print(text)
    return tables
