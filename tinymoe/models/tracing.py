"""Reading what happens inside a model: post-attention embeddings and expert routing."""

import numpy as np

from tinymoe.backend import keras
from tinymoe.layers import MobileViTV2Block


def trace(model, images, batch_size=32):
    """Runs ``model`` in inference mode and records every transformer layer.

    The model must be a chain of layers (as every registered model is).

    Args:
        model: a Keras model built by :func:`tinymoe.models.create_model`.
        images: array ``[B, H, W, C]`` of pixel values.
        batch_size: images per forward pass.

    Returns:
        (logits, infos): logits ``[B, classes]`` as numpy, and a dict from
        ``"<block>/transformer_<i>"`` to that layer's info (``ffn_input`` and, for a mixture
        of experts, ``routing``), every tensor converted to numpy and concatenated over the
        batches.

    Example:
        >>> logits, infos = trace(model, images[:8])
        >>> infos["stage5_mvit/transformer_2"]["routing"]["probs"].shape
        (8, 1, 4, 4)
    """
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    _check_chain(model, layers)
    outputs, records = [], {}
    images = np.asarray(images, dtype=np.float32)
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        for layer in layers:
            if isinstance(layer, MobileViTV2Block):
                x, infos = layer.trace(x)
                for index, info in enumerate(infos):
                    key = f"{layer.name}/transformer_{index}"
                    records.setdefault(key, []).append(_to_numpy(info))
            else:
                x = layer(x, training=False)
        outputs.append(np.asarray(x))
    merged = {key: _concatenate(parts) for key, parts in records.items()}
    return np.concatenate(outputs), merged


def read_routing(model, images, batch_size=32):
    """The routing of every mixture-of-experts layer on a batch of images.

    Returns:
        dict from ``"<block>/transformer_<i>"`` to ``{"probs", "gates", "experts"}`` numpy
        arrays of shape ``[B, 1 or P, N, E]`` (``experts``: ``[B, 1 or P, N, top_k]``).

    Example:
        >>> routing = read_routing(moe_model, images[:8])
        >>> sorted(routing)
        ['stage4_mvit/transformer_3', 'stage5_mvit/transformer_2']
    """
    _, infos = trace(model, images, batch_size)
    return {key: info["routing"] for key, info in infos.items() if "routing" in info}


def _check_chain(model, layers):
    previous = model.inputs[0]
    for layer in layers:
        inbound = layer.input
        if isinstance(inbound, (list, tuple)) or inbound is not previous:
            raise ValueError(f"trace() needs a model that is a chain of layers; layer "
                             f"{layer.name!r} does not take the previous layer's output.")
        previous = layer.output


def _to_numpy(tree):
    if isinstance(tree, dict):
        return {key: _to_numpy(value) for key, value in tree.items()}
    return np.asarray(tree)


def _concatenate(parts):
    if isinstance(parts[0], dict):
        return {key: _concatenate([part[key] for part in parts]) for key in parts[0]}
    return np.concatenate(parts)
