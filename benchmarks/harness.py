"""What every benchmark script shares: the arguments for data and results, the data, the
peer models, and the results files (JSON and Markdown, each with the command, the machine
and the wall time of every run that wrote it).

A results file ``OUT.json`` holds ``{"meta": {...}, "rows": [...]}``; a script that adds
rows to an existing file (one seed or one point per run) merges them by a key and keeps the
list of runs that made them, so that each figure can be traced to its command.
"""

import argparse
import dataclasses
import json
import os
import platform
import sys
import time

import tinymoe
from tinymoe.files import atomic_path, write_json
from tinymoe.models import MCU_LAYOUT

CUB100 = "../shared/data/cub100"

# The MCU layout before the speed work without expansion in the stride-2 blocks of stages 4
# and 5: a speed ablation that did not train (benchmarks/README.md, "Time on the
# microcontroller").
MCU_EXPAND1_LAYOUT = MCU_LAYOUT[:3] + tuple(dataclasses.replace(stage, expand_ratio=1)
                                            for stage in MCU_LAYOUT[3:])


def run_meta(start, **extra):
    """The command line, the machine and the wall time since ``start`` (``time.time()``)."""
    return {"command": "python " + " ".join(sys.argv),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                       f"{platform.python_version()}, tensorflow {tinymoe.tf.__version__}",
            "wall_s": round(time.time() - start, 1), **extra}


def write_results(out, payload, markdown_text):
    """Writes ``out.json`` and ``out.md`` atomically and prints the Markdown."""
    write_json(f"{out}.json", payload)
    with atomic_path(f"{out}.md") as tmp, open(tmp, "w") as handle:
        handle.write(markdown_text)
    print(markdown_text)


def read_results(out):
    """``(rows, runs, meta)`` already in ``out.json``, or empty ones."""
    if not os.path.exists(f"{out}.json"):
        return [], [], {}
    with open(f"{out}.json") as handle:
        payload = json.load(handle)
    meta = payload["meta"]
    runs = meta.get("runs") or [{key: meta[key] for key in ("command", "wall_s")
                                 if key in meta}]
    return payload["rows"], runs, meta


def merge_rows(earlier, rows, key):
    """``earlier`` with each row measured again (same values of the ``key`` fields) replaced
    by its new row."""
    new = {tuple(row[k] for k in key) for row in rows}
    return [row for row in earlier if tuple(row[k] for k in key) not in new] + list(rows)


def publish(out, rows, start, markdown, key, **meta):
    """Merges ``rows`` into ``out.json`` by ``key`` and writes it with its Markdown
    (``markdown(rows, meta)``). The file is read again first, so that rows other runs
    wrote meanwhile are kept; this run's entry in ``meta["runs"]`` replaces the one it
    wrote before (a long run publishes after every model).

    Returns:
        the merged rows.
    """
    earlier, runs, _ = read_results(out)
    this = {"started": f"{start:.6f}-{os.getpid()}", **run_meta(start)}
    merged = merge_rows(earlier, rows, key)
    meta = {**run_meta(start), **meta}
    meta["runs"] = [run for run in runs if run.get("started") != this["started"]] + [
        {k: this[k] for k in ("started", "command", "wall_s")}]
    meta["wall_s"] = round(sum(run.get("wall_s", 0) for run in meta["runs"]), 1)
    write_results(out, {"meta": meta, "rows": merged}, markdown(merged, meta))
    return merged


def data_parser(description, data=True, out=True):
    """An argument parser with ``--data`` (cub100 by default) and ``--out``."""
    parser = argparse.ArgumentParser(description=description)
    if data:
        parser.add_argument("--data", default=CUB100, metavar="DIR",
                            help=f"a cub100-style image folder (default: {CUB100})")
    if out:
        parser.add_argument("--out", required=True, help="results path without extension")
    return parser


def load_data(args, size):
    """The :class:`tinymoe.data.ImageData` of ``--tinyimagenet`` when given (see
    pretrain.py), else of ``--data``."""
    if getattr(args, "tinyimagenet", None):
        from pretrain import load_tiny_imagenet

        return load_tiny_imagenet(args.tinyimagenet, size)
    from tinymoe.data import load_dataset

    return load_dataset(args.data, size)


def cnn_peer(num_classes, size, alpha):
    """The CNN peer of the earlier comparisons: Keras Applications MobileNetV3-Small
    (minimalistic, its own top) from scratch, batch-norm momentum 0.99 (with the default
    0.999 it stays at chance on cub100 from scratch, see STACK.md). The zoo's
    ``mobilenet_v3_small_*`` (tinymoe.models.cnn) has a plainer head."""
    keras = tinymoe.keras
    model = keras.applications.MobileNetV3Small(
        input_shape=(size, size, 3), alpha=alpha, minimalistic=True, weights=None,
        classes=num_classes, classifier_activation=None, include_preprocessing=True)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.99
    return model
