"""The public API: everything users need is importable from `spinalnet_keras`."""

import doctest
import glob
import importlib
import os
import re
import subprocess
import sys

import pytest

import spinalnet_keras
from conftest import REPO


def test_every_public_name_resolves_to_the_package_object():
    from spinalnet_keras import training, tuning, distribute, data

    for name in spinalnet_keras.__all__:
        value = getattr(spinalnet_keras, name)
        assert getattr(value, "__module__", "spinalnet_keras").startswith("spinalnet_keras"), name
    assert spinalnet_keras.train is training.train
    assert spinalnet_keras.TrainConfig is training.TrainConfig
    assert spinalnet_keras.SpinalHyperModel is tuning.SpinalHyperModel
    assert spinalnet_keras.get_strategy is distribute.get_strategy
    assert spinalnet_keras.load_task is data.load_task
    assert set(spinalnet_keras.__all__) <= set(dir(spinalnet_keras))
    assert len(spinalnet_keras.__all__) == len(set(spinalnet_keras.__all__))


def _documented_modules():
    package = os.path.dirname(spinalnet_keras.__file__)
    return sorted(
        f"spinalnet_keras.{name[:-3]}" for name in os.listdir(package)
        if name.endswith(".py") and ">>> " in open(os.path.join(package, name)).read()
    )


def test_the_main_entry_points_have_examples():
    documented = {m.rsplit(".", 1)[1] for m in _documented_modules()}
    assert {"spinal_dense", "heads", "paper_models", "backbones", "spinalize", "costs",
            "data", "training", "tuning", "export"} <= documented


@pytest.mark.parametrize("module", _documented_modules())
def test_docstring_examples_run(module, tmp_path, monkeypatch):
    # The examples write runs/ and exported/ where they are run.
    monkeypatch.chdir(tmp_path)
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'SpinalConv'"):
        spinalnet_keras.SpinalConv  # noqa: B018
    assert not hasattr(spinalnet_keras, "SpinalConv")


def test_layer_users_do_not_load_the_training_stack():
    # A fresh interpreter: this test process has imported everything already.
    heavy = ["keras_tuner", "tensorflow_datasets", "spinalnet_keras.training",
             "spinalnet_keras.tuning", "spinalnet_keras.distribute", "spinalnet_keras.data"]
    code = (
        "import sys, spinalnet_keras\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
        "from spinalnet_keras import SpinalHyperModel\n"
        "print('keras_tuner' in sys.modules, SpinalHyperModel.__module__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-2:] == ["[]", "True spinalnet_keras.tuning"]


def test_examples_and_readme_import_only_the_package():
    files = glob.glob(os.path.join(REPO, "examples", "*.py")) + [os.path.join(REPO, "README.md")]
    deep = {}
    for path in files:
        with open(path) as f:
            found = re.findall(r"(?:from|import) spinalnet_keras\.\w+", f.read())
        if found:
            deep[os.path.basename(path)] = found
    assert deep == {}


@pytest.mark.parametrize("enabled", [True, False])
def test_import_leaves_the_garbage_collector_as_it_found_it(enabled):
    # The package pauses CPython's cyclic collector while it imports Keras
    # and TensorFlow; the importer's setting must come back either way.
    code = (
        "import gc, sys\n"
        "frozen_before = gc.get_freeze_count()\n"
        f"{'gc.enable()' if enabled else 'gc.disable()'}\n"
        "during = []\n"
        "def seen(phase, info):\n"
        "    importing = 'keras' in sys.modules and 'spinalnet_keras.spinalize' not in sys.modules\n"
        "    if phase == 'start' and importing:\n"
        "        during.append(info['generation'])\n"
        "gc.callbacks.append(seen)\n"
        "import spinalnet_keras\n"
        "print(gc.isenabled(), len(during), gc.get_freeze_count() - frozen_before,\n"
        "      'keras' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    is_on, collections, frozen, keras_loaded = proc.stdout.split()
    assert is_on == str(enabled) and keras_loaded == "True"
    # No collection ran from the start of Keras's import to the package's last module.
    assert collections == "0"
    # A library import freezes nothing; only the console command does. (Python
    # 3.12 starts with objects frozen already, hence the difference.)
    assert frozen == "0"


def test_version_floors_are_the_versions_ci_tests_as_lowest():
    # setup.cfg's floors are a claim; .ci/run-lowest checks it by running
    # the suite on exactly these versions, so the two must not drift apart.
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO, "setup.cfg"))
    sections = {"install_requires": cfg["options"]["install_requires"]}
    sections.update(cfg["options.extras_require"])
    with open(os.path.join(REPO, ".ci", "lowest-versions.txt")) as f:
        pins = dict(re.findall(r"^([\w.-]+)==([\w.]+)$", f.read(), re.M))
    assert {"keras", "tensorflow", "numpy", "onnxruntime"} <= set(pins)
    floored = set()
    for section, text in sections.items():
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, _, floor = line.partition(">=")
            if section == "test" and name in ("pytest", "pytest-timeout", "pytest-xdist"):
                continue  # the test runner only
            # A requirement without a floor would claim every version ever
            # released; one the lowest run does not pin would be untested.
            assert pins.get(name) == floor, (section, line)
            floored.add(name)
    assert floored == set(pins)
