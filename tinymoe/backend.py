"""The one place where tinymoe imports Keras (and TensorFlow).

tinymoe uses the Keras 2 API (``tf_keras``): tensorflow-model-optimization (pruning,
quantisation-aware training) works only with it, and keras-cv follows it when
``TF_USE_LEGACY_KERAS=1`` is set before TensorFlow is first imported. Every other module
imports ``keras`` and ``tf`` from here.

TensorFlow's own log lines are kept quiet here, since a user of tinymoe cannot act on them
("oneDNN custom operations are on", "Could not find cuda drivers", cpu_feature_guard, a
failed cuInit on a machine without a GPU). ``TF_CPP_MIN_LOG_LEVEL`` decides, as it does for
TensorFlow: unset, tinymoe sets it to 2 (errors only); a value the user set is kept, and
``TF_CPP_MIN_LOG_LEVEL=0`` (or ``tinymoe --verbose``) shows everything. Some of TensorFlow's
libraries log through an uninitialised absl that ignores that variable, while they load and
while the devices are first listed, so those two steps run with the process's standard error
captured, and the lines below the level are dropped (all others are passed on).
"""

import contextlib
import logging
import os
import re
import sys
import tempfile

_LEGACY = "TF_USE_LEGACY_KERAS"
_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"
# absl's prefix: severity, date, time, thread, file:line ("I0000 00:00:17.9 42 port.cc:153] ").
_ABSL_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ [\w.\-/]+:\d+\] ")
_SEVERITIES = "IWEF"  # the order of TF_CPP_MIN_LOG_LEVEL: 0 info, 1 warning, 2 error, 3 fatal
_ABSL_NOTICE = "WARNING: All log messages before absl::InitializeLog() is called"
_CONTINUATIONS = ("To enable the following instructions:",)  # cpu_feature_guard's 2nd line
# Printed without a prefix by the converter's quantiser on every int8 conversion
# ("fully_quantize: 0, inference_type: 6, input_inference_type: INT8, ..."): info.
_UNPREFIXED_INFO = ("fully_quantize: ",)
# Logged as errors, but harmless: TensorFlow goes on without a GPU, or keeps the CUDA plugin
# (cuDNN, cuFFT, cuBLAS) it registered first. Read as warnings (hidden at level 2).
_WARNINGS_LOGGED_AS_ERRORS = ("failed call to cuInit", "when one has already been registered")


def _keras_3_already_bound():
    """True when TensorFlow was imported before us and ``tf.keras`` already resolved to Keras 3."""
    if "tensorflow" not in sys.modules:
        return False
    tf_module = sys.modules["tensorflow"]
    try:
        name = tf_module.keras.__name__
    except Exception:  # a half-imported tensorflow: let the import below report it
        return False
    return not name.startswith("tf_keras")


def _min_log_level():
    try:
        return int(os.environ.get(_LOG_LEVEL, "0"))
    except ValueError:
        return 0  # as TensorFlow reads a value it cannot parse


def filter_log_text(text, min_level):
    """``text`` without the TensorFlow/absl log lines below ``min_level``; other lines kept.

    Args:
        text: what a library wrote to standard error.
        min_level: as ``TF_CPP_MIN_LOG_LEVEL``: 0 keeps every line, 1 drops info lines, 2
            also warnings, 3 also errors.

    Returns:
        (kept text, dropped lines).

    Example:
        >>> filter_log_text("I0000 00:00:17.1 42 port.cc:153] oneDNN ...\\nmine\\n", 2)
        ('mine\\n', ['I0000 00:00:17.1 42 port.cc:153] oneDNN ...'])
    """
    kept, dropped, dropping = [], [], False
    for line in text.splitlines(keepends=True):
        match = _ABSL_LINE.match(line)
        if match:
            severity = _SEVERITIES.index(match.group(1))
            if any(text in line for text in _WARNINGS_LOGGED_AS_ERRORS):
                severity = min(severity, 1)
            dropping = severity < min_level
        elif line.startswith(_ABSL_NOTICE) or line.startswith(_UNPREFIXED_INFO):
            dropping = min_level > 0
        elif not (dropping and line.startswith(_CONTINUATIONS)):
            dropping = False
        (dropped.append(line.rstrip("\n")) if dropping else kept.append(line))
    return "".join(kept), dropped


def quiet_native_logs():
    """A context in which what C++ code writes to standard error (file descriptor 2) is
    filtered as TensorFlow's own log lines are: hidden below ``TF_CPP_MIN_LOG_LEVEL`` (2
    unless set; 0 with ``tinymoe --verbose``), everything else passed on.

    Example:
        >>> with quiet_native_logs():
        ...     tflite_bytes = converter.convert()
    """
    return _stderr_filtered(LOG_LEVEL, HIDDEN_LOG_LINES)


@contextlib.contextmanager
def _stderr_filtered(min_level, dropped):
    """Captures file descriptor 2 (what C++ code writes) and passes on what is not a log
    line below ``min_level``; the dropped lines are appended to ``dropped``."""
    if min_level <= 0:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no standard error to capture
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept, lines = filter_log_text(capture.read().decode("utf-8", "replace"), min_level)
            dropped.extend(lines)
            if kept:
                os.write(2, kept.encode("utf-8"))


def _quiet_python_loggers():
    """TensorFlow's and absl's Python loggers to errors only, unless the user set them."""
    for name in ("tensorflow", "absl"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.ERROR)


os.environ[_LEGACY] = "1"
if _keras_3_already_bound():
    raise ImportError(
        "tinymoe needs the Keras 2 API (tf_keras), but TensorFlow was imported first with Keras 3 "
        "behind `tf.keras`. Set the environment variable TF_USE_LEGACY_KERAS=1 before TensorFlow "
        "is imported (or import tinymoe first), then restart the Python process or notebook kernel."
    )

_already_loaded = "tensorflow" in sys.modules
os.environ.setdefault(_LOG_LEVEL, "2")
LOG_LEVEL = _min_log_level()
# The log lines hidden while TensorFlow loaded (``tinymoe --verbose`` prints them).
HIDDEN_LOG_LINES = []
with _stderr_filtered(0 if _already_loaded else LOG_LEVEL, HIDDEN_LOG_LINES):
    import tensorflow as tf  # noqa: E402
    import tf_keras as keras  # noqa: E402

    tf.config.list_physical_devices()  # the device scan logs a failed cuInit without a GPU
if LOG_LEVEL >= 2:
    _quiet_python_loggers()

__all__ = ["keras", "tf", "register", "filter_log_text", "HIDDEN_LOG_LINES", "LOG_LEVEL"]


def register(cls):
    """Registers a layer for Keras serialisation under the ``tinymoe`` package.

    Example:
        >>> @register
        ... class MyLayer(keras.layers.Layer):
        ...     pass
    """
    return keras.saving.register_keras_serializable(package="tinymoe")(cls)
