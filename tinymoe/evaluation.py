"""Scoring a classifier: logits of a Keras or int8 TFLite Micro model, top-1/top-5,
per-class accuracy, the confusion matrix and its figure.

One code path for every caller: ``tinymoe optimize`` scores its int8 model with
:func:`evaluate_tflite`, and ``tinymoe evaluate`` runs the same :func:`tflite_logits` on
images loaded the same way, so the two report the same top-1.
"""

import numpy as np

from tinymoe.data import warn_if_normalised
from tinymoe.files import atomic_path
from tinymoe.progress import progress_bar

TFLM_CHUNK = 64  # images per TFLite Micro interpreter (a fresh one per chunk; see tflite_logits)


def keras_logits(model, images, batch_size=64, progress=False):
    """The outputs (logits) of a Keras model on uint8 or float images, batch by batch.

    Example:
        >>> keras_logits(model, x_val).shape
        (269, 10)
    """
    warn_if_normalised(images, "the Keras model")
    starts = range(0, len(images), batch_size)
    batches = [model(np.asarray(images[i:i + batch_size], np.float32), training=False).numpy()
               for i in progress_bar(starts, desc="running the model", unit="batch",
                                     disable=not progress)]
    return np.concatenate(batches) if batches else np.zeros((0,) + model.output_shape[1:])


def tflite_logits(tflite_bytes, images, progress=False):
    """The dequantised outputs of a full-int8 model run in the TFLite Micro interpreter.

    Each image is invoked on its own (:func:`tinymoe.export.tflm_invoke`), so the result
    does not depend on how the images are chunked for the progress bar.

    Example:
        >>> tflite_logits(open("runs/opt/model.tflite", "rb").read(), x_val).shape
        (269, 10)
    """
    from tinymoe.export import tflm_invoke

    warn_if_normalised(images, "the int8 model")
    images = np.asarray(images, np.float32)
    starts = range(0, len(images), TFLM_CHUNK)
    chunks = [tflm_invoke(tflite_bytes, images[i:i + TFLM_CHUNK])
              for i in progress_bar(starts, desc="running TFLite Micro", unit="chunk",
                                    disable=not progress)]
    return np.concatenate(chunks)


def evaluate(model, images, labels, num_classes=None, batch_size=64):
    """Top-1 accuracy of a Keras ``model`` on ``images``.

    ``num_classes`` is accepted for the callers that pass it; the model's outputs decide.

    Example:
        >>> evaluate(model, x_val, y_val, num_classes=10)
        0.978
    """
    logits = keras_logits(model, images, batch_size)
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def evaluate_tflite(tflite_bytes, images, labels):
    """Top-1 accuracy of a full-int8 ``.tflite`` model run in the TFLite Micro interpreter.

    Example:
        >>> evaluate_tflite(open("model.tflite", "rb").read(), x_val, y_val)
        0.975
    """
    logits = tflite_logits(tflite_bytes, images)
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def accuracy_report(logits, labels, class_names, worst_pairs=10):
    """Top-1, top-5, per-class accuracy, confusion matrix and the most confused pairs.

    Args:
        logits: ``[N, C]`` model outputs, one column per class of ``class_names``.
        labels: ``[N]`` true class indices into ``class_names``.
        class_names: the model's ``C`` class names.
        worst_pairs: how many (true, predicted) pairs to list, most images first.

    Returns:
        dict: ``images``, ``top1``, ``top5`` (the true class among the 5 highest scores;
        1.0 when the model has 5 classes or fewer), ``per_class`` (name -> {images, top1}
        for each class with images), ``confusion`` (``matrix`` with a row for each class
        that has images, ``rows``, and a column for each class predicted, ``columns``),
        ``confused_pairs``.

    Example:
        >>> report = accuracy_report(logits, y_test, ["finch", "robin", "wren"])
        >>> report["top1"], report["confused_pairs"][0]
        (0.9, {'true': 'wren', 'predicted': 'finch', 'images': 2, 'share': 0.2})
    """
    from sklearn.metrics import confusion_matrix, top_k_accuracy_score

    logits, labels = np.asarray(logits), np.asarray(labels)
    num_classes = len(class_names)
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise ValueError(f"{num_classes} class names for model outputs of shape {logits.shape}.")
    predicted = np.argmax(logits, axis=1)
    every = np.arange(num_classes)
    top5 = (1.0 if num_classes <= 5 else
            float(top_k_accuracy_score(labels, logits, k=5, labels=every)))
    matrix = confusion_matrix(labels, predicted, labels=every)
    rows, columns = np.flatnonzero(matrix.sum(axis=1)), np.flatnonzero(matrix.sum(axis=0))
    per_class = {class_names[c]: {"images": int(matrix[c].sum()),
                                  "top1": round(float(matrix[c, c] / matrix[c].sum()), 4)}
                 for c in rows}
    off_diagonal = matrix * (1 - np.eye(num_classes, dtype=matrix.dtype))
    order = np.argsort(-off_diagonal, axis=None, kind="stable")[:worst_pairs]
    pairs = [{"true": class_names[t], "predicted": class_names[p],
              "images": int(off_diagonal[t, p]),
              "share": round(float(off_diagonal[t, p] / matrix[t].sum()), 4)}
             for t, p in zip(*np.unravel_index(order, matrix.shape)) if off_diagonal[t, p]]
    return {"images": int(len(labels)), "top1": float(np.mean(predicted == labels)),
            "top5": top5, "per_class": per_class,
            "confusion": {"rows": [class_names[c] for c in rows],
                          "columns": [class_names[c] for c in columns],
                          "matrix": matrix[np.ix_(rows, columns)].tolist()},
            "confused_pairs": pairs}


# Names stay readable on the axes up to this many classes; beyond, the most confused block.
READABLE_CLASSES = 60


def confusion_block(confusion, limit=READABLE_CLASSES):
    """The part of a confusion matrix a figure can label: all of it when it has at most
    ``limit`` rows and columns, else the most confused block (the ``limit`` classes with
    the most errors, as the true class or as the prediction).

    Returns:
        (row names, column names, shares of each row's images ``[rows, columns]``, a note
        saying what was left out, or "").

    Example:
        >>> rows, columns, shares, note = confusion_block(report["confusion"])
    """
    matrix = np.asarray(confusion["matrix"], np.int64).reshape(
        len(confusion["rows"]), len(confusion["columns"]))
    rows, columns = list(confusion["rows"]), list(confusion["columns"])
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    if max(len(rows), len(columns)) <= limit:
        return rows, columns, shares, ""
    errors = dict.fromkeys(rows + columns, 0)
    for i, true in enumerate(rows):
        for j, guess in enumerate(columns):
            if true != guess:
                errors[true] += matrix[i, j]
                errors[guess] += matrix[i, j]
    worst = set(sorted(errors, key=lambda name: -errors[name])[:limit])
    keep_rows = [i for i, name in enumerate(rows) if name in worst]
    keep_columns = [j for j, name in enumerate(columns) if name in worst]
    note = (f"the most confused block: {len(keep_rows)} of {len(rows)} true classes, "
            f"{len(keep_columns)} of {len(columns)} predicted")
    return ([rows[i] for i in keep_rows], [columns[j] for j in keep_columns],
            shares[np.ix_(keep_rows, keep_columns)], note)


def plot_confusion(confusion, path, title=""):
    """Writes the confusion matrix of :func:`accuracy_report` as a PNG figure.

    A row for each true class with images, a column for each class predicted, class names
    on both axes; each row is shown as shares of its images, printed in the cells when
    both sides have at most 20 classes. Past :data:`READABLE_CLASSES` rows or columns, the
    figure shows the most confused block: the classes with the most errors (as the true
    class or as the prediction), and says so in its title.

    Example:
        >>> plot_confusion(report["confusion"], "runs/eval/confusion_matrix.png")
    """
    from matplotlib.figure import Figure

    rows, columns, shares, note = confusion_block(confusion)
    width = min(24.0, max(5.0, 0.3 * len(columns) + 3.0))
    height = min(24.0, max(4.0, 0.3 * len(rows) + 2.5))
    figure = Figure(figsize=(width, height))
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto",
                        interpolation="nearest")
    axes.set_xticks(range(len(columns)), columns, rotation=90, fontsize=7)
    axes.set_yticks(range(len(rows)), rows, fontsize=7)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    if len(rows) <= 20 and len(columns) <= 20:
        for i in range(len(rows)):
            for j in range(len(columns)):
                value = shares[i, j]
                axes.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                          color="white" if value > 0.5 else "black")
    figure.colorbar(image, ax=axes, fraction=0.04, label="share of the true class's images")
    axes.set_title((title or "share of each true class's images")
                   + (f"\n{note}" if note else ""), fontsize=9)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100, format="png")
    return path
