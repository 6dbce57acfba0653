"""What each ``tinymoe`` command does, given its parsed arguments (see :mod:`tinymoe.cli`).

Each ``run_<command>(args)`` returns the exit status; bad input raises ``ValueError``, which
:func:`tinymoe.cli.main` prints as one line. ``build_parser`` in the examples is
:func:`tinymoe.cli.build_parser`.
"""

import json
import os
import sys


def run_models(args):
    """Lists the registered models (``tinymoe models``).

    Example:
        >>> run_models(build_parser().parse_args(["models", "--json"]))
        0
    """
    from tinymoe.models import check_input_size, list_models
    from tinymoe.zoo import format_table, summarize_models

    for name in args.model or list_models():  # before any model is built
        check_input_size(name, args.input_size)
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


def _repeatable(seed):
    """``--seed``: TensorFlow's deterministic kernels too (the seeds are set by the run)."""
    if seed is not None:
        from tinymoe.backend import tf

        tf.config.experimental.enable_op_determinism()


def keras_verbosity(stream=None):
    """Keras fit's ``verbose`` for output to ``stream`` (standard output): 1, the per-step
    progress bar, on a terminal; 2, one line per epoch, into a file or a pipe (a bar there
    is hundreds of KB of carriage returns per run).

    Example:
        >>> keras_verbosity()  # in `tinymoe train ... > log.txt`
        2
    """
    stream = sys.stdout if stream is None else stream
    try:
        return 1 if stream.isatty() else 2
    except (AttributeError, ValueError):
        return 2


def _distillation(args, data):
    """The :class:`tinymoe.distill.Distillation` that ``--teacher`` asks for, or None."""
    if not args.teacher:
        return None
    from tinymoe.distill import Distillation, load_teacher

    teacher = load_teacher(args.teacher, data, input_size=args.teacher_input_size,
                           tensor=args.teacher_tensor)
    if teacher.head is not None:
        print(f"Teacher head fitted on the train split: val top-1 "
              f"{teacher.head.val_top1:.3f} (C = {teacher.head.c})", flush=True)
    return Distillation(teacher, alpha=args.teacher_weight, temperature=args.temperature)


def run_train(args):
    """Trains a model (``tinymoe train``) and prints its summary.

    Example:
        >>> run_train(build_parser().parse_args(["train", "--out", "runs/dense"]))
        0
    """
    from tinymoe.data import load_dataset
    from tinymoe.pipeline import distribution_strategy, train_run
    from tinymoe.train import TrainConfig, recipe_for

    # First: a multi-worker strategy must exist before TensorFlow does any other work.
    strategy = distribution_strategy(args.distribute)
    _repeatable(args.seed)
    from tinymoe.models import check_weights

    size = _input_size(args.model, args.input_size)  # refused before the data loads
    if args.weights is not None:  # refused before the data loads, naming what there is
        check_weights(args.model, args.weights, (size, size, 3))
    recipe = recipe_for(args.model, args.weights)
    chosen = {key: getattr(recipe, key) if getattr(args, key) is None else getattr(args, key)
              for key in ("learning_rate", "warmup_epochs", "label_smoothing", "weight_decay")}
    data = load_dataset(args.data, size)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size,
                         initial_epoch=args.initial_epoch,
                         save_epochs=tuple(args.save_epochs), **chosen)
    augment = _augment(args.augment)
    if args.mixup:
        import dataclasses

        from tinymoe.augment import AugmentConfig

        augment = dataclasses.replace(augment or AugmentConfig.none(), mixup_alpha=args.mixup)
    _, summary = train_run(args.model, data, args.out, config, augment,
                           verbose=keras_verbosity(), train_dispatch=args.train_dispatch,
                           capacity_factor=args.capacity_factor, distribute=strategy,
                           weights=args.weights, seed=args.seed,
                           distillation=_distillation(args, data))
    print(json.dumps(summary, indent=2))
    return 0


def _input_size(model, size):
    """The side to load images at for ``model`` (a name or a ``.keras`` file): ``size``,
    refused before the data loads where the model cannot take it; without ``size``, the
    side a saved model was built for (32 for a registered name, or a file that does not
    say)."""
    from tinymoe.models import check_input_size, saved_input_shape

    if size is None:
        shape = saved_input_shape(model) if str(model).endswith(".keras") else None
        return int(shape[0]) if shape and shape[0] else 32
    check_input_size(model, size)
    return size


def run_upcycle(args):
    """Turns a dense model into a mixture of experts (``tinymoe upcycle``).

    Example:
        >>> run_upcycle(build_parser().parse_args(["upcycle", "dense.keras", "--out", "moe.keras"]))
        0
    """
    from tinymoe.data import load_dataset
    from tinymoe.models import MoEConfig
    from tinymoe.pipeline import upcycle_run

    data = load_dataset(args.data, _input_size(args.dense, args.input_size))
    config = MoEConfig(num_experts=args.experts, top_k=args.top_k,
                       layers=_parse_layers(args.layers), routing=args.routing,
                       expert_dropout=args.expert_dropout)
    _, summary = upcycle_run(args.dense, data, args.out, config, router=args.router,
                             num_images=args.images, linkage=args.linkage, noise=args.noise,
                             reinit=args.reinit)
    print(json.dumps(summary, indent=2))
    return 0


def run_analyze(args):
    """Writes the affinity figures of a mixture of experts (``tinymoe analyze``).

    Example:
        >>> run_analyze(build_parser().parse_args(["analyze", "moe.keras", "--out", "figures"]))
        0
    """
    from tinymoe.data import load_dataset
    from tinymoe.pipeline import analyze_run

    data = load_dataset(args.data, _input_size(args.model, args.input_size))
    summary = analyze_run(args.model, data, args.out, args.split, args.images,
                          dense_model=args.dense)
    print(json.dumps(summary, indent=2))
    print(summary["experts"]["verdict"])
    return 0


def run_optimize(args):
    """Prunes, quantises and converts a model (``tinymoe optimize``).

    Example:
        >>> run_optimize(build_parser().parse_args(["optimize", "moe.keras", "--out", "runs/opt"]))
        0
    """
    from tinymoe.data import load_dataset
    from tinymoe.pipeline import optimize_run

    _repeatable(args.seed)
    data = load_dataset(args.data, _input_size(args.model, args.input_size))
    _, summary = optimize_run(args.model, data, args.out, sparsity=args.sparsity,
                              prune_epochs=args.prune_epochs, qat_epochs=args.qat_epochs,
                              batch_size=args.batch_size, learning_rate=args.learning_rate,
                              augment=_augment(args.augment), prune_router=args.prune_router,
                              dispatch=args.dispatch, capacity_factor=args.capacity_factor,
                              verbose=keras_verbosity(), seed=args.seed,
                              distillation=_distillation(args, data))
    print(json.dumps(summary, indent=2))
    return 0


def _measure(tflite_bytes, args, device_bytes=None):
    """report(), with the arena limit checked on the --target build when one is given.

    ``device_bytes``: the model as the device runs it when it differs from ``tflite_bytes``
    (LUT-compressed: LiteRT, which counts the ops and MACs, cannot load it; the arena is
    measured on it).
    """
    from tinymoe.export import ArenaError, report, smallest_arena
    from tinymoe.export.firmware_app import measure_on_device
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


def _board_fits(tflite_bytes, names):
    """Each board's fit (:func:`tinymoe.export.boards.fit_on_board`), printed; the fits."""
    from tinymoe.export.boards import BOARDS, fit_on_board, format_fit

    keys = list(BOARDS) if "all" in names else list(dict.fromkeys(names))
    fits = []
    for key in keys:
        fits.append(fit_on_board(tflite_bytes, key))
        print(format_fit(fits[-1]), flush=True)
    return fits


def run_report(args):
    """Prints what a ``.tflite`` model costs on a microcontroller (``tinymoe report``).

    Example:
        >>> run_report(build_parser().parse_args(["report", "model.tflite"]))
        0
    """
    from tinymoe.export import read_tflite
    from tinymoe.export import format_report

    if args.board:
        fits = _board_fits(read_tflite(args.model), args.board)
        if args.json:
            print(json.dumps(fits, indent=2))
        return 0 if all(fit["fits"] is not False for fit in fits) else 1
    result = _measure(read_tflite(args.model), args)
    if args.flash_limit and result["device_model_bytes"] > args.flash_limit:
        raise ValueError(f"The model takes {result['device_model_bytes']:,} bytes of flash as "
                         f"the firmware embeds it, more than the limit of "
                         f"{args.flash_limit:,} bytes.")
    print(json.dumps(result, indent=2) if args.json
          else format_report(result, clock_mhz=args.clock_mhz))
    return 0


def run_export(args):
    """Writes the firmware files of a model (``tinymoe export``).

    Example:
        >>> run_export(build_parser().parse_args(["export", "model.tflite", "--out", "fw"]))
        0
    """
    from tinymoe.export import report, write_firmware

    if args.format == "files" and (args.zip or args.photo):
        raise ValueError("--zip and --photo go with --format arduino or cmake.")
    args.dispatch_given = args.dispatch is not None
    args.dispatch = args.dispatch or "sparse"
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"Output path {args.out!r} is a file, not a folder.")
    labels, notes = None, []
    if args.model.endswith(".keras"):
        from tinymoe.data import load_dataset
        from tinymoe.export import to_tflite
        from tinymoe.pipeline import load_model

        from tinymoe.models import has_experts, with_dispatch

        model = load_model(args.model)
        data = load_dataset(args.data, int(model.input_shape[1]))
        x_train = data.split("train")[0]
        if has_experts(model) and args.dispatch == "sparse" and args.capacity_factor == "auto":
            from tinymoe.pipeline import calibrate_moe_capacity

            tflite_bytes, capacity = calibrate_moe_capacity(model, x_train[:200],
                                                            data.split("val")[0], x_train)
            notes = ["Expert capacity calibrated at export (--capacity-factor auto):",
                     *capacity.lines()]
            print("\n".join(notes))
        else:
            if has_experts(model):
                factor = 1.25 if args.capacity_factor == "auto" else args.capacity_factor
                model = with_dispatch(model, args.dispatch, factor)
            tflite_bytes = to_tflite(model, x_train[:200])
        labels = data.class_names
    else:
        from tinymoe.export import read_tflite

        tflite_bytes = read_tflite(args.model)
        if args.dispatch_given:
            raise ValueError("--dispatch applies when converting a .keras model; a .tflite "
                             "model keeps the dispatch it was converted with.")
    labels_path = args.labels or os.path.join(os.path.dirname(args.model), "labels.txt")
    if args.labels or (labels is None and os.path.isfile(labels_path)):
        from tinymoe.data import read_labels

        labels = read_labels(labels_path)
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
    if args.board:
        unfit = [fit["title"] for fit in _board_fits(embedded, args.board) if fit["fits"] is False]
        if unfit:
            raise ValueError(f"The firmware does not fit {', '.join(unfit)}; nothing written.")
    settings = dict(name=args.name, labels=labels, arena_bytes=arena,
                    arena_margin=args.arena_margin, arena_source=where,
                    strip=not args.keep_names, notes=notes)
    if args.format != "files":
        from tinymoe.export.library import default_photo, read_photo, write_library

        photo, photo_name = ((read_photo(args.photo), os.path.basename(args.photo))
                             if args.photo else default_photo(args.data))
        paths = write_library(embedded, args.out, args.format, photo=photo,
                              photo_name=photo_name, zip_file=args.zip, **settings)
        print(f"Wrote {' and '.join(paths)}: model array {model_bytes:,} bytes, arena "
              f"{arena:,} bytes measured in {where} (+{args.arena_margin:.0%}), "
              f"classify_photo embeds {photo_name} ({photo.shape[1]}x{photo.shape[0]}).")
        return 0
    paths = write_firmware(embedded, args.out, **settings)
    print(f"Wrote {len(paths)} files to {args.out}: model array {model_bytes:,} bytes, "
          f"arena {arena:,} bytes measured in {where} (+{args.arena_margin:.0%} in "
          f"model_settings.h), {measured['macs']:,} MACs.")
    return 0


def run_demo(args):
    """Runs the whole job on the digits (``tinymoe demo``).

    Example:
        >>> run_demo(build_parser().parse_args(["demo", "--out", "runs/demo"]))
        0
    """
    from tinymoe.demo import demo

    summary = demo(args.out, dense_epochs=args.dense_epochs, moe_epochs=args.moe_epochs)
    dense, moe = summary["dense"], summary["moe"]
    print("\nDemo on scikit-learn digits (32x32, 10 classes):")
    print("| model | params | MACs | val top-1 |\n|---|---|---|---|")
    for label, row in (("dense MobileViTv2-0.5", dense), ("cluster-upcycled MoE-0.5", moe),
                       ("MoE-0.5 after capacity-aware fine-tuning", summary["moe_aware"])):
        print(f"| {label} | {row['params']:,} | {row['macs']:,} | {row['val_accuracy']:.3f} |")
    int8 = summary["int8"]
    print(f"| MoE-0.5, QAT int8 in TFLite Micro ({int8['dispatch']} dispatch) | | "
          f"{int8['macs']:,} | {int8['int8_tflm_top1']:.3f} |")
    for key, layer in summary["analysis"]["layers"].items():
        print(f"{key}: expert load {layer['load']}; figures in {os.path.dirname(layer['files'][0])}")
    print(summary["analysis"]["experts"]["verdict"])
    if "capacity" in int8:
        from tinymoe.export import CapacityReport

        print("\n".join(["Expert capacity calibrated at export:",
                         *CapacityReport(**int8["capacity"]).lines()]))
    print(f"int8 model: {int8['flash_bytes']:,} bytes flash, {int8['arena_bytes']:,} bytes "
          f"arena (measured in TFLite Micro); firmware files in "
          f"{os.path.join(args.out, 'firmware')}")
    return 0


def run_evaluate(args):
    """Scores a model on a dataset (``tinymoe evaluate``).

    Example:
        >>> run_evaluate(build_parser().parse_args(["evaluate", "model.tflite"]))
        0
    """
    from tinymoe.classifier import evaluate_run, format_evaluation

    result = evaluate_run(args.model, args.data, args.split, args.out, args.labels,
                          args.input_size)
    print(json.dumps(result, indent=2) if args.json else format_evaluation(result))
    return 0


def run_predict(args):
    """Prints the top classes of images (``tinymoe predict``).

    Example:
        >>> run_predict(build_parser().parse_args(["predict", "model.tflite", "owl.jpg"]))
        0
    """
    from tinymoe.classifier import predict_run

    result = predict_run(args.model, args.inputs, args.top, args.csv, args.labels)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for item in result["predictions"]:
        ranked = ", ".join(f"{label} {score:.3f}"
                           for label, score in zip(item["labels"], item["scores"]))
        print(f"{item['path']}: {ranked}")
    if result["skipped"]:
        print(f"skipped {len(result['skipped'])} unreadable file(s): "
              f"{', '.join(result['skipped'])}")
    if args.csv:
        print(f"wrote {args.csv}")
    return 0 if result["predictions"] else 1
