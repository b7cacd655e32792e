"""The fixed costs around a short training run, each measured as an A/B pair.

Every experiment runs two variants, A (without a measure) and B (with it),
each in a fresh Python process, alternating A, B, A, B, ... and reports the
median of each and the median of the per-pair ratios B / A with their
interquartile range. The figures are those quoted in benchmarks/RESULTS.md
and in the code that made these costs smaller.

    python benchmarks/overhead_bench.py                  # every experiment, 7 pairs
    python benchmarks/overhead_bench.py --only head_trace pipeline --pairs 9
    # the same measurement on another checkout of the package, e.g. the one
    # before a change: git worktree add /tmp/before <commit>
    python benchmarks/overhead_bench.py --only head_trace --pythonpath /tmp/before
    # one variant of an experiment on two checkouts in the same run: A the
    # package found at --versus, B this one (or --pythonpath's)
    python benchmarks/overhead_bench.py --only multi_worker_steps --versus /tmp/before --variant A

Experiments:
  import         import the package's train path; B without scikit-learn
                 (Keras imports it at start-up whenever it is installed)
  first_call     fit's first compiled call (67 steps of the MNIST CNN);
                 B builds the optimizer and metric variables first
                 (training.build_training_state)
  teardown       a whole `spinalnet-keras train` process (the MNIST CNN, one
                 epoch of 6,400 examples); A ends through main() and the
                 interpreter's teardown, B through the console entry point run()
  steps          one MNIST epoch (fit time) at 14 and at 67 steps per
                 execution (the divisors of 938 nearest to 32)
  multi_worker_steps  the second MNIST epoch in multi_worker_fit (the
                 package's loop for MultiWorkerMirroredStrategy) on a cluster
                 of one worker: A one step per compiled call, B 67
  multi_worker_callbacks  as multi_worker_steps at one step per call;
                 A without callbacks, B with Keras's TensorBoard callback
                 (as `train` gives the chief), whose batch hooks make every
                 call end with the workers' check for a callback's stop
  multi_worker_xla  as multi_worker_steps at 67 steps per call; A without
                 XLA, B with compile's jit_compile=True
  pipeline       CPU seconds to draw the second MNIST epoch of batches (the
                 first, with the pipeline's start-up, under "other"): A a
                 per-example pipeline with a 10,000-image shuffle buffer (the
                 design of version 0.1), B the package's (in memory, one
                 gather per batch)
  autograph      load_task for MNIST and the first batch of each split;
                 A lets tf.data run the pipeline's functions through AutoGraph,
                 B skips it (the package's default)
  collector_import  import of the train path; A with CPython's cyclic
                 collector running throughout, B paused while the package
                 imports Keras and TensorFlow (the package's default)
  collector      a whole `spinalnet-keras train` process (as in teardown);
                 A with the collector as CPython runs it, B with the pause at
                 import and the console command's gc.freeze (the default)
  open_split     load_task for MNIST, whose decoded splits are on disk; A
                 opens the tfds splits anyway (as before), B only where a
                 decoded copy is missing (the package's default)
  head_trace     a 320-feature model with the MNIST spinal head (6 x 8)
                 against the dense head (50): graph ops in the traced
                 training step, trainable variables, and the first compiled
                 call (67 steps); B is the spinal head, A the dense one
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

from summary import spread

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.join(HERE, "..", "..", "shared", "data")

_PRELUDE = """
import json, os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
DATA_DIR = sys.argv[1]
def report(**values):
    print("RESULT " + json.dumps(values))
"""

_IMPORT = """
{block}
t = time.perf_counter()
import spinalnet_keras.cli, spinalnet_keras.training
seconds = time.perf_counter() - t
import gc
report(seconds=seconds, objects=len(gc.get_objects()))  # what the collector tracks
"""

_MNIST_MODEL = """
from spinalnet_keras.training import (TrainConfig, build_model, build_training_state,
                                      compile_model, load_config_task)
config = TrainConfig(model="mnist_cnn", head="spinal", width=8, depth=6, dataset="mnist",
                     data_dir=DATA_DIR, epochs=1, verbose=0, steps_per_execution={steps})
task = load_config_task(config, initial_epoch=0)
model = compile_model(build_model(config, task), config, task, {steps})
"""

_FIRST_CALL = _MNIST_MODEL + """
if {build}:
    build_training_state(model, task.train)
t = time.perf_counter()
model.fit(task.train, steps_per_epoch=67, epochs=1, verbose=0)
report(seconds=time.perf_counter() - t)
"""

_TEARDOWN = """
import subprocess
cmd = [sys.executable, "-c", {code!r}, "train", "--model", "mnist_cnn", "--dataset", "mnist",
       "--data-dir", DATA_DIR, "--epochs", "1", "--train-examples", "6400",
       "--test-examples", "1000", "--verbose", "0",
       "--output-dir", os.path.join(DATA_DIR, "..", "teardown-" + str(time.time_ns()))]
t = time.perf_counter()
subprocess.run(cmd, check=True, capture_output=True)
report(seconds=time.perf_counter() - t)
"""
_EXIT_MAIN = "import sys; from spinalnet_keras.cli import main; sys.argv[0] = 'x'; sys.exit(main(sys.argv[1:]))"
_EXIT_RUN = "import sys; from spinalnet_keras.cli import run; sys.argv[0] = 'x'; run()"

# A: the package's gc.disable (import) and gc.freeze (console command) made
# no-ops, so CPython's collector runs as it would without them.
_STOCK_COLLECTOR = "import gc; gc.disable = gc.freeze = lambda: None"

_STEPS = _MNIST_MODEL + """
build_training_state(model, task.train)
t = time.perf_counter()
model.fit(task.train, steps_per_epoch=task.steps_per_epoch, epochs=1, verbose=0)
report(seconds=time.perf_counter() - t)
"""

_MULTI_WORKER_STEPS = """
import socket
import tempfile
# A cluster of this one worker: MultiWorkerMirroredStrategy, made before
# any tensor, with its collectives, and the package's own loop.
with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
os.environ["TF_CONFIG"] = json.dumps({{"cluster": {{"worker": ["127.0.0.1:%d" % port]}},
                                      "task": {{"type": "worker", "index": 0}}}})
from spinalnet_keras.distribute import get_strategy, multi_worker_fit
strategy = get_strategy("multi_worker")
from spinalnet_keras.training import TrainConfig, build_model, compile_model, load_config_task
config = TrainConfig(model="mnist_cnn", head="spinal", width=8, depth=6, dataset="mnist",
                     data_dir=DATA_DIR, epochs=2, verbose=0, steps_per_execution={steps},
                     jit_compile={jit!r})
task = load_config_task(config, initial_epoch=0)
# Each epoch ends with its checkpoint (timed so, the loop of any version).
import tensorflow as tf
ends, save = [], tf.train.CheckpointManager.save
def timed_save(self, *args, **kwargs):
    ends.append(time.perf_counter())
    return save(self, *args, **kwargs)
tf.train.CheckpointManager.save = timed_save
import keras
multi_worker_fit(lambda: compile_model(build_model(config, task), config, task, {steps}),
                 task.train, 2, 64, tempfile.mkdtemp(dir=DATA_DIR), strategy=strategy,
                 steps_per_epoch=task.steps_per_epoch, verbose=0,
                 **({{"callbacks": [keras.callbacks.TensorBoard(tempfile.mkdtemp(dir=DATA_DIR))]}}
                    if {tensorboard} else {{}}))
report(seconds=ends[1] - ends[0])
"""


def _multi_worker_steps(steps, jit="off", tensorboard=False):
    return _MULTI_WORKER_STEPS.format(steps=steps, jit=jit, tensorboard=tensorboard)


_PIPELINE = """
import resource
import tensorflow as tf
from spinalnet_keras.data import load_task
task = load_task("mnist", batch_size=64, seed=0, data_dir=DATA_DIR, epochs=2)
if {per_example}:
    # Version 0.1's design: the decoded training split in a tf.data cache
    # on disk, a 10,000-image shuffle buffer, batches, float conversion.
    import tensorflow_datasets as tfds
    builder = tfds.builder("mnist", data_dir=DATA_DIR)
    cached = builder.as_dataset(split="train", as_supervised=True).cache(
        os.path.join(DATA_DIR, "per-example-cache"))
    for _ in cached:  # write the cache, untimed
        pass
    def to_float(x, y):
        return (tf.cast(x, tf.float32) / 255.0 - 0.1307) / 0.3081, tf.cast(y, tf.int32)
    def epoch(seed):
        return cached.shuffle(10_000, seed=seed).batch(64)
    ds = (epoch(0).concatenate(epoch(1))
          .map(to_float, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE))
else:
    ds = task.train
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
it, spent = iter(ds), []
for _ in range(2):
    c, t = cpu(), time.perf_counter()
    for _ in range(task.steps_per_epoch):
        next(it)
    spent.append((cpu() - c, time.perf_counter() - t))
report(seconds=spent[1][0], wall=spent[1][1], first_epoch_cpu=spent[0][0])
"""

_HEAD_TRACE = """
import numpy as np
import tensorflow as tf
import keras
from spinalnet_keras import SpinalDense
inputs = keras.Input((320,))
if {spinal}:
    x = SpinalDense(10, width=8, depth=6)(inputs)
else:
    x = keras.layers.Dense(10)(keras.layers.Dense(50, activation="relu")(inputs))
model = keras.Model(inputs, keras.layers.Activation("softmax")(x))
model.compile(keras.optimizers.SGD(0.01, momentum=0.5), "sparse_categorical_crossentropy",
              metrics=["accuracy"], steps_per_execution=67)
rng = np.random.default_rng(0)
ds = tf.data.Dataset.from_tensor_slices(
    (rng.random((64 * 67, 320), dtype="float32"), rng.integers(0, 10, 64 * 67))).batch(64)
model._symbolic_build(data_batch=ds.element_spec)
ops = len(tf.function(model.train_step).get_concrete_function(ds.element_spec).graph
          .get_operations())
model.make_train_function()
it = iter(ds)
t = time.perf_counter()
model.train_function(it)
report(seconds=time.perf_counter() - t, ops=ops, variables=len(model.trainable_variables))
"""

_AUTOGRAPH = """
import spinalnet_keras.data as data
if {convert}:
    data._plain = lambda fn: fn  # tf.data converts the functions with AutoGraph
t = time.perf_counter()
task = data.load_task("mnist", batch_size=64, seed=0, data_dir=DATA_DIR, epochs=1)
next(iter(task.train)); next(iter(task.test))
report(seconds=time.perf_counter() - t)
"""

_OPEN_SPLIT = """
import spinalnet_keras.data as data
if {open_splits}:
    decode = data.decode_split
    data.decode_split = lambda ds, *args, **kwargs: decode(data._opened(ds), *args, **kwargs)
t = time.perf_counter()
data.load_task("mnist", batch_size=64, seed=0, data_dir=DATA_DIR, epochs=1)
report(seconds=time.perf_counter() - t)
"""

# name: (what is measured, (label A, snippet A), (label B, snippet B))
EXPERIMENTS = {
    "import": (
        "import of the train path, s",
        ("with scikit-learn installed", _IMPORT.format(block="")),
        ("scikit-learn absent", _IMPORT.format(block="sys.modules['sklearn'] = None")),
    ),
    "first_call": (
        "fit of 67 MNIST steps (first compiled call), s",
        ("variables built in the trace", _FIRST_CALL.format(steps=67, build=False)),
        ("build_training_state first", _FIRST_CALL.format(steps=67, build=True)),
    ),
    "teardown": (
        "whole `train` process (MNIST CNN, 6,400 examples), s",
        ("main() and interpreter teardown", _TEARDOWN.format(code=_EXIT_MAIN)),
        ("run(): flush, atexit, os._exit", _TEARDOWN.format(code=_EXIT_RUN)),
    ),
    "steps": (
        "fit of one MNIST epoch (938 steps), s",
        ("14 steps per execution", _STEPS.format(steps=14)),
        ("67 steps per execution", _STEPS.format(steps=67)),
    ),
    "multi_worker_steps": (
        "second MNIST epoch (938 steps, with the first's checkpoint) in "
        "multi_worker_fit, one worker, s",
        ("1 step per execution", _multi_worker_steps(steps=1)),
        ("67 steps per execution", _multi_worker_steps(steps=67)),
    ),
    "multi_worker_callbacks": (
        "second MNIST epoch (938 steps, 1 per execution) in multi_worker_fit, "
        "one worker, s",
        ("no callbacks", _multi_worker_steps(steps=1)),
        ("Keras's TensorBoard, as train's chief", _multi_worker_steps(steps=1, tensorboard=True)),
    ),
    "multi_worker_xla": (
        "second MNIST epoch (938 steps, 67 per execution) in multi_worker_fit, "
        "one worker, s",
        ("without XLA", _multi_worker_steps(steps=67)),
        ("jit_compile on", _multi_worker_steps(steps=67, jit="on")),
    ),
    "pipeline": (
        "CPU seconds to draw an MNIST epoch of batches (the second)",
        ("per example, shuffle buffer 10,000", _PIPELINE.format(per_example=True)),
        ("in memory, one gather per batch", _PIPELINE.format(per_example=False)),
    ),
    "autograph": (
        "MNIST pipelines built and first batches drawn, s",
        ("functions through AutoGraph", _AUTOGRAPH.format(convert=True)),
        ("AutoGraph skipped", _AUTOGRAPH.format(convert=False)),
    ),
    "collector_import": (
        "import of the train path, s",
        ("collector running", _IMPORT.format(block=_STOCK_COLLECTOR)),
        ("paused for the import", _IMPORT.format(block="")),
    ),
    "collector": (
        "whole `train` process (MNIST CNN, 6,400 examples), s",
        ("collector as CPython runs it",
         _TEARDOWN.format(code=_STOCK_COLLECTOR + "; " + _EXIT_RUN)),
        ("paused at import, frozen by run()", _TEARDOWN.format(code=_EXIT_RUN)),
    ),
    "open_split": (
        "load_task for MNIST (decoded splits on disk), s",
        ("tfds splits opened", _OPEN_SPLIT.format(open_splits=True)),
        ("opened only if not decoded", _OPEN_SPLIT.format(open_splits=False)),
    ),
    "head_trace": (
        "first compiled call (67 steps), 320 features -> head, s",
        ("dense head 320-50-10", _HEAD_TRACE.format(spinal=False)),
        ("spinal head 6 x 8", _HEAD_TRACE.format(spinal=True)),
    ),
}


def run_snippet(code, data_dir, pythonpath):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([pythonpath, env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", _PRELUDE + code, data_dir],
                          capture_output=True, text=True, env=env, cwd=data_dir)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"snippet failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(EXPERIMENTS))
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--manual-dir", default=DEFAULT_DATA,
                        help="folder holding mnist/ with the four IDX files")
    parser.add_argument("--pythonpath", help="measure the package found here instead")
    parser.add_argument("--versus", help="compare checkouts instead of variants: A runs the "
                                         "package found here, B this one (or --pythonpath's)")
    parser.add_argument("--variant", choices=["A", "B"],
                        help="with --versus: the experiment's variant both run (default B)")
    args = parser.parse_args()
    if args.pairs < 2:
        parser.error(f"--pairs must be at least 2. Received: {args.pairs}")
    if args.variant and not args.versus:
        parser.error(f"--variant picks what --versus compares; give --versus too. "
                     f"Received: --variant {args.variant}")
    if args.versus and not os.path.isdir(os.path.join(args.versus, "spinalnet_keras")):
        parser.error(f"--versus must be a checkout holding spinalnet_keras/. "
                     f"Received: --versus {args.versus}")
    work = tempfile.mkdtemp(prefix="overhead_bench_")
    try:
        data_dir = os.path.join(work, "tfds")
        os.makedirs(data_dir)
        chosen = args.only or list(EXPERIMENTS)
        if any("DATA_DIR" in code for name in chosen for _, code in EXPERIMENTS[name][1:]):
            # The tfds copy and the decoded split, once and untimed (15 s),
            # where an experiment reads MNIST.
            manual = os.path.abspath(args.manual_dir)
            run_snippet("from spinalnet_keras.data import load_task\n"
                        f"load_task('mnist', data_dir=DATA_DIR, manual_dir={manual!r})\n"
                        "load_task('mnist', data_dir=DATA_DIR, train_examples=6400, "
                        "test_examples=1000)\n"
                        "report(ok=1)", data_dir, args.pythonpath)
        import importlib.util

        print(f"{args.pairs} alternating pairs of fresh processes, {os.cpu_count()} cores; "
              f"scikit-learn {'installed' if importlib.util.find_spec('sklearn') else 'not installed'}"
              f"{'; package from ' + args.pythonpath if args.pythonpath else ''}"
              f"{'; A: the package from ' + args.versus if args.versus else ''}\n")
        print("| experiment | measure | A | B | A median | B median | B / A (IQR) | other |")
        print("|---|---|---|---|---:|---:|---:|---|")
        for name in chosen:
            measure, (label_a, code_a), (label_b, code_b) = EXPERIMENTS[name]
            path_a = args.pythonpath
            if args.versus:  # one variant, two checkouts
                label, code = (label_a, code_a) if args.variant == "A" else (label_b, code_b)
                measure = f"{measure}, {label}"
                label_a, code_a, path_a = "--versus checkout", code, args.versus
                label_b, code_b = "this checkout", code
            a, b = [], []
            for _ in range(args.pairs):
                a.append(run_snippet(code_a, data_dir, path_a))
                b.append(run_snippet(code_b, data_dir, args.pythonpath))
            sa = [r["seconds"] for r in a]
            sb = [r["seconds"] for r in b]
            other = "; ".join(
                f"{key} {statistics.median(r[key] for r in a):g} / "
                f"{statistics.median(r[key] for r in b):g}"
                for key in a[0] if key != "seconds"
            )
            print(f"| {name} | {measure} | {label_a} | {label_b} | {statistics.median(sa):.3f} "
                  f"| {statistics.median(sb):.3f} | {spread([y / x for x, y in zip(sa, sb)])} "
                  f"| {other} |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
