"""Which experts do the patches of each class go to? Affinity matrices, load and pictures;
whether the experts differ at all (:func:`diagnose_experts`); and what a router that never
mistakes the super-class would score (:func:`superclass_oracle`)."""

import math

import numpy as np

from tinymoe.files import atomic_path
from tinymoe.layers import EXPERT_WEIGHTS, MobileViTV2Block, MoEFeedForward, feedforward_weights
from tinymoe.models.dispatch import moe_layers
from tinymoe.models.tracing import read_routing, trace



def affinity_matrix(experts, labels, num_classes, num_experts):
    """Share of each class's patches routed (top-1) to each expert.

    Args:
        experts: int ``[B, M]``, the top-1 expert of each of the M patches of each image.
        labels: int ``[B]`` class of each image.
        num_classes, num_experts: matrix size.

    Returns:
        float ``[num_classes, num_experts]``; each row of a class with images sums to 1, a
        class without images is a row of zeros.

    Example:
        >>> affinity_matrix(np.array([[0, 1], [1, 1]]), np.array([0, 1]), 2, 2)
        array([[0.5, 0.5],
               [0. , 1. ]])
    """
    experts = np.asarray(experts).reshape(len(labels), -1)
    counts = np.zeros((num_classes, num_experts))
    np.add.at(counts, (np.repeat(np.asarray(labels), experts.shape[1]), experts.ravel()), 1)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def paper_affinity(probs, labels, num_classes, temperature=0.001, threshold=0.05):
    """The paper's class-expert affinity: sharpened router scores, small ones set to zero.

    Each patch's router probabilities are sharpened by a softmax at ``temperature`` over the
    log-probabilities (0.001 makes them nearly one-hot), averaged over the patches of each
    class, and scores under ``threshold`` are set to 0 (rows are not renormalised).

    Args:
        probs: ``[B, M, E]`` router probabilities of the M patches of each image.
        labels: ``[B]``.

    Example:
        >>> paper_affinity(affinity_matrix(experts, labels, 10, 4)).shape
        (10, 4)
    """
    probs = np.asarray(probs, np.float64).reshape(len(labels), -1, np.shape(probs)[-1])
    logits = np.log(np.maximum(probs, 1e-30)) / temperature
    sharp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    sharp /= sharp.sum(axis=-1, keepdims=True)
    per_image = sharp.mean(axis=1)
    matrix = np.zeros((num_classes, probs.shape[-1]))
    for c in range(num_classes):
        if np.any(labels == c):
            matrix[c] = per_image[labels == c].mean(axis=0)
    matrix[matrix < threshold] = 0.0
    return matrix


def expert_load(experts, num_experts):
    """Share of all patches whose top-1 expert is each expert, ``[num_experts]``.

    Example:
        >>> expert_load(experts, 4)  # share of patches per expert
        array([0.25, 0.3 , 0.2 , 0.25])
    """
    counts = np.bincount(np.asarray(experts).ravel(), minlength=num_experts)
    return counts / max(1, counts.sum())


def analyze(model, images, labels, num_classes, batch_size=32):
    """Affinity matrices and expert load of every mixture-of-experts layer of ``model``.

    Returns:
        dict from layer key to ``{"affinity", "paper_affinity", "load", "experts", "grid",
        "patch_pixels"}``: ``experts`` is the top-1 expert per patch ``[B, gh, gw]`` (the
        majority of its tokens with token routing, its image's with image routing) and
        ``grid``/``patch_pixels`` place the patches on the image.

    Example:
        >>> results = analyze(moe_model, val_images, val_labels, num_classes=10)
        >>> results["stage5_mvit/transformer_2"]["affinity"].shape
        (10, 4)
    """
    labels = np.asarray(labels)
    results = {}
    for key, routing in read_routing(model, images, batch_size).items():
        probs = routing["probs"]  # [B, 1 or P, N, E]
        num_experts = probs.shape[-1]
        top1 = routing["experts"][..., 0]  # [B, 1 or P, N]
        grid, patch_pixels = _patch_layout(model, key.split("/")[0], images.shape[1])
        patch_experts = top1[:, 0] if top1.shape[1] == 1 else _majority(top1, num_experts)
        if patch_experts.shape[1] == 1:  # per-image routing: each patch, its image's expert
            patch_experts = np.repeat(patch_experts, grid[0] * grid[1], axis=1)
        results[key] = {
            "affinity": affinity_matrix(top1.reshape(len(labels), -1), labels, num_classes,
                                        num_experts),
            "paper_affinity": paper_affinity(probs.reshape(len(labels), -1, num_experts),
                                             labels, num_classes),
            "load": expert_load(top1, num_experts),
            "experts": patch_experts.reshape(len(labels), *grid),
            "grid": grid,
            "patch_pixels": patch_pixels,
        }
    return results


def _majority(top1, num_experts):
    """Per patch, the expert most of its P tokens went to (token routing), ``[B, N]``."""
    votes = np.stack([(top1 == e).sum(axis=1) for e in range(num_experts)], axis=-1)
    return votes.argmax(axis=-1)


def _patch_layout(model, block_name, image_size):
    """(patch grid (rows, columns), patch side in image pixels) of a block."""
    block = model.get_layer(block_name)
    if not isinstance(block, MobileViTV2Block):
        raise ValueError(f"{block_name!r} is not a MobileViTV2Block.")
    padded_h, padded_w = block.unfold.padded
    p = block.patch_size
    stride = image_size / block.input_shape[1]
    return (padded_h // p, padded_w // p), p * stride


def plot_affinity(matrix, class_names, path, title="Class-expert affinity"):
    """Saves a heat map of a ``[classes, experts]`` matrix as a PNG (atomically).

    Example:
        >>> plot_affinity(result["affinity"], class_names, "affinity.png", "stage 5")
        'affinity.png'
    """
    from matplotlib.figure import Figure

    matrix = np.asarray(matrix)
    height = min(16, 1.5 + 0.22 * len(class_names))
    figure = Figure(figsize=(2.5 + 0.5 * matrix.shape[1], height))
    axes = figure.add_subplot()
    shown = axes.imshow(matrix, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    axes.set_xlabel("expert")
    axes.set_ylabel("class")
    axes.set_xticks(range(matrix.shape[1]))
    if len(class_names) <= 40:
        axes.set_yticks(range(len(class_names)), labels=class_names, fontsize=7)
    axes.set_title(title, fontsize=9)
    figure.colorbar(shown, ax=axes, label="share of patches")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=120, format="png")
    return path


def plot_patch_groups(images, experts, patch_pixels, path, num_experts, titles=None,
                      columns=4):
    """Saves images with each patch tinted by the colour of its expert (the paper's Fig. 2).

    Args:
        images: ``[B, H, W, 3]`` pixel values.
        experts: ``[B, rows, cols]`` top-1 expert per patch (see :func:`analyze`).
        patch_pixels: side of a patch in image pixels.
        path: PNG path, written atomically.
        num_experts: number of colours.
        titles: optional caption per image.

    Example:
        >>> plot_patch_groups(images[:8], result["experts"][:8], result["patch_pixels"],
        ...                   "patches.png", num_experts=4)
        'patches.png'
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    colours = colormaps["tab10"](np.arange(num_experts) % 10)[:, :3]
    count = len(images)
    rows = -(-count // columns)
    figure = Figure(figsize=(2.2 * min(columns, count), 2.3 * rows + 0.4))
    for i in range(count):
        axes = figure.add_subplot(rows, min(columns, count), i + 1)
        image = np.asarray(images[i], np.float32) / 255.0
        size_h, size_w = image.shape[:2]
        tint = np.zeros_like(image)
        for r in range(experts.shape[1]):
            for c in range(experts.shape[2]):
                top, left = int(round(r * patch_pixels)), int(round(c * patch_pixels))
                bottom = min(size_h, int(round((r + 1) * patch_pixels)))
                right = min(size_w, int(round((c + 1) * patch_pixels)))
                tint[top:bottom, left:right] = colours[experts[i, r, c]]
        axes.imshow(0.55 * image + 0.45 * tint)
        axes.set_axis_off()
        if titles is not None:
            axes.set_title(str(titles[i]), fontsize=7)
    figure.legend(handles=[Patch(color=colours[e], label=f"expert {e}")
                           for e in range(num_experts)],
                  loc="lower center", ncol=min(num_experts, 8), fontsize=7)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=120, format="png")
    return path


def expert_vectors(moe):
    """``[E, n]``: each expert of a mixture-of-experts layer as one flat weight vector
    (input kernel, input bias, output kernel, output bias).

    Example:
        >>> expert_vectors(moe_layers(model)["stage5_mvit/transformer_2"]).shape
        (4, 65920)
    """
    experts = moe.num_experts
    return np.concatenate([getattr(moe, name).numpy().reshape(experts, -1)
                           for name in EXPERT_WEIGHTS], axis=1).astype(np.float64)


def feedforward_vector(ffn):
    """A dense feed-forward as one flat vector laid out as :func:`expert_vectors` lays out
    an expert (what upcycling copies into each expert).

    Example:
        >>> feedforward_vector(dense.get_layer("stage5_mvit").transformer[2].ffn).shape
        (65920,)
    """
    return np.concatenate([w.ravel() for w in feedforward_weights(ffn)]).astype(np.float64)


def expert_divergence(moe, dense_ffn=None):
    """How far the experts of one layer moved apart, and from the feed-forward they were
    copied from.

    Args:
        moe: a :class:`tinymoe.layers.MoEFeedForward`.
        dense_ffn: optional, the dense model's feed-forward at the same place.

    Returns:
        dict: ``cosine`` ``[E, E]`` cosine similarity of the experts' weight vectors,
        ``min_cosine`` and ``mean_cosine`` over distinct pairs, ``spread`` ``[E]`` the distance
        of each expert from the experts' mean relative to the mean's norm; with ``dense_ffn``
        also ``cosine_to_dense`` and ``distance_to_dense`` ``[E]`` (relative to its norm).
        Experts that are copies have cosine 1 and spread 0.

    Example:
        >>> expert_divergence(moe_layers(model)["stage5_mvit/transformer_2"])["min_cosine"]
        0.9993
    """
    vectors = expert_vectors(moe)
    norms = np.linalg.norm(vectors, axis=1)
    unit = vectors / np.maximum(norms, 1e-30)[:, None]
    cosine = unit @ unit.T
    pairs = cosine[~np.eye(len(cosine), dtype=bool)]
    mean = vectors.mean(axis=0)
    result = {"cosine": cosine, "min_cosine": float(pairs.min()) if pairs.size else 1.0,
              "mean_cosine": float(pairs.mean()) if pairs.size else 1.0,
              "spread": np.linalg.norm(vectors - mean, axis=1) / max(np.linalg.norm(mean),
                                                                      1e-30)}
    if dense_ffn is not None:
        reference = feedforward_vector(dense_ffn)
        if reference.shape != mean.shape:
            raise ValueError(f"The dense feed-forward has {reference.size} weights, the "
                             f"experts {mean.size} each: not the model they were copied from.")
        scale = max(np.linalg.norm(reference), 1e-30)
        result["cosine_to_dense"] = unit @ (reference / scale)
        result["distance_to_dense"] = np.linalg.norm(vectors - reference, axis=1) / scale
    return result


def dense_feedforwards(model, dense_model):
    """``{layer key: dense FeedForward}``: the feed-forward of ``dense_model`` at the place
    of each mixture-of-experts layer of ``model``, checked to be the one its experts were
    copied from (same block, layer and weight shapes); an error names the layer otherwise.

    Example:
        >>> dense_feedforwards(moe_model, dense)["stage5_mvit/transformer_2"].hidden_dim
        160
    """
    names = {layer.name for layer in dense_model.layers}
    found = {}
    for key, moe in moe_layers(model).items():
        block_name, layer_name = key.split("/")
        index = int(layer_name.rsplit("_", 1)[1])
        block = dense_model.get_layer(block_name) if block_name in names else None
        layers = getattr(block, "transformer", None)
        if layers is None or index >= len(layers):
            raise ValueError(f"The dense model {dense_model.name!r} has no layer {key}: not "
                             f"the model {model.name!r} was upcycled from.")
        ffn = layers[index].ffn
        if isinstance(ffn, MoEFeedForward):
            raise ValueError(f"{key} of {dense_model.name!r} has experts already: pass the "
                             "dense model the MoE was upcycled from.")
        shapes = [tuple(w.shape) for w in feedforward_weights(ffn)]
        expected = [tuple(getattr(moe, name).shape[1:]) for name in EXPERT_WEIGHTS]
        if shapes != expected:
            raise ValueError(f"{key}: the dense feed-forward's weights are {shapes}, an "
                             f"expert's {expected}: not the model {model.name!r} was "
                             "upcycled from.")
        found[key] = ffn
    return found


def with_mean_experts(model):
    """A copy of ``model`` in which every expert of each mixture-of-experts layer is the
    mean of that layer's experts; routers and gates are unchanged, ``model`` is untouched.

    Averaging weights is meaningful for experts upcycled from one feed-forward (their hidden
    units stay aligned); experts trained apart from random weights have no such alignment.

    Example:
        >>> evaluate(with_mean_experts(moe_model), x_val, y_val)
    """
    from tinymoe.backend import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for moe in moe_layers(copy).values():
        for name in EXPERT_WEIGHTS:
            value = getattr(moe, name).numpy()
            getattr(moe, name).assign(np.repeat(value.mean(axis=0, keepdims=True),
                                                len(value), axis=0))
    return copy


def paired_difference(correct_a, correct_b, level=0.05):
    """Top-1 of A minus top-1 of B on the same images, and whether it is more than chance.

    The images only one model gets right decide it (McNemar's exact test): with ``a`` right
    only for A and ``b`` only for B, under "no difference" each of the ``a + b`` is A's
    with probability 1/2; the two-sided binomial p-value is
    ``min(1, 2 P[X <= min(a, b)])``, X ~ Binomial(a + b, 1/2), and the difference is
    significant when it is below ``level``.

    Example:
        >>> paired_difference(np.array([1, 1, 0, 1]), np.array([1, 0, 0, 1]))
        {'difference': 0.25, 'only_a': 1, 'only_b': 0, 'p_value': 1.0, 'significant': False}
    """
    correct_a = np.asarray(correct_a, bool)
    correct_b = np.asarray(correct_b, bool)
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(~correct_a & correct_b))
    total = only_a + only_b
    tail = sum(math.comb(total, k) for k in range(min(only_a, only_b) + 1)) / 2 ** total
    p_value = min(1.0, 2 * tail)
    return {"difference": (only_a - only_b) / max(1, len(correct_a)), "only_a": only_a,
            "only_b": only_b, "p_value": p_value, "significant": bool(p_value < level)}


def diagnose_experts(model, images, labels, dense_model=None, batch_size=64):
    """Do the experts of an upcycled ``model`` differ in what they compute, or is it the
    dense model in disguise?

    Measures, per layer, :func:`expert_divergence` (against ``dense_model``'s feed-forwards
    when given), and on ``images`` the top-1 of ``model`` against the same model with each
    layer's experts replaced by their mean (:func:`with_mean_experts`), compared image by
    image (:func:`paired_difference`); with super-classes, also :func:`superclass_oracle`.
    No significant change is no evidence that the experts compute anything the mean does
    not, on these images.

    Returns:
        dict with ``layers`` (key -> divergence figures as lists), ``images``, ``top1``,
        ``top1_mean_experts``, ``paired``, ``verdict`` (sentences) and, for per-image
        layers with super-classes, ``oracle``.

    Example:
        >>> diagnose_experts(moe_model, x_val, y_val, dense_model=dense)["verdict"]
    """
    from tinymoe.evaluation import keras_logits

    layers = moe_layers(model)
    if not layers:
        raise ValueError(f"Model {model.name!r} has no mixture-of-experts layer to diagnose.")
    dense = dense_feedforwards(model, dense_model) if dense_model is not None else {}
    report = {}
    for key, moe in layers.items():
        figures = expert_divergence(moe, dense.get(key))
        report[key] = {name: (np.round(value, 4).tolist() if isinstance(value, np.ndarray)
                              else round(value, 4)) for name, value in figures.items()}
    labels = np.asarray(labels)
    correct = np.argmax(keras_logits(model, images, batch_size), axis=1) == labels
    averaged = with_mean_experts(model)
    correct_mean = np.argmax(keras_logits(averaged, images, batch_size), axis=1) == labels
    paired = paired_difference(correct, correct_mean)
    change = 100 * (float(correct_mean.mean()) - float(correct.mean()))  # + : averaging helps
    counts = (f"{len(labels)} images, p = {paired['p_value']:.3g} ({paired['only_a']} "
              f"images only the MoE gets right, {paired['only_b']} only the averaged one)")
    if paired["significant"] and change > 0:
        verdict = (f"The experts differ but hurt: their mean scores {change:+.1f} points of "
                   f"top-1 on {counts}.")
    elif paired["significant"]:
        verdict = (f"The experts matter: replacing each by their mean changes top-1 by "
                   f"{change:+.1f} points on {counts}.")
    else:
        verdict = (f"No evidence that the experts differ: replacing each by their mean "
                   f"changes top-1 by {change:+.1f} points on {counts}; for an upcycled MoE "
                   "this is the dense model in disguise.")
    result = {"layers": report, "images": int(len(labels)), "top1": float(correct.mean()),
              "top1_mean_experts": float(correct_mean.mean()), "paired": paired,
              "verdict": verdict}
    if any(moe.routing == "image" and moe.superclasses is not None
           for moe in layers.values()):
        result["oracle"] = superclass_oracle(model, images, labels, batch_size)
        result["verdict"] += " " + result["oracle"]["verdict"]
    return result


def superclass_oracle(model, images, labels, batch_size=64):
    """Top-1 of ``model`` as its routers route, against the same model with every per-image
    layer that has super-classes sending each image to the expert of its label's
    super-class (an oracle router, under the router's own gate value), compared image by
    image; and how often each router already picks that expert.

    If the oracle scores no better, the experts have not specialised in their super-classes
    and a better router cannot help; if it does, the router is what holds them back.

    Returns:
        dict with ``images``, ``top1``, ``top1_oracle``, ``paired``
        (:func:`paired_difference`, oracle as B), ``router_superclass_top1`` (layer key ->
        share of images the router sends to their super-class's expert) and ``verdict``.

    Raises:
        ValueError: ``model`` has no per-image layer with super-classes.

    Example:
        >>> superclass_oracle(moe_model, x_val, y_val)["top1_oracle"]
    """
    from tinymoe.backend import tf

    layers = {key: moe for key, moe in moe_layers(model).items()
              if moe.routing == "image" and moe.superclasses is not None}
    if not layers:
        raise ValueError(f"Model {model.name!r} has no per-image mixture-of-experts layer "
                         "with super-classes (upcycle with router='superclass').")
    labels = np.asarray(labels)
    tables = {key: np.asarray(moe.superclasses) for key, moe in layers.items()}
    if labels.max() >= min(len(table) for table in tables.values()):
        raise ValueError(f"Label {labels.max()} has no super-class: the layers know "
                         f"{min(len(t) for t in tables.values())} classes.")
    logits, infos = trace(model, images, batch_size)
    agreement = {key: float(np.mean(infos[key]["routing"]["experts"][:, 0, 0, 0]
                                    == table[labels])) for key, table in tables.items()}
    oracle = []
    for start in range(0, len(images), batch_size):
        x = np.asarray(images[start:start + batch_size], np.float32)
        y = labels[start:start + batch_size]
        try:
            for key, moe in layers.items():
                moe.forced_experts = tf.constant(tables[key][y], tf.int32)
            oracle.append(np.argmax(model(x, training=False), axis=-1))
        finally:
            for moe in layers.values():
                moe.forced_experts = None
    correct = np.argmax(logits, axis=-1) == labels
    correct_oracle = np.concatenate(oracle) == labels
    paired = paired_difference(correct, correct_oracle)
    change = 100 * (float(correct_oracle.mean()) - float(correct.mean()))
    routed = ", ".join(f"{100 * share:.1f}%" for share in agreement.values())
    verdict = (f"Routed by the true super-class, top-1 changes by {change:+.1f} points "
               f"(p = {paired['p_value']:.3g}, {len(labels)} images); the router picks the "
               f"super-class's expert for {routed} of them. "
               + ("A better router would help." if paired["significant"] and change > 0 else
                  "Perfect routing does not help: the experts have not specialised."
                  if not paired["significant"] else
                  "The router's own choice beats the super-classes."))
    return {"images": int(len(labels)), "top1": float(correct.mean()),
            "top1_oracle": float(correct_oracle.mean()), "paired": paired,
            "router_superclass_top1": agreement, "verdict": verdict}
