"""The shared arguments of ``tinymoe``'s commands (data, classifier files, seed, teacher,
expert capacity, boards), for :mod:`tinymoe.cli`."""

import argparse


def _add_data_args(parser, default_size=32):
    parser.add_argument("--data", default="digits", metavar="DIR",
                        help="'digits' (built in, no download) or a dataset folder: class "
                             "folders of images, or images/ plus splits.csv (path,species,split)")
    parser.add_argument("--input-size", type=int, default=default_size, metavar="PIXELS",
                        help="square image side, a multiple of 32 (default: "
                             + (f"{default_size})" if default_size else "a .keras model's own, else 32)"))


def _add_classifier_args(parser, labels_fallback):
    parser.add_argument("model", help="a .keras or .tflite model")
    parser.add_argument("--labels", metavar="FILE",
                        help="the model's class names, one per line (default: labels.txt "
                             f"beside the model, else {labels_fallback})")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _add_seed_arg(parser):
    parser.add_argument("--seed", type=int, default=None, metavar="N",
                        help="seed initialisation, shuffling, augmentation and dropout, and use "
                             "TensorFlow's deterministic kernels, so that two runs on one "
                             "machine give the same model (default: unseeded)")


def _add_teacher_args(parser):
    from tinymoe.distill import DEFAULT_ALPHA, DEFAULT_TEMPERATURE

    parser.add_argument("--teacher", metavar="TEACHER",
                        help="distil from a frozen teacher that sees each augmented batch: a "
                             ".keras classifier of the data's classes, a .tflite network "
                             "(float, uint8 or int8; a linear head is fitted on its pooled "
                             "features over the train split, chosen on val, unless a "
                             "labels.txt of the data's classes lies beside it), or a "
                             "registered model with its weights (e.g. "
                             "mobilenet_v2_035:imagenet; a head is fitted likewise)")
    parser.add_argument("--teacher-weight", type=float, default=DEFAULT_ALPHA,
                        metavar="ALPHA",
                        help="share of the loss on the teacher's outputs, the rest on the "
                             f"labels (default: {DEFAULT_ALPHA})")
    parser.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE,
                        help=f"softmax temperature of the distillation (default: "
                             f"{DEFAULT_TEMPERATURE})")
    parser.add_argument("--teacher-input-size", type=int, default=None, metavar="PIXELS",
                        help="the side the teacher sees (default: its own input size)")
    parser.add_argument("--teacher-tensor", default=None, metavar="NAME",
                        help="a .tflite teacher's feature tensor, by name or index (default: "
                             "the input of its last fully connected or 1x1 convolution)")


def _capacity_factor(value):
    """``--capacity-factor``: "auto" or a positive number."""
    if value == "auto":
        return value
    try:
        factor = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number, got {value!r}") from None
    if factor <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return factor


CAPACITY_HELP = ("sparse dispatch: slots per expert as a multiple of patches / experts, or "
                 "'auto' (the default): per MoE layer, the smallest factor at which the "
                 "sparse int8 model agrees with the masked one (every expert on every patch) "
                 "on 98%% of the int8 calibration and validation images, checked in TFLite "
                 "Micro; never the test split")


def _board_names():
    from tinymoe.export.boards import BOARDS

    return list(BOARDS)
