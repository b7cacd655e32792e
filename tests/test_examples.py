"""Every example runs, on tiny settings, so the examples never rot."""

import os
import re
import runpy
import subprocess
import sys

import pytest

from conftest import REPO


def keras_file_loads(path):
    import keras

    import spinalnet_keras  # noqa: F401  (registers SpinalDense)

    return isinstance(keras.saving.load_model(path), keras.Model)

EXAMPLES = [
    ("quickstart.py", ["--epochs", "2"],
     ["Keras backend: tensorflow", "spinal", "saved to runs/quickstart/spinal.keras; reloaded outputs identical: True"]),
    ("cost_accounting.py", [], ["8,480 vs 16,500 multiplications (48.6% fewer)",
                                # 160 * 10 + 5 * (160 + 10) * 10 + 60 * 10
                                "width=10, depth=6) on 320 features: 10,700 multiplications",
                                "mnist_cnn with the spinal head: 13,818 trainable parameters"]),
    ("paper_networks.py", ["--classes", "26"],  # training steps: test_paper_models
     # paper counts with 26 instead of 10 classes: + 16 * (inputs + 1)
     [f"vgg5       spinal trainable   {3_629_770 + 16 * 513:,}",
      f"mnist_cnn  dense  trainable      {21_840 + 16 * 51:,}"]),
    ("backbone_transfer.py", ["--backbone", "MobileNetV2", "--size", "32", "--steps", "1"],
     ["step 0: loss", "head"]),
    ("sparse_text_classification.py", ["--epochs", "2", "--documents", "300"],
     ["features: SparseTensor of shape (32, ", "spinal test accuracy",
      "sparse and dense features predict alike: True",
      "saved to runs/sparse_text/spinal.keras; reloaded outputs identical: True"]),
    ("spinalize_model.py", [], ["hidden Dense layers: ['fc1', 'fc2']", "all spinal",
                                "hidden Dense layers of backbone + head: ['head/fc']",
                                "head after spinalize: ['SpinalDense', 'Dense'] output (2, 10)"]),
    ("lora_fine_tuning.py", ["--epochs", "3"],
     ["task B before fine-tuning: accuracy", "LoRA rank 4: 3,378 of 16,050 parameters trained",
      "task B after LoRA fine-tuning: accuracy", "kernels unchanged: True",
      "saved to runs/lora/tuned.keras; reloaded outputs identical: True"]),
    ("import_weights.py", ["--features", "9", "--width", "3", "--depth", "4", "--splits", "3"],
     ["SpinalDense(10, width=3, depth=4, splits=3, batch_norm=True) on 9 features",
      "matches the reference: True", "read back in the PyTorch layout: True"]),
    ("serve_saved_model.py", ["--output-dir", "exp", "--onnx", "--int8"],
     ["int8 layers: ['head_spinal']", "saved_model  mnist/1", "served probabilities: (2, 10)",
      "spinalnet_keras imported by the client: False", "onnx         mnist.onnx",
      "onnxruntime probabilities: (2, 10)",
      "imported by the ONNX client: tensorflow False spinalnet_keras False"]),
    ("fast_fit.py", ["--examples", "3840", "--epochs", "2"],
     ["60 steps per epoch, 30 steps per execution", "training step traced 1 time(s)",
      "epoch 2: loss"]),
    ("train_and_compare.py", ["--epochs", "2", "--seeds", "0"],
     ["one spinal run: test mse", "| spinal 6 x 50 |"]),
    ("tune_spinal_head.py", ["--max-trials", "2", "--epochs", "1", "--examples", "256"],
     ["| trial | status | width | depth | splits | score | params | multiplications |",
      "| 0 | COMPLETED |", "| 1 | COMPLETED |", "best head: width",
      "saved runs/tune_example/best.keras (optimizer steps so far: 4)"]),
    ("distributed_training.py", ["--epochs", "2", "--patience", "1"],
     ["MirroredStrategy: 2 replica(s), global batch 64, 32 per replica",
      "test mse after 2 epochs:"]),
]


def test_every_example_is_tested():
    tested = {name for name, _, _ in EXAMPLES}
    assert tested == {f for f in os.listdir(os.path.join(REPO, "examples")) if f.endswith(".py")}


# Each example as the tests run it, on the suite's TensorFlow backend; and
# the quickstart, which is Keras alone, also on JAX (in the [test] extra):
# the file it saves there must load under TensorFlow.
RUNS = [(script, args, expected, {}) for script, args, expected in EXAMPLES] + [
    ("quickstart.py", ["--epochs", "2"],
     ["Keras backend: jax", "saved to runs/quickstart/spinal.keras; reloaded outputs identical: True"],
     {"KERAS_BACKEND": "jax"}),
    ("lora_fine_tuning.py", ["--epochs", "3", "--int8"],
     ["int8 layers: ['spinal_dense', 'spinal_dense_1']; task A with int8 kernels: test accuracy",
      "LoRA rank 4: 3,378 of 16,396 parameters trained",  # + the int8 kernels' scales
      "task B after LoRA fine-tuning: accuracy", "kernels unchanged: True",
      "saved to runs/lora/tuned.keras; reloaded outputs identical: True"], {}),
]


@pytest.mark.parametrize("script,args,expected,env", RUNS,
                         ids=["-".join([script, *env.values()] + ["int8"] * ("--int8" in args))
                              for script, args, _, env in RUNS])
def test_example_runs(script, args, expected, env, tmp_path):
    if script == "train_and_compare.py":
        args = args + ["--output-dir", str(tmp_path / "runs")]
    work, tmp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    tmp.mkdir()
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "examples", script), *args],
        capture_output=True, text=True, timeout=600, cwd=work,
        # ORT_DISABLE_TELEMETRY: onnxruntime 1.32 otherwise writes its telemetry
        # session file, $TMPDIR/.ses, when imported (the ONNX client, the
        # export's verification), which the check below would take for ours.
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TMPDIR": str(tmp),
             "ORT_DISABLE_TELEMETRY": "1", **env},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    for text in expected:
        assert text in proc.stdout, (text, proc.stdout[-3000:])
    # TensorFlow's warning that a function "triggered tf.function retracing"
    # (tracing is expensive, it says) has no place in what a user copies.
    assert "retracing" not in proc.stderr, proc.stderr[-3000:]
    # Nor any Python warning, ours or a library's that we set off.
    assert not re.findall(r"\w+Warning: .*", proc.stderr), re.findall(r".*\w+Warning: .*", proc.stderr)
    # What an example writes goes where it says, never left in the system's
    # temporary folder. (TensorFlow's AutoGraph removes the modules it writes
    # there at exit, but not Python's bytecode of them; that is not ours.)
    left = sorted(os.listdir(tmp))
    if left == ["__pycache__"]:
        compiled = os.listdir(tmp / "__pycache__")
        assert all(f.startswith("__autograph_generated_file") for f in compiled), compiled
        left = []
    assert left == []
    if script == "quickstart.py":
        assert keras_file_loads(work / "runs" / "quickstart" / "spinal.keras")
    if script == "lora_fine_tuning.py":  # the updates learnt the new task
        before, after = (float(re.search(rf"task B {when}: accuracy ([\d.]+)", proc.stdout)[1])
                         for when in ("before fine-tuning", "after LoRA fine-tuning"))
        assert after > before + 0.15, proc.stdout


# What an example would do with a bad number (train zero epochs in silence,
# or fail inside TensorFlow), it refuses before any work, naming the option.
BAD_ARGUMENTS = [
    ("quickstart.py", ["--epochs", "0"], "--epochs must be at least 1. Received: 0"),
    ("fast_fit.py", ["--examples", "0"], "--examples must be at least 1. Received: 0"),
    ("fast_fit.py", ["--batch-size", "-2"], "--batch-size must be at least 1. Received: -2"),
    ("fast_fit.py", ["--epochs", "0"], "--epochs must be at least 1. Received: 0"),
    ("backbone_transfer.py", ["--steps", "-1"], "--steps must be at least 0. Received: -1"),
    ("paper_networks.py", ["--train-steps", "-1"], "--train-steps must be at least 0. Received: -1"),
    ("tune_spinal_head.py", ["--epochs", "0"], "--epochs must be at least 1. Received: 0"),
    ("tune_spinal_head.py", ["--seed", "-1"], "--seed must be at least 0. Received: -1"),
    ("sparse_text_classification.py", ["--documents", "5"],
     "--documents must be at least 10. Received: 5"),
    ("train_and_compare.py", ["--seeds", "1", "1"], "--seeds must be distinct. Received: 1 1"),
    ("distributed_training.py", ["--patience", "-1"],
     "--patience must be at least 0. Received: -1"),
    ("distributed_training.py", ["--virtual-cpus", "0"],
     "--virtual-cpus must be at least 1. Received: 0"),
    ("distributed_training.py", ["--virtual-cpus", "3", "--strategy", "multi_worker"],
     "--virtual-cpus splits one process's CPU; with --strategy multi_worker each worker "
     "process is one replica. Received: --virtual-cpus 3"),
    ("lora_fine_tuning.py", ["--rank", "0"], "--rank must be at least 1. Received: 0"),
    ("import_weights.py", ["--width", "0"], "--width must be at least 1. Received: 0"),
    ("import_weights.py", ["--splits", "9", "--depth", "4"],  # the layer's own message
     "`splits` must be between 1 and `depth`"),
]


@pytest.mark.parametrize("script,args,message", BAD_ARGUMENTS,
                         ids=[f"{s}{a[0]}" for s, a, _ in BAD_ARGUMENTS])
def test_example_refuses_a_bad_argument(script, args, message, tmp_path, monkeypatch,
                                        capsys):
    _assert_refused(script, args, message, tmp_path, monkeypatch, capsys)


def _assert_refused(script, args, message, tmp_path, monkeypatch, capsys):
    # In this process, as `python examples/SCRIPT ...` runs it: a process of
    # its own would spend seconds importing TensorFlow to refuse (the
    # examples run as scripts in test_example_runs).
    path = os.path.join(REPO, "examples", script)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [path, *args])
    with pytest.raises(SystemExit) as stopped:
        runpy.run_path(path, run_name="__main__")
    printed = capsys.readouterr()
    assert stopped.value.code == 2, printed.out[-2000:] + printed.err[-2000:]
    assert f"{script}: error: {message}" in printed.err
    assert os.listdir(tmp_path) == []  # nothing written


def test_distributed_example_refuses_virtual_cpus_beside_gpus(tmp_path, monkeypatch, capsys):
    # Where GPUs are found the example gives each one a replica, and a
    # --virtual-cpus would go unused: refused (no GPU here, so the device
    # list is stood in for).
    import tensorflow as tf

    gpus = [tf.config.PhysicalDevice(f"/physical_device:GPU:{i}", "GPU") for i in range(2)]
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: gpus if kind == "GPU" else [])
    _assert_refused("distributed_training.py", ["--virtual-cpus", "4"],
                    "--virtual-cpus is for a machine without GPUs; this one has 2, one "
                    "replica each. Received: --virtual-cpus 4", tmp_path, monkeypatch, capsys)
