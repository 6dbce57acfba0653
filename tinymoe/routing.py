"""Cluster-initialised routers: upcycling a trained dense MobileViTv2 into a mixture of experts.

The paper's method (Mensah et al., arXiv 2411.07834): run training images through the dense
network, take the embedding each patch has right after the attention of a layer (the input
the feed-forward, and so the router, receives), cluster those embeddings hierarchically into
E groups, and start the router so that each expert owns one group. The experts start as
copies of the dense feed-forward, and every other weight is copied from the dense model.

With centroids c_e, the router ``logits_e = (x . c_e - |c_e|^2 / 2) / t`` ranks experts by
distance to their centroid (argmax logits = nearest centroid), so at step 0 each patch goes
to the expert of the cluster it is closest to; the temperature t sets how sharp the gates are.
"""

import dataclasses

import numpy as np
from sklearn.cluster import AgglomerativeClustering

from tinymoe.backend import keras
from tinymoe.layers import EXPERT_WEIGHTS, MobileViTV2Block, feedforward_weights
from tinymoe.models.dispatch import moe_layers
from tinymoe.models.mobilevit_v2 import num_patches
from tinymoe.models.tracing import trace

ROUTER_INITS = ("cluster", "random", "superclass")


def collect_embeddings(model, images, keys, routing="patch", batch_size=32):
    """Post-attention embeddings of the transformer layers ``keys`` on ``images``.

    Args:
        model: a registered-architecture Keras model.
        images: ``[B, H, W, C]`` pixel values.
        keys: layer keys ``"<block>/transformer_<i>"``.
        routing: "patch" averages the P pixel tokens of each patch (what a per-patch router
            sees); "token" keeps every token; "image" averages all the tokens of each
            image; or a dict from key to one of them.

    Returns:
        dict from key to float32 ``[num_patches_or_tokens, d]``.

    Example:
        >>> embeddings = collect_embeddings(dense_model, images[:512],
        ...                                 ["stage5_mvit/transformer_2"])
    """
    _, infos = trace(model, images, batch_size)
    embeddings = {}
    for key in keys:
        if key not in infos:
            raise ValueError(f"The model has no transformer layer {key!r}; it has "
                             f"{sorted(infos)}.")
        tokens = infos[key]["ffn_input"]  # [B, P, N, d]
        mode = routing[key] if isinstance(routing, dict) else routing
        if mode == "patch":
            tokens = tokens.mean(axis=1)  # -> [B, N, d]
        elif mode == "image":
            tokens = tokens.mean(axis=(1, 2))  # -> [B, d]
        embeddings[key] = tokens.reshape(-1, tokens.shape[-1]).astype(np.float32)
    return embeddings


def cluster_embeddings(embeddings, num_experts, linkage="ward", max_samples=4000, seed=0):
    """Agglomerative clustering of embeddings into ``num_experts`` groups.

    Args:
        embeddings: ``[M, d]``.
        num_experts: number of clusters.
        linkage: "ward" (default), "complete", "average" or "single" (scikit-learn's).
        max_samples: cluster a seeded random subset of at most this many rows (the method's
            memory grows with the square of the rows).
        seed: subset seed.

    Returns:
        (centroids ``[E, d]``, cluster sizes ``[E]`` in the subset).

    Example:
        >>> centroids, sizes = cluster_embeddings(embeddings["stage5_mvit/transformer_2"], 4)
    """
    embeddings = np.asarray(embeddings, np.float32)
    if len(embeddings) < num_experts:
        raise ValueError(f"{len(embeddings)} embeddings cannot form {num_experts} clusters; "
                         "use more images.")
    if len(embeddings) > max_samples:
        pick = np.random.default_rng(seed).choice(len(embeddings), max_samples, replace=False)
        embeddings = embeddings[np.sort(pick)]
    labels = AgglomerativeClustering(n_clusters=num_experts, linkage=linkage).fit_predict(
        embeddings)
    centroids = np.stack([embeddings[labels == e].mean(axis=0) for e in range(num_experts)])
    return centroids, np.bincount(labels, minlength=num_experts)


def router_from_centroids(centroids, embeddings=None, temperature=None):
    """Router weights that send each embedding to the expert of its nearest centroid.

    Args:
        centroids: ``[E, d]``.
        embeddings: ``[M, d]``, used to choose the temperature when it is None.
        temperature: logit temperature; None picks the one that gives the median embedding
            a logit gap of 2 between its nearest and second-nearest expert.

    Returns:
        (kernel ``[d, E]``, bias ``[E]``, temperature).

    Example:
        >>> kernel, bias, temperature = router_from_centroids(centroids, embeddings)
    """
    centroids = np.asarray(centroids, np.float64)
    if temperature is None:
        temperature = 1.0
        if embeddings is not None and len(centroids) > 1:
            distances = ((np.asarray(embeddings, np.float64)[:, None, :] - centroids[None]) ** 2
                         ).sum(-1)
            nearest = np.sort(distances, axis=1)
            gaps = nearest[:, 1] - nearest[:, 0]
            gaps = gaps[gaps > 1e-9 * max(1.0, float(nearest[:, 1].max()))]
            if len(gaps):  # else every embedding is equally far from two centroids
                temperature = float(np.median(gaps)) / 4.0
    kernel = centroids.T / temperature
    bias = -0.5 * (centroids ** 2).sum(axis=1) / temperature
    return kernel.astype(np.float32), bias.astype(np.float32), float(temperature)


def superclasses(embeddings, labels, num_experts, linkage="ward"):
    """Super-classes: the classes clustered (agglomerative) by the mean of their images'
    embeddings into ``num_experts`` groups, one per expert.

    Args:
        embeddings: ``[M, d]``, one per image (see :func:`collect_embeddings`, "image").
        labels: ``[M]`` class indices.
        num_experts: number of super-classes.
        linkage: scikit-learn's linkage.

    Returns:
        (int array ``[num_classes]``: the super-class of each class, ``-1`` for a class
        without images; centroids ``[E, d]``: the mean embedding of each super-class's images).

    Example:
        >>> groups, centroids = superclasses(embeddings, y_train[:2048], num_experts=4)
    """
    embeddings = np.asarray(embeddings, np.float64)
    labels = np.asarray(labels).astype(int)
    present = np.unique(labels)
    if len(present) < num_experts:
        raise ValueError(f"{len(present)} classes among the images cannot form {num_experts} "
                         "super-classes; use more images or fewer experts.")
    means = np.stack([embeddings[labels == c].mean(axis=0) for c in present])
    groups = AgglomerativeClustering(n_clusters=num_experts, linkage=linkage).fit_predict(means)
    table = np.full(int(labels.max()) + 1, -1)
    table[present] = groups
    centroids = np.stack([embeddings[table[labels] == e].mean(axis=0)
                          for e in range(num_experts)])
    return table, centroids.astype(np.float32)


@dataclasses.dataclass
class UpcycleReport:
    """What :func:`upcycle` did, per mixture-of-experts layer.

    Attributes:
        router: "cluster" or "random".
        layers: dict from layer key to ``{"cluster_sizes", "temperature", "embeddings"}``
            (sizes and temperature only for "cluster").

    Example:
        >>> moe, report = upcycle(dense, MoEConfig(), images)
        >>> report.router
        'cluster'
    """

    router: str
    layers: dict


def upcycle(dense_model, moe_config, images, router="cluster", linkage="ward",
            max_samples=4000, noise=0.0, reinit=0.0, temperature=None, seed=0, batch_size=32,
            labels=None, num_classes=None):
    """Turns a trained dense MobileViTv2 into a mixture-of-experts model.

    Args:
        dense_model: a trained dense model from :func:`tinymoe.models.create_model`.
        moe_config: a :class:`tinymoe.models.MoEConfig` saying which layers get experts.
        images: training images ``[B, H, W, C]`` whose patches are clustered.
        router: "cluster" (the paper's initialisation), "random" (the baseline: a
            randomly initialised router, experts still copied) or "superclass" (per-image
            routing only: the classes are clustered into E super-classes by their mean
            image embedding, the router starts from the super-classes' centroids, and the
            layer keeps the super-classes, so that training supervises its router, see
            :func:`tinymoe.train.supervise_routers`).
        linkage: agglomerative clustering linkage ("ward" by default).
        max_samples: patches clustered per layer at most.
        noise: experts are the dense weights plus Gaussian noise of ``noise`` times each
            weight's standard deviation (0: exact copies).
        reinit: the fraction of each expert's hidden units drawn afresh (Drop-Upcycling,
            Nakamura et al., arXiv 2502.19261, which found 0.5 best): a random subset per
            expert, whose input weights, biases and output weights are sampled from a normal
            distribution with the mean and standard deviation of the dense weight they
            replace; the rest stay copies (0: none).
        temperature: router temperature; None chooses it from the data.
        seed: seed of the patch subset, the noise and the random router; it reseeds
            Python, NumPy and TensorFlow (``keras.utils.set_random_seed``), so build the
            training data after upcycling, from :func:`tinymoe.train.stream_seed`.
        labels: class index of each image (``router="superclass"`` only).
        num_classes: the number of classes (default: the dense model's outputs).

    Returns:
        (moe_model, :class:`UpcycleReport`).

    Example:
        >>> moe_model, report = upcycle(dense, MoEConfig(num_experts=4), x_train[:512])
    """
    if router not in ROUTER_INITS:
        raise ValueError(f"router must be one of {ROUTER_INITS}, got {router!r}.")
    if not 0.0 <= reinit <= 1.0:
        raise ValueError(f"reinit is a fraction of the hidden units, in [0, 1]; got {reinit}.")
    if router == "superclass":
        if moe_config.routing != "image":
            raise ValueError(f"router='superclass' needs per-image routing (routing='image'),"
                             f" got routing={moe_config.routing!r}.")
        if labels is None or len(labels) != len(images):
            raise ValueError("router='superclass' needs the class label of every image.")
    keras.utils.set_random_seed(seed)
    moe_model = _moe_architecture(dense_model, moe_config)
    keys = list(moe_layers(moe_model))
    routings = {key: moe.routing for key, moe in moe_layers(moe_model).items()}
    embeddings = (collect_embeddings(dense_model, images, keys, routings, batch_size)
                  if router != "random" else {})
    groups = {}
    if router == "superclass":
        classes = int(num_classes or dense_model.output_shape[-1])
        for key in keys:
            table, centroids = superclasses(embeddings[key], labels, moe_config.num_experts,
                                            linkage)
            if len(table) > classes:
                raise ValueError(f"labels go up to {len(table) - 1}, but the model has "
                                 f"{classes} classes.")
            # A class no image showed goes to expert 0 (the report counts those seen).
            table = np.concatenate([table, np.full(classes - len(table), -1)])
            groups[key] = (table, centroids)
        # The super-classes are part of the architecture (the layers keep them).
        keras.utils.set_random_seed(seed)
        moe_model = _moe_architecture(dense_model, moe_config, {
            key: [int(v) for v in np.maximum(table, 0)] for key, (table, _) in groups.items()})
    _copy_shared_weights(dense_model, moe_model)
    rng = np.random.default_rng(seed)
    report = {}
    for key, moe in moe_layers(moe_model).items():
        block_name, layer_name = key.split("/")
        index = int(layer_name.rsplit("_", 1)[1])
        _copy_experts(dense_model.get_layer(block_name).transformer[index].ffn, moe, noise, rng,
                      reinit)
        if router == "superclass":
            table, centroids = groups[key]
            kernel, bias, used = router_from_centroids(centroids, embeddings[key], temperature)
            moe.router_kernel.assign(kernel)
            moe.router_bias.assign(bias)
            report[key] = {"superclasses": [int(v) for v in moe.superclasses],
                           "classes_seen": int((table >= 0).sum()), "temperature": used,
                           "embeddings": len(embeddings[key])}
        elif router == "cluster":
            centroids, sizes = cluster_embeddings(embeddings[key], moe.num_experts, linkage,
                                                  max_samples, seed)
            kernel, bias, used = router_from_centroids(centroids, embeddings[key], temperature)
            moe.router_kernel.assign(kernel)
            moe.router_bias.assign(bias)
            report[key] = {"cluster_sizes": sizes.tolist(), "temperature": used,
                           "embeddings": len(embeddings[key])}
        else:
            report[key] = {}
    return moe_model, UpcycleReport(router, report)


def _moe_architecture(dense_model, moe_config, superclasses=None):
    """The dense model's architecture with experts in the layers ``moe_config`` names
    (``superclasses``: layer key -> the super-class of each class, for those that have)."""
    config = dense_model.get_config()
    by_name = {layer["config"]["name"]: layer for layer in config["layers"]}
    wanted = {}
    for stage, index in moe_config.layers:
        wanted.setdefault(f"stage{stage}_mvit", []).append(index)
    for block_name, indices in wanted.items():
        if block_name not in by_name:
            raise ValueError(f"The dense model has no block {block_name!r} for the MoE layers "
                             f"{moe_config.layers}.")
        block = by_name[block_name]["config"]
        if block.get("moe_layers"):
            raise ValueError(f"{dense_model.name}: block {block_name!r} already has experts; "
                             "upcycle a dense model.")
        hidden = moe_config.expert_hidden_dim
        if hidden not in (None, block["ffn_dim"]):
            raise ValueError(f"Experts start as copies of the dense feed-forward, so "
                             f"expert_hidden_dim must be None or {block['ffn_dim']} for "
                             f"{block_name!r}, got {hidden}.")
        height, width = dense_model.get_layer(block_name).input_shape[1:3]
        block["moe_layers"] = list(indices)
        block["superclasses"] = {
            key.split("_")[-1]: groups for key, groups in (superclasses or {}).items()
            if key.startswith(f"{block_name}/")}
        block["moe"] = moe_config.layer_kwargs(num_patches(height, width, block["patch_size"]),
                                               block_name)
    config["name"] = f"{dense_model.name}_moe"
    return keras.Model.from_config(config)


def _copy_shared_weights(dense_model, moe_model):
    """Copies every weight except the feed-forwards that became mixtures of experts."""
    for dense_layer in dense_model.layers:
        target = moe_model.get_layer(dense_layer.name)
        if not isinstance(dense_layer, MobileViTV2Block):
            target.set_weights(dense_layer.get_weights())
            continue
        for name in ("local_dw", "local_pw", "norm", "conv_proj"):
            getattr(target, name).set_weights(getattr(dense_layer, name).get_weights())
        for source, layer in zip(dense_layer.transformer, target.transformer):
            if layer.is_moe:
                for name in ("attn_norm", "attn", "ffn_norm"):
                    getattr(layer, name).set_weights(getattr(source, name).get_weights())
            else:
                layer.set_weights(source.get_weights())


def _copy_experts(dense_ffn, moe, noise, rng, reinit=0.0):
    """Every expert of ``moe`` becomes ``dense_ffn`` (plus relative Gaussian noise), with a
    ``reinit`` fraction of its hidden units drawn afresh (see :func:`upcycle`)."""
    weights = feedforward_weights(dense_ffn)  # [d, h], [h], [h, d], [d]
    hidden = weights[1].shape[0]
    # Drawn only when asked, so that the noise of a run without reinit stays as it was.
    drawn = [rng.permutation(hidden)[:round(reinit * hidden)]
             for _ in range(moe.num_experts)] if reinit > 0 else []
    # The axis of each weight that runs along the hidden units (None: the output bias).
    for name, value, axis in zip(EXPERT_WEIGHTS, weights, (1, 0, 0, None)):
        target = getattr(moe, name)
        copies = np.repeat(value[None], moe.num_experts, axis=0)
        if noise > 0:
            copies = copies + rng.normal(0, noise * (value.std() + 1e-12), copies.shape)
        if axis is not None:
            for e, units in enumerate(drawn):
                index = [slice(None)] * value.ndim
                index[axis] = units
                shape = [len(units) if i == axis else n for i, n in enumerate(value.shape)]
                copies[e][tuple(index)] = rng.normal(value.mean(), value.std(), shape)
        target.assign(copies.astype(np.float32))
