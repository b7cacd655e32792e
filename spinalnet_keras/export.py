"""Export a trained model as a TensorFlow SavedModel, a `.keras` file and
ONNX, and verify each one the way a server would run it.

Layout written under `output_dir` (`NAME` defaults to the model's name):

    output_dir/
      NAME/1/            SavedModel, TensorFlow Serving layout
                         (model_base_path=output_dir/NAME, version 1)
      NAME.keras         Keras file (loads with safe_mode=True)
      NAME.onnx          ONNX (optional extra: pip install spinalnet-keras[onnx])
      export_report.json what was written and how it verified

The SavedModel's `serving_default` signature takes one input of the model's
input dtype (float32 for the paper's networks and backbone models, int32 for
token ids), named after the model's input (`inputs` for the paper's networks,
`images` for backbone models), of shape `(batch, *input_shape)`, and returns
`output_0`, of shape `(batch, num_outputs)` (class probabilities for
classifiers).

Writing is atomic: everything goes to a temporary sibling directory that is
renamed to `output_dir` only after every format verified, so a server never
sees a half-written export. An existing `output_dir` is only replaced with
`overwrite=True`.
"""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import warnings

import keras
import numpy as np

from spinalnet_keras import _dependencies
from spinalnet_keras import _validation
from spinalnet_keras.backbones import ImagePreprocessing
from spinalnet_keras.spinal_dense import SpinalDense

FORMATS = ("saved_model", "keras", "onnx")
DEFAULT_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """An export could not be written or did not verify."""


def load_model_file(path):
    """Load a `.keras` file safely (no code from the file is run): a file
    that holds code, such as a `Lambda` layer's function, is refused with a
    ValueError saying so."""
    path = _validation.path("path", path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No model file at {path!r}.")
    if not path.endswith(".keras"):
        raise ValueError(
            f"Expected a `.keras` model file (as written by `train`: best.keras, "
            f"final.keras). Received: {path!r}"
        )
    import spinalnet_keras  # noqa: F401  (registers the custom layers)

    try:
        return keras.saving.load_model(path, safe_mode=True)
    except Exception as e:
        if "safe_mode" in str(e):
            # Keras's own advice (pass safe_mode=False) is not an argument here.
            raise ValueError(
                f"{path!r} holds Python code that loading it would run (e.g. a Lambda "
                "layer's function), and this package loads model files in Keras's "
                "safe mode only, never running code from a file. Rebuild the model "
                "without it, or, if you trust the file, load it yourself with "
                "keras.saving.load_model(path, safe_mode=False) and pass the model."
            ) from e
        raise ValueError(
            f"Could not load {path!r}; the file is corrupt or not a Keras model "
            f"file ({type(e).__name__}: {e})"
        ) from e


def with_input_normalization(model, mean, std, name=None):
    """A model that takes raw images in [0, 255] and applies
    `(x / 255 - mean) / std` (the training pipeline's normalisation) before
    `model`, as one `Rescaling` layer, named `name` (default: the model's
    name)."""
    if not isinstance(model, keras.Model):
        received = f"model={model!r}"
    elif not getattr(model, "inputs", None):
        received = f"model {model.name!r}, which has no inputs (not built)"
    elif len(model.inputs) != 1:
        received = f"a model with {len(model.inputs)} inputs"
    else:
        received = None
    if received is not None:
        raise ValueError(
            "`model` must be a keras.Model with one input, the images to "
            f"normalise. Received: {received}"
        )
    if name is not None:
        _validation.keras_name("name", name, "the new model's; None gives it the model's")
    channels = model.input_shape[-1]
    stats = {}
    for key, value in (("mean", mean), ("std", std)):
        try:
            array = np.asarray(value, dtype="float32").reshape(-1)
        except (TypeError, ValueError):
            array = None
        if array is None or array.size not in (1, channels) or not np.all(np.isfinite(array)):
            raise ValueError(
                f"`{key}` must be one finite number or one per channel ({channels}). "
                f"Received: {key}={value!r}"
            )
        stats[key] = array
    mean, std = stats["mean"], stats["std"]
    if np.any(std <= 0):
        raise ValueError(f"`std` must be positive. Received: std={std.tolist()!r}")
    inputs = keras.Input(model.input_shape[1:], name="images")
    x = keras.layers.Rescaling(
        scale=(1.0 / (255.0 * std)).tolist(), offset=(-mean / std).tolist(),
        name="normalization",
    )(inputs)
    return keras.Model(inputs, model(x), name=model.name if name is None else name)


# The layers with an int8 form: Keras's and SpinalDense.
_INT8_LAYERS = (keras.layers.Dense, keras.layers.EinsumDense, keras.layers.Embedding,
                SpinalDense)


def _layers_by_path(model, prefix=""):
    """`(path, layer)` of every layer, inside nested models too ("head/fc")."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _layers_by_path(layer, f"{prefix}{layer.name}/")
        else:
            yield f"{prefix}{layer.name}", layer


def quantize_int8(model):
    """Store the kernels of `model`'s Dense, EinsumDense, Embedding and
    SpinalDense layers as int8, in place, as each layer's
    `quantize("int8")` does; return their paths.

    `model.quantize("int8")` does the same but leaves out SpinalDense layers
    with `batch_norm` or an activation layer (Keras quantizes only layers
    without sub-layers) and fails on layers already int8; this reaches
    every such layer, in nested models too, and leaves int8 layers as they
    are.
    SpinalDense's int8 form stores weights only (see
    `SpinalDense.quantize`).

    Args:
        model: a built `keras.Model`.

    Returns:
        The paths of the layers quantized, in order (`"head/fc"` for a
        layer of a nested model named "head").

    Raises:
        ValueError: `model` is not a built Keras model, it has no such layer
            left in floating point, or one cannot be quantized (a float16
            compute dtype: named, before any layer is changed).

    A subclass of Dense that Keras does not quantize (its `quantize` raises
    NotImplementedError) stays in floating point, with a warning naming it.

    A compiled model whose optimizer has already trained gets a new one of
    the same configuration (`model.optimizer` is replaced), holding the old
    one's step count and its state of the variables that still train
    (biases, BatchNormalization, LoRA updates): the int8
    kernels no longer train, and the old optimizer's state for them would
    make a saved file's optimizer state fail to load (Keras skips it all,
    with a warning). Keras's `model.quantize` keeps the old optimizer.

    Example:

    >>> model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8),
    ...                           SpinalDense(4, width=3, depth=2, batch_norm=True)])
    >>> quantize_int8(model)
    ['dense', 'spinal_dense']
    """
    if not isinstance(model, keras.Model) or not model.built:
        raise ValueError(f"`model` must be a built keras.Model. Received: model={model!r}")
    todo = [(path, layer) for path, layer in _layers_by_path(model)
            if isinstance(layer, _INT8_LAYERS) and layer.quantization_mode is None]
    if not todo:
        raise ValueError(
            f"Model {model.name!r} has no Dense, EinsumDense, Embedding or SpinalDense "
            "layer left in floating point to quantize."
        )
    for path, layer in todo:  # refused before anything changes
        if layer.compute_dtype == "float16":
            raise ValueError(
                f"Layer {path!r} computes in float16, which Keras's int8 mode refuses; "
                "load the model under 'float32' or 'mixed_bfloat16' first."
            )
    done = []
    for path, layer in todo:
        try:
            layer.quantize("int8")
        except NotImplementedError as e:
            warnings.warn(f"Layer {path!r} stays in floating point: {e}", stacklevel=2)
            continue
        done.append(path)
    # As Keras's Model.quantize: functions traced on the float kernels go.
    model.train_function = model.test_function = model.predict_function = None
    if done:
        _rebuild_optimizer(model)
    return done


def _rebuild_optimizer(model):
    """Give a compiled model whose optimizer has built its state a new
    optimizer of the same configuration, built on the variables that still
    train, carrying over the old one's step count, learning rate and the
    state of those variables.

    The int8 kernels no longer train. Keras's Model.quantize keeps the old
    optimizer, whose state then covers variables the model no longer
    trains: a file saved so holds more optimizer variables than the loaded
    model's optimizer builds, and Keras skips them all on load, with a
    warning.
    """
    old = getattr(model, "optimizer", None)
    if old is None or not old.built:
        return
    # Under tf.distribute the variables must be the strategy's (mirrored),
    # as the old optimizer's were.
    strategy = getattr(model, "distribute_strategy", None)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        new = type(old).from_config(old.get_config())
        new.build(model.trainable_variables)
    # A slot's name is the path of the variable it serves plus the slot's
    # name ("head_spine_bias_momentum"), and the variables still trained
    # keep their paths, so names pair each new variable with its old one.
    kept = {}
    for variable in old.variables:
        kept.setdefault(variable.name, []).append(variable)
    for variable in new.variables:
        same = kept.get(variable.name)
        if same:
            # a copy: on JAX, training donates the new variable's buffer
            variable.assign(keras.ops.convert_to_numpy(same.pop(0)))
    model.optimizer = new
    # The compile arguments Keras saves hold the optimizer itself, so a
    # saved file's compile config is the new one's (its learning rate as a
    # callback may set it later), and no longer reads the old one's.
    compiled = getattr(getattr(model, "_compile_config", None), "config", None)
    if isinstance(compiled, dict) and compiled.get("optimizer") is old:
        compiled["optimizer"] = new


_SAVED_MODEL_CHECK = textwrap.dedent(
    """
    import sys, numpy as np, tensorflow as tf
    model = tf.saved_model.load(sys.argv[1])
    fn = model.signatures["serving_default"]
    (name,) = fn.structured_input_signature[1].keys()
    x = np.load(sys.argv[2])
    out = fn(**{name: tf.constant(x)})
    (y,) = out.values()
    np.save(sys.argv[3], y.numpy())
    assert "spinalnet_keras" not in sys.modules, "the check must not import the package"
    print("input", name, "outputs", list(out))
    """
)

_ONNX_CHECK = textwrap.dedent(
    """
    import sys, numpy as np, onnxruntime as ort
    session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    y = session.run(None, {name: np.load(sys.argv[2])})[0]
    np.save(sys.argv[3], y)
    assert "spinalnet_keras" not in sys.modules
    print("input", name)
    """
)


def _run_fresh(script, artifact, batch, workdir):
    """Run `script` in a fresh Python that does not import this package.

    A failure becomes an ExportError with the script's error. From a Keras
    backend other than TensorFlow it also says how to export from
    TensorFlow: e.g. TensorFlow 2.21 cannot run the StableHLO that jax
    0.11.2 and later write into a SavedModel made on JAX.
    """
    x_path = os.path.join(workdir, "verify_inputs.npy")
    y_path = os.path.join(workdir, "verify_outputs.npy")
    np.save(x_path, batch)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-c", script, artifact, x_path, y_path],
        capture_output=True, text=True, env=env, timeout=600,
        cwd=workdir,  # not the source tree, so nothing local is importable
    )
    if proc.returncode != 0:
        backend = keras.backend.backend()
        advice = "" if backend == "tensorflow" else (
            f"\nThe export was made on Keras's {backend!r} backend. "
            + _FROM_TENSORFLOW)
        raise ExportError(
            f"Fresh-process check of {artifact} failed:\n{proc.stderr[-3000:].rstrip()}{advice}"
        )
    y = np.load(y_path)
    os.remove(x_path)
    os.remove(y_path)
    return y, proc.stdout.strip()


# Layers that take raw values (pixels in [0, 255]) and scale them.
_RAW_INPUT_LAYERS = (ImagePreprocessing, keras.layers.Rescaling, keras.layers.Normalization)


def _takes_raw_input(model):
    """Whether `model` scales raw values itself: its first layer (within a
    nested first model, such as a keras.applications backbone) is a
    `Rescaling`, `Normalization` or `ImagePreprocessing` layer, as in
    `backbone_model`'s models and `with_input_normalization`'s."""
    layer = model
    while isinstance(layer, keras.Model):
        inner = [x for x in layer.layers if not isinstance(x, keras.layers.InputLayer)]
        if not inner:
            return False
        layer = inner[0]
    return isinstance(layer, _RAW_INPUT_LAYERS)


def _compare(name, expected, got, tolerance):
    """The check of one format's outputs `got` against the model's. Each
    output's error is its difference, divided by the output's magnitude
    where that is above 1: float32 keeps about 7 significant digits, so two
    right computations of an output near 1000 (a regression model's, say)
    differ by about 1e-4, and an absolute bound would fail them."""
    entry = {"format": name, "tolerance": tolerance, "shape": list(got.shape)}
    if expected.shape != got.shape:  # no error to measure
        return {**entry, "model_shape": list(expected.shape), "max_error": None,
                "max_abs_error": None, "verified": False}
    diff = np.abs(expected.astype("float64") - got)
    err = float(np.max(diff / np.maximum(1.0, np.abs(expected)), initial=0.0))  # 0 if empty
    return {**entry, "max_error": err, "max_abs_error": float(np.max(diff, initial=0.0)),
            "verified": err <= tolerance}


def export_model(
    model,
    output_dir,
    name=None,
    formats=("saved_model", "keras"),
    overwrite=False,
    verify=True,
    tolerance=None,
    sample=None,
    version=1,
):
    """Write and verify `model` in `formats` under `output_dir`, atomically.

    Args:
        model: a Keras model, or the path of a `.keras` file.
        output_dir: the export directory to create.
        name: model name in the layout (default: the model's name).
        formats: any of `"saved_model"`, `"keras"`, `"onnx"`, as a list or
            a comma list such as `"saved_model,keras"`.
        overwrite: replace an existing `output_dir`.
        verify: check every format's outputs against the in-memory model
            (SavedModel and ONNX in a fresh process without this package).
        tolerance: largest output difference accepted, relative to the
            output where its magnitude is above 1 (float32 rounds large values
            coarser), absolute otherwise (default 1e-4). Only with `verify`.
        sample: batch of inputs for the check (default: 4 random inputs of
            the model's input shape: uniform in [0, 255] for a model that
            scales raw values itself (its first layer, or its first nested
            model's, is a `Rescaling`, `Normalization` or
            `ImagePreprocessing`: `backbone_model`'s and
            `with_input_normalization`'s models), standard normal, the
            scale of normalised inputs, otherwise; needed where the
            input shape has unknown dimensions or the input is not a float,
            such as token ids). Its values must be exact in the model's
            input dtype. Only with `verify`.
        version: SavedModel version directory (TensorFlow Serving).

    Returns:
        The report dict also written to `output_dir/export_report.json`.

    Raises:
        TypeError: `model` is neither a model nor a path.
        ValueError: a bad argument (named), a format named twice, a
            `sample` that is no batch of the model's inputs, or model
            outputs on the sample that are not finite (NaN verifies nothing).
        FileExistsError: `output_dir` exists and `overwrite` is False.
        ExportError: a format did not verify (outputs beyond `tolerance`,
            or its fresh-process check failed, as TensorFlow 2.21's does on
            a SavedModel written on jax 0.11.2 or later: made on a backend
            other than TensorFlow, the message says how to export from
            TensorFlow); Keras could not write the
            SavedModel or ONNX file on a backend other than TensorFlow (the
            message gives the cause and how to export from TensorFlow); or,
            before anything is written, `"onnx"` is asked for and a module
            of the `[onnx]` extra is missing, or installed but fails to
            import (the message names it, its cause and the versions
            installed).
        OSError: the file system's, as raised.

        Whatever the error, nothing is left at `output_dir`, and an existing
        export there is kept.

    Example:

    >>> from spinalnet_keras import paper_model
    >>> report = export_model(paper_model("regression"), "exported")
    >>> report["formats"]["saved_model"]["path"], report["verified"]
    ('regression_spinal/1', True)
    """
    if not isinstance(model, (keras.Model, str, os.PathLike)):
        raise TypeError(
            "`model` must be a keras.Model or the path of a `.keras` file. "
            f"Received: model={model!r}"
        )
    if not isinstance(model, keras.Model):
        model = load_model_file(model)
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(
            "export_model takes a model with one input and one output (the "
            "serving signature's). Received: model "
            f"'{model.name}' with {len(model.inputs)} inputs and {len(model.outputs)} outputs"
        )
    items = _validation.comma_list(formats)
    if not isinstance(items, (list, tuple)) or not items:
        raise ValueError(
            f"`formats` must name at least one of {', '.join(FORMATS)}. "
            f"Received: formats={formats!r}"
        )
    formats = tuple(_validation.choice("formats", f, FORMATS) for f in items)
    _validation.each_once("formats", formats, "each format is written once", formats)
    version = _validation.positive_int("version", version)
    overwrite = _validation.boolean("overwrite", overwrite)
    verify = _validation.boolean("verify", verify)
    if tolerance is None:
        tolerance = DEFAULT_TOLERANCE if verify else None
    elif not verify:
        raise ValueError(
            "`tolerance` is what the check accepts, and verify=False skips the "
            f"check; pass one or the other. Received: verify=False and tolerance={tolerance}"
        )
    else:
        tolerance = _validation.non_negative_number("tolerance", tolerance)
    if not verify and sample is not None:
        raise ValueError(
            "`sample` is the batch the exported formats are checked on, and "
            "verify=False skips the check; pass one or the other. Received: "
            "verify=False and a sample"
        )
    name = _validation.plain_name("name", model.name if name is None else name)
    output_dir = os.path.abspath(_validation.path("output_dir", output_dir))
    if os.path.exists(output_dir) and not overwrite:
        raise FileExistsError(
            f"{output_dir} already exists; pass overwrite=True (--overwrite) to replace it."
        )
    if "onnx" in formats:
        _require_onnx()
    wanted = tuple(model.input_shape[1:])
    # The serving signature takes the model's input dtype (int32 token ids
    # for an Embedding model), so the check's batch must have it too.
    dtype = keras.backend.standardize_dtype(model.inputs[0].dtype)
    is_float = "float" in dtype
    if verify:  # the reference outputs, only needed to verify
        if sample is None:
            if None in wanted:
                raise ValueError(
                    f"The model's input shape {model.input_shape} has unknown "
                    "dimensions, so no sample can be drawn to verify the export; "
                    "pass `sample`, a batch of the model's inputs (the export command's "
                    "`--sample FILE.npy`)."
                )
            if not is_float:
                raise ValueError(
                    f"The model's input is {dtype}, and random values could be "
                    "ones it does not take (e.g. token ids beyond an Embedding's "
                    "vocabulary), so no sample can be drawn to verify the export; "
                    "pass `sample`, a batch of the model's inputs (the export command's "
                    "`--sample FILE.npy`)."
                )
            rng = np.random.default_rng(0)
            # Inputs of the scale the model takes: raw [0, 255] values
            # would drive a model trained on normalised ones far outside
            # its range (saturated softmax outputs verify little).
            sample = (rng.uniform(0, 255, (4,) + wanted) if _takes_raw_input(model)
                      else rng.standard_normal((4,) + wanted))
        given = np.asarray(sample)
        if given.ndim != len(wanted) + 1 or not len(given) or any(
            w is not None and w != d for w, d in zip(wanted, given.shape[1:])
        ):
            raise ValueError(
                f"`sample` must be a batch of one or more of the model's inputs, shape (batch, "
                f"{', '.join(map(str, wanted))}). Received: shape {given.shape}"
            )
        try:
            sample = given.astype(dtype)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"`sample` must hold numbers of the model's input dtype, {dtype}. "
                f"Received: dtype {given.dtype}"
            ) from e
        if not is_float and not np.array_equal(sample, given):
            # e.g. 2.5 as a token id: the check would run on 2, not on 2.5
            # a Python number: numpy 2 would show np.float64(2.5), 1.x 2.5
            bad = given.flat[np.flatnonzero(sample != given)[0]].item()
            raise ValueError(
                f"`sample` must hold values of the model's input dtype, {dtype}, "
                f"exactly. Received: a {given.dtype} sample holding {bad!r}"
            )
        expected = np.asarray(model.predict(sample, verbose=0), dtype="float32")
        if not np.isfinite(expected).all():
            # NaN matches nothing, so the check could not tell a good export
            # from a broken one.
            raise ValueError(
                f"The model's outputs on `sample` are not all finite ({np.isnan(expected).sum()} "
                f"NaN, {np.isinf(expected).sum()} infinite), so the export cannot be "
                "verified against them; pass a `sample` of inputs it computes finite "
                "outputs for, or verify=False."
            )

    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.tmp-", dir=parent)
    report = {"name": name, "formats": {}, "input_shape": list(model.input_shape),
              "input_dtype": dtype, "output_shape": list(model.output_shape),
              "tolerance": tolerance}
    try:
        if "saved_model" in formats:
            path = os.path.join(staging, name, str(version))
            _write("saved_model", lambda: model.export(
                path, format="tf_saved_model", verbose=False))
            entry = {"path": os.path.join(name, str(version)),
                     "signature": "serving_default"}
            if verify:
                got, info = _run_fresh(_SAVED_MODEL_CHECK, path, sample, staging)
                entry.update(_compare("saved_model", expected, got, tolerance))
                entry["signature_io"] = info
            report["formats"]["saved_model"] = entry
        if "keras" in formats:
            path = os.path.join(staging, f"{name}.keras")
            model.save(path)
            entry = {"path": f"{name}.keras"}
            if verify:
                loaded = keras.saving.load_model(path, safe_mode=True)
                got = np.asarray(loaded.predict(sample, verbose=0), dtype="float32")
                entry.update(_compare("keras", expected, got, tolerance))
            report["formats"]["keras"] = entry
        if "onnx" in formats:
            # Keras refuses to convert a model that was never called (one
            # just built or loaded; on JAX, predict does not count). Keras
            # 3.10 warns that a loaded model's inputs are a list of one,
            # which is harmless here.
            one = sample[:1] if verify else np.zeros((1,) + tuple(d or 1 for d in wanted),
                                                     dtype)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "The structure of `inputs` doesn't match")
                model(one, training=False)
            path = os.path.join(staging, f"{name}.onnx")
            with warnings.catch_warnings():
                # Keras's patch of tf2onnx for NumPy 2 asks `hasattr(np,
                # "object")`, which NumPy 2.4 answers with this warning.
                warnings.filterwarnings("ignore", "In the future `np.object`", FutureWarning)
                _write("onnx", lambda: model.export(path, format="onnx", verbose=False))
            entry = {"path": f"{name}.onnx"}
            if verify:
                got, _ = _run_fresh(_ONNX_CHECK, path, sample, staging)
                entry.update(_compare("onnx", expected, got, tolerance))
            report["formats"]["onnx"] = entry
        failed = [f for f, e in report["formats"].items() if e.get("verified") is False]
        report["verified"] = bool(verify and not failed)
        if failed:
            raise ExportError(
                f"Exported outputs differ from the model's beyond {tolerance}: "
                + ", ".join(_failure(f, report["formats"][f]) for f in failed)
            )
        with open(os.path.join(staging, "export_report.json"), "w") as f:
            json.dump(report, f, indent=2)
        _publish(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def _write(fmt, write):
    """Run `write`; on a Keras backend other than TensorFlow, a failure other
    than the file system's becomes an ExportError that says how to export
    from TensorFlow instead (Keras's converters differ per backend and
    version; the .keras file loads on any backend)."""
    try:
        write()
    except OSError:
        raise  # the disk's error (full, read-only), as it is
    except Exception as e:
        backend = keras.backend.backend()
        if backend == "tensorflow":
            raise
        raise ExportError(
            f"Keras could not write the {fmt} export on its {backend!r} backend "
            f"({_dependencies.describe_error(e)}). " + _FROM_TENSORFLOW
        ) from e


_FROM_TENSORFLOW = (
    "This package's export is tested on the TensorFlow backend, and a .keras "
    "file loads on any backend: save the model with model.save('model.keras'), "
    "then run `KERAS_BACKEND=tensorflow spinalnet-keras export model.keras "
    "--output-dir DIR` (or export_model there)."
)


def _publish(staging, output_dir):
    """Rename `staging` to `output_dir`; an old export is moved aside first
    and removed only once the new one is in place."""
    old = None
    if os.path.exists(output_dir):
        old = output_dir + ".old-" + os.path.basename(staging)
        os.rename(output_dir, old)
    os.rename(staging, output_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def _require_onnx():
    # tf2onnx converts on TensorFlow; on JAX and PyTorch Keras picks its own
    # converter (which one depends on its version) and names it if missing.
    modules = {"onnxruntime": "onnxruntime", "onnx": "onnx"}
    if keras.backend.backend() == "tensorflow":
        modules = {"tf2onnx": "tf2onnx", **modules}
    _dependencies.import_optional(
        "ONNX export", "onnx", modules, also=("numpy", "protobuf"), error=ExportError,
    )


def _failure(fmt, entry):
    if entry["max_error"] is None:
        return (f"{fmt} (outputs of shape {tuple(entry['shape'])}, the model's "
                f"{tuple(entry['model_shape'])})")
    return (f"{fmt} (max error {entry['max_error']:.3g}, relative where an output's "
            f"magnitude is above 1; max absolute difference {entry['max_abs_error']:.3g})")


def format_report(report):
    """The report `export_model` returned, as lines to print."""
    if not isinstance(report, dict) or not isinstance(report.get("formats"), dict):
        raise TypeError(
            "`report` must be the dict export_model returns. Received: "
            f"report={report!r}"
        )
    lines = [f"Export of {report['name']}:"]
    for fmt, entry in report["formats"].items():
        if "verified" in entry:
            # a report written before the check was relative holds the absolute error only
            error = entry.get("max_error", entry.get("max_abs_error"))
            status = (f"verified, max error {error:.2e} "
                      f"<= {entry['tolerance']:g}") if entry["verified"] else "FAILED"
        else:
            status = "written, not verified"
        lines.append(f"  {fmt:12s} {entry['path']:24s} {status}")
    return "\n".join(lines)
