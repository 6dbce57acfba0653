"""TensorFlow's own log lines stay out of tinymoe's output unless asked for (--verbose)."""

import json
import logging
import os
import re
import subprocess
import sys

from tinymoe import backend
from tinymoe.backend import filter_log_text
from tinymoe.cli import build_parser, main

# What TensorFlow 2.21 prints while it loads on a machine without a GPU, and how absl
# prefixes a line (severity, date, time, thread, file:line).
TF_LOG_LINE = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ \S+:\d+\] |absl::InitializeLog|"
                         r"oneDNN custom operations|cuda drivers|cpu_feature_guard|cuInit",
                         re.MULTILINE)
BIN = os.path.dirname(sys.executable)


def _run(command, **env):
    """Runs ``command`` with TF_CPP_MIN_LOG_LEVEL unset (conftest sets it for this process)."""
    clean = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(command, env={**clean, **env}, capture_output=True, text=True,
                          timeout=300, check=False)


def test_filter_drops_only_log_lines_below_the_level():
    text = ("WARNING: All log messages before absl::InitializeLog() is called are written to "
            "STDERR\n"
            "I0000 00:00:1796013607.033044   25984 port.cc:153] oneDNN custom operations are on.\n"
            "I0000 00:00:1796013607.074539   25984 cpu_feature_guard.cc:227] This TensorFlow "
            "binary is optimized\n"
            "To enable the following instructions: AVX2 FMA, rebuild TensorFlow.\n"
            "/x/y.py:3: UserWarning: a warning of the user's own\n"
            "To enable the following instructions: (a line of the user's)\n"
            "W0000 00:00:1796013789.194134   26620 cache_dataset_ops.cc:912] The calling "
            "iterator did not fully read the dataset\n"
            "E0000 00:00:1796013741.936626   26322 cuda_platform.cc:52] failed call to cuInit: "
            "INTERNAL\n"
            "E0000 00:00:1796013741.936626   26322 cuda_dnn.cc:8310] Unable to register cuDNN "
            "factory: Attempting to register factory for plugin cuDNN when one has already "
            "been registered\n"
            "E0000 00:00:1796013741.936626   26322 some_kernel.cc:52] a real error\n")
    kept, dropped = filter_log_text(text, 2)
    assert kept == ("/x/y.py:3: UserWarning: a warning of the user's own\n"
                    "To enable the following instructions: (a line of the user's)\n"
                    "E0000 00:00:1796013741.936626   26322 some_kernel.cc:52] a real error\n")
    assert len(dropped) == 7
    kept_1, _ = filter_log_text(text, 1)  # warnings kept; a failed cuInit is one
    assert "cache_dataset_ops" in kept_1 and "cuInit" in kept_1 and "port.cc" not in kept_1
    assert "cuDNN" in kept_1
    assert filter_log_text(text, 0) == (text, [])
    assert filter_log_text(text, 3)[0].count("\n") == 2


def test_tinymoe_help_prints_no_tensorflow_log_lines():
    result = _run([os.path.join(BIN, "tinymoe"), "--help"])
    assert result.returncode == 0, result.stderr
    assert "evaluate" in result.stdout and "predict" in result.stdout
    assert not TF_LOG_LINE.search(result.stderr), result.stderr


def test_every_subcommand_help_prints_no_tensorflow_log_lines():
    """In one process (one TensorFlow import): each command's --help, then the lines that
    tinymoe hid while TensorFlow loaded."""
    code = ("import json, sys\nfrom tinymoe.cli import build_parser, main\n"
            "for command in sys.argv[1:]:\n"
            "    try:\n        main([command, '--help'])\n    except SystemExit:\n        pass\n"
            "from tinymoe.backend import HIDDEN_LOG_LINES\n"
            "print(json.dumps(HIDDEN_LOG_LINES))\n")
    commands = sorted(build_parser()._subparsers._group_actions[0].choices)
    assert {"evaluate", "predict", "train", "export"} <= set(commands)
    result = _run([sys.executable, "-c", code, *commands])
    assert result.returncode == 0, result.stderr
    for command in commands:
        assert f"usage: tinymoe {command}" in result.stdout
    assert not TF_LOG_LINE.search(result.stderr), result.stderr
    hidden = json.loads(result.stdout.strip().splitlines()[-1])
    # --verbose shows what the default hid (TensorFlow prints them again when it loads).
    verbose = _run([os.path.join(BIN, "tinymoe"), "--verbose", "report", "missing.tflite"])
    assert verbose.returncode == 2
    assert verbose.stderr.rstrip().endswith("Model file 'missing.tflite' does not exist.")
    messages = {line.split("] ", 1)[-1] for line in verbose.stderr.splitlines()}
    assert all(line.split("] ", 1)[-1] in messages for line in hidden), verbose.stderr


def test_verbose_in_process_prints_the_hidden_lines_and_restores_the_loggers(capsys):
    """main([...]) from Python cannot reload TensorFlow: --verbose replays what it hid."""
    before = {name: logging.getLogger(name).level for name in ("tensorflow", "absl")}
    assert main(["--verbose", "report", "missing.tflite"]) == 2
    err = capsys.readouterr().err
    assert all(line in err for line in backend.HIDDEN_LOG_LINES)
    assert err.rstrip().endswith("Model file 'missing.tflite' does not exist.")
    assert {name: logging.getLogger(name).level for name in before} == before


def test_int8_conversion_prints_no_converter_line(capfd):
    """The quantiser's "fully_quantize: 0, inference_type: 6, ..." goes to file descriptor 2
    from C++ on every conversion; below the log level it is hidden like TensorFlow's own."""
    import numpy as np

    from tinymoe.backend import keras
    from tinymoe.export import to_tflite

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    images = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3)).astype(np.float32)
    capfd.readouterr()
    to_tflite(model, images, verify=False)
    err = capfd.readouterr().err
    assert "fully_quantize" not in err and "inference_type" not in err, err
    assert any(line.startswith("fully_quantize: ") for line in backend.HIDDEN_LOG_LINES)


def test_training_into_a_file_writes_one_line_per_epoch(tmp_path):
    """`tinymoe train ... > log.txt`: Keras's per-step bar only on a terminal."""
    import io

    from tinymoe.commands import keras_verbosity

    assert keras_verbosity(io.StringIO()) == 2

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert keras_verbosity(Terminal()) == 1
    from tinymoe.backend import keras

    inputs = keras.Input((32, 32, 3))
    tiny = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(
        keras.layers.AveragePooling2D(8)(inputs))))
    tiny.save(tmp_path / "tiny.keras")
    log = tmp_path / "log.txt"
    with open(log, "w") as handle:
        result = subprocess.run(
            [os.path.join(BIN, "tinymoe"), "train", "--model", str(tmp_path / "tiny.keras"),
             "--epochs", "2", "--out", str(tmp_path / "run")],
            stdout=handle, stderr=subprocess.PIPE, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    text = log.read_text()
    assert "\r" not in text and "\b" not in text
    epochs = [line for line in text.splitlines() if " - loss: " in line]
    assert len(epochs) == 2, text[:2000]
