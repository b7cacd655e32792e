"""SpinalDense on sparse inputs: a bag-of-words text classifier.

Text turned into word counts is mostly zeros, so Keras can keep it as a
`tf.SparseTensor` (`TextVectorization(output_mode="count", sparse=True)`) and the model takes
it through `keras.Input(..., sparse=True)`, as `Dense` does. SpinalDense
makes a sparse input dense before cutting it into parts, so it gives exactly
the outputs of the same features given dense.

The corpus is generated here (no download): three topics, each document
four words of its topic among eight shared filler words. It trains a spinal
and a dense classifier on the same sparse features, prints their accuracy
and costs, checks that sparse and dense features predict alike, and saves
and reloads the spinal model.

    python examples/sparse_text_classification.py        # a few seconds
    python examples/sparse_text_classification.py --epochs 3 --documents 600

Sparse features from `TextVectorization` need Keras's TensorFlow backend.
"""

import argparse
import os
import sys

import keras
import numpy as np

from spinalnet_keras import SpinalDense
from spinalnet_keras import cost_report

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=10)
parser.add_argument("--documents", type=int, default=3000,
                    help="documents generated; 70%% train, 30%% test")
parser.add_argument("--model-file", default="runs/sparse_text/spinal.keras",
                    help="where the spinal model is saved (a .keras file)")
args = parser.parse_args()
if args.epochs < 1:
    parser.error(f"--epochs must be at least 1. Received: {args.epochs}")
if args.documents < 10:  # so that both the train and the test part hold some
    parser.error(f"--documents must be at least 10. Received: {args.documents}")
if keras.backend.backend() != "tensorflow":
    sys.exit("TextVectorization(sparse=True) needs KERAS_BACKEND=tensorflow. "
             f"Received: {keras.backend.backend()!r}")

import tensorflow as tf  # noqa: E402  (after the backend check: tf.data feeds the sparse batches)

TOPICS = ["sport", "weather", "cooking"]
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
topic_words = [[f"{topic}{i}" for i in range(40)] for topic in TOPICS]
filler = [f"word{i}" for i in range(200)]


def document(label):
    words = list(rng.choice(topic_words[label], 4)) + list(rng.choice(filler, 8))
    rng.shuffle(words)
    return " ".join(words)


labels = rng.integers(0, len(TOPICS), args.documents)
texts = np.array([document(label) for label in labels])
cut = int(0.7 * args.documents)

vectorizer = keras.layers.TextVectorization(output_mode="count", sparse=True)
vectorizer.adapt(texts[:cut])
vocabulary_size = vectorizer.vocabulary_size()


def features(start, stop, shuffle=False):
    ds = tf.data.Dataset.from_tensor_slices((texts[start:stop], labels[start:stop]))
    if shuffle:
        ds = ds.shuffle(len(texts), seed=0)
    return ds.batch(32).map(lambda text, label: (vectorizer(text), label))


train, test = features(0, cut, shuffle=True), features(cut, None)
batch, _ = next(iter(train))
print(f"features: {type(batch).__name__} of shape {tuple(batch.shape)}, "
      f"{float(tf.size(batch.values)) / np.prod(batch.shape):.1%} non-zero")

spinal = keras.Sequential([
    keras.Input((vocabulary_size,), sparse=True),
    SpinalDense(len(TOPICS), width=8, depth=4, output_activation="softmax"),
])
dense = keras.Sequential([
    keras.Input((vocabulary_size,), sparse=True),
    keras.layers.Dense(32, activation="relu"),
    keras.layers.Dense(len(TOPICS), activation="softmax"),
])
for name, model in [("dense", dense), ("spinal", spinal)]:
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(train, epochs=args.epochs, shuffle=False, verbose=0)  # tf.data shuffles
    _, acc = model.evaluate(test, verbose=0)
    report = cost_report(model)
    print(f"{name:6s} test accuracy {acc:.3f}  params {report.trainable_params:7,}  "
          f"multiplications {report.multiplications:7,}")

# All test documents in one batch: predict's step is traced for the shape
# of its sparse batch, and batches of another number of non-zero counts
# would trace it again (harmless, but TensorFlow warns of "retracing").
x_test = vectorizer(texts[cut:])
from_sparse = spinal.predict_on_batch(x_test)
# The same features, dense, through a copy of the model that takes dense inputs.
dense_input = keras.Sequential([keras.Input((vocabulary_size,)), spinal.layers[0]])
from_dense = dense_input.predict_on_batch(tf.sparse.to_dense(x_test))
print(f"sparse and dense features predict alike: {np.allclose(from_sparse, from_dense, atol=1e-6)}")

path = args.model_file
os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
spinal.save(path)
reloaded = keras.saving.load_model(path)  # safe_mode=True, no custom_objects
same = np.array_equal(from_sparse, reloaded.predict_on_batch(x_test))
print(f"saved to {path}; reloaded outputs identical: {same}")
