"""Do the experts of a mixture-of-experts model differ at all? How far they moved apart and
from the feed-forward they were upcycled from, top-1 with their mean in their place
(:func:`diagnose_experts`), and what a router that never mistakes the super-class would
score (:func:`superclass_oracle`)."""

import math

import numpy as np

from tinymoe.layers import EXPERT_WEIGHTS, MoEFeedForward, feedforward_weights
from tinymoe.models.dispatch import moe_layers
from tinymoe.models.tracing import trace


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
