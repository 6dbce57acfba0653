"""Which experts do the patches of each class go to? Affinity matrices, load and pictures.
Whether the experts differ at all: :mod:`tinymoe.diagnosis`."""

import numpy as np

from tinymoe.files import atomic_path
from tinymoe.layers import MobileViTV2Block
from tinymoe.models.tracing import read_routing


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
