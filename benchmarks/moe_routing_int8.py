"""Dense twin, per-patch MoE and per-image MoE as the device runs them: int8 accuracy in
TFLite Micro, the agreement of each MoE's deployed (sparse) form with its masked form, MACs,
model bytes and Cortex-M7 instructions (CMSIS-NN, under QEMU), for trained models.

Each ``--models`` entry is ``LABEL=KERAS``. A model with experts is converted twice: masked
(every expert runs, gated) and sparse (what ships: per-patch slots at ``--capacity-factor``,
or, per image, the chosen expert's weights gathered). Both run in TFLite Micro on the same
``--images`` validation images; the sparse form also runs in the Cortex-M7 firmware on
``--device-images`` of them, and its int8 outputs are compared with TFLite Micro's in
Python. With ``--dense KERAS`` (the dense twin the MoEs were upcycled from) each MoE is
also diagnosed (:func:`tinymoe.diagnosis.diagnose_experts`: how far its experts moved apart
and from the dense feed-forward, and top-1 with each layer's experts replaced by their
mean). Data: a cub100-style folder (``--data``) or Tiny ImageNet-200
(``--tinyimagenet``, see benchmarks/pretrain.py); only the validation split is used. The
firmware builds against ``../shared/third_party``: run it from a checkout beside ``shared/``.

Example:
    python benchmarks/moe_routing_int8.py --tinyimagenet /work/data/tiny-imagenet-200 \\
        --models dense=runs/pretrain/mobilevit_v2_mcu_layernorm/best.keras \\
        patch=runs/pretrain/mobilevit_v2_mcu_moe/best.keras \\
        image=runs/pretrain/mobilevit_v2_mcu_moe_image/best.keras \\
        --dense runs/pretrain/mobilevit_v2_mcu_layernorm/epoch8.keras \
        --out benchmarks/results/moe_routing_int8_tinyimagenet
"""

import argparse
import time

import numpy as np
from harness import load_data, run_meta, write_results
from tqdm.auto import tqdm

from tinymoe.diagnosis import paired_difference
from tinymoe.export import op_table, to_tflite, tflm_invoke
from tinymoe.export.firmware_app import run_firmware
from tinymoe.models import has_experts, moe_layers, with_dispatch
from tinymoe.pipeline import load_model


def load_val(args, size):
    """(calibration images from train, validation images, validation labels)."""
    data = load_data(args, size)
    x_train = data.split("train")[0]
    x_val, y_val = data.split("val")
    pick = np.random.default_rng(0).permutation(len(x_val))[:args.images]
    calibration = x_train[np.random.default_rng(1).permutation(len(x_train))[:200]]
    return (np.asarray(calibration, np.float32), np.asarray(x_val[pick], np.float32),
            np.asarray(y_val[pick]))


def tflm_top1(tflite_bytes, images, desc):
    outputs = [tflm_invoke(tflite_bytes, images[i:i + 50])
               for i in tqdm(range(0, len(images), 50), desc=desc, unit="50 img")]
    return np.argmax(np.concatenate(outputs), axis=1)


def on_device(tflite_bytes, images):
    """Cortex-M7 instructions, model array bytes, and whether the firmware's int8 outputs
    equal Python TFLite Micro's (CMSIS-NN's kernels may round differently by one step)."""
    run = run_firmware(tflite_bytes, images.astype(np.uint8), target="cortex-m7")
    python = tflm_invoke(tflite_bytes, images, dequantize_output=False)
    python = python.reshape(run.outputs.shape).astype(np.int32)
    return {"m7_instructions": run.instructions, "model_array_bytes": run.model_array_bytes,
            "m7_arena_bytes": run.arena_used_bytes,
            "device_max_lsb_from_python": int(np.abs(run.outputs.astype(np.int32) -
                                                     python).max()),
            "device_top1_equals_python": float(np.mean(np.argmax(run.outputs, 1) ==
                                                       np.argmax(python, 1)))}


def measure(label, path, args, data_cache, correct):
    """One model's row; ``correct[label]`` gets its per-image float and int8 correctness."""
    model = load_model(path)
    size = int(model.input_shape[1])
    if size not in data_cache:
        data_cache[size] = load_val(args, size)
    calibration, x_val, y_val = data_cache[size]
    float_top1 = np.argmax(model.predict(x_val, batch_size=64, verbose=0), axis=1)
    row = {"variant": label, "model": path, "routing": None,
           "float_val_top1": float(np.mean(float_top1 == y_val))}
    correct[label] = {"float": float_top1 == y_val}
    forms = {"deployed": model}
    if has_experts(model):
        row["routing"] = sorted({layer.routing for layer in moe_layers(model).values()})
        forms = {"masked": with_dispatch(model, "masked"),
                 "deployed": with_dispatch(model, "sparse", args.capacity_factor)}
    tflite, top1 = {}, {}
    for form, variant in forms.items():
        tflite[form] = to_tflite(variant, calibration)
        top1[form] = tflm_top1(tflite[form], x_val, f"{label} {form} in TFLite Micro")
        row[f"{form}_int8_val_top1"] = float(np.mean(top1[form] == y_val))
        # int8 against float, the yardstick for the agreement of two int8 forms
        row[f"{form}_agrees_with_float"] = float(np.mean(top1[form] == float_top1))
        row[f"{form}_macs"] = int(sum(r["macs"] for r in op_table(tflite[form])))
    correct[label]["int8"] = top1["deployed"] == y_val
    if "masked" in top1:
        row["deployed_agrees_with_masked"] = float(np.mean(top1["deployed"] == top1["masked"]))
    if "masked" in top1 and args.dense:
        from tinymoe.diagnosis import diagnose_experts

        diagnosis = diagnose_experts(model, x_val, y_val, load_model(args.dense))
        row["diagnosis"] = diagnosis
        row["float_top1_mean_experts"] = diagnosis["top1_mean_experts"]
    if args.device_images:
        row.update(on_device(tflite["deployed"], x_val[:args.device_images]))
    print(row, flush=True)
    return row


def markdown(rows, meta):
    lines = ["# Dense twin, per-patch and per-image MoE as the device runs them", "",
             "\"deployed = float\" and \"deployed = masked\": the share of images whose top-1 "
             "is the same in both (int8 in TFLite Micro; float in Keras).", "",
             f"Command: `{meta['command']}`  ",
             f"Machine: {meta['machine']}; wall time {meta['wall_s']:.0f} s  ",
             f"Validation images: {meta['images']} (int8 in TFLite Micro); Cortex-M7 firmware "
             f"(CMSIS-NN, QEMU) on {meta['device_images']} of them", "",
             "| variant | routing | float top-1 | int8 top-1 (deployed) | int8 top-1 (masked) "
             "| deployed = float | deployed = masked | MACs deployed | MACs masked | model array bytes "
             "| M7 instructions | M7 arena | firmware = Python TFLM (top-1, max LSB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    verdicts = [f"- {r['variant']}: {r['diagnosis']['verdict']} Per layer, the experts' "
                f"least cosine similarity and their cosine to the dense feed-forward: " +
                "; ".join(f"{key} {layer['min_cosine']:.3f}, "
                          f"{', '.join(f'{c:.3f}' for c in layer.get('cosine_to_dense', []))}"
                          for key, layer in r["diagnosis"]["layers"].items())
                for r in rows if "diagnosis" in r]
    for r in rows:
        cell = lambda key, fmt: format(r[key], fmt) if r.get(key) is not None else ""  # noqa
        instructions = (f"{r['m7_instructions'] / 1e6:.1f} M" if r.get("m7_instructions")
                        else "")
        device = (f"{cell('device_top1_equals_python', '.2f')}, "
                  f"{cell('device_max_lsb_from_python', 'd')}" if "m7_instructions" in r
                  else "")
        lines.append(
            f"| {r['variant']} | {', '.join(r['routing'] or ['dense'])} "
            f"| {r['float_val_top1']:.3f} | {r['deployed_int8_val_top1']:.3f} "
            f"| {cell('masked_int8_val_top1', '.3f')} "
            f"| {cell('deployed_agrees_with_float', '.4f')} "
            f"| {cell('deployed_agrees_with_masked', '.4f')} | {r['deployed_macs']:,} "
            f"| {cell('masked_macs', ',')} | {cell('model_array_bytes', ',')} "
            f"| {instructions} | {cell('m7_arena_bytes', ',')} | {device} |")
    paired = [f"- {r['variant']} against {r['vs_dense']['dense']}: " + "; ".join(
        f"{kind} {100 * v['difference']:+.2f} points (p = {v['p_value']:.3g}, "
        f"{v['only_a']} images only the MoE gets right, {v['only_b']} only the dense)"
        for kind, v in r["vs_dense"].items() if kind != "dense")
        for r in rows if "vs_dense" in r]
    if paired:
        lines += ["", "Paired against the dense model, image by image (McNemar's exact "
                  "test, two-sided):", "", *paired]
    if verdicts:
        lines += ["", "Diagnosis of the experts (float, the same validation images):", "",
                  *verdicts]
    return "\n".join(lines) + "\n"


def models_and_data_parser(description):
    """The arguments this script shares with superclass_oracle.py: models and data."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--models", nargs="+", required=True, metavar="LABEL=KERAS")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="a cub100-style image folder")
    source.add_argument("--tinyimagenet", help="the tiny-imagenet-200 folder")
    parser.add_argument("--images", type=int, default=2000)
    return parser


def main():
    parser = models_and_data_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--device-images", type=int, default=4,
                        help="images classified by the Cortex-M7 firmware (0: no firmware)")
    parser.add_argument("--capacity-factor", type=float, default=1.25,
                        help="per-patch layers' sparse capacity (per-image layers have none)")
    parser.add_argument("--dense", help="the dense model the MoEs were upcycled from: "
                                        "diagnose their experts against it")
    parser.add_argument("--out", required=True, help="results path without extension")
    args = parser.parse_args()
    if args.device_images:  # before minutes of evaluation, not after
        from tinymoe.export.firmware_app import missing_requirements

        missing = missing_requirements("cortex-m7")
        if missing:
            parser.error(f"the Cortex-M7 firmware build is unavailable ({'; '.join(missing)});"
                         " run from a checkout beside shared/, or pass --device-images 0")
    start = time.time()
    cache, rows, correct = {}, [], {}
    for entry in args.models:
        label, path = entry.split("=", 1)
        rows.append(measure(label, path, args, cache, correct))
    # Each MoE against the first dense model, image by image (McNemar's exact test).
    dense = next((r["variant"] for r in rows if r["routing"] is None), None)
    for row in rows:
        if dense is not None and row["routing"] is not None:
            row["vs_dense"] = {kind: paired_difference(correct[row["variant"]][kind],
                                                       correct[dense][kind])
                               for kind in ("float", "int8")}
            row["vs_dense"]["dense"] = dense
    meta = run_meta(start, images=args.images, device_images=args.device_images)
    write_results(args.out, {"meta": meta, "rows": rows}, markdown(rows, meta))


if __name__ == "__main__":
    main()
