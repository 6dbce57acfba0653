"""What TFLite Micro's LUT weight compression saves and costs, on a trained model. Run by
hand; writes JSON and a Markdown table.

For each setting (weight group, index bits), the int8 model (post-training, MoE with sparse
dispatch) is LUT-compressed (tinymoe.export.compress: per-channel k-means binning, then
TFLM's compressor, which inserts DECODE ops), scored on the cub100 test split in the TFLM
Python interpreter, and built into the firmware app for Cortex-M3 (QEMU): the model array
as embedded (stripped), arena_used_bytes(), flash, and byte equality with Python TFLM on two
test images. Nothing is chosen on the test split: the settings are fixed in advance.

Example:
    python benchmarks/lut_compression.py \\
        --model benchmarks/results/cub100_mcu_128px_reduced/runs/seed0/mcu_moe_cluster/best.keras \\
        --out benchmarks/results/lut_compression_mcu_moe
"""

import argparse
import time

import numpy as np
from common import run_meta, write_results

from tinymoe.data import load_dataset
from tinymoe.export import strip_for_device, tflm_invoke, to_tflite
from tinymoe.export.compress import lut_compress
from tinymoe.export.firmware_app import run_firmware
from tinymoe.models import has_experts, with_dispatch
from tinymoe.pipeline import evaluate_tflite, load_model

# Per-channel tables of 2**bits values pay only where a channel has more weights than that:
# 6 bits pays for no layer of the MCU models, 4 bits for fan-ins above 32.
SETTINGS = (None, ("experts", 4), ("experts", 2), ("all", 4), ("all", 3))


def measure(tflite_bytes, setting, x_test, y_test):
    label = "none" if setting is None else f"{setting[0]}, {setting[1]} bits"
    model = tflite_bytes if setting is None else lut_compress(tflite_bytes, *setting)[0]
    run = run_firmware(model, x_test[:2], target="cortex-m3", arena_bytes=600_000)
    row = {"setting": label, "int8_test_top1": evaluate_tflite(model, x_test, y_test),
           "model_array_bytes": len(strip_for_device(model)[0]),
           "cortex_m3_arena_bytes": run.arena_used_bytes,
           "cortex_m3_flash_bytes": run.flash_bytes,
           "bytes_equal_python": bool(np.array_equal(
               run.outputs, tflm_invoke(model, x_test[:2], dequantize_output=False)))}
    print(row, flush=True)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a trained .keras model")
    parser.add_argument("--data", default="../shared/data/cub100")
    parser.add_argument("--capacity-factor", type=float, default=1.25)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    start = time.time()
    model = load_model(args.model)
    data = load_dataset(args.data, int(model.input_shape[1]))
    if has_experts(model):
        model = with_dispatch(model, "sparse", args.capacity_factor)
    tflite_bytes = to_tflite(model, data.split("train")[0][:200])
    x_test, y_test = data.split("test")
    rows = [measure(tflite_bytes, setting, x_test, y_test) for setting in SETTINGS]
    meta = run_meta(start, model=args.model)
    lines = ["# LUT weight compression (TFLM DECODE)", "", f"Command: `{meta['command']}`  ",
             f"Machine: {meta['machine']}  ", f"Wall time: {meta['wall_s']} s", "",
             f"Model: `{args.model}`, int8 post-training (MoE: sparse dispatch), cub100 test "
             "split in TFLite Micro. Cortex-M3: the firmware app under QEMU (arena_used_bytes(), "
             "flash of the whole image); model array: as the firmware embeds it (stripped).",
             "", "| compressed weights | int8 test top-1 | model array bytes | Cortex-M3 arena | "
             "Cortex-M3 flash | output equal to Python TFLM |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['int8_test_top1']:.3f} | {r['model_array_bytes']:,} | "
              f"{r['cortex_m3_arena_bytes']:,} | {r['cortex_m3_flash_bytes']:,} | "
              f"{'yes' if r['bytes_equal_python'] else 'NO'} |" for r in rows]
    write_results(args.out, {"meta": meta, "rows": rows}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
