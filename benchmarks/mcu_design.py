"""Designing the microcontroller flagship from measurements on the Cortex-M3 build of TFLM.
Run by hand; writes JSON and a Markdown table.

Each candidate layout (128x128, 100 classes, untrained weights: size and arena do not depend
on the values) is converted to full int8 and built into the firmware app for Cortex-M3 (QEMU,
mps2-an385): arena_used_bytes() there, split by TFLM's RecordingMicroAllocator into
activations (head) and persistent per-op state (tail); the image's flash; and, from the
graph, the op where the live activations peak and the stage it belongs to (a lower bound on
the head: TFLM's greedy planner may fragment).

Example:
    python benchmarks/mcu_design.py --out benchmarks/results/mcu_design_128px
"""

import argparse
import time

import numpy as np
from common import run_meta, write_results

from tinymoe.export import to_tflite
from tinymoe.export.firmware_app import measure_on_device
from tinymoe.models import MobileViTV2Config, MoEConfig, build_mobilevit_v2, get_config
from tinymoe.models import with_dispatch
from tinymoe.models.mobilevit_v2 import StageConfig as S
from tinymoe.profile import count_macs


def _layout(stem_stride_stage=(24, "relu6"), s2=(32, 2, "relu6"), s3=(128, 64, 2),
            s4=(128, 80, 2), s5=(160, 96, 2), s3_activation="swish", late_activation="swish"):
    return (S(stem_stride_stage[0], 1, 2, 1, stem_stride_stage[1]),
            S(s2[0], s2[1], 1, 2, s2[2]),
            S(s3[0], 1, 2, 2, s3_activation, s3[1], s3[2]),
            S(s4[0], 1, 2, 2, late_activation, s4[1], s4[2]),
            S(s5[0], 1, 2, 2, late_activation, s5[1], s5[2]))


def _mcu(layout, stem_activation="relu6", moe=None):
    return MobileViTV2Config(width=0.5, layout=layout, stem_channels=16,
                             stem_activation=stem_activation, moe=moe)


STAGE4_MOE = MoEConfig(layers=((4, -1),))
ONE_STAGE2_BLOCK = dict(s2=(32, 1, "relu6"), s3_activation="relu6", late_activation="relu6")
# In the order of the design: each row changes one thing of the row before it (mostly).
CANDIDATES = {
    "today's flagship (mobilevit_v2_moe_050)": get_config("mobilevit_v2_moe_050"),
    "early stride (stage 1: depthwise stride 2, no expansion), swish": _mcu(
        _layout((24, "swish"), (32, 2, "swish")), "swish", STAGE4_MOE),
    "early stride, hard_swish in stem, stages 1-2": _mcu(
        _layout((24, "hard_swish"), (32, 2, "hard_swish")), "hard_swish", STAGE4_MOE),
    "early stride, relu6 in stem, stages 1-2": _mcu(_layout(), "relu6", STAGE4_MOE),
    "relu6 in stem and every MV2 block": _mcu(
        _layout(s3_activation="relu6", late_activation="relu6"), "relu6", STAGE4_MOE),
    "relu6 everywhere but attention, one stage-2 block (mobilevit_v2_mcu_moe)": get_config(
        "mobilevit_v2_mcu_moe"),
    "the same without experts (mobilevit_v2_mcu_layernorm)": get_config(
        "mobilevit_v2_mcu_layernorm"),
    "mobilevit_v2_mcu_moe with one stage-3 attention layer": _mcu(
        _layout(s3=(128, 64, 1), **ONE_STAGE2_BLOCK), "relu6", STAGE4_MOE),
    "mobilevit_v2_mcu_moe with two 48-channel stage-2 blocks": _mcu(
        _layout(**{**ONE_STAGE2_BLOCK, "s2": (48, 2, "relu6")}), "relu6", STAGE4_MOE),
    "mobilevit_v2_mcu_moe with wider stages 4-5 (160/96 x3, 192/128 x2)": _mcu(
        _layout(s4=(160, 96, 3), s5=(192, 128, 2), **ONE_STAGE2_BLOCK), "relu6", STAGE4_MOE),
}


def live_peak(tflite_bytes):
    """The op at which the graph's live activations (tensors that ops produce) peak."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite_bytes)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    born = {d["index"]: 0 for d in interpreter.get_input_details()}  # constants never are
    for step, op in enumerate(ops):
        for i in op["outputs"]:
            born.setdefault(i, step)
    dies = {i: step for step, op in enumerate(ops) for i in op["inputs"] if i in born}
    dies.update({d["index"]: len(ops) for d in interpreter.get_output_details()})
    size = {i: int(np.prod(tensors[i]["shape"])) * np.dtype(tensors[i]["dtype"]).itemsize
            for i in born}
    live = [sum(size[i] for i in born if born[i] <= step <= dies.get(i, born[i]))
            for step in range(len(ops))]
    step = int(np.argmax(live))
    largest = max(ops[step]["outputs"], key=lambda i: size[i])
    return {"peak_live_bytes": int(live[step]), "peak_op": ops[step]["op_name"],
            "peak_tensor": tensors[largest]["name"].split(";")[0][:80]}


def measure(label, config, size, classes):
    model = build_mobilevit_v2(config, classes, (size, size, 3))
    if config.moe is not None:
        model = with_dispatch(model, "sparse")
    images = np.round(np.random.default_rng(0).uniform(0, 255, (16, size, size, 3)))
    tflite_bytes = to_tflite(model, images.astype(np.float32))
    device = measure_on_device(tflite_bytes, "cortex-m3", arena_bytes=1_500_000, breakdown=True)
    row = {"candidate": label, "params": int(model.count_params()), "macs": count_macs(model),
           "file_bytes": len(tflite_bytes), "arena_bytes": device["arena_bytes"],
           "arena_activations": device["arena_breakdown"]["head"],
           "arena_persistent": device["arena_breakdown"]["tail"],
           "persistent_by_type": device["arena_breakdown"]["by_type"],
           "flash_bytes": device["flash_bytes"], "code_bytes": device["code_bytes"],
           **live_peak(tflite_bytes)}
    print(row, flush=True)
    return row


def markdown(rows, meta):
    lines = ["# Designing the MCU flagship: Cortex-M3 arena and flash of candidate layouts", "",
             f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}  ",
             f"Wall time: {meta['wall_s']} s", "",
             f"{meta['size']}x{meta['size']}, {meta['classes']} classes, untrained weights, "
             "MoE models with sparse dispatch (capacity factor 1.25). Arena: "
             "arena_used_bytes() of the firmware app built for Cortex-M3 and run under QEMU; "
             "activations / persistent: TFLM's RecordingMicroAllocator head / tail (its own "
             "bookkeeping adds a little to the tail). Peak: the op where the graph's live "
             "activations peak (sum of live tensors).", "",
             "| candidate | params | MACs | file bytes | Cortex-M3 arena | activations | "
             "persistent | flash (TFLM + app) | peak op (live bytes, tensor) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['candidate']} | {r['params']:,} | {r['macs']:,} | "
                     f"{r['file_bytes']:,} | {r['arena_bytes']:,} | "
                     f"{r['arena_activations']:,} | {r['arena_persistent']:,} | "
                     f"{r['flash_bytes']:,} ({r['code_bytes']:,}) | {r['peak_op']} "
                     f"({r['peak_live_bytes']:,}, `{r['peak_tensor']}`) |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--only", nargs="+", help="candidate labels to measure")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    start = time.time()
    rows = [measure(label, config, args.size, args.classes)
            for label, config in CANDIDATES.items() if not args.only or label in args.only]
    meta = run_meta(start, size=args.size, classes=args.classes)
    write_results(args.out, {"meta": meta, "rows": rows}, markdown(rows, meta))


if __name__ == "__main__":
    main()
