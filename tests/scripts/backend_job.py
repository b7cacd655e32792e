"""Helper run in a subprocess by test_spinal_dense.py: the backend is chosen
when Keras is imported, so each backend needs a process of its own.

Loads a .keras file saved under TensorFlow, predicts, on JAX exports it
(SavedModel and .keras, next to the .npz; an ExportError's message is kept),
and (where the backend can train) takes one SGD step, writing the outputs and
the stepped weights to an .npz file for the test to compare with
TensorFlow's; then quantizes to int8, takes another step, saves and reloads
(the reloaded optimizer's step count and the warnings about its state)."""

import os
import sys
import warnings

model_path, data_path, out_path = sys.argv[1:4]
if len(sys.argv) > 4 and sys.argv[4] == "--without-tensorflow":
    # TensorFlow converts numpy arrays, so a stray TensorFlow op would still
    # run on the numpy backend unless TensorFlow cannot be imported at all.
    sys.modules["tensorflow"] = None

import keras  # noqa: E402
import numpy as np  # noqa: E402

import spinalnet_keras  # noqa: E402, F401  (registers SpinalDense for loading)

data = np.load(data_path)
model = keras.saving.load_model(model_path, compile=False)  # safe mode
result = {"backend": np.array(keras.backend.backend()),
          "prediction": keras.ops.convert_to_numpy(model(data["x"], training=False))}
if keras.backend.backend() == "jax":  # Keras exports a SavedModel there too
    try:
        report = spinalnet_keras.export_model(
            model, os.path.join(os.path.dirname(out_path), "export"), name="m",
            formats=("saved_model", "keras"), sample=data["x"])
        result["export_verified"] = np.array(report["verified"])
    except spinalnet_keras.ExportError as error:
        # Where TensorFlow cannot run what this jax writes; the test decides.
        result["export_error"] = np.array(str(error))
if keras.backend.backend() != "numpy":  # the numpy backend has no training
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    model.train_on_batch(data["x"], data["y"])
    for n, weight in enumerate(model.weights):
        result[f"weight_{n}"] = keras.ops.convert_to_numpy(weight)
    # quantize_int8 gives a model that has trained a new optimizer; the
    # model trains on, saves, and its optimizer's state loads back
    small = keras.Sequential([keras.Input(data["x"].shape[1:]),
                              spinalnet_keras.SpinalDense(3, width=3, depth=2, batch_norm=True)])
    small.compile(keras.optimizers.SGD(0.1, momentum=0.5), "sparse_categorical_crossentropy")
    small.train_on_batch(data["x"], data["y"])
    spinalnet_keras.quantize_int8(small)
    small.train_on_batch(data["x"], data["y"])
    int8_path = os.path.join(os.path.dirname(out_path), "int8.keras")
    small.save(int8_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = keras.saving.load_model(int8_path)
    result["int8_reloaded"] = np.array(
        [int(keras.ops.convert_to_numpy(loaded.optimizer.iterations)),
         sum("optimizer" in str(w.message) for w in caught)])
np.savez(out_path, **result)
