"""Host latency of the firmware app (firmware_export/, TFLM built with core -O2) against the
TFLite Micro Python interpreter, on the same int8 model and image. Run by hand; writes JSON
and a Markdown table.

The app is timed as a whole process (load, allocate, one invoke, print), so its figure is an
upper bound on its invoke time; the interpreter is timed on invoke alone. Alternating runs,
median of --repeats.

Example:
    python benchmarks/firmware_latency.py --models mobilevit_v2_050 mobilevit_v2_moe_050 \\
        --out benchmarks/results/firmware_latency_128px
"""

import argparse
import os
import subprocess
import tempfile
import time

import numpy as np
from common import run_meta, write_results

from ai_edge_litert.interpreter import Interpreter

from tinymoe.export import quantize, to_tflite
from tinymoe.export.runtime import _scale_zero_point
from tinymoe.export.firmware_app import run_firmware
from tinymoe.models import create_model, has_experts, with_dispatch


def measure(name, size, repeats):
    from tflite_micro.python.tflite_micro import runtime

    images = np.round(np.random.default_rng(0).uniform(0, 255, (16, size, size, 3)))
    model = create_model(name, num_classes=100, input_shape=(size, size, 3))
    if has_experts(model):
        model = with_dispatch(model, "sparse")
    tflite_bytes = to_tflite(model, images.astype(np.float32))
    with tempfile.TemporaryDirectory() as workdir:
        run_firmware(tflite_bytes, images[:1], target="host", workdir=workdir)  # builds the app
        app, image = os.path.join(workdir, "build", "classify"), os.path.join(workdir,
                                                                             "image_0.rgb")
        interpreter = runtime.Interpreter.from_bytes(tflite_bytes, arena_size=8 << 20)
        details = Interpreter(model_content=tflite_bytes).get_input_details()[0]
        interpreter.set_input(quantize(images[:1], *_scale_zero_point(details)), 0)
        app_s, python_s = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run([app, image], check=True, capture_output=True)
            app_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            interpreter.invoke()
            python_s.append(time.perf_counter() - start)
    return {"model": name, "size": size, "app_ms": round(1000 * float(np.median(app_s)), 1),
            "python_invoke_ms": round(1000 * float(np.median(python_s)), 1),
            "ratio": round(float(np.median(app_s) / np.median(python_s)), 3)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["mobilevit_v2_moe_050"])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    start = time.time()
    rows = [measure(name, args.size, args.repeats) for name in args.models]
    meta = run_meta(start, repeats=args.repeats)
    lines = ["# Firmware app (host) against the TFLite Micro Python interpreter", "",
             f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}  ",
             f"Wall time: {meta['wall_s']} s", "",
             "App: the whole process (load, allocate, invoke, print), TFLM library core -O2, "
             f"kernels -O2. Python: invoke() alone. Median of {args.repeats} alternating runs.",
             "", "| model | input | app process ms | Python invoke ms | app / Python |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['size']}x{r['size']} | {r['app_ms']} | "
              f"{r['python_invoke_ms']} | {r['ratio']} |" for r in rows]
    write_results(args.out, {"meta": meta, "rows": rows}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
