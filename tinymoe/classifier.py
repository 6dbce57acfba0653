"""A trained model as a user meets it: a ``.keras`` or ``.tflite`` file with its class names,
scored on a dataset (``tinymoe evaluate``) or run on a few photos (``tinymoe predict``)."""

import csv
import dataclasses
import os

import numpy as np

from tinymoe.data import (IMAGE_EXTENSIONS, SPLITS, ImageData, decode_images, load_dataset,
                          read_labels)
from tinymoe.evaluation import accuracy_report, keras_logits, plot_confusion, tflite_logits
from tinymoe.export.tflite_file import read_tflite
from tinymoe.files import atomic_path, write_json


@dataclasses.dataclass
class Classifier:
    """A loaded model and what it needs to classify images.

    Attributes:
        path: the model file.
        model: a Keras model (``.keras``) or the bytes of a full-int8 ``.tflite`` model, run in
            the TFLite Micro interpreter.
        class_names: one name per model output, or None when no labels file was found.
        input_size: the square image side the model takes.
        num_classes: the model's number of outputs.

    Example:
        >>> classifier = load_classifier("runs/opt/model.tflite")
        >>> logits = classifier.logits(images)
    """

    path: str
    model: object
    class_names: list
    input_size: int
    num_classes: int

    @property
    def kind(self):
        """``"int8, TFLite Micro"`` or ``"float, Keras"``."""
        return "int8, TFLite Micro" if isinstance(self.model, bytes) else "float, Keras"

    def logits(self, images, progress=False):
        """The model's outputs on uint8 images ``[N, input_size, input_size, 3]``."""
        if isinstance(self.model, bytes):
            return tflite_logits(self.model, images, progress)
        return keras_logits(self.model, images, progress=progress)


def load_classifier(path, labels_file=None):
    """Loads a ``.keras`` or ``.tflite`` model and its class names.

    Args:
        path: the model file.
        labels_file: a labels file (one class name per line); by default ``labels.txt`` beside
            the model, if there is one (``tinymoe train`` and ``optimize`` write it).

    Raises:
        ValueError: a missing or unknown model file, or a labels file whose number of names
            is not the model's number of outputs.

    Example:
        >>> load_classifier("runs/dense/best.keras").class_names[:3]
        ['0', '1', '2']
    """
    if path.endswith(".tflite"):
        from tinymoe.export.tflite_file import model_facts

        model = read_tflite(path)
        inputs, outputs, _ = model_facts(model)
        input_size, num_classes = int(inputs[0].shape[1]), int(outputs[0].shape[-1])
    elif path.endswith(".keras"):
        from tinymoe.pipeline import load_model

        model = load_model(path)
        input_size, num_classes = int(model.input_shape[1]), int(model.output_shape[-1])
    else:
        raise ValueError(f"{path!r} is neither a .keras nor a .tflite model.")
    beside = os.path.join(os.path.dirname(path), "labels.txt")
    labels_file = labels_file or (beside if os.path.isfile(beside) else None)
    class_names = read_labels(labels_file) if labels_file else None
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{labels_file} names {len(class_names)} classes, but the model "
                         f"{path} has {num_classes} outputs.")
    return Classifier(path, model, class_names, input_size, num_classes)


def _class_index(classifier, data):
    """Maps the data's labels onto the model's outputs, by class name."""
    names = classifier.class_names
    if names is None:
        if data.num_classes != classifier.num_classes:
            raise ValueError(f"{classifier.path} has {classifier.num_classes} outputs and no "
                             f"labels.txt beside it, and the data has {data.num_classes} "
                             "classes: give the model's class names with --labels.")
        names = data.class_names
    unknown = [name for name in data.class_names if name not in names]
    if unknown:
        raise ValueError(f"The model does not know the class(es) {', '.join(map(repr, unknown))}"
                         f" of the data; it knows {len(names)}: {', '.join(names[:20])}"
                         + (" ..." if len(names) > 20 else "") + ".")
    return names, np.array([names.index(name) for name in data.class_names], np.int64)


def evaluate_run(model, data_source="digits", split=None, out_dir=None, labels_file=None,
                 input_size=None, progress=True):
    """Scores a ``.keras`` or ``.tflite`` model on a dataset's split.

    The images are loaded as for training (:func:`tinymoe.data.load_dataset` at the model's
    input size) and a ``.tflite`` model runs in TFLite Micro as in ``tinymoe optimize``, so
    its top-1 on a split is the one ``optimize`` reported. The data's classes are matched to
    the model's by name: a folder may hold only some of them.

    Args:
        model: a ``.keras`` or ``.tflite`` path, or a :class:`Classifier`.
        data_source: "digits" or a dataset folder (see :func:`tinymoe.data.load_dataset`),
            or :class:`tinymoe.data.ImageData` already loaded at the model's input size.
        split: "train", "val", "test" or "all"; None: "test", or "all" for a folder without
            a split file.
        out_dir: if given, writes ``evaluation.json`` and ``confusion_matrix.png`` there.
        labels_file: the model's labels file (default: ``labels.txt`` beside it).
        input_size: must be the model's, if given.

    Returns:
        the :func:`tinymoe.evaluation.accuracy_report` dict, with ``model``, ``kind``,
        ``data``, ``split`` and ``files``.

    Example:
        >>> evaluate_run("runs/opt/model.tflite", "photos/", out_dir="runs/eval")["top1"]
        0.91
    """
    classifier = (model if isinstance(model, Classifier)
                  else load_classifier(model, labels_file))
    if input_size not in (None, classifier.input_size):
        raise ValueError(f"{classifier.path} takes {classifier.input_size}x"
                         f"{classifier.input_size} images, not {input_size}x{input_size}.")
    if isinstance(data_source, ImageData):
        data, data_source = data_source, "the data given"
        if data.images.shape[1] != classifier.input_size:
            raise ValueError(f"{classifier.path} takes {classifier.input_size}x"
                             f"{classifier.input_size} images; the data given holds "
                             f"{data.images.shape[1]}x{data.images.shape[2]}.")
    else:
        data = load_dataset(data_source, classifier.input_size, progress=progress)
    names, to_model = _class_index(classifier, data)
    split = split or ("all" if data.hashed_splits else "test")
    if split == "all":
        images, labels = data.images, data.labels
    elif split in SPLITS:
        images, labels = data.split(split)
    else:
        raise ValueError(f"Unknown split {split!r}; choose one of {SPLITS + ('all',)}.")
    if not len(images):
        raise ValueError(f"The {split!r} split of {data_source!r} has no images.")
    logits = classifier.logits(images, progress)
    report = {"model": classifier.path, "kind": classifier.kind, "data": str(data_source),
              "split": split, **accuracy_report(logits, to_model[labels], names)}
    if out_dir is not None:
        figure = plot_confusion(report["confusion"], os.path.join(out_dir, "confusion_matrix.png"),
                                f"{os.path.basename(classifier.path)} ({classifier.kind}) on "
                                f"{split}: top-1 {report['top1']:.3f}")
        report["files"] = [os.path.join(out_dir, "evaluation.json"), figure]
        write_json(report["files"][0], report)
    return report


def format_evaluation(result):
    """:func:`evaluate_run`'s result as text: top-1/top-5, a per-class table, the most
    confused pairs and the files written.

    Example:
        >>> print(format_evaluation(evaluate_run("runs/opt/model.tflite", "photos/")))
    """
    width = max(len("class"), *(len(name) for name in result["per_class"]))
    lines = [f"{result['model']} ({result['kind']}) on {result['data']}, split "
             f"{result['split']}: {result['images']} images of {len(result['per_class'])} "
             "classes",
             f"top-1 {result['top1']:.4f}   top-5 {result['top5']:.4f}",
             "", f"{'class':<{width}}  images  top-1"]
    lines += [f"{name:<{width}}  {row['images']:>6}  {row['top1']:.3f}"
              for name, row in result["per_class"].items()]
    if result["confused_pairs"]:
        lines += ["", "most confused (true -> predicted: images, share of the true class):"]
        lines += [f"  {pair['true']} -> {pair['predicted']}: {pair['images']} "
                  f"({pair['share']:.0%})" for pair in result["confused_pairs"]]
    if result.get("files"):
        lines += ["", f"wrote {', '.join(result['files'])}"]
    return "\n".join(lines)


def image_paths(inputs):
    """The image files named by ``inputs``: files as given, folders searched recursively
    for ``.jpg .jpeg .png .bmp .gif`` files (sorted).

    Example:
        >>> image_paths(["field/day1", "owl.jpg"])
        ['field/day1/a.jpg', 'field/day1/b.png', 'owl.jpg']
    """
    paths = []
    for item in inputs:
        if os.path.isfile(item):
            paths.append(item)
        elif os.path.isdir(item):
            found = sorted(os.path.join(root, name) for root, _, names in os.walk(item)
                           for name in names if name.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise ValueError(f"Folder {item!r} holds no images "
                                 f"({', '.join(IMAGE_EXTENSIONS)}).")
            paths.extend(found)
        else:
            raise ValueError(f"{item!r} is neither an image file nor a folder.")
    return paths


def predict_run(model, inputs, top=5, csv_path=None, labels_file=None, progress=True):
    """The ``top`` classes, with softmax scores, of each image in ``inputs``.

    Args:
        model: a ``.keras`` or ``.tflite`` path, or a :class:`Classifier`.
        inputs: image files and folders (see :func:`image_paths`).
        top: classes per image (at most the model's number of classes).
        csv_path: if given, writes ``path,label_1,score_1,...`` there, one row per image.
        labels_file: the model's labels file (default: ``labels.txt`` beside it; without
            one the classes are named by their output index).

    Returns:
        dict: ``predictions`` (one ``{"path", "labels", "scores"}`` per readable image) and
        ``skipped`` (the files that could not be read; a warning says why).

    Example:
        >>> predict_run("runs/opt/model.tflite", ["field/"], top=3)["predictions"][0]
        {'path': 'field/a.jpg', 'labels': ['wren', 'robin', 'finch'], 'scores': [0.91, ...]}
    """
    from tinymoe.backend import tf

    classifier = (model if isinstance(model, Classifier)
                  else load_classifier(model, labels_file))
    names = classifier.class_names or [str(i) for i in range(classifier.num_classes)]
    if top < 1:
        raise ValueError(f"--top must be at least 1, got {top}.")
    top = min(top, len(names))
    paths = image_paths(inputs)
    images, kept = decode_images(paths, classifier.input_size, progress)
    scores = tf.nn.softmax(classifier.logits(images, progress)).numpy() if len(images) else []
    predictions = []
    for path, row in zip(np.asarray(paths)[kept], scores):
        best = np.argsort(-row, kind="stable")[:top]
        predictions.append({"path": str(path), "labels": [names[i] for i in best],
                            "scores": [round(float(row[i]), 4) for i in best]})
    if csv_path is not None:
        header = ["path"] + [f"{key}_{rank}" for rank in range(1, top + 1)
                             for key in ("label", "score")]
        with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            for item in predictions:
                ranked = [v for pair in zip(item["labels"], item["scores"]) for v in pair]
                writer.writerow([item["path"]] + ranked)
    return {"predictions": predictions,
            "skipped": [str(p) for p in np.asarray(paths)[~kept]]}
