"""Which ops lose the most in post-training int8: TFLite's QuantizationDebugger on a trained
model, ops ranked by the RMS error of their int8 output in units of its quantisation step.
Run by hand; writes JSON and a Markdown table.

    python benchmarks/int8_error_by_op.py --model RUNS/seed0/dense_050/best.keras --size 96 \\
        --out benchmarks/results/int8_error_by_op_dense050_96px
"""

import argparse
import csv
import io
import time

import numpy as np
from common import run_meta, write_results

from tinymoe.backend import tf
from tinymoe.data import load_dataset
from tinymoe.pipeline import load_model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", default="../shared/data/cub100")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--calibration", type=int, default=64, help="training images")
    parser.add_argument("--debug-images", type=int, default=16, help="training images")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    start = time.time()
    model = load_model(args.model)
    images = load_dataset(args.data, args.size).split("train")[0][:args.calibration]
    images = images.astype(np.float32)
    shape = [1, args.size, args.size, 3]
    function = tf.function(lambda x: model(x, training=False))
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function(tf.TensorSpec(shape, tf.float32))])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None]] for image in images)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter,
        debug_dataset=lambda: ([image[None]] for image in images[:args.debug_images]))
    debugger.run()
    buffer = io.StringIO()
    debugger.layer_statistics_dump(buffer)
    rows = []
    for row in csv.DictReader(io.StringIO(buffer.getvalue())):
        scale, mse = float(row["scale"] or 0), float(row["mean_squared_error"] or 0)
        if scale > 0:
            rows.append({"op": row["op_name"], "tensor": row["tensor_name"].split(";")[0],
                         "rmse_in_steps": mse ** 0.5 / scale,
                         "max_abs_error": float(row["max_abs_error"]), "scale": scale})
    rows.sort(key=lambda r: -r["rmse_in_steps"])
    meta = run_meta(start, model=args.model, size=args.size)
    lines = ["# int8 error by op (post-training quantisation)", "",
             f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}", "",
             "| op | output tensor | RMS error / step | max abs error | step |", "|---|---|---|---|---|"]
    lines += [f"| {r['op']} | {r['tensor']} | {r['rmse_in_steps']:.2f} | "
              f"{r['max_abs_error']:.4f} | {r['scale']:.4g} |" for r in rows[:args.top]]
    write_results(args.out, {"meta": meta, "rows": rows}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
