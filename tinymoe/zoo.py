"""The `tinymoe models` table: one row per registered model, its size, compute, whether its
int8 form runs in TFLM, and its pretrained weights. It converts and checks models, so it
sits above both tinymoe.models and tinymoe.export (nothing in tinymoe.models imports
export)."""

import numpy as np

from tinymoe.export import check_tflm, to_tflite
from tinymoe.models import create_model, list_models, settle_batch_norms
from tinymoe.profile import profile
from tinymoe.progress import progress_bar

COLUMNS = ("model", "params", "macs", "int8_bytes", "runs_in_tflm", "pretrained")


def summarize_models(names=None, input_size=128, num_classes=100, seed=0):
    """Builds each model, counts it, converts it to full int8 and runs it in TFLite Micro.

    The models are untrained, their batch-norm statistics those of random images
    (:func:`tinymoe.models.settle_batch_norms`), and calibrated on them: the sizes, MACs and
    the TFLM check do not depend on the weights.

    Args:
        names: model names (default: every registered model).
        input_size: square input side in pixels (a multiple of 32).
        num_classes: classifier width.
        seed: seed of the random calibration images.

    Returns:
        list of dicts with the keys of ``COLUMNS`` (plus ``tflm_message`` when it fails).

    Example:
        >>> rows = summarize_models(["mobilevit_v2_050"], input_size=96, num_classes=10)
    """
    names = list(names or list_models())
    rng = np.random.default_rng(seed)
    calibration = rng.uniform(0, 255, (8, input_size, input_size, 3)).astype(np.float32)
    rows = []
    for name in progress_bar(names, desc="models", unit="model"):
        model = create_model(name, num_classes=num_classes,
                             input_shape=(input_size, input_size, 3))
        counts = profile(model)
        settle_batch_norms(model, calibration)
        tflite_bytes = to_tflite(model, calibration)
        check = check_tflm(tflite_bytes)
        row = {"model": name, "params": counts["params"], "macs": counts["macs"],
               "int8_bytes": len(tflite_bytes), "runs_in_tflm": "yes" if check.ok else "no",
               "pretrained": pretrained_summary(name)}
        if not check.ok:
            row["tflm_message"] = check.message
        rows.append(row)
    return rows


def pretrained_summary(name):
    """The shipped weights of model ``name`` in a few words, from their cards: e.g.
    "tinyimagenet (20 epochs at 64 px, val top-1 0.412)", or "-".

    Example:
        >>> pretrained_summary("mobilevit_v2_mcu")
    """
    from tinymoe.weights import available_weights, weights_card

    parts = []
    for weights in available_weights().get(name, []):
        card = weights_card(name, weights)
        parts.append(f"{weights} ({card['epochs']} epochs at {card['input_size']} px, val "
                     f"top-1 {card['tinyimagenet_val_top1_float16']:.3f})")
    return "; ".join(parts) or "-"


def format_table(rows):
    """A Markdown table of :func:`summarize_models` rows, numbers with thousands separators.

    Example:
        >>> print(format_table(summarize_models()))
    """
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [f"{row[c]:,}" if isinstance(row[c], int) else str(row[c]) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
