"""The ``tinymoe`` command line."""

import argparse
import json
import os
import sys

# Where `report` and `export` measure the arena: the Python interpreter, or a firmware build
# of TFLite Micro (tinymoe.export.device).
TARGETS = ("python", "host", "cortex-m3")


def _models(args):
    from tinymoe.models.summary import format_table, summarize_models

    rows = summarize_models(args.model or None, args.input_size, args.num_classes)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"Input {args.input_size}x{args.input_size}x3, {args.num_classes} classes; "
              "int8 = full-int8 TFLite, checked in the TFLite Micro interpreter.")
        print(format_table(rows))
        for row in rows:
            if "tflm_message" in row:
                print(f"{row['model']}: {row['tflm_message']}")
    return 0 if all(row["runs_in_tflm"] == "yes" for row in rows) else 1


def _parse_layers(text):
    """``"4:-1,5:-1"`` -> ((4, -1), (5, -1))."""
    try:
        return tuple(tuple(int(v) for v in item.split(":")) for item in text.split(","))
    except ValueError:
        raise ValueError(f"--layers takes STAGE:INDEX pairs such as 4:-1,5:-1, got {text!r}.")


def _augment(name):
    from tinymoe.augment import AugmentConfig

    return {"none": None, "default": AugmentConfig(),
            "digits": AugmentConfig(crop_area=(0.7, 1.0), flip=False),
            "strong": AugmentConfig(rand_augment=True, mixup_alpha=0.2, cutmix_alpha=1.0)}[name]


def _train(args):
    from tinymoe.data import load_dataset
    from tinymoe.pipeline import train_run
    from tinymoe.train import TrainConfig

    data = load_dataset(args.data, args.input_size)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size,
                         learning_rate=args.learning_rate, warmup_epochs=args.warmup_epochs,
                         weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
                         initial_epoch=args.initial_epoch, save_epochs=tuple(args.save_epochs))
    _, summary = train_run(args.model, data, args.out, config, _augment(args.augment),
                           train_dispatch=args.train_dispatch,
                           capacity_factor=args.capacity_factor)
    print(json.dumps(summary, indent=2))
    return 0


def _upcycle(args):
    from tinymoe.data import load_dataset
    from tinymoe.models import MoEConfig
    from tinymoe.pipeline import upcycle_run

    data = load_dataset(args.data, args.input_size)
    config = MoEConfig(num_experts=args.experts, top_k=args.top_k,
                       layers=_parse_layers(args.layers), routing=args.routing)
    _, summary = upcycle_run(args.dense, data, args.out, config, router=args.router,
                             num_images=args.images, linkage=args.linkage, noise=args.noise)
    print(json.dumps(summary, indent=2))
    return 0


def _analyze(args):
    from tinymoe.data import load_dataset
    from tinymoe.pipeline import analyze_run

    data = load_dataset(args.data, args.input_size)
    print(json.dumps(analyze_run(args.model, data, args.out, args.split, args.images),
                     indent=2))
    return 0


def _optimize(args):
    from tinymoe.data import load_dataset
    from tinymoe.pipeline import optimize_run

    data = load_dataset(args.data, args.input_size)
    _, summary = optimize_run(args.model, data, args.out, sparsity=args.sparsity,
                              prune_epochs=args.prune_epochs, qat_epochs=args.qat_epochs,
                              batch_size=args.batch_size, learning_rate=args.learning_rate,
                              augment=_augment(args.augment), prune_router=args.prune_router,
                              dispatch=args.dispatch, capacity_factor=args.capacity_factor)
    print(json.dumps(summary, indent=2))
    return 0


def _read_tflite(path):
    if not os.path.isfile(path):
        raise ValueError(f"Model file {path!r} does not exist.")
    with open(path, "rb") as handle:
        data = handle.read()
    if data[4:8] != b"TFL3":
        raise ValueError(f"{path!r} is not a .tflite flatbuffer.")
    return data


def _measure(tflite_bytes, args, device_bytes=None):
    """report(), with the arena limit checked on the --target build when one is given.

    ``device_bytes``: the model as the device runs it when it differs from ``tflite_bytes``
    (LUT-compressed: LiteRT, which counts the ops and MACs, cannot load it; the arena is
    measured on it).
    """
    from tinymoe.export import ArenaError, report, smallest_arena
    from tinymoe.export.device import measure_on_device
    from tinymoe.export.report import ARENA_NOTE

    if device_bytes is None and args.target == "python":
        return report(tflite_bytes, arena_limit=args.arena_limit)
    device_bytes = tflite_bytes if device_bytes is None else device_bytes
    result = report(tflite_bytes, arena=False)
    result.update(arena_bytes=smallest_arena(device_bytes), arena_note=ARENA_NOTE)
    arena, where = result["arena_bytes"], ""
    if args.target != "python":
        result["device"] = measure_on_device(device_bytes, args.target, result["arena_bytes"])
        arena, where = result["device"]["arena_bytes"], f" on the {args.target} build"
    if args.arena_limit and arena > args.arena_limit:
        raise ArenaError(f"The model needs a tensor arena of {arena:,} bytes{where}, more "
                         f"than the limit of {args.arena_limit:,} bytes.")
    return result


def _report(args):
    from tinymoe.export import format_report

    result = _measure(_read_tflite(args.model), args)
    if args.flash_limit and result["device_model_bytes"] > args.flash_limit:
        raise ValueError(f"The model takes {result['device_model_bytes']:,} bytes of flash as "
                         f"the firmware embeds it, more than the limit of "
                         f"{args.flash_limit:,} bytes.")
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


def _export(args):
    from tinymoe.export import report, write_firmware

    args.dispatch_given = args.dispatch is not None
    args.dispatch = args.dispatch or "sparse"
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"Output path {args.out!r} is a file, not a folder.")
    labels = None
    if args.model.endswith(".keras"):
        from tinymoe.data import load_dataset
        from tinymoe.export import to_tflite
        from tinymoe.pipeline import load_model

        from tinymoe.models import has_experts, with_dispatch

        model = load_model(args.model)
        if has_experts(model):
            model = with_dispatch(model, args.dispatch, args.capacity_factor)
        data = load_dataset(args.data, int(model.input_shape[1]))
        tflite_bytes = to_tflite(model, data.split("train")[0][:200])
        labels = data.class_names
    else:
        tflite_bytes = _read_tflite(args.model)
        if args.dispatch_given:
            raise ValueError("--dispatch applies when converting a .keras model; a .tflite "
                             "model keeps the dispatch it was converted with.")
    labels_path = args.labels or os.path.join(os.path.dirname(args.model), "labels.txt")
    if args.labels or (labels is None and os.path.isfile(labels_path)):
        if not os.path.isfile(labels_path):
            raise ValueError(f"Labels file {labels_path!r} does not exist.")
        with open(labels_path) as handle:
            labels = [line.strip() for line in handle if line.strip()]
    from tinymoe.export import strip_for_device

    device_bytes = None
    if args.lut:
        from tinymoe.export.compress import lut_compress

        group, _, bits = args.lut.partition(":")
        if not bits.isdigit():
            raise ValueError(f"--lut takes GROUP:BITS, e.g. experts:4, got {args.lut!r}.")
        device_bytes = lut_compress(tflite_bytes, group, int(bits))[0]
    embedded = tflite_bytes if device_bytes is None else device_bytes
    model_bytes = len(embedded if args.keep_names else strip_for_device(embedded)[0])
    if args.flash_limit and model_bytes > args.flash_limit:
        raise ValueError(f"The model array takes {model_bytes:,} bytes of flash, more than the "
                         f"limit of {args.flash_limit:,} bytes.")
    measured = _measure(tflite_bytes, args, device_bytes)
    arena, where = measured["arena_bytes"], "the TFLite Micro Python interpreter (64-bit host)"
    if "device" in measured:
        arena = measured["device"]["arena_bytes"]
        where = f"the {args.target} build of TFLite Micro (arena_used_bytes())"
    paths = write_firmware(embedded, args.out, name=args.name, labels=labels,
                           arena_bytes=arena, arena_margin=args.arena_margin,
                           arena_source=where, strip=not args.keep_names)
    print(f"Wrote {len(paths)} files to {args.out}: model array {model_bytes:,} bytes, "
          f"arena {arena:,} bytes measured in {where} (+{args.arena_margin:.0%} in "
          f"model_settings.h), {measured['macs']:,} MACs.")
    return 0


def _demo(args):
    from tinymoe.pipeline import demo

    summary = demo(args.out, dense_epochs=args.dense_epochs, moe_epochs=args.moe_epochs)
    dense, moe = summary["dense"], summary["moe"]
    print("\nDemo on scikit-learn digits (32x32, 10 classes):")
    print("| model | params | MACs | val top-1 |\n|---|---|---|---|")
    for label, row in (("dense MobileViTv2-0.5", dense), ("cluster-upcycled MoE-0.5", moe)):
        print(f"| {label} | {row['params']:,} | {row['macs']:,} | {row['val_accuracy']:.3f} |")
    int8 = summary["int8"]
    print(f"| MoE-0.5, QAT int8 in TFLite Micro ({int8['dispatch']} dispatch) | | "
          f"{int8['macs']:,} | {int8['int8_tflm_top1']:.3f} |")
    for key, layer in summary["analysis"].items():
        print(f"{key}: expert load {layer['load']}; figures in {os.path.dirname(layer['files'][0])}")
    print(f"int8 model: {int8['flash_bytes']:,} bytes flash, {int8['arena_bytes']:,} bytes "
          f"arena (measured in TFLite Micro); firmware files in "
          f"{os.path.join(args.out, 'firmware')}")
    return 0


def _add_data_args(parser, default_size=32):
    parser.add_argument("--data", default="digits", metavar="DIR",
                        help="'digits' (built in, no download) or a dataset folder: class "
                             "folders of images, or images/ plus splits.csv (path,species,split)")
    parser.add_argument("--input-size", type=int, default=default_size, metavar="PIXELS",
                        help=f"square image side, a multiple of 32 (default: {default_size})")


def build_parser():
    """The ``tinymoe`` argument parser, one sub-command per step.

    Example:
        >>> build_parser().parse_args(["report", "model.tflite"]).command
        'report'
    """
    parser = argparse.ArgumentParser(
        prog="tinymoe",
        description="MobileViTv2 with mixtures of experts, from Keras to TensorFlow Lite Micro.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = commands.add_parser(
        "models", help="list the registered models with params, MACs and int8 size",
        description="Builds every registered model (or those named), counts its parameters "
                    "and MACs, converts it to full int8 and runs it once in the TFLite Micro "
                    "interpreter. Exits 1 if any model does not run there.")
    models.add_argument("--model", action="append", metavar="NAME",
                        help="a model to include (repeatable; default: all)")
    models.add_argument("--input-size", type=int, default=128, metavar="PIXELS",
                        help="square input side, a multiple of 32 (default: 128)")
    models.add_argument("--num-classes", type=int, default=100, metavar="N",
                        help="number of classes (default: 100)")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(run=_models)

    train = commands.add_parser(
        "train", help="train a model with Keras fit (AdamW, cosine decay, label smoothing)",
        description="Trains a registered model, or continues a .keras model (e.g. one made by "
                    "'tinymoe upcycle'), and writes OUT/best.keras, OUT/log.csv and "
                    "OUT/summary.json.")
    train.add_argument("--model", default="mobilevit_v2_050",
                       help="registry name or .keras file (default: mobilevit_v2_050)")
    _add_data_args(train)
    train.add_argument("--out", required=True, metavar="DIR", help="output folder")
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--learning-rate", type=float, default=2e-3, help="peak (default 2e-3)")
    train.add_argument("--warmup-epochs", type=float, default=2.0)
    train.add_argument("--save-epochs", type=int, nargs="+", default=[], metavar="N",
                       help="also write OUT/epoch<N>.keras after these epochs (e.g. the "
                            "checkpoint to upcycle from)")
    train.add_argument("--initial-epoch", type=int, default=0, metavar="N",
                       help="resume the --epochs schedule at epoch N: train epochs N+1 to "
                            "--epochs with the learning rate where the schedule stood, "
                            "re-warmed over half an epoch (for a model upcycled from "
                            "epoch<N>.keras; keep the other settings of the first run)")
    train.add_argument("--weight-decay", type=float, default=0.05)
    train.add_argument("--label-smoothing", type=float, default=0.1)
    train.add_argument("--augment", choices=("none", "default", "digits", "strong"),
                       default="default",
                       help="none; default (random crop and flip); digits (crop, no flip); "
                            "strong (crop, flip, RandAugment, MixUp/CutMix)")
    train.add_argument("--train-dispatch", choices=("masked", "sparse"), default=None,
                       help="MoE models: 'sparse' trains with the fixed capacity of the sparse "
                            "export, dropping the patches over capacity as the device will "
                            "(capacity-aware fine-tuning); default: the model's own (masked)")
    train.add_argument("--capacity-factor", type=float, default=1.25,
                       help="slots per expert as a multiple of patches / experts, for "
                            "--train-dispatch sparse (default 1.25)")
    train.set_defaults(run=_train)

    upcycle = commands.add_parser(
        "upcycle", help="turn a trained dense model into a mixture of experts",
        description="Clusters the post-attention patch embeddings of a trained dense model "
                    "(agglomerative clustering), initialises each MoE router from the "
                    "clusters and copies the dense feed-forward into every expert. Writes "
                    "OUT (.keras) and a JSON report beside it. Fine-tune it with "
                    "'tinymoe train --model OUT'.")
    upcycle.add_argument("dense", help="the dense .keras model")
    _add_data_args(upcycle)
    upcycle.add_argument("--out", required=True, metavar="FILE.keras")
    upcycle.add_argument("--experts", type=int, default=4)
    upcycle.add_argument("--top-k", type=int, default=1)
    upcycle.add_argument("--layers", default="4:-1,5:-1", metavar="STAGE:INDEX,...",
                         help="transformer layers that get experts (default: 4:-1,5:-1, the "
                              "last layer of stages 4 and 5)")
    upcycle.add_argument("--routing", choices=("patch", "token"), default="patch")
    upcycle.add_argument("--router", choices=("cluster", "random"), default="cluster",
                         help="cluster (the paper's initialisation) or random (baseline)")
    upcycle.add_argument("--linkage", choices=("ward", "complete", "average", "single"),
                         default="ward")
    upcycle.add_argument("--images", type=int, default=512,
                         help="training images whose patches are clustered (default: 512)")
    upcycle.add_argument("--noise", type=float, default=0.0,
                         help="relative noise added to the expert copies (default: 0)")
    upcycle.set_defaults(run=_upcycle)

    analyze = commands.add_parser(
        "analyze", help="class-expert affinity, expert load and patch-grouping figures",
        description="Writes, for every MoE layer: the class-expert affinity matrix (plain "
                    "and the paper's variant) as PNG and .npz, the expert load, and images "
                    "with their patches coloured by expert.")
    analyze.add_argument("model", help="a .keras model with experts")
    _add_data_args(analyze)
    analyze.add_argument("--out", required=True, metavar="DIR")
    analyze.add_argument("--split", choices=("train", "val", "test"), default="val")
    analyze.add_argument("--images", type=int, default=512, help="images analysed at most")
    analyze.set_defaults(run=_analyze)

    optimize = commands.add_parser(
        "optimize", help="prune, quantisation-aware training and int8 conversion (TFLM-checked)",
        description="Prunes a trained .keras model by magnitude (tfmot) if --sparsity > 0, "
                    "fine-tunes it with quantisation-aware training (prune-preserving after "
                    "pruning) if --qat-epochs > 0, converts it to full int8, checks it in "
                    "the TFLite Micro interpreter, and compares float and int8 top-1 on the "
                    "validation split. Writes OUT/model.tflite, OUT/labels.txt, "
                    "OUT/optimized.keras (OUT/pruned.keras) and OUT/summary.json.")
    optimize.add_argument("model", help="the trained .keras model")
    _add_data_args(optimize)
    optimize.add_argument("--out", required=True, metavar="DIR")
    optimize.add_argument("--sparsity", type=float, default=0.0,
                          help="share of kernel weights pruned to zero (default: 0, no pruning)")
    optimize.add_argument("--prune-epochs", type=int, default=2)
    optimize.add_argument("--prune-router", action="store_true",
                          help="prune the MoE routers too (default: left dense)")
    optimize.add_argument("--qat-epochs", type=int, default=2,
                          help="quantisation-aware training epochs (0: post-training only)")
    optimize.add_argument("--batch-size", type=int, default=32)
    optimize.add_argument("--learning-rate", type=float, default=2e-4)
    optimize.add_argument("--augment", choices=("none", "default", "digits", "strong"),
                          default="none")
    optimize.add_argument("--dispatch", choices=("sparse", "masked"), default="sparse",
                          help="MoE inference form in model.tflite (default: sparse)")
    optimize.add_argument("--capacity-factor", type=float, default=1.25)
    optimize.set_defaults(run=_optimize)

    report = commands.add_parser(
        "report", help="flash, smallest tensor arena, MACs and ops of a .tflite model",
        description="Measures a .tflite model in the TFLite Micro interpreter: flash bytes, "
                    "the smallest tensor arena that allocates and invokes (bisection), MACs "
                    "per inference and per op type, and the op list. The arena is measured "
                    "on this 64-bit host: an upper bound for a 32-bit MCU.")
    report.add_argument("model", help="a .tflite model")
    report.add_argument("--json", action="store_true", help="print JSON (every op listed)")
    report.add_argument("--arena-limit", type=int, metavar="BYTES",
                        help="fail (exit 2) if the arena needed is larger")
    report.add_argument("--flash-limit", type=int, metavar="BYTES",
                        help="fail (exit 2) if the model is larger")
    report.add_argument("--target", choices=TARGETS, default="python",
                        help="also build the firmware app against TFLite Micro's C++ sources "
                             "and measure there: cortex-m3 (QEMU mps2-an385: the arena a "
                             "32-bit MCU needs, and the image's flash) or host; --arena-limit "
                             "then applies to that arena (default: python only)")
    report.set_defaults(run=_report)

    export = commands.add_parser(
        "export", help="firmware files for TensorFlow Lite Micro (C arrays, op resolver, ...)",
        description="Writes model_data.h/.cc, op_resolver.h, model_settings.h and "
                    "labels.h/.cc into OUT for the app in firmware_export/. MODEL is a "
                    ".tflite (labels from --labels or labels.txt beside it) or a .keras "
                    "model (converted to int8 here, calibrated and labelled with --data).")
    export.add_argument("model", help="a .tflite or .keras model")
    export.add_argument("--out", required=True, metavar="DIR")
    export.add_argument("--name", default="model",
                        help="C name: g_<name>_model_data (default: model)")
    export.add_argument("--labels", metavar="FILE", help="class names, one per line")
    export.add_argument("--data", default="digits", metavar="DIR",
                        help="for a .keras model: calibration images and class names")
    export.add_argument("--dispatch", choices=("sparse", "masked"), default=None,
                        help="for a .keras MoE model: sparse (fixed-capacity top-1 dispatch, "
                             "about one feed-forward per MoE layer; the default) or masked "
                             "(every expert runs)")
    export.add_argument("--capacity-factor", type=float, default=1.25,
                        help="sparse dispatch: slots per expert x patches / E (default 1.25)")
    export.add_argument("--arena-margin", type=float, default=0.1,
                        help="share added to the measured arena (default: 0.1)")
    export.add_argument("--arena-limit", type=int, metavar="BYTES",
                        help="fail, writing nothing, if the arena needed is larger")
    export.add_argument("--flash-limit", type=int, metavar="BYTES",
                        help="fail, writing nothing, if the model array is larger")
    export.add_argument("--lut", metavar="GROUP:BITS",
                        help="compress weights with TFLite Micro's look-up tables (DECODE op): "
                             "experts:4 (the MoE layers' weights, 4-bit per-channel indices) "
                             "or all:BITS (every convolution and fully connected weight); "
                             "costs accuracy, see benchmarks/results/lut_compression_*.md")
    export.add_argument("--keep-names", action="store_true",
                        help="embed the .tflite as it is; by default names, metadata and "
                             "repeated zero points are stripped (about 12%% less flash, same "
                             "output in TFLite Micro; names in tensor_names.txt)")
    export.add_argument("--target", choices=TARGETS, default="python",
                        help="where the arena is measured for kTensorArenaSize and "
                             "--arena-limit: python (the TFLite Micro Python interpreter, an "
                             "upper bound; the default), cortex-m3 (the firmware app built "
                             "for Cortex-M3 and run under QEMU) or host")
    export.set_defaults(run=_export)

    demo = commands.add_parser(
        "demo", help="the whole job on the built-in digits, in a few minutes",
        description="Dense training -> cluster-initialised upcycling -> MoE fine-tuning -> "
                    "affinity figures -> QAT -> int8 in TFLite Micro -> firmware files, on "
                    "scikit-learn's digits at 32x32.")
    demo.add_argument("--out", default="runs/demo", metavar="DIR")
    demo.add_argument("--dense-epochs", type=int, default=12)
    demo.add_argument("--moe-epochs", type=int, default=6)
    demo.set_defaults(run=_demo)
    return parser


def main(argv=None):
    """Entry point of the ``tinymoe`` command.

    Example:
        >>> main(["report", "runs/opt/model.tflite"])
        0
    """
    from tinymoe.export.device import FirmwareError

    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FirmwareError) as error:  # bad input, or a firmware build that failed:
        print(f"tinymoe {args.command}: error: {error}", file=sys.stderr)  # say what, briefly
        return 2


if __name__ == "__main__":
    sys.exit(main())
