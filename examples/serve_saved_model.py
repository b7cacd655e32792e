"""Export a model and send it a request from plain TensorFlow.

Exports (SavedModel in TensorFlow Serving's NAME/1/ layout, .keras, report),
then, in a separate Python process that only imports TensorFlow, loads the
SavedModel and calls its `serving_default` signature the way a server does.
Also prints the equivalent TensorFlow Serving REST request. With `--onnx` it
also exports ONNX (`pip install 'spinalnet-keras[onnx]'`) and runs that file
in a process that imports onnxruntime alone. With `--int8` it first stores
the Dense and SpinalDense kernels as int8 (`quantize_int8(model)`).

    python examples/serve_saved_model.py                          # paper CNN, random weights
    python examples/serve_saved_model.py --model-file runs/train/final.keras --overwrite
    python examples/serve_saved_model.py --onnx --overwrite
    python examples/serve_saved_model.py --int8 --overwrite
"""

import argparse
import json
import subprocess
import sys
import textwrap

import numpy as np

from spinalnet_keras import export_model
from spinalnet_keras import format_report
from spinalnet_keras import load_model_file
from spinalnet_keras import paper_model
from spinalnet_keras import quantize_int8

parser = argparse.ArgumentParser()
parser.add_argument("--model-file", help="a .keras file (default: a fresh mnist_cnn)")
parser.add_argument("--output-dir", default="exports/mnist")
parser.add_argument("--overwrite", action="store_true")
parser.add_argument("--onnx", action="store_true", help="also export and serve ONNX")
parser.add_argument("--int8", action="store_true", help="store the kernels as int8 first")
args = parser.parse_args()

model = load_model_file(args.model_file) if args.model_file else paper_model("mnist_cnn")
if args.int8:
    # As model.quantize("int8"), also for a SpinalDense with dropout or
    # batch_norm, which Keras's leaves out (it has sub-layers).
    print("int8 layers:", quantize_int8(model))
formats = ["saved_model", "keras"] + (["onnx"] if args.onnx else [])
report = export_model(model, args.output_dir, formats=formats, name="mnist",
                      overwrite=args.overwrite)
print(format_report(report))

# The client: plain TensorFlow, no spinalnet_keras.
client = textwrap.dedent("""
    import sys, numpy as np, tensorflow as tf
    served = tf.saved_model.load(sys.argv[1])
    infer = served.signatures["serving_default"]
    batch = np.zeros((2, 28, 28, 1), "float32")
    probs = infer(inputs=tf.constant(batch))["output_0"].numpy()
    print("served probabilities:", probs.shape, "argmax", probs.argmax(1).tolist())
    print("spinalnet_keras imported by the client:", "spinalnet_keras" in sys.modules)
""")
saved_model = f"{args.output_dir}/mnist/1"
subprocess.run([sys.executable, "-c", client, saved_model], check=True)

if args.onnx:
    onnx_client = textwrap.dedent("""
        import sys, numpy as np, onnxruntime
        session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
        (feed,) = session.get_inputs()
        probs = session.run(None, {feed.name: np.zeros((2, 28, 28, 1), "float32")})[0]
        print("onnxruntime probabilities:", probs.shape, "argmax", probs.argmax(1).tolist())
        print("imported by the ONNX client: tensorflow", "tensorflow" in sys.modules,
              "spinalnet_keras", "spinalnet_keras" in sys.modules)
    """)
    onnx_file = f"{args.output_dir}/{report['formats']['onnx']['path']}"
    subprocess.run([sys.executable, "-c", onnx_client, onnx_file], check=True)

request = {"signature_name": "serving_default",
           "instances": np.zeros((1, 28, 28, 1)).tolist()}
print("\nTensorFlow Serving: tensorflow_model_server --rest_api_port=8501 "
      f"--model_name=mnist --model_base_path=$PWD/{args.output_dir}/mnist")
print("curl -d @request.json http://localhost:8501/v1/models/mnist:predict  # request.json:",
      json.dumps(request)[:80] + " ...")
