"""Pretrained weights shipped with tinymoe, loaded the Keras Applications way.

Each weights file ``<model>.<weights>.npz`` holds one model's weights by layer name (trainable
weights as float16, batch-norm statistics as float32) and has a card ``<model>.<weights>.json``
beside it: the data, recipe, epochs, accuracy, licence and the file's SHA-256, which is
checked on every load. ``create_model(name, weights="tinyimagenet")`` builds the model for
the caller's classes and input size and loads every layer but the classifier, which stays
freshly initialised for the new classes.

The files are written by ``benchmarks/pretrain.py --ship``.
"""

import hashlib
import json
import os

import numpy as np

from tinymoe.files import atomic_path, write_json

WEIGHTS_DIR = os.path.dirname(os.path.abspath(__file__))
# The layer that maps features to classes: not loaded unless include_top (its width is the
# number of classes the weights were trained for).
HEAD_LAYERS = ("classifier",)


def _cards(folder=WEIGHTS_DIR):
    cards = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json"):
            with open(os.path.join(folder, name)) as handle:
                card = json.load(handle)
            cards[(card["model"], card["weights"])] = dict(
                card, path=os.path.join(folder, card["file"]))
    return cards


def available_weights():
    """``{model name: [weights names]}`` of the weights shipped with this package.

    Example:
        >>> available_weights()["mobilevit_v2_mcu"]
        ['tinyimagenet']
    """
    found = {}
    for model, weights in _cards():
        found.setdefault(model, []).append(weights)
    return found


def weights_card(model, weights):
    """The card of ``model``'s ``weights``: data, recipe, epochs, val top-1, licence, sha256.

    Raises:
        ValueError: naming the weights that are available when these are not.

    Example:
        >>> weights_card("mobilevit_v2_mcu", "tinyimagenet")["tinyimagenet_val_top1_float16"]
    """
    cards = _cards()
    if (model, weights) in cards:
        return cards[(model, weights)]
    shipped = available_weights()
    if model in shipped:
        raise ValueError(f"Model {model!r} has no weights named {weights!r}; it has "
                         f"{', '.join(repr(w) for w in shipped[model])}.")
    listing = "; ".join(f"{m}: {', '.join(w)}" for m, w in sorted(shipped.items())) or "none"
    raise ValueError(f"Model {model!r} has no pretrained weights (weights={weights!r}). "
                     f"Shipped: {listing}. Use weights=None to start from random weights.")


def file_sha256(path):
    """Hex SHA-256 of a file.

    Example:
        >>> file_sha256(weights_card("mobilevit_v2_mcu", "tinyimagenet")["path"])
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_weights_input(card, input_shape):
    """Refuses an input the weights cannot take: not RGB, or smaller than they were trained at
    (the last stage's feature map would shrink below the grid they saw).

    Example:
        >>> check_weights_input(weights_card("mobilevit_v2_mcu", "tinyimagenet"), (128, 128, 3))
    """
    height, width, channels = (int(v) for v in input_shape)
    smallest = int(card["input_size"])
    if channels != 3 or min(height, width) < smallest:
        raise ValueError(
            f"The {card['weights']!r} weights of {card['model']!r} take RGB images of at "
            f"least {smallest}x{smallest} (pretrained at {smallest}x{smallest}, any multiple "
            f"of 32 from there; 128 is the fine-tuning default), got {tuple(input_shape)}.")


def save_weights(model, stem, card):
    """Writes ``stem.npz`` (``model``'s weights by layer name) and its card ``stem.json``.

    Trainable weights are stored as float16 (half the bytes; the card records the accuracy
    of the float16 weights beside that of the float32 ones), the others (batch-norm
    statistics) as float32. Both files are written atomically.

    Returns:
        the ``.npz`` path.

    Example:
        >>> save_weights(model, "tinymoe/weights/mobilevit_v2_mcu.tinyimagenet",
        ...              {"model": "mobilevit_v2_mcu", "weights": "tinyimagenet", ...})
    """
    arrays = {}
    for layer in model.layers:
        trainable = {id(v) for v in layer.trainable_weights}
        for i, variable in enumerate(layer.weights):
            dtype = np.float16 if id(variable) in trainable else np.float32
            arrays[f"{layer.name}/{i}"] = variable.numpy().astype(dtype)
    path = f"{stem}.npz"
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    card = dict(card, file=os.path.basename(path), sha256=file_sha256(path),
                bytes=os.path.getsize(path))
    write_json(f"{stem}.json", card)
    return path


def load_weights(model, weights, include_top=False, head_layers=HEAD_LAYERS):
    """Loads stored weights into ``model`` by layer name, checking the file's checksum.

    Args:
        model: a Keras model with the architecture the weights were trained for (any
            number of classes unless ``include_top``).
        weights: a weights name (``"tinyimagenet"``: the shipped file for ``model.name``)
            or the path of an ``.npz`` written by :func:`save_weights` (checked against
            the card beside it).
        include_top: also load the ``head_layers`` (same classes as the weights).
        head_layers: names of the layers left as they are unless ``include_top``.

    Returns:
        ``model``.

    Raises:
        ValueError: a checksum that does not match (a damaged or altered file), or a
            layer missing from the file or of another shape (another architecture).

    Example:
        >>> load_weights(create_model("mobilevit_v2_mcu", 10, (128, 128, 3)), "tinyimagenet")
    """
    if str(weights).endswith(".npz"):
        path = weights
        with open(path[:-len(".npz")] + ".json") as handle:
            card = json.load(handle)
    else:
        card = weights_card(model.name, weights)
        path = card["path"]
    if not os.path.isfile(path):
        raise ValueError(f"The weights file {path!r} is missing from this installation.")
    digest = file_sha256(path)
    if digest != card["sha256"]:
        raise ValueError(f"The weights file {path!r} is damaged or altered: its SHA-256 is "
                         f"{digest}, its card says {card['sha256']}. Reinstall tinymoe.")
    with np.load(path) as stored:
        stored = dict(stored)
    problems, assignments = [], []
    for layer in model.layers:
        if not layer.weights or (layer.name in head_layers and not include_top):
            continue
        values = [stored.get(f"{layer.name}/{i}") for i in range(len(layer.weights))]
        shapes = [tuple(v.shape) for v in layer.weights]
        if any(v is None for v in values):
            problems.append(f"{layer.name} (not in the file)")
        elif [tuple(v.shape) for v in values] != shapes:
            problems.append(f"{layer.name} (file {[tuple(v.shape) for v in values]}, "
                            f"model {shapes})")
        else:
            assignments.append((layer, values))
    if problems:
        raise ValueError(f"The weights {os.path.basename(path)} do not fit model "
                         f"{model.name!r}: {'; '.join(problems[:5])}"
                         f"{' ...' if len(problems) > 5 else ''}. They were trained for "
                         f"{card['model']!r} as registered.")
    for layer, values in assignments:  # only once every layer fits: no half-loaded model
        layer.set_weights([v.astype(np.float32) for v in values])
    return model
