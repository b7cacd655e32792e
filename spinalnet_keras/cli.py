"""The `spinalnet-keras` command (also `python -m spinalnet_keras`).

Subcommands: `train`, `compare`, `demo`, `tune`, `export`. Run `spinalnet-keras CMD -h`.
"""

import argparse
import atexit
import gc
import os
import re
import sys

from spinalnet_keras import _validation
from spinalnet_keras._files import json_text


DEMO_DATASETS = ("table1/sum", "table1/sin_sum", "table1/prod", "table1/sin_prod")


def _number(convert, valid, expected):
    """An argparse type: `convert(text)`, accepted when `valid(value)`."""

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not valid(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_int = _number(int, lambda v: v > 0, "a positive integer")
_non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _number(float, lambda v: v > 0, "a positive number")
_rate = _number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def _model_name(text):
    from spinalnet_keras.training import model_names, resolve_model_name

    try:
        return resolve_model_name(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"unknown model {text!r}; choose from: {', '.join(model_names())}"
        )


def _dataset_name(text):
    from spinalnet_keras.data import dataset_names

    if text not in dataset_names():
        raise argparse.ArgumentTypeError(
            f"unknown dataset {text!r}; choose from: {', '.join(dataset_names())}"
        )
    return text


def _image_size(text):
    parts = text.lower().replace("x", ",").split(",")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) <= 0:
        raise argparse.ArgumentTypeError(
            f"expected a size like 224 or 224x224, got {text!r}"
        )
    return size


def _augment(text):
    from spinalnet_keras.data import AUGMENTATIONS

    items = _validation.comma_list(text)
    bad = [i for i in items if i not in AUGMENTATIONS]
    if bad:
        raise argparse.ArgumentTypeError(
            f"unknown augmentation(s) {bad}; choose from: {', '.join(AUGMENTATIONS)}"
        )
    return items


def _head_default(field):
    """The spinal head's `field` when its option is not given: the paper
    network's own, or `Head`'s on a backbone, as `(default: ...)`."""
    from spinalnet_keras.heads import Head
    from spinalnet_keras.paper_models import PAPER_MODELS

    def shown(head):
        value = getattr(head, field)
        return ("on" if value else "off") if isinstance(value, bool) else f"{value:g}"

    models = ", ".join(f"{name} {shown(spec.spinal_head)}" for name, spec in PAPER_MODELS.items())
    return f"(default: the paper network's spinal head: {models}; a backbone's {shown(Head('spinal'))})"


def _add_training_arguments(p, defaults, head=True):
    from spinalnet_keras.distribute import STRATEGIES
    from spinalnet_keras.training import OPTIMIZERS

    g = p.add_argument_group("model")
    g.add_argument("--model", type=_model_name, default=defaults["model"],
                   help="a paper network (mnist_cnn, vgg5, vgg19, regression) or a "
                   "keras.applications backbone name (VGG19, ResNet50, ...)")
    if head:  # tune searches these instead
        g.add_argument("--width", type=_positive_int,
                       help=f"spinal sub-layer width {_head_default('width')}")
        g.add_argument("--depth", type=_positive_int,
                       help=f"number of spinal sub-layers {_head_default('depth')}")
        g.add_argument("--splits", type=_positive_int,
                       help=f"number of input splits {_head_default('splits')}")
        g.add_argument("--dropout", type=_rate,
                       help=f"dropout before each spinal sub-layer {_head_default('dropout')}")
        g.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=None,
                       help=f"BatchNorm after each spinal sub-layer {_head_default('batch_norm')}")
    g.add_argument("--weights", default=None,
                   help="backbones: 'imagenet' or a weights file (default: random)")
    g.add_argument("--freeze-backbone", action="store_true",
                   help="backbones: train only the head")
    g.add_argument("--pooling", choices=("flatten", "avg", "max"), default="avg",
                   help="backbones: features -> vector (default avg)")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", type=_dataset_name, default=defaults["dataset"],
                   help="tfds dataset (mnist, fashion_mnist, cifar10, ...) or "
                   "table1/{sum,sin_sum,prod,sin_prod}")
    d.add_argument("--data-dir", help="tensorflow-datasets data directory")
    d.add_argument("--manual-dir",
                   help="folder with the dataset's original files, for offline use "
                   "(or set SPINALNET_KERAS_MANUAL_DIR)")
    d.add_argument("--augment", type=_augment, default=(),
                   help="comma list of rotate, perspective, crop, flip")
    d.add_argument("--image-size", type=_image_size, help="resize images, e.g. 224x224")
    d.add_argument("--train-examples", type=_positive_int, help="use only the first N training examples")
    d.add_argument("--test-examples", type=_positive_int, help="use only the first N test examples")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=_positive_int, default=defaults["epochs"])
    t.add_argument("--batch-size", type=_positive_int, default=defaults["batch_size"],
                   help="global batch size (all replicas together)")
    t.add_argument("--optimizer", choices=OPTIMIZERS, default=defaults["optimizer"])
    t.add_argument("--learning-rate", type=_positive_float, default=defaults["learning_rate"])
    t.add_argument("--momentum", type=_rate,
                   help="SGD momentum (default 0.5, the paper's); sgd only")
    t.add_argument("--deterministic", action="store_true",
                   help="TensorFlow op determinism (reproducible, slower)")
    t.add_argument("--steps-per-execution", type=_positive_int, default=None,
                   help="training steps per compiled call (fewer Python round trips); "
                   "the divisor of the steps per epoch nearest to it is used, so epochs "
                   "keep their data (result.json records it). Default 32, or 1 under "
                   "--strategy mirrored with several replicas, where Keras runs one "
                   "(a number given there becomes 1 with a warning)")
    t.add_argument("--jit-compile", choices=("auto", "on", "off"), default="auto",
                   help="XLA compilation of the training step (Keras's auto by default)")
    t.add_argument("--strategy", choices=STRATEGIES, default="auto",
                   help="tf.distribute strategy: auto (TPU, else all GPUs mirrored, else "
                   "one GPU, else CPU), mirrored, multi_worker (TF_CONFIG), tpu, "
                   "one_device, default")
    t.add_argument("--mixed-precision", choices=("off", "mixed_float16", "mixed_bfloat16"),
                   default="off", help="Keras dtype policy (mixed_float16 for GPUs)")
    t.add_argument("--output-dir", default=defaults["output_dir"])
    t.add_argument("--verbose", type=int, choices=(0, 1, 2), default=defaults.get("verbose", 1),
                   help="Keras fit verbosity (1: progress bar)")


def _config(args, **overrides):
    from spinalnet_keras.training import TrainConfig

    # `tune` has no head options (it searches them): absent means None.
    head = {k: getattr(args, k, None) for k in ("width", "depth", "splits", "dropout",
                                                "batch_norm")}
    fields = dict(
        model=args.model, **head, dataset=args.dataset,
        epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
        learning_rate=args.learning_rate, momentum=args.momentum,
        output_dir=args.output_dir, data_dir=args.data_dir, manual_dir=args.manual_dir,
        augment=args.augment, image_size=args.image_size, weights=args.weights,
        freeze_backbone=args.freeze_backbone, pooling=args.pooling,
        deterministic=args.deterministic, steps_per_execution=args.steps_per_execution,
        jit_compile=args.jit_compile,
        train_examples=args.train_examples, test_examples=args.test_examples,
        verbose=args.verbose,
    )
    fields.update(overrides)
    return TrainConfig(**fields)


def _strategy(args):
    """The strategy, made before anything else touches TensorFlow (multi-
    worker collectives must be configured at start-up), and the policy.
    None where Keras runs on another backend and `--strategy auto` asks
    for no strategy in particular (an explicit one is an error there)."""
    import keras

    from spinalnet_keras.distribute import get_strategy

    strategy = None
    if args.strategy != "auto" or keras.backend.backend() == "tensorflow":
        strategy = get_strategy(args.strategy)
    if args.mixed_precision != "off":
        keras.config.set_dtype_policy(args.mixed_precision)
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    if replicas > 1 and args.verbose:
        print(f"{type(strategy).__name__} with {replicas} replicas: global batch "
              f"{args.batch_size}, {args.batch_size / replicas:g} per replica")
    return strategy


def _train(args):
    from spinalnet_keras.training import train

    strategy = _strategy(args)
    result = train(_config(args, head=args.head, seed=args.seed), strategy=strategy)
    if result.get("chief") is False:
        print(f"worker {result['worker']} done")
        return
    metric = result["metric"]
    best = ("no epoch with a finite one" if result["best_epoch"] is None
            else f"best epoch {result['best_epoch']} {result['best']:.4f}")
    print(
        f"{result['model']} ({result['head']}) on {result['dataset']}: test {metric} "
        f"after the last epoch {result['final']:.4f}, {best}; "
        f"{result['trainable_params']:,} trainable parameters, "
        f"{result['multiplications']:,} multiplications per example. "
        f"Files in {os.path.abspath(args.output_dir)}"
    )
    diverged = result.get("diverged_at_epoch")  # absent from results written before it
    if diverged is not None:
        raise RuntimeError(
            f"training diverged: the loss was not finite in epoch {diverged}, where the "
            "run stopped, so the model's weights are no use. Try a lower --learning-rate "
            "(and a new --output-dir: this one holds the finished run)."
        )


def _compare(args):
    from spinalnet_keras.training import compare

    strategy = _strategy(args)
    if not compare(_config(args), seeds=args.seeds, strategy=strategy):
        from spinalnet_keras.distribute import worker_info

        print(f"worker {worker_info()[1]} done")
        return
    print(f"\nTable, CSV and plot in {os.path.abspath(args.output_dir)}")


def _demo(args):
    from spinalnet_keras.training import TrainConfig, compare

    print(
        "SpinalNet demo: the paper's Table I regression (8 inputs, targets sum, "
        "sin(sum), prod, sin(prod); data generated from the paper's definition, "
        f"no download). Dense 8-200-100-1 vs spinal 6 x 50; Adam lr 0.01, batch 64, "
        f"{args.epochs} epochs, seeds {args.seeds}.\n"
    )
    config = TrainConfig(
        model="regression", dataset=DEMO_DATASETS[0], epochs=args.epochs,
        batch_size=64, optimizer="adam", learning_rate=0.01,
        output_dir=args.output_dir, verbose=args.verbose,
    )
    compare(config, seeds=args.seeds, datasets=args.datasets)
    print(f"\nTables, CSV and plot in {os.path.abspath(args.output_dir)}")


def _formats(text):
    from spinalnet_keras.export import FORMATS

    items = _validation.comma_list(text)
    bad = [i for i in items if i not in FORMATS]
    if bad or not items:
        raise argparse.ArgumentTypeError(
            f"unknown format(s) {bad or text!r}; choose from: {', '.join(FORMATS)}"
        )
    return items


def _load_sample(path):
    """The `--sample` array: a `.npy` file, read without unpickling
    (a pickle in a file someone hands over could run code)."""
    import numpy as np

    try:
        sample = np.load(path, allow_pickle=False)
    except (ValueError, EOFError) as e:  # a pickle, an object array, a cut file
        raise ValueError(
            f"--sample {path} is not an array of numbers saved with numpy.save "
            f"(pickled data is never loaded). NumPy said: {e}"
        ) from e
    if not isinstance(sample, np.ndarray):  # np.load opens a .npz as an archive
        sample.close()
        raise ValueError(
            f"--sample {path} is an .npz archive; save the batch alone with "
            "numpy.save(path, batch) (a .npy file)."
        )
    return sample


def _export(args):
    from spinalnet_keras.backbones import ImagePreprocessing
    from spinalnet_keras.data import DATASETS
    from spinalnet_keras.export import export_model, format_report, load_model_file
    from spinalnet_keras.export import quantize_int8, with_input_normalization

    if args.dataset is not None and not args.raw_input:
        raise ValueError("--dataset is used with --raw-input only; add --raw-input or drop it.")
    sample = None if args.sample is None else _load_sample(args.sample)
    model = load_model_file(args.model_file)
    if args.int8:
        print("int8:", ", ".join(quantize_int8(model)))
    if args.raw_input:
        if any(isinstance(l, ImagePreprocessing) for l in model.layers):
            raise ValueError(
                f"{args.model_file} already takes raw images (it holds its backbone's "
                "preprocessing); drop --raw-input."
            )
        if args.dataset not in DATASETS:
            raise ValueError(
                "--raw-input needs the image --dataset the model was trained on, "
                f"to apply its normalisation; choose from: {', '.join(sorted(DATASETS))}"
            )
        spec = DATASETS[args.dataset]
        model = with_input_normalization(model, spec.mean or (0.0,), spec.std or (1.0,))
    report = export_model(
        model, args.output_dir, name=args.name, formats=args.formats,
        overwrite=args.overwrite, verify=not args.no_verify, tolerance=args.tolerance,
        sample=sample,
    )
    print(format_report(report))
    print(f"Written to {os.path.abspath(args.output_dir)} (report: export_report.json)")


def _tune(args):
    import keras

    from spinalnet_keras.export import export_model
    from spinalnet_keras.training import JIT_COMPILE, _check_even_split, is_backbone
    from spinalnet_keras.training import load_config_task
    from spinalnet_keras.training import new_models_in_turn
    from spinalnet_keras.training import _steps_per_execution
    from spinalnet_keras.training import steps_per_execution_for
    from spinalnet_keras.tuning import SearchSpace, SpinalHyperModel, format_trial_table
    from spinalnet_keras.tuning import check_search_strategy, check_tuner_available
    from spinalnet_keras.tuning import chosen_splits, make_tuner
    from spinalnet_keras.tuning import trial_table

    check_tuner_available(args.tuner)  # before any data is loaded
    if args.tuner == "hyperband" and args.max_trials is not None:
        raise ValueError("--max-trials does not apply to --tuner hyperband, whose budget "
                         "is --epochs, the most epochs a trial trains.")
    if args.export and os.path.exists(args.export) and not args.overwrite:
        # export_model would refuse it only after the whole search
        raise FileExistsError(
            f"--export {args.export} already exists; choose another directory or remove "
            "it (--overwrite replaces it, and also starts the search afresh)."
        )
    strategy = check_search_strategy(_strategy(args))
    space = SearchSpace(
        widths=args.widths, depths=args.depths, splits=args.split_counts,
        dropouts=args.dropouts, batch_norm=args.search_batch_norm,
        learning_rates=tuple(args.learning_rates) if args.learning_rates else None,
    )
    config = _config(args, seed=args.seed)
    if strategy is not None:  # the trials' fit, as train's
        _check_even_split(config.batch_size, strategy.num_replicas_in_sync)
    if args.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    # Every trial trains on the same epochs, in train's order for this seed
    # (TensorFlow's global seed, which tf.data's shuffle takes, set as train
    # sets it): trials compare on one data order, whatever ran before them
    # (a resumed search included).
    keras.utils.set_random_seed(config.seed)
    task = load_config_task(config, initial_epoch=0)
    regression = task.kind == "regression"
    per_execution = steps_per_execution_for(
        _steps_per_execution(config.steps_per_execution, strategy), task.steps_per_epoch)
    hypermodel = SpinalHyperModel(
        config.model, task.input_shape, task.num_outputs, space=space,
        optimizer=args.optimizer, learning_rate=args.learning_rate,
        loss="mse" if regression else "sparse_categorical_crossentropy",
        metrics=() if regression else ("accuracy",),
        backbone_options=dict(weights=args.weights, freeze_backbone=args.freeze_backbone,
                              pooling=args.pooling) if is_backbone(config.model) else None,
        momentum=config.momentum,
        steps_per_execution=per_execution,
        jit_compile=JIT_COMPILE[args.jit_compile],
        seed=config.seed,
    )
    objective = args.objective or ("val_loss" if regression else "val_accuracy")
    # Hyperband's budget is the epochs a trial may train; the others' a trial count.
    budget = ({"max_epochs": args.epochs} if args.tuner == "hyperband"
              else {"max_trials": args.max_trials})
    tuner = make_tuner(
        hypermodel, tuner=args.tuner, objective=objective, **budget,
        directory=args.output_dir, project_name=args.project, seed=args.seed,
        distribution_strategy=(
            strategy if strategy is not None and strategy.num_replicas_in_sync > 1 else None),
        max_consecutive_failed_trials=args.max_consecutive_failed_trials,
        overwrite=args.overwrite,
    )
    project = os.path.join(args.output_dir, args.project)
    # As train writes logs/: keras-tuner gives a TensorBoard callback a
    # folder per trial and execution and adds the trial's hyperparameters
    # (TensorBoard's HParams dashboard).
    tuner.search(task.train, validation_data=task.test, epochs=args.epochs,
                 steps_per_epoch=task.steps_per_epoch, verbose=args.verbose,
                 callbacks=[keras.callbacks.TensorBoard(os.path.join(project, "logs"))])
    role = os.environ.get("KERASTUNER_TUNER_ID", "")
    if role.startswith("tuner"):  # a worker of a distributed search: done
        print(f"{role}: search finished")
        return
    rows = trial_table(tuner, hypermodel)
    table = format_trial_table(rows)
    print(table)
    with open(os.path.join(project, "trials.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(project, "trials.json"), "w") as f:
        f.write(json_text(rows, indent=2, default=str))
    if not any(r["status"] == "COMPLETED" for r in rows):
        # keras-tuner would offer a failed trial as the best, whose checkpoint
        # does not exist (an h5 "unable to open file" error).
        raise RuntimeError(
            f"No trial of the search completed ({len(rows)} trial(s): "
            f"{', '.join(sorted({r['status'] for r in rows}))}), so there is no best model "
            "to save or export; the errors above say why each failed (e.g. a NaN loss: "
            f"try a lower --learning-rate). The table is in {project}."
        )
    best_trial = tuner.oracle.get_best_trials(1)[0]
    best = tuner.load_model(best_trial)  # from the trial's checkpoint
    best_hps = best_trial.hyperparameters
    # Hyperband's bookkeeping (tuner/*) is the table's epochs and continues.
    best_hp = {k: v for k, v in best_hps.values.items()
               if not k.startswith(("splits_at", "tuner/"))}
    best_hp["splits"] = chosen_splits(best_hps)
    with new_models_in_turn():  # a new model after the trials' (see there)
        scores = best.evaluate(task.test, verbose=0, return_dict=True)
    best.save(os.path.join(project, "best.keras"))
    scores = ", ".join(f"{k} {v:.4g}" for k, v in scores.items())
    print(f"best trial {best_trial.trial_id}: {best_hp}; test {scores}; "
          f"saved {os.path.join(project, 'best.keras')}")
    if args.export:
        from spinalnet_keras.export import format_report

        # named for the network, as the export command names it, not for the search
        report = export_model(best, args.export, formats=("saved_model",),
                              overwrite=args.overwrite)
        print(format_report(report))


def build_parser():
    parser = argparse.ArgumentParser(
        prog="spinalnet-keras",
        description="SpinalNet for Keras: train, compare dense vs spinal heads, demo.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one network",
                       description="Train one network; resumable with the same --output-dir.")
    _add_training_arguments(p, dict(model="mnist_cnn", dataset="mnist", epochs=8,
                                    batch_size=64, optimizer="sgd", learning_rate=0.01,
                                    output_dir="runs/train"))
    p.add_argument("--head", choices=("dense", "spinal"), default="spinal")
    p.add_argument("--seed", type=_non_negative_int, default=0)
    p.set_defaults(func=_train)

    p = sub.add_parser("compare", help="dense vs spinal over several seeds",
                       description="Train the dense and the spinal variant on the same data "
                       "order for each seed and print the paper's table.")
    _add_training_arguments(p, dict(model="mnist_cnn", dataset="mnist", epochs=8,
                                    batch_size=64, optimizer="sgd", learning_rate=0.01,
                                    output_dir="runs/compare", verbose=2))
    p.add_argument("--seeds", type=_non_negative_int, nargs="+", default=[0, 1, 2, 3, 4])
    p.set_defaults(func=_compare)

    p = sub.add_parser("demo", help="offline dense-vs-spinal demo (Table I regression)",
                       description="Offline demo on the paper's Table I regression tasks.")
    p.add_argument("--epochs", type=_positive_int, default=100)
    p.add_argument("--seeds", type=_non_negative_int, nargs="+", default=[0, 1])
    p.add_argument("--datasets", nargs="+", type=_dataset_name, default=list(DEMO_DATASETS))
    p.add_argument("--output-dir", default="runs/demo")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=0)
    p.set_defaults(func=_demo)

    p = sub.add_parser("tune", help="keras-tuner search over spinal width, depth, splits",
                       description="Search the spinal head's width, depth and split count "
                       "(and optionally dropout, batch norm, learning rate). Resumes from "
                       "--output-dir; distributed with KERASTUNER_TUNER_ID, "
                       "KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT.")
    _add_training_arguments(p, dict(model="mnist_cnn", dataset="mnist", epochs=2,
                                    batch_size=64, optimizer="adam", learning_rate=1e-3,
                                    output_dir="runs/tune", verbose=1), head=False)
    p.add_argument("--seed", type=_non_negative_int, default=0,
                   help="seed of the data order, of the hyperparameters tried and of each "
                        "trial's initial weights: the same seed repeats the search "
                        "(default: 0)")
    p.add_argument("--widths", type=_positive_int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--depths", type=_positive_int, nargs="+", default=[2, 4, 6, 8])
    p.add_argument("--split-counts", type=_positive_int, nargs="+", default=[1, 2, 4],
                   help="numbers of input splits to try (only those <= depth are used)")
    p.add_argument("--dropouts", type=_rate, nargs="+", help="dropout rates to try")
    p.add_argument("--search-batch-norm", action="store_true", help="try BatchNorm on/off")
    p.add_argument("--learning-rates", type=_positive_float, nargs=2, metavar=("LOW", "HIGH"),
                   help="search the learning rate on a log scale")
    p.add_argument("--tuner", choices=("random", "bayesian", "hyperband"), default="random")
    p.add_argument("--max-trials", type=_positive_int,
                   help="trials of the random and bayesian searches (default 10); "
                   "hyperband's budget is --epochs")
    p.add_argument("--objective", help="default val_accuracy (val_loss for regression)")
    p.add_argument("--project", default="search", help="name of the search under --output-dir")
    p.add_argument("--max-consecutive-failed-trials", type=_positive_int, default=3)
    p.add_argument("--overwrite", action="store_true", help="start the search afresh")
    p.add_argument("--export", help="export the best model to this directory, as a verified "
                                    "SavedModel named for the network (e.g. "
                                    "DIR/mnist_cnn_spinal/1)")
    p.set_defaults(func=_tune)

    p = sub.add_parser("export", help="SavedModel / .keras / ONNX, verified",
                       description="Export a .keras model (e.g. runs/x/final.keras) and "
                       "verify every format in a fresh process.")
    p.add_argument("model_file", help="a .keras file written by train")
    p.add_argument("--output-dir", required=True,
                   help="export directory: NAME/1/ (SavedModel), NAME.keras, NAME.onnx")
    p.add_argument("--name", help="model name in the layout (default: the model's name)")
    p.add_argument("--formats", type=_formats, default=("saved_model", "keras"),
                   help="comma list of saved_model, keras, onnx (default saved_model,keras)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export")
    p.add_argument("--raw-input", action="store_true",
                   help="include the dataset's input normalisation, so raw 0..255 images "
                   "can be sent (needs --dataset)")
    p.add_argument("--dataset", help="dataset the model was trained on (for --raw-input)")
    p.add_argument("--int8", action="store_true",
                   help="store the kernels of the Dense and SpinalDense layers (also "
                   "EinsumDense, Embedding) as int8 before exporting; the export is "
                   "verified against the int8 model")
    p.add_argument("--no-verify", action="store_true", help="skip the verification")
    p.add_argument("--tolerance", type=_positive_float,
                   help="largest accepted output difference, relative to outputs larger "
                   "than 1 (default 1e-4; not with --no-verify)")
    p.add_argument("--sample", metavar="FILE.npy",
                   help="the batch to verify on, an array saved with numpy.save, of the "
                   "model's input shape and values (raw images with --raw-input); needed "
                   "for token-id inputs and unknown input dimensions (default: 4 random "
                   "inputs; not with --no-verify)")
    p.set_defaults(func=_export)
    for command in sub.choices.values():
        _show_defaults(command)
    return parser


def _show_defaults(parser):
    """Add each option's default to its help, where the help does not give
    it already (the defaults differ between commands: train's optimizer is
    the paper's SGD, tune's Adam). Flags that are off and options that are
    unset by default say nothing."""
    for action in parser._actions:
        default = action.default
        if (not action.option_strings or default is None or default is False
                or default == () or default == argparse.SUPPRESS):
            continue
        if re.search(r"\(default|by default|^default ", action.help or ""):
            continue  # written in the help's own words ("--strategy"'s "default" is a choice)
        if isinstance(default, (list, tuple)):
            default = " ".join(map(str, default))
        shown = f"default: {default}".replace("%", "%%")  # argparse %-formats help
        action.help = f"{action.help} ({shown})" if action.help else shown


def main(argv=None):
    """Run one command; returns the exit status (0, or 2 on a user error)."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, RuntimeError, OSError, ImportError) as e:
        print(f"spinalnet-keras: error: {e}", file=sys.stderr)
        return 2
    return 0


def run():
    """The console entry point: `main`, then a quick exit.

    After TensorFlow has run, the interpreter's teardown (freeing modules
    and TensorFlow's runtime) takes 0.6 s to a second on 2 CPU cores
    (benchmarks/RESULTS.md) and does nothing a finished command needs: its
    files are closed by then. So the atexit handlers run (logging's
    shutdown among them) and the output is flushed, then the process ends
    without that teardown. A multi-worker run (TF_CONFIG set) exits
    normally: TensorFlow's coordination service waits for its peers during
    shutdown.

    It also freezes what is alive when it starts (`gc.freeze`): the modules
    of Keras and TensorFlow, some 365,000 objects that live as long as the
    process. Left to the cyclic collector, they would be scanned again in
    every full collection of the run (benchmarks/RESULTS.md).
    """
    gc.freeze()
    code = main()
    if os.environ.get("TF_CONFIG") or not hasattr(atexit, "_run_exitfuncs"):
        sys.exit(code)
    atexit._run_exitfuncs()
    # After the handlers, which may write too (os._exit drops what a
    # buffered stream still holds).
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
