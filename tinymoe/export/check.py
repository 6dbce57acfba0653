"""Does a model load and run in TensorFlow Lite Micro? Asked in a child process."""

import dataclasses
import os
import re
import signal
import subprocess
import sys
import tempfile

TFLM_CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tflm_child.py")
_MISSING_OP = re.compile(r"Didn't find op for builtin opcode '([A-Z0-9_]+)'")


class TflmUnsupportedError(ValueError):
    """A model that TFLite Micro cannot run; ``missing_ops`` names the ops it lacks.

    Example:
        >>> try:
        ...     to_tflite(model_with_gelu, images)
        ... except TflmUnsupportedError as error:
        ...     print(error.missing_ops)
        ('GELU',)
    """

    def __init__(self, message, missing_ops=()):
        super().__init__(message)
        self.missing_ops = tuple(missing_ops)


@dataclasses.dataclass(frozen=True)
class TflmCheck:
    """The outcome of :func:`check_tflm`.

    Attributes:
        ok: the model allocated and invoked.
        missing_ops: builtin ops TFLite Micro has no kernel for.
        message: what went wrong, in words ("" when ok).

    Example:
        >>> check_tflm(tflite_bytes)
        TflmCheck(ok=True, missing_ops=(), message='')
    """

    ok: bool
    missing_ops: tuple = ()
    message: str = ""


def check_tflm(tflite_bytes, arena_size=None, timeout=300):
    """Loads ``tflite_bytes`` in the TFLite Micro interpreter and invokes it once.

    The interpreter runs in a child process, so a model that makes it abort is reported
    instead of ending the caller's process.

    Args:
        tflite_bytes: the ``.tflite`` model.
        arena_size: tensor arena in bytes; None lets the interpreter choose.
        timeout: seconds before the child is stopped.

    Returns:
        :class:`TflmCheck`.

    Example:
        >>> check_tflm(to_tflite(model, images)).ok
        True
    """
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.tflite")
        with open(path, "wb") as handle:
            handle.write(bytes(tflite_bytes))
        try:
            result = subprocess.run(
                [sys.executable, TFLM_CHILD, "check", path, str(int(arena_size or 0))],
                capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return TflmCheck(False, (), f"TFLite Micro did not finish within {timeout} s.")
    if result.returncode == 0 and result.stdout.strip().endswith("ok"):
        return TflmCheck(True)
    output = result.stderr + result.stdout
    missing = tuple(sorted(set(_MISSING_OP.findall(output))))
    if missing:
        message = f"TFLite Micro has no kernel for: {', '.join(missing)}."
    elif result.returncode < 0:
        name = signal.Signals(-result.returncode).name
        message = f"The TFLite Micro interpreter aborted ({name}) while loading or running it."
    else:
        lines = [line for line in output.strip().splitlines() if line.strip()]
        message = lines[-1] if lines else f"exit status {result.returncode}"
    return TflmCheck(False, missing, message)
