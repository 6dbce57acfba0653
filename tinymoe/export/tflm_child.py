"""Loads a .tflite model into TFLite Micro and invokes it once on zeros.

Run as a script in a child process by :func:`tinymoe.export.check_tflm`, because the TFLite
Micro interpreter can abort the whole process on a model it cannot handle. It imports only
numpy and tflite_micro, not tinymoe or TensorFlow, so it starts in about a second.

Usage: python tflm_child.py MODEL.tflite ARENA_BYTES
"""

import sys

import numpy as np
from tflite_micro.python.tflite_micro import runtime


def main(path, arena_size):
    with open(path, "rb") as handle:
        model = handle.read()
    kwargs = {"arena_size": arena_size} if arena_size > 0 else {}
    interpreter = runtime.Interpreter.from_bytes(model, **kwargs)
    details = interpreter.get_input_details(0)
    interpreter.set_input(np.zeros(details["shape"], details["dtype"]), 0)
    interpreter.invoke()
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
