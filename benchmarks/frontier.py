"""The accuracy-against-instructions frontier on cub100: our MobileViTv2 family and the CNNs
TinyML users start from, each point trained, converted to int8, scored in TFLite Micro and
counted on the Cortex-M7 (CMSIS-NN) build of the firmware.

One invocation trains one point (a model, its starting weights, an input size, a teacher or
none, a seed) with ``tinymoe.pipeline.train_run`` and the recipe ``tinymoe train`` uses for
those weights; scores val (float), test (float) and test int8 in TFLM (post-training int8,
200 training images calibrate); builds the firmware app for the Cortex-M7 with CMSIS-NN
kernels and runs it under QEMU: instructions per inference, ``arena_used_bytes()`` and the
whole image's flash. Rows are merged into ``--out``.json/.md (one row per label and seed)
and the figure ``--out``.png is drawn again. Test accuracy is only reported; every choice
(teacher, weight, temperature, epochs) is made on val.

    python benchmarks/imagenet_weights.py /work/data/teachers/tm_a.h5   # once, offline
    python benchmarks/frontier.py --model mobilenet_v2_035 --weights imagenet --size 128 \
        --seed 0 --label peer_imagenet
    python benchmarks/frontier.py --model mobilevit_v2_mcu --weights tinyimagenet \
        --size 128 --seed 0 --teacher /work/data/teachers/inat_bird.tflite --label mcu_bird

``--import-earlier`` adds the points measured before this script existed (Tiny ImageNet
starting points, from ``cub100_accuracy.py``'s results files and ``mcu_speed.py``'s counts);
``--plot`` only redraws the figure.
"""

import argparse
import json
import os
import time

import numpy as np
from harness import publish, read_results

import tinymoe
from tinymoe.augment import AugmentConfig
from tinymoe.data import load_dataset
from tinymoe.distill import DEFAULT_ALPHA, DEFAULT_TEMPERATURE
from tinymoe.files import atomic_path
from tinymoe.models import CNNConfig, get_config

SRAM_BYTES = 320 * 1024  # an STM32F746: 320 KB of SRAM, 1 MB of flash
FLASH_BYTES = 1024 * 1024
# What the firmware app holds in SRAM beside the arena (and its 10% reserve) and one input
# image: a 16 KB stack, and the interpreter's and app's own .data/.bss, 5,388 and 5,287 bytes
# in the two models linked with the STM32F746's memory map (`tinymoe report --board
# stm32f746g_disco`: mobilevit_v2_mcu 297,792 bytes of SRAM, fits; mobilenet_v2_035 at
# 128x128 415,224 bytes, overflows by 87,544).
STACK_BYTES, APP_SRAM_BYTES = 16 * 1024, 5_400
COLUMNS = ("family", "model", "pretrained", "input_size", "distilled", "teacher", "seed",
           "instructions", "arena_bytes", "sram_bytes", "image_bytes", "fits", "val_top1",
           "test_top1", "test_int8_top1", "other_int8_top1")


def refit(row):
    """Sets ``row``'s ``sram_bytes`` (what the firmware app links into SRAM for it) and
    ``fits`` (that and the whole image within an STM32F746's 320 KB and 1 MB)."""
    if row.get("arena_bytes") is None:
        return row
    side = int(row["input_size"])
    row["sram_bytes"] = (-(-row["arena_bytes"] * 11 // 10) + side * side * 3 + STACK_BYTES
                         + APP_SRAM_BYTES)
    row["fits"] = bool(row["sram_bytes"] <= SRAM_BYTES and row["image_bytes"] <= FLASH_BYTES)
    return row


def family(model):
    return "peer" if isinstance(get_config(model), CNNConfig) else "tinymoe"


def device_columns(tflite_bytes):
    """Cortex-M7 (CMSIS-NN) instructions, arena and whole image, from the firmware app."""
    from tinymoe.export.firmware_app import measure_on_device, missing_requirements

    if missing_requirements("cortex-m7"):
        print(f"No Cortex-M7 build here ({missing_requirements('cortex-m7')}): "
              "instructions left empty", flush=True)
        return {}
    measured = measure_on_device(tflite_bytes, "cortex-m7")
    return {"instructions": measured["instructions"], "arena_bytes": measured["arena_bytes"],
            "image_bytes": measured["flash_bytes"]}


def other_source(path, data):
    """The second test set (photos of the data's species from neither CUB nor ImageNet), or
    None: a folder of class folders named as the data's classes (a subset of them), its
    labels mapped to the data's."""
    if not path:
        return None
    other = load_dataset(path, int(data.images.shape[1]))
    index = {name: i for i, name in enumerate(data.class_names)}
    unknown = [name for name in other.class_names if name not in index]
    if unknown:
        raise SystemExit(f"{path}: classes the data does not have: {unknown[:5]}")
    labels = np.array([index[other.class_names[label]] for label in other.labels])
    return other.images, labels


def stored_views(args, data):
    """The teacher's stored views (``--views``): read, or drawn (``--epochs``, ``--mixup``,
    seed ``--views-seed``), computed with ``--teacher`` and written there first."""
    from tinymoe.distill import load_teacher
    from tinymoe.teacher_views import (compute_teacher_logits, draw_views, load_views,
                                       save_views)

    if os.path.exists(args.views):
        return load_views(args.views)
    if not args.teacher:
        raise SystemExit(f"{args.views} does not exist: give --teacher to compute it.")
    x_train, _ = data.split("train")
    teacher = load_teacher(args.teacher, data, input_size=args.teacher_input_size)
    views = draw_views(len(x_train), args.epochs, seed=args.views_seed, mixup_alpha=args.mixup)
    start = time.time()
    views = compute_teacher_logits(teacher, x_train, views)
    views.meta["teacher_seconds"] = round(time.time() - start, 1)
    save_views(views, args.views)
    return views


# Points measured before this script: (label, family, model, size, accuracy results file and
# its variant, instruction counts file and its variant). Same recipe, data and TFLM scoring.
EARLIER = (
    ("mcu_tinyimagenet", "tinymoe", "mobilevit_v2_mcu", 128, "finetune_mcu_lr2e-3", "mcu",
     "mcu_speed_128px", "mcu"),
    ("mcu_tinyimagenet", "tinymoe", "mobilevit_v2_mcu", 160, "finetune_mcu_160px", "mcu",
     "mcu_speed_160px", "mcu_160"),
    ("peer_v3_070_tinyimagenet", "peer", "mobilenet_v3_small_070 (benchmarks cnn_peer)", 160,
     "finetune_peer070_160px", "cnn_peer", "mcu_speed_160px", "peer_070_160"),
    ("peer_v3_070_tinyimagenet", "peer", "mobilenet_v3_small_070 (benchmarks cnn_peer)", 176,
     "finetune_peer070_176px", "cnn_peer", "mcu_speed_128px", "peer_070_176"),
)


def earlier_rows(results="benchmarks/results"):
    """The :data:`EARLIER` points as frontier rows (labelled with their input size)."""
    rows = []
    for label, fam, model, size, accuracy, variant, speed, speed_variant in EARLIER:
        counted, _, _ = read_results(f"{results}/{speed}")
        device = next(r for r in counted if r["variant"] == speed_variant)
        trained, _, _ = read_results(f"{results}/{accuracy}")
        for row in (r for r in trained if r["variant"] == variant):
            rows.append({
                "family": fam, "model": model, "pretrained": "tinyimagenet",
                "input_size": size, "distilled": False, "teacher": None,
                "seed": row["seed"], "epochs": row["epochs"], "label": f"{label}_{size}",
                "params": row["params"], "macs": row["macs"], "val_top1": row["val_top1"],
                "test_top1": row["test_top1"], "test_int8_top1": row["int8_test_top1"],
                "instructions": device["instructions"],
                "arena_bytes": device["m7_arena_bytes"], "image_bytes": device["m7_flash_bytes"],
                "source": f"{accuracy}.json ({variant}); instructions {speed}.json "
                          f"({speed_variant}, untrained weights)"})
    return [refit(row) for row in rows]


def train_point(args, data, run_dir):
    from tinymoe.distill import Distillation, load_teacher
    from tinymoe.evaluation import evaluate, evaluate_tflite
    from tinymoe.export import to_tflite
    from tinymoe.pipeline import train_run
    from tinymoe.train import TrainConfig, recipe_for

    import dataclasses

    tinymoe.keras.utils.set_random_seed(args.seed)
    recipe = recipe_for(args.model, args.weights)
    overrides = {key: getattr(args, key) for key in ("learning_rate", "warmup_epochs",
                                                      "weight_decay", "label_smoothing")
                 if getattr(args, key) is not None}
    config = dataclasses.replace(recipe, epochs=args.epochs, **overrides)
    distillation = None
    if args.views:
        distillation = Distillation(stored_views(args, data), alpha=args.teacher_weight,
                                    temperature=args.temperature)
    elif args.teacher:
        teacher = load_teacher(args.teacher, data, input_size=args.teacher_input_size)
        distillation = Distillation(teacher, alpha=args.teacher_weight,
                                    temperature=args.temperature)
    augment = AugmentConfig(crop=True, flip=True, mixup_alpha=args.mixup)
    start = time.time()
    finished = os.path.join(run_dir, "summary.json")
    if os.path.exists(finished):  # trained by an earlier run that stopped after training
        from tinymoe.pipeline import load_model

        with open(finished) as handle:
            summary = json.load(handle)
        best = load_model(summary["best"])
        print(f"Reusing the trained model in {run_dir}", flush=True)
    else:
        best, summary = train_run(args.model, data, run_dir, config, augment, verbose=2,
                                  weights=args.weights, seed=args.seed,
                                  distillation=distillation)
    x_test, y_test = data.split("test")
    tflite_bytes = to_tflite(best, data.split("train")[0][:200])
    with atomic_path(os.path.join(run_dir, "model.tflite")) as tmp, open(tmp, "wb") as handle:
        handle.write(tflite_bytes)
    row = {"family": family(args.model), "model": args.model,
           "pretrained": args.weights or "none", "input_size": args.size,
           "distilled": distillation is not None,
           "teacher": args.teacher_label or (args.teacher and os.path.basename(args.teacher)),
           "teacher_views": args.views,
           "seed": args.seed, "epochs": args.epochs, "label": args.label,
           "recipe": {key: getattr(config, key) for key in (
               "learning_rate", "warmup_epochs", "weight_decay", "label_smoothing")},
           "mixup": args.mixup, "params": summary["params"], "macs": summary["macs"],
           "val_top1": summary["val_accuracy"],
           "test_top1": evaluate(best, x_test, y_test),
           "test_int8_top1": evaluate_tflite(tflite_bytes, x_test, y_test),
           "train_seconds": summary["train_seconds"]}
    if distillation is not None:
        row["distillation"] = distillation.describe()
    other = other_source(args.other_test, data)
    if other is not None:
        row["other_top1"] = evaluate(best, *other)
        row["other_int8_top1"] = evaluate_tflite(tflite_bytes, *other)
        row["other_images"] = int(len(other[1]))
    refit(row.update(device_columns(tflite_bytes)) or row)
    row["wall_s"] = round(time.time() - start, 1)
    return row


def _cell(value):
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, int) and value > 10_000:
        return f"{value / 1e6:.1f} M" if value > 10_000_000 else f"{value:,}"
    return str(value)


def markdown(rows, meta):
    rows = [refit(row) for row in rows]
    lines = ["# The frontier: cub100 accuracy against Cortex-M7 instructions", "",
             *(f"Command: `{run['command']}` ({run['wall_s']} s)" + "  "
               for run in meta["runs"]),
             f"Machine: {meta['machine']}  ", "",
             "One row per trained model; int8 = post-training full int8 in TFLite Micro; "
             "instructions, arena (`arena_used_bytes()`) and image (flash of the whole "
             "firmware) on the Cortex-M7 CMSIS-NN build under QEMU; sram = what the firmware "
             "app links into SRAM (arena + 10%, one input image, 16 KB stack, 5.4 KB of "
             "interpreter and app); fits = sram within 320 KB and image within 1 MB (an "
             "STM32F746). `other` is the second test set (photos from neither CUB nor "
             "ImageNet), where measured.", "",
             "| " + " | ".join(("label",) + COLUMNS) + " |",
             "|" + "---|" * (len(COLUMNS) + 1)]
    for row in sorted(rows, key=lambda r: (r["family"], r.get("instructions") or 0,
                                           r["label"], r["seed"])):
        lines.append("| " + " | ".join(_cell(row.get(k)) for k in ("label",) + COLUMNS) + " |")
    groups = {}
    for row in rows:
        groups.setdefault(row["label"], []).append(row)
    lines += ["", "Mean over seeds:", "",
              "| label | seeds | instructions | fits | val top-1 | test top-1 | test int8 |",
              "|---|---|---|---|---|---|---|"]
    for label, group in sorted(groups.items()):
        mean = {key: float(np.mean([r[key] for r in group]))
                for key in ("val_top1", "test_top1", "test_int8_top1")}
        lines.append(f"| {label} | {len(group)} | {_cell(group[0].get('instructions'))} | "
                     f"{_cell(group[0].get('fits'))} | {mean['val_top1']:.3f} | "
                     f"{mean['test_top1']:.3f} | {mean['test_int8_top1']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(rows, path):
    """int8 test top-1 against Cortex-M7 instructions, both families, fit marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {}
    for row in map(refit, rows):
        if row.get("instructions"):
            groups.setdefault(row["label"], []).append(row)
    fig, ax = plt.subplots(figsize=(7.5, 5.4))
    styles = {"tinymoe": ("tab:blue", "o"), "peer": ("tab:orange", "s")}
    for label, group in sorted(groups.items()):
        first = group[0]
        color, marker = styles[first["family"]]
        x = first["instructions"] / 1e6
        y = float(np.mean([r["test_int8_top1"] for r in group]))
        ax.scatter([x], [y], color=color, marker=marker, s=60 if first["fits"] else 60,
                   facecolors=color if first["fits"] else "none", zorder=3)
        size = str(first["input_size"])
        name = label if label.endswith(size) else f"{label} {size}px"
        # Names of points close together (within a name's width) stack upward.
        above = sum(1 for other in groups.values() if other is not group
                    and abs(other[0]["instructions"] / 1e6 - x) < 40
                    and (float(np.mean([r["test_int8_top1"] for r in other])),
                         other[0]["instructions"] / 1e6) < (y, x)
                    and abs(float(np.mean([r["test_int8_top1"] for r in other])) - y) < 0.004)
        ax.annotate(name, (x, y), fontsize=7, xytext=(4, 3 + 8 * above),
                    textcoords="offset points")
    for fam, (color, marker) in styles.items():
        ax.scatter([], [], color=color, marker=marker,
                   label="tinymoe (MobileViTv2)" if fam == "tinymoe" else "peer CNN (Keras)")
    ax.scatter([], [], color="grey", facecolors="none",
               label="does not fit an STM32F746 (320 KB SRAM, 1 MB flash)")
    ax.set_xlabel("Cortex-M7 (CMSIS-NN) instructions per image, millions")
    ax.set_ylabel("cub100 test top-1, int8 in TFLite Micro")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3)
    ax.margins(x=0.08, y=0.12)
    ax.set_title("Accuracy against instructions (filled: fits an STM32F746)", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def _fill_missing(out, start, column, fill):
    """Calls ``fill(row, run folder)`` on the rows of ``out`` that lack ``column`` (from
    their saved models), then publishes and redraws."""
    rows, _, _ = read_results(out)
    for row in rows:
        if row.get(column) is None:
            fill(row, f"{out}/runs/{row['label']}/seed{row['seed']}")
    rows = publish(out, rows, start, markdown, ("label", "seed"))
    plot(rows, f"{out}.png")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/cub100")
    parser.add_argument("--other-test", default=None, metavar="DIR",
                        help="a second test set: class folders named as the data's")
    parser.add_argument("--model", default="mobilevit_v2_mcu")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--warmup-epochs", type=float, default=None)
    parser.add_argument("--weight-decay", type=float, default=None)
    parser.add_argument("--label-smoothing", type=float, default=None)
    parser.add_argument("--mixup", type=float, default=0.0, help="MixUp alpha (0: off)")
    parser.add_argument("--teacher", default=None)
    parser.add_argument("--teacher-label", default=None, help="the teacher's name in rows")
    parser.add_argument("--teacher-weight", type=float, default=DEFAULT_ALPHA)
    parser.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE)
    parser.add_argument("--teacher-input-size", type=int, default=None)
    parser.add_argument("--views", default=None, metavar="NPZ",
                        help="train on the teacher's stored views (tinymoe.teacher_views): "
                             "read from NPZ, or computed with --teacher and written there")
    parser.add_argument("--views-seed", type=int, default=0)
    parser.add_argument("--label", required=False, help="the point's name in the table")
    parser.add_argument("--plot", action="store_true", help="only redraw the figure")
    parser.add_argument("--import-earlier", action="store_true",
                        help="only add the points measured before this script (EARLIER)")
    parser.add_argument("--score-other", action="store_true",
                        help="only score --other-test on the rows that lack it")
    parser.add_argument("--measure-missing", action="store_true",
                        help="only count, on the Cortex-M7 build, the rows whose "
                             "instructions are missing (from their saved model.tflite)")
    parser.add_argument("--out", default="benchmarks/results/frontier")
    args = parser.parse_args(argv)
    start = time.time()
    if args.plot:
        with open(f"{args.out}.json") as handle:
            plot(json.load(handle)["rows"], f"{args.out}.png")
        return
    if args.import_earlier:
        rows = publish(args.out, earlier_rows(), start, markdown, ("label", "seed"))
        plot(rows, f"{args.out}.png")
        return
    if args.score_other:
        # The second test set on rows trained before it was at hand (their saved models).
        from tinymoe.evaluation import evaluate, evaluate_tflite
        from tinymoe.pipeline import load_model

        def score_other(row, run):
            other = other_source(args.other_test, load_dataset(args.data, row["input_size"]))
            with open(f"{run}/model.tflite", "rb") as handle:
                row["other_int8_top1"] = evaluate_tflite(handle.read(), *other)
            row["other_top1"] = evaluate(load_model(f"{run}/best.keras"), *other)
            row["other_images"] = int(len(other[1]))

        _fill_missing(args.out, start, "other_int8_top1", score_other)
        return
    if args.measure_missing:
        def measure(row, run):
            with open(f"{run}/model.tflite", "rb") as handle:
                row.update(device_columns(handle.read()))

        _fill_missing(args.out, start, "instructions", measure)
        return
    if not args.label:
        parser.error("--label names the point")
    data = load_dataset(args.data, args.size)
    run_dir = f"{args.out}/runs/{args.label}/seed{args.seed}"
    row = train_point(args, data, run_dir)
    print(json.dumps(row, indent=2), flush=True)
    rows = publish(args.out, [row], start, markdown, ("label", "seed"))
    plot(rows, f"{args.out}.png")


if __name__ == "__main__":
    main()
