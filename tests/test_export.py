import json
import os
import warnings

import keras
import numpy as np
import pytest

from conftest import install_broken_module
from spinalnet_keras import ExportError
from spinalnet_keras import backbone_model
from spinalnet_keras import export_model
from spinalnet_keras import format_report
from spinalnet_keras import load_model_file
from spinalnet_keras import SpinalDense
from spinalnet_keras import paper_model
from spinalnet_keras import quantize_int8
from spinalnet_keras import with_input_normalization
from spinalnet_keras import export as export_module
from spinalnet_keras.cli import main


def _listing(parent):
    return sorted(os.listdir(parent))


@pytest.mark.parametrize("kind", ["paper", "backbone"])
def test_every_format_written_and_verified(kind, tmp_path):
    if kind == "paper":
        model = paper_model("mnist_cnn", head="spinal")
    else:
        model = backbone_model("MobileNetV2", (32, 32, 3), 5, head="spinal", width=8, depth=4)
    out = tmp_path / "export"
    report = export_model(model, out, name="clf", formats=("saved_model", "keras", "onnx"))
    assert _listing(out) == ["clf", "clf.keras", "clf.onnx", "export_report.json"]
    assert (out / "clf" / "1" / "saved_model.pb").is_file()
    assert report["verified"] is True
    for fmt in ("saved_model", "keras", "onnx"):
        entry = report["formats"][fmt]
        assert entry["verified"] and entry["max_abs_error"] <= 1e-4, entry
        assert entry["shape"] == [4, model.output_shape[-1]]
    assert json.loads((out / "export_report.json").read_text())["verified"] is True
    assert "outputs ['output_0']" in report["formats"]["saved_model"]["signature_io"]
    # no staging directory left behind
    assert _listing(tmp_path) == ["export"]


def test_the_default_sample_has_the_scale_the_model_takes(tmp_path, monkeypatch):
    # Raw [0, 255] values for a model that scales them itself; standard
    # normal ones, the scale of normalised inputs, for one trained on those
    # (raw pixels saturated a paper network's softmax, verifying little).
    batches = []
    real = export_module._run_fresh

    def recording(script, artifact, batch, workdir):
        batches.append(np.asarray(batch))
        return real(script, artifact, batch, workdir)

    monkeypatch.setattr(export_module, "_run_fresh", recording)
    paper = paper_model("mnist_cnn", head="spinal")
    for i, (model, raw) in enumerate([
            (paper, False), (with_input_normalization(paper, 0.1307, 0.3081), True)]):
        export_model(model, tmp_path / str(i), formats=("saved_model",))
        batch = batches[-1]
        assert batch.shape == (4, 28, 28, 1)
        if raw:
            assert batch.min() >= 0 and batch.max() > 200, i
        else:
            assert batch.min() < -1 and abs(batch.mean()) < 0.1 and batch.max() < 10, i
    # What counts as scaling raw values itself: the first layer, looked for
    # inside a nested first model too.
    takes_raw = export_module._takes_raw_input
    backbone = backbone_model("MobileNetV2", (32, 32, 3), 3, head="dense")
    assert takes_raw(backbone)  # its ImagePreprocessing
    assert not takes_raw(backbone_model("MobileNetV2", (32, 32, 3), 3, head="dense",
                                        include_preprocessing=False))
    rescaled = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Rescaling(1 / 255),
                                 keras.layers.Flatten()])
    assert takes_raw(keras.Sequential([rescaled, keras.layers.Dense(2)]))


def test_reuse_through_tfsmlayer(tmp_path):
    model = paper_model("regression", head="spinal")
    export_model(model, tmp_path / "e", name="reg", formats=("saved_model",))
    layer = keras.layers.TFSMLayer(str(tmp_path / "e" / "reg" / "1"),
                                   call_endpoint="serving_default", trainable=False)
    frozen = keras.Sequential([keras.Input((8,)), layer])
    x = np.random.default_rng(0).normal(size=(5, 8)).astype("float32")
    out = frozen(x)
    out = out["output_0"] if isinstance(out, dict) else out
    np.testing.assert_allclose(out, model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    assert not layer.trainable_weights and layer.non_trainable_weights  # frozen extractor


def test_overwrite_refusal_and_replacement(tmp_path):
    model = paper_model("regression", head="dense")
    out = tmp_path / "e"
    export_model(model, out, formats=("keras",))
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_model(model, out, formats=("keras",))
    report = export_model(model, out, name="new", formats=("keras",), overwrite=True)
    assert _listing(out) == ["export_report.json", "new.keras"] and report["verified"]
    assert _listing(tmp_path) == ["e"]


def test_failure_while_writing_leaves_target_untouched(tmp_path, monkeypatch):
    model = paper_model("regression", head="spinal")
    out = tmp_path / "e"
    export_model(model, out, name="old", formats=("keras",))
    before = _listing(out)

    def broken_save(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(keras.Model, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        export_model(model, out, formats=("saved_model", "keras"), overwrite=True)
    assert _listing(out) == before  # the old export is still served
    with pytest.raises(OSError):
        export_model(model, tmp_path / "fresh", formats=("saved_model", "keras"))
    assert _listing(tmp_path) == ["e"]  # nothing half-written, no staging dir


def test_outputs_that_differ_fail_the_export(tmp_path, monkeypatch):
    model = paper_model("regression", head="spinal")
    real = export_module._run_fresh

    def perturbed(*args):
        y, info = real(*args)
        return y + 1.0, info

    monkeypatch.setattr(export_module, "_run_fresh", perturbed)
    with pytest.raises(ExportError, match=r"saved_model \(max error .*; max absolute difference 1\)"):
        export_model(model, tmp_path / "e", formats=("saved_model",))
    assert _listing(tmp_path) == []


def test_the_check_is_relative_for_outputs_above_one(tmp_path, monkeypatch):
    # float32 keeps about 7 digits: two right computations of outputs near
    # 10,000 differ by about 1e-3, which an absolute bound of 1e-4 failed
    # (ONNX of a trained regression model, on the default sample).
    keras.utils.set_random_seed(0)
    model = paper_model("regression", head="spinal")
    model.set_weights([w * 3.0 for w in model.get_weights()])
    raw = np.random.default_rng(0).uniform(0, 255, (4, 8))  # outputs in the thousands
    report = export_model(model, tmp_path / "onnx", formats=("onnx",), sample=raw)
    entry = report["formats"]["onnx"]
    assert entry["verified"] and entry["max_error"] <= 1e-4, entry
    assert "verified, max error" in format_report(report)
    old = {"name": "m", "formats": {"keras": {"path": "m.keras", "verified": True,
                                              "max_abs_error": 2e-6, "tolerance": 1e-4}}}
    assert "verified, max error 2.00e-06 <= 0.0001" in format_report(old)  # an earlier report
    # Below 1 in size, the bound stays absolute; a shape that differs fails
    # as such, not on numpy's broadcasting.
    classifier = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    real = export_module._run_fresh
    for change, match in [(lambda y: y + 2e-4, r"max error 0.0002, .* max absolute difference 0.0002"),
                          (lambda y: y[:, :1], r"saved_model \(outputs of shape \(4, 1\), the model's \(4, 2\)\)")]:
        monkeypatch.setattr(export_module, "_run_fresh",
                            lambda *args, change=change: (change(real(*args)[0]), ""))
        with pytest.raises(ExportError, match=match):
            export_model(classifier, tmp_path / "c", formats=("saved_model",))


def test_keras_failing_to_export_on_another_backend_says_how_to_export(tmp_path, monkeypatch):
    # What Keras 3.15 with torch 2.13 does to any SavedModel export, and
    # Keras 3.10 on JAX to an ONNX one; here on TensorFlow with the backend's
    # name and Keras's export replaced, since a process has one backend.
    import sys

    model = paper_model("regression", head="spinal")
    failure = ValueError("The model provided has never called.")

    def failing_export(self, *args, **kwargs):
        raise failure

    monkeypatch.setattr(keras.Model, "export", failing_export)
    with pytest.raises(ValueError) as err:  # on TensorFlow a failure is Keras's own
        export_model(model, tmp_path / "e", formats="saved_model", verify=False)
    assert err.value is failure
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    # tf2onnx converts on TensorFlow only, so elsewhere it is not asked for.
    monkeypatch.setitem(sys.modules, "tf2onnx", None)
    for fmt, what in [("saved_model", "saved_model"), ("keras,onnx", "onnx")]:
        with pytest.raises(ExportError) as err:
            export_model(model, tmp_path / "e", formats=fmt, verify=False)
        message = str(err.value)
        assert message.startswith(
            f"Keras could not write the {what} export on its 'torch' backend "
            "(ValueError: The model provided has never called.)."), message
        assert ("`KERAS_BACKEND=tensorflow spinalnet-keras export model.keras "
                "--output-dir DIR`") in message
        assert err.value.__cause__ is failure
    failure = OSError("disk full")  # the file system's error stays as it is
    with pytest.raises(OSError, match="disk full"):
        export_model(model, tmp_path / "e", formats="saved_model", verify=False)
    assert _listing(tmp_path) == []  # nothing written, no staging directory
    monkeypatch.setattr(keras.backend, "backend", lambda: "tensorflow")
    with pytest.raises(ExportError, match="ONNX export needs tf2onnx, from the optional extra"):
        export_model(model, tmp_path / "e", formats="onnx")
    # A SavedModel written on another backend that TensorFlow cannot run
    # (jax >= 0.11.2's StableHLO under TensorFlow 2.21) fails its check, and
    # the error says the same.
    monkeypatch.undo()
    monkeypatch.setattr(export_module, "_SAVED_MODEL_CHECK", "raise SystemExit('cannot run')")
    with pytest.raises(ExportError) as err:
        export_model(model, tmp_path / "e", formats="saved_model")
    assert str(err.value).endswith("failed:\ncannot run")  # TensorFlow's own: no advice
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(ExportError) as err:
        export_model(model, tmp_path / "e", formats="saved_model")
    message = str(err.value)
    assert "failed:\ncannot run\nThe export was made on Keras's 'jax' backend." in message
    assert "`KERAS_BACKEND=tensorflow spinalnet-keras export model.keras" in message


def test_onnx_without_verification_from_a_loaded_model(tmp_path):
    # Keras converts only a model that was called; one just loaded never
    # was, and without verification nothing else calls it.
    import onnxruntime

    model = paper_model("regression", head="spinal")
    model.save(tmp_path / "m.keras")
    report = export_model(str(tmp_path / "m.keras"), tmp_path / "e", name="m",
                          formats="onnx", verify=False)
    assert report["verified"] is False and "max_abs_error" not in report["formats"]["onnx"]
    session = onnxruntime.InferenceSession(str(tmp_path / "e" / "m.onnx"),
                                           providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).normal(size=(5, 8)).astype("float32")
    (y,) = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(y, model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


def test_cli_export_options_reach_the_export(tmp_path, capsys):
    paper_model("regression", head="spinal").save(tmp_path / "final.keras")
    out = tmp_path / "serve"
    out.mkdir()
    (out / "old.txt").write_text("an earlier export")
    assert main(["export", str(tmp_path / "final.keras"), "--output-dir", str(out),
                 "--name", "reg", "--formats", "keras,onnx", "--overwrite", "--no-verify"]) == 0
    assert "onnx         reg.onnx                 written, not verified" in capsys.readouterr().out
    assert _listing(out) == ["export_report.json", "reg.keras", "reg.onnx"]
    report = json.loads((out / "export_report.json").read_text())
    assert (report["name"], report["tolerance"], report["verified"]) == ("reg", None, False)
    assert main(["export", str(tmp_path / "final.keras"), "--output-dir", str(out),
                 "--formats", "keras", "--overwrite", "--tolerance", "0.01"]) == 0
    report = json.loads((out / "export_report.json").read_text())
    assert (report["tolerance"], report["formats"]["keras"]["tolerance"], report["verified"]) == (
        0.01, 0.01, True)
    # a tolerance with no check to apply it is refused, not ignored
    assert main(["export", str(tmp_path / "final.keras"), "--output-dir", str(tmp_path / "n"),
                 "--no-verify", "--tolerance", "0.01"]) == 2
    assert ("`tolerance` is what the check accepts, and verify=False skips the check; pass "
            "one or the other. Received: verify=False and tolerance=0.01") in capsys.readouterr().err


def _backbone_and_head(lora=False):
    backbone = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3),
                                 keras.layers.GlobalAveragePooling2D(),
                                 keras.layers.Dense(12, name="proj")], name="backbone")
    head = keras.Sequential([keras.Input((12,)),
                             SpinalDense(width=3, depth=3, batch_norm=True, dropout=0.1,
                                         lora_rank=2 if lora else None, name="spine"),
                             keras.layers.Dense(5, name="out")], name="head")
    inputs = keras.Input((8, 8, 1))
    return keras.Model(inputs, head(backbone(inputs)))


def test_quantize_int8_reaches_every_layer_with_an_int8_form(tmp_path):
    model = _backbone_and_head()
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype("float32")
    before = model.predict(x, verbose=0)  # a predict function traced on float kernels
    # the SpinalDense has sub-layers, so Keras's model.quantize would leave it out
    assert quantize_int8(model) == ["backbone/proj", "head/spine", "head/out"]
    modes = {path: layer.quantization_mode for path, layer in export_module._layers_by_path(model)
             if not isinstance(layer, keras.layers.InputLayer)}
    assert modes == {"backbone/conv2d": None, "backbone/global_average_pooling2d": None,
                     "backbone/proj": "int8", "head/spine": "int8", "head/out": "int8"}
    after = model.predict(x, verbose=0)
    assert not np.array_equal(after, before)  # the int8 model's, not the old function's
    np.testing.assert_allclose(after, before, rtol=0.05, atol=0.05)
    with pytest.raises(ValueError, match=rf"Model '{model.name}' has no Dense, EinsumDense, "
                       "Embedding or SpinalDense layer left in floating point"):
        quantize_int8(model)
    # layers already int8 are left as they are, the others quantized
    partly = _backbone_and_head()
    partly.get_layer("head").get_layer("out").quantize("int8")
    assert quantize_int8(partly) == ["backbone/proj", "head/spine"]
    # a SpinalDense with LoRA is quantized too, and keeps its updates
    lora = _backbone_and_head(lora=True)
    assert quantize_int8(lora) == ["backbone/proj", "head/spine", "head/out"]
    spine = lora.get_layer("head").get_layer("spine")
    assert spine.lora_enabled and spine._kernels()[0].dtype == "int8"
    # refused before anything changes, naming the layer
    half = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="first"),
                             SpinalDense(2, width=2, depth=2, dtype="float16", name="half")])
    with pytest.raises(ValueError, match="Layer 'half' computes in float16, which Keras's int8 "
                       "mode refuses"):
        quantize_int8(half)
    assert half.get_layer("first").quantization_mode is None
    with pytest.raises(ValueError, match="must be a built keras.Model. Received: model='m.keras'"):
        quantize_int8("m.keras")

    class Custom(keras.layers.Dense):  # Keras quantizes no subclass of Dense
        pass

    custom = keras.Sequential([keras.Input((4,)), Custom(3, name="mine"), keras.layers.Dense(2)])
    with pytest.warns(UserWarning, match="Layer 'mine' stays in floating point"):
        assert quantize_int8(custom) == ["dense"]


@pytest.mark.parametrize("lora", [False, True])
def test_quantize_int8_rebuilds_a_trained_optimizer_for_what_still_trains(tmp_path, lora):
    model = _backbone_and_head(lora=lora)
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8, 8, 1)).astype("float32")
    y = rng.normal(size=(16, 5)).astype("float32")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    old = model.optimizer
    before = {v.name: keras.ops.convert_to_numpy(v) for v in old.variables}
    quantize_int8(model)
    new = model.optimizer
    assert new is not old and new.get_config() == old.get_config()
    # one slot per variable still trained (biases, BatchNormalization), none
    # for the int8 kernels
    fresh = keras.optimizers.SGD(0.01, momentum=0.9)
    fresh.build(model.trainable_variables)
    assert [v.name for v in new.variables] == [v.name for v in fresh.variables]
    assert len(new.variables) < len(old.variables)
    assert int(new.iterations) == 2
    momentum = "head_spine_lora_kernel_b_momentum" if lora else "head_out_bias_momentum"
    assert momentum in before and np.any(before[momentum])
    assert momentum in [v.name for v in new.variables]
    for v in new.variables:  # the step count and those variables' state go on
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), before[v.name])
    # the compile arguments a file saves are the new optimizer's, as a
    # callback such as ReduceLROnPlateau sets them
    new.learning_rate = 0.005
    saved = model.get_compile_config()["optimizer"]["config"]["learning_rate"]
    assert np.isclose(saved, 0.005)
    # a saved file's optimizer state loads back (Keras skipped all of it, with
    # a warning, where the old optimizer's state for the float kernels was
    # saved too)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # trains on int8
    model.save(tmp_path / "int8.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = keras.saving.load_model(tmp_path / "int8.keras")
    assert int(loaded.optimizer.iterations) == 4
    # (in the order of the trainable variables: a reloaded nested model's
    # variables have other paths, so its optimizer's have other names)
    assert len(loaded.optimizer.variables) == len(new.variables)
    for a, b in zip(loaded.optimizer.variables, new.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a),
                                      keras.ops.convert_to_numpy(b))
    # an optimizer that has not trained yet is left as it is
    untrained = _backbone_and_head()
    untrained.compile("adam", "mse")
    optimizer = untrained.optimizer
    quantize_int8(untrained)
    assert untrained.optimizer is optimizer and not optimizer.built


def test_cli_export_int8(tmp_path, capsys):
    trained = _backbone_and_head()  # as train writes it: with its optimizer's state
    trained.compile(keras.optimizers.SGD(0.01, momentum=0.5), "mse")
    trained.fit(np.ones((4, 8, 8, 1), "float32"), np.ones((4, 5), "float32"), verbose=0)
    trained.save(tmp_path / "final.keras")
    out = tmp_path / "serve"
    with warnings.catch_warnings():
        # the check's reload of the .keras export loads the optimizer's state
        warnings.filterwarnings("error", "Skipping variable loading for optimizer")
        assert main(["export", str(tmp_path / "final.keras"), "--output-dir", str(out),
                     "--name", "m", "--formats", "saved_model,keras", "--int8"]) == 0
    printed = capsys.readouterr().out
    assert "int8: backbone/proj, head/spine, head/out" in printed
    report = json.loads((out / "export_report.json").read_text())
    assert report["verified"]  # against the int8 model
    exported = keras.saving.load_model(out / "m.keras")
    assert exported.get_layer("head").get_layer("spine").dtype_policy.name == "int8_from_float32"


def test_onnx_export_names_a_missing_or_broken_onnx_module(tmp_path, monkeypatch):
    import sys

    model = paper_model("regression", head="spinal")
    # None in sys.modules makes `import onnxruntime` fail as on a machine
    # without it, even after an earlier test imported it.
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ExportError, match=r"ONNX export needs onnxruntime, from the optional extra \[onnx\]: pip install 'spinalnet-keras\[onnx\]'$"):
        export_model(model, tmp_path / "e", formats=("onnx",))
    # An onnxruntime built for NumPy 1 under NumPy 2 raises an ImportError
    # with no message; it is installed, so "pip install" alone would not fix it.
    install_broken_module(monkeypatch, tmp_path, "onnxruntime", "raise ImportError()")
    with pytest.raises(ExportError) as err:
        export_model(model, tmp_path / "e", formats=("onnx",))
    message = str(err.value)
    assert "needs onnxruntime, which is installed but failed to import (ImportError)." in message
    assert "numpy " in message and "onnx " in message and "protobuf " in message
    assert "pip install -U 'spinalnet-keras[onnx]'" in message
    assert isinstance(err.value.__cause__, ImportError)
    assert sorted(os.listdir(tmp_path)) == ["site"]


def test_token_id_model_exports_and_serves_its_integer_input(tmp_path):
    # A text model takes int32 token ids; its serving signature does too, so
    # the check's batch must keep that dtype (it was cast to float32, and the
    # SavedModel check failed for every such model).
    from spinalnet_keras import SpinalDense

    ids = keras.Input((10,), dtype="int32", name="tokens")
    x = keras.layers.Flatten()(keras.layers.Embedding(50, 4)(ids))
    model = keras.Model(ids, SpinalDense(3, width=4, depth=2, output_activation="softmax")(x),
                        name="text")
    # random values may be no valid ids (here, none beyond 49), so none are drawn
    with pytest.raises(ValueError, match=r"input is int32.*pass `sample`"):
        export_model(model, tmp_path / "x")
    with pytest.raises(ValueError, match=r"input dtype, int32, exactly. Received: a float64 "
                       r"sample holding 2.5$"):
        export_model(model, tmp_path / "x", sample=np.full((2, 10), 2.5))
    assert not (tmp_path / "x").exists()
    sample = np.random.default_rng(0).integers(0, 50, (4, 10))
    report = export_model(model, tmp_path / "text", sample=sample)
    assert report["verified"] and report["input_dtype"] == "int32"
    assert report["formats"]["saved_model"]["max_abs_error"] <= 1e-6
    assert "input tokens" in report["formats"]["saved_model"]["signature_io"]
    import tensorflow as tf

    serve = tf.saved_model.load(str(tmp_path / "text" / "text" / "1")).signatures[
        "serving_default"]
    (spec,) = serve.structured_input_signature[1].values()
    assert spec.dtype == tf.int32
    (probs,) = serve(tokens=tf.constant(sample, tf.int32)).values()
    np.testing.assert_allclose(probs.numpy(), model.predict(sample, verbose=0), atol=1e-6)


def test_cli_export_verifies_on_a_sample_file(tmp_path, capsys):
    # A token-id model cannot be checked on random inputs; from the command
    # line, --sample gives the batch (it could not be exported verified before).
    from spinalnet_keras import SpinalDense

    ids = keras.Input((6,), dtype="int32", name="tokens")
    x = keras.layers.Flatten()(keras.layers.Embedding(20, 4)(ids))
    keras.Model(ids, SpinalDense(3, width=4, depth=2, output_activation="softmax")(x),
                name="text").save(tmp_path / "text.keras")
    model_file = str(tmp_path / "text.keras")
    assert main(["export", model_file, "--output-dir", str(tmp_path / "a")]) == 2
    assert "pass `sample`, a batch of the model's inputs (the export command's `--sample " \
        "FILE.npy`)." in capsys.readouterr().err
    np.save(tmp_path / "ids.npy", np.random.default_rng(0).integers(0, 20, (3, 6)))
    assert main(["export", model_file, "--output-dir", str(tmp_path / "b"),
                 "--sample", str(tmp_path / "ids.npy")]) == 0
    report = json.loads((tmp_path / "b" / "export_report.json").read_text())
    assert report["verified"] and report["input_dtype"] == "int32"
    assert report["formats"]["saved_model"]["shape"] == [3, 3]  # the file's batch of 3

    # With --raw-input the sample is raw pixels, as the exported model takes them.
    images = paper_model("mnist_cnn", head="spinal")
    images.save(tmp_path / "images.keras")
    raw = np.random.default_rng(1).integers(0, 256, (2, 28, 28, 1)).astype("uint8")
    np.save(tmp_path / "raw.npy", raw)
    assert main(["export", str(tmp_path / "images.keras"), "--output-dir", str(tmp_path / "r"),
                 "--formats", "keras", "--raw-input", "--dataset", "mnist",
                 "--sample", str(tmp_path / "raw.npy")]) == 0
    report = json.loads((tmp_path / "r" / "export_report.json").read_text())
    assert report["verified"] and report["formats"]["keras"]["shape"] == [2, 10]

    # Files that are no array of numbers are refused, and a pickle is never unpickled.
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "archive.npz", batch=raw)
    (tmp_path / "empty.npy").write_bytes(b"")
    np.save(tmp_path / "wrong.npy", np.zeros((2, 5)))
    for argv, message in [
        (["--sample", str(tmp_path / "objects.npy")],
         "objects.npy is not an array of numbers saved with numpy.save (pickled data is "
         "never loaded). NumPy said: Object arrays cannot be loaded"),
        (["--sample", str(tmp_path / "archive.npz")],
         "archive.npz is an .npz archive; save the batch alone with numpy.save"),
        (["--sample", str(tmp_path / "empty.npy")], "empty.npy is not an array of numbers"),
        (["--sample", str(tmp_path / "missing.npy")], "No such file or directory"),
        (["--sample", str(tmp_path / "wrong.npy")],
         r"shape (batch, 6). Received: shape (2, 5)"),
        (["--sample", str(tmp_path / "ids.npy"), "--no-verify"],
         "verify=False skips the check; pass one or the other"),
    ]:
        assert main(["export", model_file, "--output-dir", str(tmp_path / "x"),
                     "--formats", "keras", *argv]) == 2
        assert message in capsys.readouterr().err, argv
    assert not (tmp_path / "x").exists()


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="No model file"):
        load_model_file(tmp_path / "missing.keras")
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="corrupt or not a Keras model file"):
        load_model_file(corrupt)
    with pytest.raises(ValueError, match="Expected a `.keras` model file"):
        load_model_file(__file__)
    # code in a file is never run, and the refusal says so (not "corrupt")
    inputs = keras.Input((2,))
    keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2)(inputs)).save(tmp_path / "l.keras")
    with pytest.raises(ValueError, match=r"l.keras' holds Python code that loading it would "
                       r"run .*safe mode only.*load_model\(path, safe_mode=False\)"):
        load_model_file(tmp_path / "l.keras")
    with pytest.raises(ValueError, match="holds Python code"):
        export_model(str(tmp_path / "l.keras"), tmp_path / "x")
    model = paper_model("regression")
    with pytest.raises(ValueError, match="formats='tflite'"):
        export_model(model, tmp_path / "x", formats=("tflite",))
    with pytest.raises(ValueError, match="name='../up'"):
        export_model(model, tmp_path / "x", name="../up")
    for kwargs, match in [
        (dict(formats=()), r"at least one of .*Received: formats=\(\)"),
        (dict(formats="keras,zip"), "formats='zip'"),
        (dict(tolerance=-1e-4), "tolerance=-0.0001"),
        (dict(verify="no"), "verify='no'"),
        (dict(overwrite=1), "overwrite=1"),
        (dict(sample=np.zeros((2, 5))), r"shape \(batch, 8\). Received: shape \(2, 5\)"),
        (dict(sample=np.zeros((2, 8)), verify=False),
         "verify=False skips the check; pass one or the other"),
        (dict(sample=np.zeros((0, 8))), r"one or more .*Received: shape \(0, 8\)"),
        # NaN outputs equal nothing: no check could pass or mean anything
        (dict(sample=np.full((2, 8), np.nan)), r"outputs on `sample` are not all finite \(2 NaN"),
        (dict(formats="keras,saved_model,keras"), "`formats` names 'keras' more than once"),
        (dict(name=""), "Received: name=''"),
    ]:
        with pytest.raises(ValueError, match=match):
            export_model(model, tmp_path / "x", **kwargs)
    with pytest.raises(ValueError, match="`output_dir` must be a path. Received: output_dir=None"):
        export_model(model, None)
    with pytest.raises(TypeError, match="keras.Model or the path of a `.keras` file. Received: model=3"):
        export_model(3, tmp_path / "x")
    with pytest.raises(ValueError, match="`path` must be a path. Received: path=3"):
        load_model_file(3)
    sized_later = keras.Sequential([keras.Input((None, 3)), keras.layers.GlobalAveragePooling1D()])
    with pytest.raises(ValueError, match=r"input shape \(None, None, 3\) has unknown "
                       "dimensions.*pass `sample`"):
        export_model(sized_later, tmp_path / "x")
    report = export_model(sized_later, tmp_path / "free", sample=np.ones((2, 5, 3)),
                          formats="keras")
    assert report["verified"] and report["formats"]["keras"]["shape"] == [2, 3]
    two = keras.Input((4,)), keras.Input((4,))
    joined = keras.Model(two, keras.layers.Dense(2)(keras.layers.Concatenate()(list(two))))
    with pytest.raises(ValueError, match="one input and one output.*2 inputs and 1 outputs"):
        export_model(joined, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    # formats as on the command line
    report = export_model(model, tmp_path / "k", formats="keras", name="r")
    assert list(report["formats"]) == ["keras"] and (tmp_path / "k" / "r.keras").is_file()
    images = paper_model("mnist_cnn")
    for kwargs, match in [
        (dict(mean=(0.5, 0.5), std=1), r"one finite number or one per channel \(1\). Received: mean=\(0.5, 0.5\)"),
        (dict(mean=0.1, std=0), r"`std` must be positive"),
        (dict(mean="a", std=1), "mean='a'"),
        (dict(mean=0.5, std=float("nan")), "one finite number or one per channel .* Received: std=nan"),
        # "" would fall back to the model's name
        (dict(mean=0.5, std=1, name=""), "`name` must be a non-empty string.*Received: name=''"),
        (dict(mean=0.5, std=1, name=3), "`name` must be a non-empty string.*Received: name=3"),
    ]:
        with pytest.raises(ValueError, match=match):
            with_input_normalization(images, **kwargs)
    assert with_input_normalization(images, 0.5, 1).name == images.name
    assert with_input_normalization(images, 0.5, 1, name="raw").name == "raw"
    for bad, match in [(joined, "one input.*a model with 2 inputs"),
                       ("final.keras", "one input.*model='final.keras'")]:
        with pytest.raises(ValueError, match=match):
            with_input_normalization(bad, 0.5, 0.2)


def test_cli_export_with_raw_input(tmp_path, capsys):
    model = paper_model("mnist_cnn", head="spinal")
    path = tmp_path / "final.keras"
    model.save(path)
    out = tmp_path / "serve"
    assert main(["export", str(path), "--output-dir", str(out), "--name", "mnist",
                 "--raw-input", "--dataset", "mnist"]) == 0
    printed = capsys.readouterr().out
    assert "saved_model  mnist/1" in printed and "verified" in printed
    served = keras.saving.load_model(out / "mnist.keras")
    raw = np.random.default_rng(1).integers(0, 256, (3, 28, 28, 1)).astype("float32")
    np.testing.assert_allclose(served.predict(raw, verbose=0),
                               model.predict((raw / 255 - 0.1307) / 0.3081, verbose=0),
                               rtol=1e-4, atol=1e-5)
    assert main(["export", str(path), "--output-dir", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope.keras"), "--output-dir", str(tmp_path / "o")]) == 2
    assert "No model file" in capsys.readouterr().err
    assert main(["export", str(path), "--output-dir", str(tmp_path / "o2"), "--raw-input"]) == 2
    assert "--raw-input needs the image --dataset" in capsys.readouterr().err
    assert main(["export", str(path), "--output-dir", str(tmp_path / "o3"), "--dataset",
                 "mnist"]) == 2
    assert "--dataset is used with --raw-input only" in capsys.readouterr().err


def test_export_without_verification(tmp_path):
    report = export_model(paper_model("regression"), tmp_path / "e", name="r",
                          formats=("keras",), verify=False)
    assert report["verified"] is False and "verified" not in report["formats"]["keras"]
    assert (tmp_path / "e" / "r.keras").is_file()
    assert format_report(report).splitlines()[-1].split() == [
        "keras", "r.keras", "written,", "not", "verified"]
    with pytest.raises(TypeError, match="dict export_model returns. Received: report='r'"):
        format_report("r")
