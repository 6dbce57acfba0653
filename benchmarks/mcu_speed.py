"""Time on the microcontroller: instructions per inference on the Cortex-M7 build of TFLite
Micro with CMSIS-NN kernels (what an STM32F746 runs), counted under QEMU (mps2-an500,
``-icount shift=0``), per model and per op type, beside MACs, flash and arena. Run by hand;
writes JSON and a Markdown table.

Each variant is a registered model with optional config overrides at an input size, 100
classes, untrained weights whose batch-norm statistics are set from a batch of images (an
untrained network's statistics are those of its initialisation, which shrink activations
to ranges no trained model has). Instructions depend on the shapes, not on the weights'
values (every shape is static; CMSIS-NN's loops do not branch on data), so this measures
an architecture; trained models are measured the same way by ``tinymoe report --target
cortex-m7``. The CNN peer (Keras MobileNetV3-Small, minimalistic) is measured alike.

Examples:
    python benchmarks/mcu_speed.py --out benchmarks/results/mcu_speed_128px
    python benchmarks/mcu_speed.py --variants mcu mcu_layernorm peer_070_160 \\
        --out /tmp/mcu_speed
    python benchmarks/mcu_speed.py --variants --tflite mcu_seed0=RUNS/mcu_seed0.tflite \\
        --out benchmarks/results/mcu_speed_trained
"""

import argparse
import collections
import dataclasses
import time

import numpy as np
from harness import MCU_EXPAND1_LAYOUT, cnn_peer, run_meta, write_results

import tinymoe
from tinymoe.export import op_names, report, to_tflite
from tinymoe.export import model_facts
from tinymoe.export.firmware_app import measure_on_device
from tinymoe.export.report import milliseconds_at
from tinymoe.models import (MCU_SPEED_LAYOUT, create_model, has_experts,
                            settle_batch_norms, with_dispatch)

CLOCK_MHZ = 216  # an STM32F746
NUM_CLASSES = 100

LAYER_NORM = "mobilevit_v2_mcu_layernorm"
# label -> (registered model or "peer:ALPHA", config overrides, input size)
VARIANTS = {
    "mcu_layernorm": (LAYER_NORM, {}, 128),
    "mcu_relu6": (LAYER_NORM, {"block_activation": "relu6"}, 128),
    "mcu_hswish": (LAYER_NORM, {"block_activation": "hard_swish"}, 128),
    "mcu_bn": (LAYER_NORM, {"norm": "batch"}, 128),
    "mcu_relu6_bn": (LAYER_NORM, {"block_activation": "relu6", "norm": "batch"}, 128),
    "mcu_relu6_bn_expand1": (LAYER_NORM, {"block_activation": "relu6", "norm": "batch",
                                          "layout": MCU_EXPAND1_LAYOUT}, 128),
    "mcu_relu6_bn_s3x1": (LAYER_NORM, {"block_activation": "relu6", "norm": "batch",
                                       "layout": MCU_SPEED_LAYOUT[:2] + (dataclasses.replace(
                                           MCU_SPEED_LAYOUT[2], channels=128),)
                                       + MCU_SPEED_LAYOUT[3:]}, 128),
    "mcu_relu6_mixed": (LAYER_NORM, {"block_activation": "relu6", "norm": "mixed"}, 128),
    "mcu_relu6_mixed_s3x1_96": (LAYER_NORM, {"block_activation": "relu6", "norm": "mixed",
                                             "layout": MCU_SPEED_LAYOUT}, 128),
    "mcu": ("mobilevit_v2_mcu", {}, 128),
    "mcu_160": ("mobilevit_v2_mcu", {}, 160),  # the largest input within a 300 KB arena
    "mcu_moe": ("mobilevit_v2_mcu_moe", {}, 128),
    "peer_070_128": ("peer:0.7", {}, 128),
    "peer_070_160": ("peer:0.7", {}, 160),
    "peer_070_176": ("peer:0.7", {}, 176),
    "peer_100_128": ("peer:1.0", {}, 128),
    "dense_050": ("mobilevit_v2_050", {}, 128),
    "moe_050": ("mobilevit_v2_moe_050", {}, 128),
}


def build(label, extra=None):
    name, overrides, size = VARIANTS[label] if extra is None else extra
    if name.startswith("peer:"):
        return cnn_peer(NUM_CLASSES, size, float(name.split(":")[1])), size
    return create_model(name, num_classes=NUM_CLASSES, input_shape=(size, size, 3),
                        **overrides), size


def measure(label, rng):
    keras = tinymoe.keras
    keras.utils.set_random_seed(0)
    model, size = build(label)
    images = np.round(rng.uniform(0, 255, (16, size, size, 3))).astype(np.float32)
    settle_batch_norms(model, images)
    if has_experts(model):
        model = with_dispatch(model, "sparse", 1.25)
    tflite_bytes = to_tflite(model, images)
    facts = report(tflite_bytes, arena=False)
    start = time.time()
    device = measure_on_device(tflite_bytes, "cortex-m7")
    by_op = device["instructions_by_op"]
    ops = collections.Counter(op_names(tflite_bytes))
    return {
        "variant": label, "model": VARIANTS[label][0],
        "overrides": {key: str(value) for key, value in VARIANTS[label][1].items()},
        "input_size": size, "params": int(model.count_params()), "macs": facts["macs"],
        "tflite_bytes": len(tflite_bytes), "model_array_bytes": device["model_bytes"],
        "m7_arena_bytes": device["arena_bytes"], "m7_flash_bytes": device["flash_bytes"],
        "instructions": device["instructions"],
        "ms_at_216mhz": round(milliseconds_at(device["instructions"], CLOCK_MHZ), 1),
        "instructions_by_op": by_op, "op_counts": dict(ops),
        "device_seconds": round(time.time() - start, 1)}


def measure_tflite(label, path):
    """A converted (e.g. trained) model, measured as ``tinymoe report --target cortex-m7``
    does."""
    with open(path, "rb") as handle:
        tflite_bytes = handle.read()
    facts = report(tflite_bytes, arena=False)
    device = measure_on_device(tflite_bytes, "cortex-m7")
    size = int(model_facts(tflite_bytes)[0][0].shape[1])  # [1, H, W, C]
    return {
        "variant": label, "model": path, "overrides": {}, "input_size": size,
        "params": None, "macs": facts["macs"], "tflite_bytes": len(tflite_bytes),
        "model_array_bytes": device["model_bytes"], "m7_arena_bytes": device["arena_bytes"],
        "m7_flash_bytes": device["flash_bytes"], "instructions": device["instructions"],
        "ms_at_216mhz": round(milliseconds_at(device["instructions"], CLOCK_MHZ), 1),
        "instructions_by_op": device["instructions_by_op"],
        "op_counts": dict(collections.Counter(op_names(tflite_bytes)))}


def markdown(rows, meta):
    lines = ["# Instructions per inference on the Cortex-M7 build (CMSIS-NN)", "",
             f"Command: `{meta['command']}`  ",
             f"Machine: {meta['machine']}; wall time {meta['wall_s']} s  ",
             "Counted under QEMU mps2-an500 with -icount shift=0 (exact to 40 instructions); "
             f"ms at {CLOCK_MHZ} MHz assume one instruction per cycle (QEMU models no cycles, "
             "caches or wait states). 100 classes; untrained weights, batch-norm statistics "
             "from 16 random images.", "",
             "| variant | input | params | MACs | instructions | ms at 216 MHz | M7 arena | "
             "M7 flash | model array |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['variant']} | {row['input_size'] or '-'} | "
            f"{'-' if row['params'] is None else format(row['params'], ',')} | {row['macs']:,} | "
            f"{row['instructions'] / 1e6:.1f} M | {row['ms_at_216mhz']} | "
            f"{row['m7_arena_bytes']:,} | {row['m7_flash_bytes']:,} | "
            f"{row['model_array_bytes']:,} |")
    lines += ["", "Where the instructions go (share of the op types' total):", "",
              "| variant | top op types |", "|---|---|"]
    for row in rows:
        total = sum(op["instructions"] for op in row["instructions_by_op"].values())
        top = ", ".join(f"{name} {100 * op['instructions'] / total:.1f}% (x{op['calls']})"
                        for name, op in list(row["instructions_by_op"].items())[:7])
        lines.append(f"| {row['variant']} | {top} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="*", choices=sorted(VARIANTS),
                        default=list(VARIANTS))
    parser.add_argument("--tflite", nargs="*", default=[], metavar="LABEL=PATH",
                        help="also converted models, e.g. trained ones (as tinymoe report "
                             "--target cortex-m7 measures them)")
    parser.add_argument("--out", required=True, help="results path without extension")
    args = parser.parse_args()
    start = time.time()
    rng = np.random.default_rng(0)
    rows = []
    jobs = [(label, lambda label=label: measure(label, rng)) for label in args.variants]
    jobs += [(label, lambda label=label, path=path: measure_tflite(label, path))
             for label, _, path in (item.partition("=") for item in args.tflite)]
    for label, job in jobs:
        rows.append(job())
        print(f"{label}: {rows[-1]['instructions'] / 1e6:.1f} M instructions", flush=True)
        meta = run_meta(start)
        write_results(args.out, {"meta": meta, "rows": rows}, markdown(rows, meta))


if __name__ == "__main__":
    main()
