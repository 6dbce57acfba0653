"""Runs a .tflite model in TFLite Micro, in a child process of tinymoe.

Run as a script by :func:`tinymoe.export.check_tflm` and :func:`tinymoe.export.smallest_arena`,
because the TFLite Micro interpreter can abort or crash the whole process on a model it
cannot handle or an arena too small for it. It imports only numpy and tflite_micro, not
tinymoe or TensorFlow, so it starts in about a second.

Usage:
    python tflm_child.py check MODEL.tflite ARENA_BYTES   (0: the interpreter's default)
    python tflm_child.py arena MODEL.tflite LOW HIGH STEP
        bisects for the smallest arena in (LOW, HIGH] that allocates and invokes, printing
        "try N" before and "ok N" or "fail N" after each attempt, so the parent can go on
        from where a crash stopped it.
"""

import sys

import numpy as np
from tflite_micro.python.tflite_micro import runtime


def invoke(model, arena_size):
    kwargs = {"arena_size": arena_size} if arena_size > 0 else {}
    interpreter = runtime.Interpreter.from_bytes(model, **kwargs)
    details = interpreter.get_input_details(0)
    interpreter.set_input(np.zeros(details["shape"], details["dtype"]), 0)
    interpreter.invoke()
    return interpreter


def bisect(model, low, high, step):
    while high - low > step:
        middle = (low + high) // 2
        middle -= middle % 16  # arenas are 16-byte aligned
        if middle <= low:
            break
        print(f"try {middle}", flush=True)
        try:
            invoke(model, middle)
            print(f"ok {middle}", flush=True)
            high = middle
        except RuntimeError:
            print(f"fail {middle}", flush=True)
            low = middle
    print(f"done {high}", flush=True)


def main(argv):
    with open(argv[1], "rb") as handle:
        model = handle.read()
    if argv[0] == "check":
        invoke(model, int(argv[2]))
        print("ok")
    else:
        bisect(model, int(argv[2]), int(argv[3]), int(argv[4]))


if __name__ == "__main__":
    main(sys.argv[1:])
