import json
import os
import subprocess
import sys

import numpy as np

from tinymoe.backend import keras, tf
from tinymoe.cli import main
from tinymoe.export import check_tflm, to_tflite


def test_importing_tinymoe_after_keras3_tensorflow_fails_with_advice():
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    code = "import tensorflow as tf; tf.keras.layers.Dense; import tinymoe"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode != 0
    assert "Set the environment variable TF_USE_LEGACY_KERAS=1" in result.stderr


def test_tinymoe_selects_tf_keras_behind_tf_keras_attribute():
    assert os.environ["TF_USE_LEGACY_KERAS"] == "1"
    assert tf.keras.layers.Dense is keras.layers.Dense


def test_check_tflm_names_an_op_tflm_lacks():
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Activation(tf.nn.gelu)(keras.layers.Conv2D(4, 1)(inputs))
    images = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3)).astype(np.float32)
    check = check_tflm(to_tflite(keras.Model(inputs, outputs), images, verify=False))
    assert not check.ok
    assert check.missing_ops == ("GELU",)
    assert "GELU" in check.message


def test_check_tflm_survives_a_crashing_interpreter():
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 1)(inputs))
    images = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3)).astype(np.float32)
    tflite_bytes = to_tflite(model, images)
    assert check_tflm(tflite_bytes).ok
    small = check_tflm(tflite_bytes, arena_size=64)  # far too small an arena
    assert not small.ok and small.message


def test_cli_models_prints_json_rows(capsys):
    status = main(["models", "--model", "mobilevit_v2_050", "--input-size", "64",
                   "--num-classes", "3", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert status == 0
    assert rows[0]["model"] == "mobilevit_v2_050" and rows[0]["runs_in_tflm"] == "yes"
    assert rows[0]["params"] > 0 and rows[0]["macs"] > 0 and rows[0]["int8_bytes"] > 0


def test_cli_reports_bad_input_without_a_traceback(capsys):
    assert main(["models", "--model", "mobilevit_v2_999"]) == 2
    assert "Unknown model 'mobilevit_v2_999'" in capsys.readouterr().err
    assert main(["models", "--input-size", "100"]) == 2
    assert "Input height 100 cannot be taken" in capsys.readouterr().err


def test_every_public_function_and_class_has_a_docstring_with_an_example():
    import ast
    import pathlib

    root = pathlib.Path(__file__).resolve().parent.parent / "tinymoe"
    missing = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "tflm_child.py":  # a script run in a child process, not an API
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                if "Example" not in (ast.get_docstring(node) or ""):
                    missing.append(f"{path.relative_to(root.parent)}:{node.name}")
    assert not missing, missing


def test_cli_help_of_every_command_names_its_options(capsys):
    import pytest as _pytest

    for command in ("models", "train", "upcycle", "analyze", "optimize", "report", "export",
                    "evaluate", "predict", "demo"):
        with _pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: tinymoe " + command in capsys.readouterr().out


def test_commands_on_a_saved_model_load_images_at_its_size(tmp_path, monkeypatch):
    """upcycle, analyze and optimize on a .keras file take the side it was built for when
    --input-size is not given (it was 32, whatever the model took)."""
    import tinymoe.data

    sizes = []

    def record(source, size):
        sizes.append(size)
        raise ValueError("recorded")  # the command stops here and reports it

    monkeypatch.setattr(tinymoe.data, "load_dataset", record)
    model = str(tmp_path / "m64.keras")
    inputs = keras.Input((64, 64, 3))
    keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs))).save(model)
    out = str(tmp_path / "out")
    for argv in (["upcycle", model, "--out", f"{out}.keras"], ["analyze", model, "--out", out],
                 ["optimize", model, "--out", out]):
        assert main(argv) == 2, argv
    assert sizes == [64, 64, 64]


def test_every_command_refuses_an_input_size_before_the_data_loads(tmp_path, monkeypatch,
                                                                   capsys):
    """`--input-size 100` was refused only once the whole data set was decoded (minutes for
    cub100 at 128x128; `tinymoe models` built and converted every CNN first)."""
    import tinymoe.data
    import tinymoe.zoo

    def not_yet(*args, **kwargs):
        raise AssertionError("the data was loaded (or a model built) before the size check")

    monkeypatch.setattr(tinymoe.data, "load_dataset", not_yet)
    monkeypatch.setattr(tinymoe.zoo, "summarize_models", not_yet)
    small = str(tmp_path / "small.keras")  # a model built for 32x32 images
    inputs = keras.Input((32, 32, 3))
    keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs))).save(small)
    out = str(tmp_path / "out")
    mobilevit = "Input height 100 cannot be taken: MobileViTv2 downsamples by 32"
    saved = f"{small} takes 32x32 images, not 64x64."
    for argv, message in [
        (["models", "--input-size", "100"], mobilevit),
        (["train", "--model", "mobilevit_v2_mcu", "--input-size", "100", "--out", out],
         mobilevit),
        (["train", "--model", "mobilenet_v2_035", "--input-size", "16", "--out", out],
         "mobilenet_v2_035 takes images of at least 32x32, not 16x16."),
        (["train", "--model", small, "--input-size", "64", "--out", out], saved),
        (["upcycle", small, "--input-size", "64", "--out", f"{out}.keras"], saved),
        (["analyze", small, "--input-size", "64", "--out", out], saved),
        (["optimize", small, "--input-size", "64", "--out", out], saved),
        (["evaluate", small, "--input-size", "64"], saved),
    ]:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert not os.path.exists(out)
