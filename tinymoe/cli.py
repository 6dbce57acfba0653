"""The ``tinymoe`` command line."""

import argparse
import json
import sys


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


def build_parser():
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
    return parser


def main(argv=None):
    """Entry point of the ``tinymoe`` command."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ValueError as error:  # bad input: say what, without a traceback
        print(f"tinymoe {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
