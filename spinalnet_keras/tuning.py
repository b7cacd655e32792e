"""Hyperparameter search over spinal width, depth and split count.

`SpinalHyperModel` wraps any builder of this package (a paper network or a
`keras.applications` backbone) and searches the spinal head's width, depth
and number of splits, and optionally dropout, batch norm and learning rate.
Split counts are searched per depth in keras-tuner conditional scopes, so a
split count larger than the depth or than the number of input features is
never proposed, let alone built.

`make_tuner` gives a random, Bayesian-optimisation or Hyperband tuner.
Searches resume: started again with the same directory, a tuner reloads its
finished trials and runs only the rest. A trial that fails (an exception,
out of memory, a NaN loss) is recorded as FAILED and the search goes on,
up to `max_consecutive_failed_trials`.

Distributed search uses keras-tuner's own mode: run the same command on a
chief and on workers with `KERASTUNER_TUNER_ID` (`chief`, `tuner0`, ...),
`KERASTUNER_ORACLE_IP` and `KERASTUNER_ORACLE_PORT` set.
"""

import collections
import dataclasses
import math
import re
from collections.abc import Mapping

import keras
import keras_tuner as kt
import numpy as np
import tensorflow as tf

from spinalnet_keras import _dependencies
from spinalnet_keras import _validation
from spinalnet_keras.backbones import backbone_model
from spinalnet_keras.costs import cost_report
from spinalnet_keras.data import from_epoch
from spinalnet_keras.distribute import check_strategy
from spinalnet_keras.distribute import supported_steps_per_execution
from spinalnet_keras.paper_models import PAPER_MODELS
from spinalnet_keras.paper_models import paper_model
from spinalnet_keras.spinal_dense import SpinalDense
from spinalnet_keras.training import _check_even_split
from spinalnet_keras.training import build_training_state
from spinalnet_keras.training import new_models_in_turn
from spinalnet_keras.training import new_optimizer
from spinalnet_keras.training import require_xla

_TUNER_CLASSES = {
    "random": kt.RandomSearch,
    "bayesian": kt.BayesianOptimization,
    "hyperband": kt.Hyperband,
}
TUNERS = tuple(_TUNER_CLASSES)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """What to search. Tuples are the values tried (kept sorted, each
    once); None leaves a setting at the network's own (the paper's) value.

    Args:
        widths: spinal sub-layer widths.
        depths: numbers of spinal sub-layers.
        splits: numbers of input splits (per depth, only those <= depth and
            <= the number of input features are offered).
        dropouts: dropout rates before each sub-layer, or None.
        batch_norm: search BatchNorm on/off (True), or leave it (False).
        learning_rates: `(low, high)` searched on a log scale, or None (use
            the fixed `learning_rate` of the hypermodel).
    """

    widths: tuple = (8, 16, 32, 64)
    depths: tuple = (2, 4, 6, 8)
    splits: tuple = (1, 2, 4)
    dropouts: tuple = None
    batch_norm: bool = False
    learning_rates: tuple = None

    def __post_init__(self):
        for name in ("widths", "depths", "splits"):
            values = _validation.values(name, getattr(self, name), _validation.positive_int)
            object.__setattr__(self, name, tuple(sorted(set(values))))
        if self.dropouts is not None:
            # Sorted and once each, as the sizes: keras-tuner takes a Choice of
            # numbers as ordered, and a repeated value would be drawn more often.
            object.__setattr__(self, "dropouts", tuple(sorted(set(_validation.values(
                "dropouts", self.dropouts, _validation.rate)))))
        object.__setattr__(self, "batch_norm", _validation.boolean("batch_norm", self.batch_norm))
        if self.learning_rates is not None:
            pair = self.learning_rates
            if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                    or not all(_validation.is_real(v) for v in pair)
                    or not 0 < pair[0] < pair[1]):
                raise ValueError(
                    "`learning_rates` must be (low, high) with 0 < low < high. "
                    f"Received: learning_rates={pair!r}"
                )
            object.__setattr__(self, "learning_rates", tuple(float(v) for v in pair))
        if min(self.splits) > max(self.depths):
            raise ValueError(
                f"No split count in {self.splits} fits a depth in {self.depths}: "
                "splits must be <= depth."
            )


def allowed_splits(space, depth, features):
    """Split counts offered at `depth` for `features` input features."""
    return [s for s in space.splits if s <= depth and s <= features]


def chosen_splits(hp):
    """The split count of a trial (stored per depth by the conditional scope).

    Args:
        hp: the `keras_tuner.HyperParameters` of a `SpinalHyperModel` trial.
    """
    if not isinstance(hp, kt.HyperParameters):
        raise TypeError(
            "`hp` must be the keras_tuner.HyperParameters of a trial. "
            f"Received: hp={hp!r}"
        )
    if "depth" not in hp.values:
        raise ValueError(
            "`hp` holds no `depth`, so it is not a SpinalHyperModel trial's "
            f"hyperparameters. Received: hp.values={hp.values!r}"
        )
    return hp.values.get(f"splits_at_depth_{hp.values['depth']}")


# Names Model.compile resolves itself, by the task's targets, before
# keras.losses.get and keras.metrics.get are asked.
_COMPILE_LOSS_NAMES = ("crossentropy", "ce")
_COMPILE_METRIC_NAMES = ("accuracy", "acc")


def _check_loss(loss):
    if isinstance(loss, str):
        if loss.lower() not in _COMPILE_LOSS_NAMES:
            try:
                keras.losses.get(loss)
            except ValueError:
                raise ValueError(
                    f"`loss` {loss!r} is not a Keras loss name (e.g. 'mse', "
                    f"'sparse_categorical_crossentropy'). Received: loss={loss!r}"
                ) from None
    elif not callable(loss):
        raise ValueError(
            "`loss` must be a Keras loss name, a keras.losses.Loss or a function "
            f"(y_true, y_pred), as for Model.compile. Received: loss={loss!r}"
        )
    return loss


def _check_metrics(metrics):
    """`metrics` as a list, each checked as Model.compile would at the
    first trial's first step (a misspelt name would otherwise fail every trial)."""
    if metrics is None:
        return []
    if not isinstance(metrics, (list, tuple)):
        raise ValueError(
            "`metrics` must be a list or tuple of metrics (names, keras.metrics.Metric "
            "objects or functions), as for Model.compile, e.g. ['accuracy']. "
            f"Received: metrics={metrics!r}"
        )
    for metric in metrics:
        if isinstance(metric, str):
            if metric.lower() in _COMPILE_METRIC_NAMES:
                continue
            try:
                keras.metrics.get(metric)
            except ValueError:
                raise ValueError(
                    f"`metrics` holds {metric!r}, which is not a Keras metric name "
                    f"(e.g. 'accuracy', 'mae'). Received: metrics={metrics!r}"
                ) from None
        elif not callable(metric):
            raise ValueError(
                f"`metrics` holds {metric!r}, which is neither a metric name, a "
                f"keras.metrics.Metric nor a function. Received: metrics={metrics!r}"
            )
    return list(metrics)


def _logged_name(metric):
    """The name `fit` logs `metric` under: Keras's own rule (its
    `get_object_name`) for what is not a name already."""
    if isinstance(metric, str):
        return metric
    if hasattr(metric, "name"):
        return metric.name
    name = re.sub(r"\W+", "", getattr(metric, "__name__", type(metric).__name__))
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


class SpinalHyperModel(kt.HyperModel):
    """A keras-tuner hypermodel over a spinal head's sizes.

    Args:
        model: a paper network name (`"mnist_cnn"`, ...) or a backbone name.
        input_shape, num_classes: of the task.
        space: a `SearchSpace`.
        optimizer: `"sgd"`, `"adam"`, ... (see `training.OPTIMIZERS`).
        learning_rate: used when the space does not search it.
        momentum: SGD's momentum (default 0, Keras's); other optimizers
            take none.
        steps_per_execution: as for `Model.compile`.
        jit_compile: `"auto"`, True or False, as for `Model.compile`.
            True is an error where Keras compiles the model without XLA
            (while op determinism is on, or for a layer without XLA
            support), where Keras itself only warns.
        loss, metrics: compile arguments (default: classification), checked
            here: a name Keras does not know is an error before any trial.
            `make_tuner`'s objective is one of the names `fit` logs for them.
        backbone_options: extra `backbone_model` arguments (`weights`,
            `freeze_backbone`, `pooling`, ...) and head options the space
            does not search (e.g. `dropout`), for backbones only.
        name: the hypermodel's name.
        seed: None (default) or an integer from 0 to 2**32 - 1: every
            model is then built after `keras.utils.set_random_seed(seed)`
            (which also seeds Python's, NumPy's and TensorFlow's global
            generators, as `train` does), so each trial starts from weights
            and dropout masks of that seed, and a search with the same
            seeds repeats. A trial's further executions
            (`executions_per_trial`) each take a seed drawn from
            `(seed, execution)`, so that they differ; a trial retried after
            a failure or an interruption starts again from the first.
            With None, Keras's global generator goes on from trial to
            trial.

    A trial that continues another from an `initial_epoch` (Hyperband's)
    reads a `tf.data` pipeline that holds all the trial's epochs back to
    back (`load_task(epochs=...)`'s, with `steps_per_epoch`) or repeats
    without end from that epoch's first batch, as the uninterrupted trial
    would have; Keras's fit alone would train it on the first epochs'
    batches again.
    """

    def __init__(self, model, input_shape, num_classes, space=None, optimizer="adam",
                 learning_rate=1e-3, loss="sparse_categorical_crossentropy",
                 metrics=("accuracy",), backbone_options=None, momentum=None,
                 steps_per_execution=1, jit_compile="auto", name="spinal", seed=None):
        if not isinstance(name, str) or not name:
            raise ValueError(f"`name` must be a non-empty string. Received: name={name!r}")
        super().__init__(name=name)
        from spinalnet_keras.training import OPTIMIZERS, resolve_model_name

        self.model = resolve_model_name(model)
        if isinstance(input_shape, np.ndarray) and input_shape.ndim == 1:
            input_shape = input_shape.tolist()  # plain ints, as the builders check them
        if not isinstance(input_shape, (list, tuple)):
            raise ValueError(
                "`input_shape` must be a tuple of positive integers. "
                f"Received: input_shape={input_shape!r}"
            )
        self.input_shape = tuple(input_shape)  # its length: the builder checks
        self.num_classes = _validation.positive_int("num_classes", num_classes)
        if space is not None and not isinstance(space, SearchSpace):
            raise TypeError(f"`space` must be a SearchSpace. Received: space={space!r}")
        self.space = space or SearchSpace()
        self.optimizer = _validation.choice("optimizer", optimizer, OPTIMIZERS)
        self.learning_rate = _validation.positive_number("learning_rate", learning_rate)
        self.loss = _check_loss(loss)
        self.metrics = _check_metrics(metrics)
        if backbone_options and model in PAPER_MODELS:
            raise ValueError(
                f"`backbone_options` apply to keras.applications backbones only; "
                f"{model!r} is one of the paper's networks. Received: "
                f"backbone_options={backbone_options!r}"
            )
        if backbone_options is not None and not isinstance(backbone_options, Mapping):
            raise ValueError(
                "`backbone_options` must be a dict of backbone_model arguments, e.g. "
                f"{{'weights': 'imagenet'}}. Received: backbone_options={backbone_options!r}"
            )
        self.backbone_options = dict(backbone_options or {})
        # What the hypermodel passes itself, or searches, cannot come from here.
        set_here = ["backbone", "input_shape", "num_classes", "head", "kind",
                    "width", "depth", "splits"]
        set_here += ["dropout"] if self.space.dropouts is not None else []
        set_here += ["batch_norm"] if self.space.batch_norm else []
        _validation.refuse(
            {k: self.backbone_options[k] for k in set_here if k in self.backbone_options},
            "the hypermodel sets these itself (the model, the task, and the spinal head "
            "and what the space searches), so `backbone_options` cannot",
            received=f"backbone_options={backbone_options!r}",
        )
        self.momentum = _validation.sgd_momentum(self.optimizer, momentum, 0.0)
        self.steps_per_execution = _validation.positive_int(
            "steps_per_execution", steps_per_execution)
        if not (_validation.is_bool(jit_compile) or jit_compile == "auto"):
            raise ValueError(
                "`jit_compile` must be 'auto', True or False, as for Model.compile. "
                f"Received: jit_compile={jit_compile!r}"
            )
        self.jit_compile = jit_compile if jit_compile == "auto" else bool(jit_compile)
        self.seed = _validation.numpy_seed("seed", seed, allow_none=True)
        self._fits = collections.Counter()  # models trained so far, per hyperparameter values
        self.features = self._feature_count()
        if not allowed_splits(self.space, max(self.space.depths), self.features):
            raise ValueError(
                f"No split count in {self.space.splits} fits {self.features} input features."
            )

    def _build_with_head(self, **head):
        if self.model in PAPER_MODELS:
            return paper_model(self.model, head="spinal", input_shape=self.input_shape,
                               num_classes=self.num_classes, **head)
        return backbone_model(self.model, self.input_shape, self.num_classes,
                              head="spinal", **self.backbone_options, **head)

    def _feature_count(self):
        probe = self._build_with_head(width=1, depth=1, splits=1)
        (layer,) = [l for l in probe.layers if isinstance(l, SpinalDense)]
        return layer.input_dim

    def _build_seed(self, hp):
        """`seed` for a model of `hp`'s values none of which has trained
        yet, and a seed drawn from (seed, n) once n have: with
        `executions_per_trial > 1`, keras-tuner builds and trains a trial's
        model once per execution, and executions from the same weights
        would train alike and average nothing. Builds that do not train
        (keras-tuner's declaration of the space, `trial_table`, reloading
        the best model) count for nothing."""
        trained = self._fits[_values_key(hp)]
        if trained == 0:
            return self.seed
        return int(np.random.SeedSequence([self.seed, trained]).generate_state(1)[0])

    def build(self, hp):
        space = self.space
        width = hp.Choice("width", list(space.widths))
        depth = hp.Choice("depth", list(space.depths))
        splits = None
        for d in space.depths:
            offered = allowed_splits(space, d, self.features)
            if not offered:
                continue
            with hp.conditional_scope("depth", [d]):
                value = hp.Choice(f"splits_at_depth_{d}", offered)
            if d == depth:
                splits = value
        if splits is None:  # a depth with no feasible split count
            raise kt.errors.FailedTrialError(
                f"depth={depth} admits no split count from {space.splits}"
            )
        head = {"width": width, "depth": depth, "splits": splits}
        if space.dropouts is not None:
            head["dropout"] = hp.Choice("dropout", list(space.dropouts))
        if space.batch_norm:
            head["batch_norm"] = hp.Boolean("batch_norm")
        lr = self.learning_rate
        if space.learning_rates is not None:
            lr = hp.Float("learning_rate", *space.learning_rates, sampling="log")
        if self.seed is not None:
            keras.utils.set_random_seed(self._build_seed(hp))
        model = self._build_with_head(**head)
        optimizer = new_optimizer(self.optimizer, lr, self.momentum)
        # keras-tuner builds inside the search's distribution strategy
        model.compile(optimizer=optimizer, loss=self.loss, metrics=self.metrics,
                      steps_per_execution=supported_steps_per_execution(
                          self.steps_per_execution),
                      jit_compile=self.jit_compile)
        if self.jit_compile is True:
            require_xla(model, "jit_compile=True", "'auto' or False")
        # keras-tuner's get_best_models reloads a trial's checkpoint, which
        # holds the optimizer's state; an optimizer without its variables yet
        # skips that state with a warning, and the reloaded best model would
        # go on training from a fresh optimizer.
        optimizer.build(model.trainable_variables)
        return model

    def fit(self, hp, model, *args, callbacks=None, **kwargs):
        epochs = kwargs.get("epochs", 1)
        if not _validation.is_int(epochs) or epochs < 1:
            # Keras's fit would train nothing, and the trial would be
            # COMPLETED without a score or a checkpoint; a fatal error ends
            # the search at once instead of failing every trial alike.
            raise kt.errors.FatalValueError(
                f"`epochs` must be a positive integer: a trial of no epochs trains and "
                f"scores nothing. Received: epochs={epochs!r}"
            )
        initial_epoch = kwargs.get("initial_epoch", 0)
        if not _validation.is_int(initial_epoch) or not 0 <= initial_epoch < epochs:
            raise kt.errors.FatalValueError(
                f"`initial_epoch` must be an integer in [0, epochs={epochs}): a trial "
                f"from there trains nothing. Received: initial_epoch={initial_epoch!r}"
            )
        data = args[0] if args else kwargs.get("x")
        _check_batch_split(model, data, kwargs.get("batch_size"))
        continued = from_epoch(data, initial_epoch, epochs, kwargs.get("steps_per_epoch"))
        if continued is not data:
            if args:
                args = (continued, *args[1:])
            else:
                kwargs["x"] = continued
        key = _values_key(hp)
        self._fits[key] += 1
        if hasattr(data, "element_spec"):  # a tf.data pipeline
            build_training_state(model, data)
            # Keras ignores `shuffle` for a tf.data pipeline (the pipeline
            # shuffles, or not); fit's default True would only warn so.
            kwargs.setdefault("shuffle", False)
        try:
            # A NaN loss fails the trial (recorded), instead of scoring it.
            with new_models_in_turn():
                return model.fit(*args, callbacks=[*(callbacks or []), _FailOnNaN()],
                                 **kwargs)
        except BaseException:
            # The trial's attempt ends here (a failure, Ctrl-C). keras-tuner
            # retries such a trial (a resumed search, `max_retries_per_trial`)
            # from its first execution, whose seed must be the first one
            # again, also where the same hypermodel goes on (a notebook), as
            # it is in a new process.
            self._fits[key] = 0
            raise


def _values_key(hp):
    return repr(sorted(hp.values.items()))


def _check_batch_split(model, data, batch_size):
    """Under a search's `distribution_strategy`, refuse a global batch that
    splits unevenly over the replicas, as `train` does (Keras's fit fails on
    it in every trial alike); a fatal error ends the search at once."""
    strategy = getattr(model, "distribute_strategy", None)
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    if replicas == 1:
        return
    if isinstance(data, tf.data.Dataset):
        batch = keras.tree.flatten(data.element_spec)[0].shape[0]
        if batch is None:  # not known until a batch is read
            batch = keras.tree.flatten(next(iter(data)))[0].shape[0]
        what = "The search data's batch size"
    elif isinstance(data, np.ndarray) or hasattr(data, "__array__"):
        batch, what = batch_size or 32, "`batch_size`"  # fit's default
    else:
        return  # a generator or PyDataset: its batches are its own
    try:
        _check_even_split(batch, replicas, what)
    except ValueError as e:
        raise kt.errors.FatalValueError(str(e)) from None


class _FailOnNaN(keras.callbacks.Callback):
    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise kt.errors.FailedTrialError(f"loss is {loss} at batch {batch}")


def check_tuner_available(tuner):
    """Raise a clear error when `tuner` cannot run here.

    `"bayesian"` needs scikit-learn, an optional dependency: Keras imports
    scikit-learn at start-up whenever it is installed (a fifth of the
    package's import time, benchmarks/RESULTS.md), so only the users of
    Bayesian search install it. A scikit-learn that is installed but fails
    to import (one built for NumPy 1 under NumPy 2) gets an ImportError
    that names its cause and the versions installed.
    """
    tuner = _validation.choice("tuner", tuner, TUNERS)
    if tuner == "bayesian":
        _dependencies.import_optional(
            "tuner='bayesian'", "bayesian", {"sklearn": "scikit-learn"},
            also=("numpy", "scipy"),
        )


def check_search_strategy(strategy):
    """Return `strategy` if a search's trials can train under it, else raise.

    Raises:
        TypeError: not a `tf.distribute.Strategy` or None.
        ValueError: a `MultiWorkerMirroredStrategy`, under which Keras's fit
            (each trial's) fails across workers.
        RuntimeError: a strategy while Keras runs on another backend.
    """
    check_strategy(strategy, "distribution_strategy", "make_tuner(distribution_strategy=...)")
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        raise ValueError(
            "A search's trials cannot train under a MultiWorkerMirroredStrategy: Keras's "
            "fit fails under it across workers (keras-team/keras#20585). Search across "
            "machines with keras-tuner's distributed mode (KERASTUNER_TUNER_ID, "
            "KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT; see README), each machine's "
            "trials under a strategy of its own devices, e.g. get_strategy('mirrored'). "
            "Received: distribution_strategy=a MultiWorkerMirroredStrategy"
        )
    return strategy


class _ZeroSeed(int):
    """The seed 0, true as a truth value. keras-tuner's oracle takes
    `seed or random.randint(1, 10000)`, so a plain 0 would become a random
    seed and the search would not repeat; as this int, 0 stays 0 (also in
    the oracle's saved state, which JSON writes as 0)."""

    def __new__(cls):
        return super().__new__(cls, 0)

    def __bool__(self):
        return True


def make_tuner(hypermodel, tuner="random", objective="val_accuracy", max_trials=None,
               directory="runs/tune", project_name="search", seed=0,
               max_epochs=None, executions_per_trial=1, max_consecutive_failed_trials=3,
               distribution_strategy=None, overwrite=False):
    """A keras-tuner tuner for `hypermodel`.

    Args:
        tuner: `"random"`, `"bayesian"` (needs scikit-learn:
            `pip install 'spinalnet-keras[bayesian]'`) or `"hyperband"`.
        objective: metric to optimise, e.g. `"val_accuracy"` (maximised) or
            `"val_loss"` (minimised).
        max_trials: trial budget of the random and Bayesian searches
            (default 10).
        max_epochs: Hyperband's budget, the most epochs a trial trains
            (default 10). Each budget belongs to its tuners: giving the
            other one is an error, not ignored.
        directory, project_name: where trials live; the same values resume.
        seed: of keras-tuner's choice of hyperparameters (and the Bayesian
            tuner's model): an integer from 0 to 2**32 - 1, or None for a
            random one. 0 is kept (keras-tuner alone would take a random
            seed for it). The trials' initial weights and dropout masks
            follow the hypermodel's `seed`.
        executions_per_trial: models trained per trial, whose scores
            keras-tuner averages.
        max_consecutive_failed_trials: failed trials tolerated in a row.
        distribution_strategy: a `tf.distribute.Strategy` for every trial
            (Keras's TensorFlow backend only: a RuntimeError on another; not
            a `MultiWorkerMirroredStrategy`, under which Keras's fit fails:
            search across machines with keras-tuner's distributed mode).
            The search's batches are the global batch: one that does not
            split evenly over the replicas ends the search at its first
            trial (`kt.errors.FatalValueError`), as Keras's fit fails on it.
        overwrite: start afresh instead of resuming.

    Example:

    >>> from spinalnet_keras import load_task
    >>> space = SearchSpace(widths=(4, 8), depths=(2, 4), splits=(1, 2))
    >>> hypermodel = SpinalHyperModel("regression", (8,), 1, space=space,
    ...                               loss="mse", metrics=())
    >>> tuner = make_tuner(hypermodel, "random", objective="val_loss",
    ...                    max_trials=2, directory="runs/tune")
    >>> task = load_task("table1/sum", batch_size=64)
    >>> tuner.search(task.train, validation_data=task.test, epochs=1, verbose=0)
    >>> [row["status"] for row in trial_table(tuner, hypermodel)]
    ['COMPLETED', 'COMPLETED']
    """
    check_tuner_available(tuner)
    budget, other = ("max_epochs", "max_trials") if tuner == "hyperband" else (
        "max_trials", "max_epochs")
    given = {"max_trials": max_trials, "max_epochs": max_epochs}
    if given[other] is not None:
        raise ValueError(
            f"`{other}` does not apply to tuner={tuner!r}, whose budget is `{budget}`. "
            f"Received: {other}={given[other]!r}"
        )
    budget_value = _validation.positive_int(
        budget, 10 if given[budget] is None else given[budget])
    # The checked values go on: keras-tuner's own random.seed takes no numpy int.
    executions_per_trial = _validation.positive_int("executions_per_trial", executions_per_trial)
    max_consecutive_failed_trials = _validation.positive_int(
        "max_consecutive_failed_trials", max_consecutive_failed_trials)
    # The Bayesian tuner's scikit-learn model takes NumPy's seeds only.
    seed = _validation.numpy_seed("seed", seed, allow_none=True)
    if seed == 0:
        seed = _ZeroSeed()
    overwrite = _validation.boolean("overwrite", overwrite)
    project_name = _validation.plain_name("project_name", project_name)
    directory = _validation.path("directory", directory, allow_none=True)
    check_search_strategy(distribution_strategy)
    if isinstance(hypermodel, SpinalHyperModel):
        # A misspelt objective would fail only after the first trial trained.
        logged = ["loss"] + [_logged_name(m) for m in hypermodel.metrics]
        allowed = logged + [f"val_{name}" for name in logged]
        objectives = objective if isinstance(objective, (list, tuple)) else [objective]
        for one in objectives:
            if isinstance(one, (str, kt.Objective)):
                _validation.choice("objective", getattr(one, "name", one), allowed)
    common = dict(objective=objective, directory=directory, project_name=project_name,
                  seed=seed, executions_per_trial=executions_per_trial,
                  max_consecutive_failed_trials=max_consecutive_failed_trials,
                  distribution_strategy=distribution_strategy, overwrite=overwrite)
    return _TUNER_CLASSES[tuner](hypermodel, **{budget: budget_value}, **common)


def trial_table(tuner, hypermodel):
    """One row per trial: id, status, hyperparameters, score, parameters
    and multiplications of the model it built (rebuilt, not retrained).

    A Hyperband search's rows also hold `epochs`, the epoch its trial trained
    up to, and `continues`, the id of the trial whose weights it went on
    training from that trial's last epoch (None for a trial that started
    from fresh weights).

    Args:
        tuner: a keras-tuner tuner, e.g. from `make_tuner`.
        hypermodel: the `SpinalHyperModel` it searched.
    """
    if not isinstance(tuner, kt.Tuner):
        raise TypeError(f"`tuner` must be a keras-tuner Tuner. Received: tuner={tuner!r}")
    if not isinstance(hypermodel, SpinalHyperModel):
        raise TypeError(
            "`hypermodel` must be the SpinalHyperModel the tuner searched. "
            f"Received: hypermodel={hypermodel!r}"
        )
    rows = []
    for trial in sorted(tuner.oracle.trials.values(), key=lambda t: t.trial_id):
        hp = trial.hyperparameters
        row = {"trial": trial.trial_id, "status": trial.status,
               "width": hp.values.get("width"), "depth": hp.values.get("depth"),
               "splits": chosen_splits(hp), "score": trial.score}
        for key in ("dropout", "batch_norm", "learning_rate"):
            if key in hp.values:
                row[key] = hp.values[key]
        if "tuner/epochs" in hp.values:
            # Hyperband's trials train for different numbers of epochs, and a
            # later round's trial goes on from an earlier trial's weights:
            # without these, its rows read as repeats with unrelated scores.
            row["epochs"] = hp.values["tuner/epochs"]
            row["continues"] = hp.values.get("tuner/trial_id")
        try:
            report = cost_report(hypermodel.build(hp))
            row["params"] = report.trainable_params
            row["multiplications"] = report.multiplications
        except Exception:  # a trial whose model cannot be built failed anyway
            row["params"] = row["multiplications"] = None
        rows.append(row)
    keras.backend.clear_session()
    return rows


_TRIAL_COLUMNS = ("trial", "status", "width", "depth", "splits", "dropout", "batch_norm",
                  "learning_rate", "epochs", "continues", "score", "params",
                  "multiplications")
# What trial_table writes for every trial, whatever the search space.
_ALWAYS_TRIAL_COLUMNS = ("trial", "status", "width", "depth", "splits", "score", "params",
                         "multiplications")


def format_trial_table(rows):
    """The rows `trial_table` returned, as a Markdown table.

    Columns come in `trial_table`'s order; keys a caller added to the rows
    follow, in the order they first appear. No rows (a search not run yet)
    give the header alone.
    """
    if not isinstance(rows, (list, tuple)) or not all(isinstance(r, dict) for r in rows):
        raise TypeError(
            f"`rows` must be the list of dicts trial_table returns. Received: rows={rows!r}"
        )
    keys = ([k for k in _TRIAL_COLUMNS if any(k in r for r in rows)] if rows
            else list(_ALWAYS_TRIAL_COLUMNS))
    for r in rows:
        keys += [k for k in r if k not in keys]
    lines = ["| " + " | ".join(map(str, keys)) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k)
            if isinstance(v, float):
                cells.append(f"{v:.4g}")
            elif isinstance(v, int) and not isinstance(v, bool) and v >= 1000:
                cells.append(f"{v:,}")
            else:
                cells.append("" if v is None else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def search_space_size(hypermodel):
    """Number of distinct (width, depth, splits) heads the space holds."""
    space = hypermodel.space
    return len(space.widths) * sum(
        len(allowed_splits(space, d, hypermodel.features)) for d in space.depths)


