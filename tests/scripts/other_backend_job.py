"""Helper run in a subprocess by test_distribute.py with KERAS_BACKEND set to
a backend other than TensorFlow (chosen when Keras is imported): what the
package does with tf.distribute there. Writes a JSON report to argv[2]."""

import contextlib
import io
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
work, out = sys.argv[1], sys.argv[2]

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from spinalnet_keras import SpinalHyperModel  # noqa: E402
from spinalnet_keras import TrainConfig  # noqa: E402
from spinalnet_keras import get_strategy  # noqa: E402
from spinalnet_keras import make_tuner  # noqa: E402
from spinalnet_keras import multi_worker_fit  # noqa: E402
from spinalnet_keras import train  # noqa: E402
from spinalnet_keras.cli import main  # noqa: E402

report = {"backend": keras.backend.backend()}
strategy = tf.distribute.get_strategy()
data = tf.data.Dataset.from_tensor_slices(([[0.0] * 4] * 8, [0.0] * 8)).batch(4)
calls = {
    "get_strategy": lambda: get_strategy("mirrored"),
    "train": lambda: train(TrainConfig(model="regression", dataset="table1/sum",
                                       output_dir=os.path.join(work, "refused")),
                           strategy=strategy),
    "make_tuner": lambda: make_tuner(
        SpinalHyperModel("regression", (8,), 1, loss="mse", metrics=()),
        objective="val_loss", directory=os.path.join(work, "tune"),
        distribution_strategy=strategy),
    "multi_worker_fit": lambda: multi_worker_fit(
        lambda: None, data, 1, 4, os.path.join(work, "ckpt"), strategy=strategy),
}
for name, call in calls.items():
    try:
        call()
        report[name] = None
    except RuntimeError as e:
        report[name] = str(e)
report["refused_run_folder"] = os.path.exists(os.path.join(work, "refused"))

common = ["train", "--model", "regression", "--dataset", "table1/sum", "--epochs", "1",
          "--train-examples", "256", "--test-examples", "128", "--verbose", "0"]
for name, extra in [("cli_mirrored", ["--strategy", "mirrored"]), ("cli_auto", [])]:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main(common + extra + ["--output-dir", os.path.join(work, name)])
    report[name] = {"code": code, "stderr": stderr.getvalue(),
                    "result": os.path.isfile(os.path.join(work, name, "result.json"))}
with open(out, "w") as f:
    json.dump(report, f)
