"""The ``tinymoe`` command line."""

import argparse
import logging
import os
import sys
import warnings

from tinymoe import commands
from tinymoe.cli_args import (CAPACITY_HELP, _add_classifier_args, _add_data_args,
                              _add_seed_arg, _add_teacher_args, _board_names,
                              _capacity_factor)

# Where `report` and `export` measure the arena: the Python interpreter, or a firmware build
# of TFLite Micro (tinymoe.export.firmware_app).
TARGETS = ("python", "host", "cortex-m3", "cortex-m4f", "cortex-m7")


def build_parser():
    """The ``tinymoe`` argument parser, one sub-command per step.

    Example:
        >>> build_parser().parse_args(["report", "model.tflite"]).command
        'report'
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show TensorFlow's own log lines, hidden by default (as "
                             "TF_CPP_MIN_LOG_LEVEL=0 does), and warnings as Python prints them")
    parser = argparse.ArgumentParser(
        prog="tinymoe", parents=[common],
        description="MobileViTv2 with mixtures of experts, from Keras to TensorFlow Lite Micro.")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = subcommands.add_parser(
        "models", help="list the registered models with params, MACs and int8 size",
        description="Builds every registered model (or those named), counts its parameters "
                    "and MACs, converts it to full int8 and runs it once in the TFLite Micro "
                    "interpreter. Exits 1 if any model does not run there.", parents=[common])
    models.add_argument("--model", action="append", metavar="NAME",
                        help="a model to include (repeatable; default: all)")
    models.add_argument("--input-size", type=int, default=128, metavar="PIXELS",
                        help="square input side, a multiple of 32 (default: 128)")
    models.add_argument("--num-classes", type=int, default=100, metavar="N",
                        help="number of classes (default: 100)")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(run=commands.run_models)

    train = subcommands.add_parser(
        "train", help="train a model with Keras fit (AdamW, cosine decay, label smoothing)",
        description="Trains a registered model, or continues a .keras model (e.g. one made by "
                    "'tinymoe upcycle'), and writes OUT/best.keras, OUT/labels.txt, OUT/log.csv "
                    "and OUT/summary.json. Every epoch is backed up in OUT/train_backup: a run "
                    "stopped part-way, started again with the same arguments, goes on from "
                    "its last finished epoch.", parents=[common])
    train.add_argument("--model", default="mobilevit_v2_050",
                       help="registry name or .keras file (default: mobilevit_v2_050)")
    train.add_argument("--weights", default=None, metavar="NAME",
                       help="start a registered model from pretrained weights: tinyimagenet "
                            "(shipped with tinymoe; 'tinymoe models' lists which models have "
                            "them) or imagenet (Keras Applications' CNNs, mobilenet_v2_*); the "
                            "classifier is new. Then --learning-rate, --warmup-epochs, "
                            "--weight-decay and --label-smoothing default to the fine-tuning "
                            "recipe (tinymoe.train.recipe_for) (default: random weights)")
    _add_data_args(train, default_size=None)
    train.add_argument("--out", required=True, metavar="DIR", help="output folder")
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--learning-rate", type=float, default=None,
                       help="peak (default 2e-3; with --weights, the fine-tuning recipe's)")
    train.add_argument("--warmup-epochs", type=float, default=None,
                       help="default 2; with --weights, the fine-tuning recipe's")
    train.add_argument("--save-epochs", type=int, nargs="+", default=[], metavar="N",
                       help="also write OUT/epoch<N>.keras after these epochs (e.g. the "
                            "checkpoint to upcycle from)")
    train.add_argument("--initial-epoch", type=int, default=0, metavar="N",
                       help="resume the --epochs schedule at epoch N: train epochs N+1 to "
                            "--epochs with the learning rate where the schedule stood, "
                            "re-warmed over half an epoch (for a model upcycled from "
                            "epoch<N>.keras; keep the other settings of the first run)")
    train.add_argument("--weight-decay", type=float, default=None,
                       help="AdamW's decoupled weight decay (default 0.05; with --weights, "
                            "the fine-tuning recipe's)")
    train.add_argument("--label-smoothing", type=float, default=None,
                       help="default 0.1; with --weights, the fine-tuning recipe's")
    train.add_argument("--augment", choices=("none", "default", "digits", "strong"),
                       default="default",
                       help="none; default (random crop and flip); digits (crop, no flip); "
                            "strong (crop, flip, RandAugment, MixUp/CutMix)")
    train.add_argument("--mixup", type=float, default=None, metavar="ALPHA",
                       help="MixUp of that strength on top of --augment (the recommended "
                            "recipe uses 0.2)")
    train.add_argument("--train-dispatch", choices=("masked", "sparse"), default=None,
                       help="MoE models: 'sparse' trains with the fixed capacity of the sparse "
                            "export, dropping the patches over capacity as the device will "
                            "(capacity-aware fine-tuning); default: the model's own (masked)")
    train.add_argument("--capacity-factor", type=float, default=2.0,
                       help="slots per expert as a multiple of patches / experts, for "
                            "--train-dispatch sparse (default 2.0: export then calibrates "
                            "its own, see 'tinymoe export --capacity-factor')")
    train.add_argument("--distribute", choices=("none", "mirrored", "multi-worker"),
                       default="none",
                       help="mirrored: Keras fit under tf.distribute.MirroredStrategy, one "
                            "replica per GPU (per logical CPU device without GPUs); "
                            "multi-worker: tf.distribute.MultiWorkerMirroredStrategy, the "
                            "same command on every machine, each with its TF_CONFIG (the "
                            "cluster and its own index; worker 0 writes OUT). "
                            "--batch-size and --learning-rate are then per replica: the "
                            "global batch is batch-size x replicas and the peak learning rate "
                            "learning-rate x replicas (linear scaling); summary.json records "
                            "both (default: none, one device)")
    _add_teacher_args(train)
    _add_seed_arg(train)
    train.set_defaults(run=commands.run_train)

    upcycle = subcommands.add_parser(
        "upcycle", help="turn a trained dense model into a mixture of experts",
        description="Clusters the post-attention patch embeddings of a trained dense model "
                    "(agglomerative clustering), initialises each MoE router from the "
                    "clusters and copies the dense feed-forward into every expert. Writes "
                    "OUT (.keras) and a JSON report beside it. Fine-tune it with "
                    "'tinymoe train --model OUT'. When to use it: to study routing, or on "
                    "data far larger than a few thousand images. Every mixture of experts "
                    "measured so far ties its dense twin (cub100, and Tiny ImageNet upcycled "
                    "late; benchmarks/README.md) while it costs the experts' flash: for the "
                    "most accurate model per byte, deploy the dense model.", parents=[common])
    upcycle.add_argument("dense", help="the dense .keras model")
    _add_data_args(upcycle, default_size=None)
    upcycle.add_argument("--out", required=True, metavar="FILE.keras")
    upcycle.add_argument("--experts", type=int, default=4)
    upcycle.add_argument("--top-k", type=int, default=1)
    upcycle.add_argument("--layers", default="4:-1,5:-1", metavar="STAGE:INDEX,...",
                         help="transformer layers that get experts (default: 4:-1,5:-1, the "
                              "last layer of stages 4 and 5)")
    upcycle.add_argument("--routing", choices=("auto", "patch", "token", "image"),
                         default="auto",
                         help="auto (the default): per patch where a layer has at least 2 x "
                              "experts patches per image, per token elsewhere; image: one "
                              "expert per image, clustered on whole-image embeddings")
    upcycle.add_argument("--router", choices=("cluster", "random", "superclass"),
                         default="cluster",
                         help="cluster (the paper's initialisation), random (baseline), or "
                              "superclass (with --routing image: classes clustered into one "
                              "super-class per expert; training then teaches the router "
                              "to predict them)")
    upcycle.add_argument("--linkage", choices=("ward", "complete", "average", "single"),
                         default="ward")
    upcycle.add_argument("--images", type=int, default=512,
                         help="training images whose patches are clustered (default: 512)")
    upcycle.add_argument("--noise", type=float, default=0.0,
                         help="relative noise added to the expert copies (default: 0)")
    upcycle.add_argument("--reinit", type=float, default=0.0, metavar="FRACTION",
                         help="fraction of each expert's hidden units drawn afresh from the "
                              "dense weights' statistics, a different subset per expert "
                              "(Drop-Upcycling; default: 0, exact copies)")
    upcycle.add_argument("--expert-dropout", type=float, default=0.0, metavar="RATE",
                         help="dropout on the experts' hidden units when the MoE trains "
                              "(Switch Transformer's expert dropout; default: 0)")
    upcycle.set_defaults(run=commands.run_upcycle)

    analyze = subcommands.add_parser(
        "analyze", help="class-expert affinity, expert load, patch-grouping figures and "
                        "whether the experts differ at all",
        description="Writes, for every MoE layer: the class-expert affinity matrix (plain "
                    "and the paper's variant) as PNG and .npz, the expert load, and images "
                    "with their patches coloured by expert; and a diagnosis of the experts: "
                    "their weights' cosine similarity and spread, and top-1 with each "
                    "layer's experts replaced by their mean (if it does not drop, the MoE "
                    "is the dense model in disguise).", parents=[common])
    analyze.add_argument("model", help="a .keras model with experts")
    _add_data_args(analyze, default_size=None)
    analyze.add_argument("--out", required=True, metavar="DIR")
    analyze.add_argument("--split", choices=("train", "val", "test"), default="val")
    analyze.add_argument("--images", type=int, default=512, help="images analysed at most")
    analyze.add_argument("--dense", metavar="KERAS",
                         help="the dense model it was upcycled from: how far each expert "
                              "moved from the feed-forward it was copied from")
    analyze.set_defaults(run=commands.run_analyze)

    optimize = subcommands.add_parser(
        "optimize", help="prune, quantisation-aware training and int8 conversion (TFLM-checked)",
        description="Prunes a trained .keras model by magnitude (tfmot) if --sparsity > 0, "
                    "fine-tunes it with quantisation-aware training (prune-preserving after "
                    "pruning) if --qat-epochs > 0, converts it to full int8, checks it in "
                    "the TFLite Micro interpreter, and compares float and int8 top-1 on the "
                    "validation split. Writes OUT/model.tflite, OUT/labels.txt, "
                    "OUT/optimized.keras (OUT/pruned.keras) and OUT/summary.json.",
        parents=[common])
    optimize.add_argument("model", help="the trained .keras model")
    _add_data_args(optimize, default_size=None)
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
    optimize.add_argument("--capacity-factor", type=_capacity_factor, default="auto",
                          help=CAPACITY_HELP)
    _add_teacher_args(optimize)
    _add_seed_arg(optimize)
    optimize.set_defaults(run=commands.run_optimize)

    report = subcommands.add_parser(
        "report", help="flash, smallest tensor arena, MACs and ops of a .tflite model",
        description="Measures a .tflite model in the TFLite Micro interpreter: flash bytes, "
                    "the smallest tensor arena that allocates and invokes (bisection), MACs "
                    "per inference and per op type, and the op list. The arena is measured "
                    "on this 64-bit host: an upper bound for a 32-bit MCU.", parents=[common])
    report.add_argument("model", help="a .tflite model")
    report.add_argument("--json", action="store_true", help="print JSON (every op listed)")
    report.add_argument("--arena-limit", type=int, metavar="BYTES",
                        help="fail (exit 2) if the arena needed is larger")
    report.add_argument("--flash-limit", type=int, metavar="BYTES",
                        help="fail (exit 2) if the model is larger")
    report.add_argument("--target", choices=TARGETS, default="python",
                        help="also build the firmware app against TFLite Micro's C++ sources "
                             "and measure there: cortex-m7 (CMSIS-NN kernels, QEMU "
                             "mps2-an500: what an STM32F746 runs) or cortex-m3 (reference "
                             "kernels, QEMU mps2-an385) give the arena a 32-bit MCU needs, "
                             "the image's flash and the instructions per inference and per "
                             "op; host the arena of a native build; --arena-limit then "
                             "applies to that arena (default: python only)")
    report.add_argument("--clock-mhz", type=float, default=216.0, metavar="MHZ",
                        help="clock for the milliseconds shown beside the instructions, at "
                             "one instruction per cycle (default: 216, an STM32F746)")
    report.add_argument("--board", action="append", metavar="NAME",
                        help="link the firmware (TFLite Micro with CMSIS-NN for the board's "
                             "core) with the memory map of a real part and say whether it "
                             "fits, with the margins or the overflow the linker names, and "
                             "the instructions per inference at the board's clock; "
                             "repeatable, or 'all' (boards: "
                             + ", ".join(_board_names()) + ")")
    report.set_defaults(run=commands.run_report)

    export = subcommands.add_parser(
        "export", help="firmware files for TensorFlow Lite Micro (C arrays, op resolver, ...)",
        description="Writes model_data.h/.cc, op_resolver.h, model_settings.h and "
                    "labels.h/.cc into OUT for the app in firmware_export/. MODEL is a "
                    ".tflite (labels from --labels or labels.txt beside it) or a .keras "
                    "model (converted to int8 here, calibrated and labelled with --data).",
        parents=[common])
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
    export.add_argument("--capacity-factor", type=_capacity_factor, default="auto",
                        help=CAPACITY_HELP)
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
                             "upper bound; the default), cortex-m7 or cortex-m3 (the firmware "
                             "app built for that core and run under QEMU) or host")
    export.add_argument("--format", choices=("files", "arduino", "cmake"), default="files",
                        help="files: the firmware files for firmware_export/ (the default); "
                             "arduino: an Arduino library in OUT/tinymoe_<name>/ (TFLite Micro "
                             "and CMSIS-NN sources for the model's ops, tinymoe::Classifier, "
                             "a classify_photo example); cmake: the same as a plain C++ "
                             "library with CMakeLists.txt, library.json (PlatformIO), "
                             "idf_component.yml (ESP-IDF) and a Zephyr module")
    export.add_argument("--zip", action="store_true",
                        help="with --format arduino or cmake: also write "
                             "OUT/tinymoe_<name>.zip (Arduino IDE: Add .ZIP Library)")
    export.add_argument("--photo", metavar="IMAGE",
                        help="the photo the classify_photo example embeds, at its own size "
                             "(default: the first test image of --data)")
    export.add_argument("--board", action="append", metavar="NAME",
                        help="check first that the firmware fits this board (as 'tinymoe "
                             "report --board'); write nothing if it does not")
    export.set_defaults(run=commands.run_export)

    evaluate = subcommands.add_parser(
        "evaluate", help="score a .keras or .tflite model on a dataset: top-1, top-5, "
                         "per class, confusion matrix",
        description="Runs MODEL (.keras in float, or .tflite in int8 in the TFLite Micro "
                    "interpreter, as 'tinymoe optimize' does) on a split of --data and "
                    "prints top-1, top-5, per-class accuracy and the most confused pairs; "
                    "--out also writes evaluation.json and confusion_matrix.png. The "
                    "model's class names come from --labels, labels.txt beside the model, "
                    "or the data; the data's classes are matched to them by name, so a "
                    "folder may hold only some of them.", parents=[common])
    _add_classifier_args(evaluate, "the data's class names")
    evaluate.add_argument("--data", default="digits", metavar="DIR",
                          help="'digits' (built in) or a dataset folder, as for train")
    evaluate.add_argument("--split", choices=("train", "val", "test", "all"), default=None,
                          help="default: test, or all for a folder without a split file")
    evaluate.add_argument("--input-size", type=int, default=None, metavar="PIXELS",
                          help="the model's input side (default: read from the model)")
    evaluate.add_argument("--out", metavar="DIR",
                          help="write evaluation.json and confusion_matrix.png here")
    evaluate.set_defaults(run=commands.run_evaluate)

    predict = subcommands.add_parser(
        "predict", help="the top classes of a few images, from a .keras or .tflite model",
        description="Prints the --top classes with their softmax scores for each image "
                    "(folders are searched for .jpg .jpeg .png .bmp .gif). Files that "
                    "cannot be read are listed and skipped. Exits 1 if none could be read.",
        parents=[common])
    _add_classifier_args(predict, "the output indices")
    predict.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
    predict.add_argument("--top", type=int, default=5, metavar="K",
                         help="classes per image (default: 5)")
    predict.add_argument("--csv", metavar="FILE",
                         help="also write path,label_1,score_1,... rows to FILE")
    predict.set_defaults(run=commands.run_predict)

    demo = subcommands.add_parser(
        "demo", help="the whole job on the built-in digits, in a few minutes",
        description="Dense training -> cluster-initialised upcycling -> MoE fine-tuning -> "
                    "affinity figures -> QAT -> int8 in TFLite Micro -> firmware files, on "
                    "scikit-learn's digits at 32x32.", parents=[common])
    demo.add_argument("--out", default="runs/demo", metavar="DIR")
    demo.add_argument("--dense-epochs", type=int, default=12)
    demo.add_argument("--moe-epochs", type=int, default=6)
    demo.set_defaults(run=commands.run_demo)
    return parser


def _show_tensorflow_logs(argv):
    """``--verbose``: TensorFlow's log lines, which tinymoe.backend hides by default.

    TensorFlow reads its log level once, while it loads, and it loaded with ``tinymoe``. On
    the command line the command starts again with ``TF_CPP_MIN_LOG_LEVEL=0``; called from
    Python (``main([...])``), the lines hidden while TensorFlow loaded are printed and
    TensorFlow's and absl's Python loggers show info, until the command returns.
    """
    from tinymoe import backend

    if backend.LOG_LEVEL <= 0:
        return {}
    if argv is None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]],
                  dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0"))
    sys.stderr.write("".join(f"{line}\n" for line in backend.HIDDEN_LOG_LINES))
    levels = {name: logging.getLogger(name).level for name in ("tensorflow", "absl")}
    for name in levels:
        logging.getLogger(name).setLevel(logging.INFO)
    return levels


def main(argv=None):
    """Entry point of the ``tinymoe`` command.

    Bad input ends the command with exit status 2 and one line saying what is wrong;
    warnings (e.g. an unreadable image) print as ``tinymoe COMMAND: warning: ...``.

    Example:
        >>> main(["report", "runs/opt/model.tflite"])
        0
    """
    args = build_parser().parse_args(argv)
    verbose = getattr(args, "verbose", False)
    levels = _show_tensorflow_logs(argv) if verbose else {}
    from tinymoe.export.firmware_app import FirmwareError

    def show_warning(message, category, filename, lineno, file=None, line=None):
        print(f"tinymoe {args.command}: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            if not verbose:
                warnings.showwarning = show_warning
            return args.run(args)
    except (ValueError, FirmwareError) as error:  # bad input, or a firmware build that failed:
        print(f"tinymoe {args.command}: error: {error}", file=sys.stderr)  # say what, briefly
        return 2
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


if __name__ == "__main__":
    sys.exit(main())
