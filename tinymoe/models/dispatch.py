"""Choosing how the mixture-of-experts layers of a trained model run at inference."""

from tinymoe.layers.moe import MoEFeedForward, validate_dispatch
from tinymoe.layers.transformer import MobileViTV2Block


def _set_dispatch(config, settings):
    """Sets the dispatch in every MoE layer config nested anywhere in a model config."""
    if isinstance(config, dict):
        if config.get("class_name", "").endswith("MoEFeedForward"):
            config["config"].update(settings)
        moe = config.get("moe")
        if isinstance(moe, dict):  # a TransformerLayer builds its MoEFeedForward from this
            moe.update(settings)
            if "capacity_factor" in settings and config.get("capacity_factors"):
                config["capacity_factors"] = {}  # one factor for all replaces per-layer ones
        for value in config.values():
            _set_dispatch(value, settings)
    elif isinstance(config, (list, tuple)):
        for value in config:
            _set_dispatch(value, settings)


def has_experts(model):
    """True when ``model`` holds at least one :class:`MoEFeedForward`.

    Example:
        >>> has_experts(create_model("mobilevit_v2_moe_050"))
        True
    """
    return any(isinstance(layer, MoEFeedForward) for layer in model._flatten_layers())


def moe_layers(model):
    """``{"<block>/transformer_<i>": MoEFeedForward}`` for every mixture-of-experts layer of a
    MobileViTv2 model, in graph order.

    Example:
        >>> list(moe_layers(create_model("mobilevit_v2_moe_050", input_shape=(128, 128, 3))))
        ['stage4_mvit/transformer_3', 'stage5_mvit/transformer_2']
    """
    return {f"{block.name}/transformer_{index}": layer.ffn
            for block in model.layers if isinstance(block, MobileViTV2Block)
            for index, layer in enumerate(block.transformer)
            if isinstance(layer.ffn, MoEFeedForward)}


def with_dispatch(model, dispatch="sparse", capacity_factor=1.25, priority="gate",
                  train_dispatch=None):
    """A copy of ``model`` (same weights) whose MoE layers use ``dispatch`` at inference.

    Choose the dispatch for export: "sparse" runs about ``capacity_factor`` feed-forwards
    per MoE layer instead of E. Training keeps the masked form unless ``train_dispatch`` is
    "sparse" (capacity-aware fine-tuning: the model trains with the drops it will see).

    Args:
        model: a Keras model with :class:`tinymoe.layers.MoEFeedForward` layers.
        dispatch: "sparse" or "masked".
        capacity_factor: expert slots as a multiple of patches / E (sparse only): one
            number for every MoE layer, or a dict from the keys of :func:`moe_layers` to
            each layer's factor (calibrated ones, see
            :func:`tinymoe.export.calibrate_capacity`); layers it leaves out keep theirs.
        priority: "gate" or "order": which patches keep their slots at overflow.
        train_dispatch: None keeps each layer's training form; "masked" or "sparse" sets it.

    Returns:
        the new model; ``model`` itself is not changed.

    Example:
        >>> sparse = with_dispatch(moe_model, "sparse", capacity_factor=1.25)
        >>> tflite_bytes = to_tflite(sparse, images)
        >>> aware = with_dispatch(moe_model, "sparse", 1.25, train_dispatch="sparse")
        >>> fit(aware, train, val, TrainConfig(epochs=2, learning_rate=1e-4))
    """
    if not has_experts(model):
        raise ValueError(f"Model {model.name!r} has no mixture-of-experts layer to dispatch.")
    per_layer = dict(capacity_factor) if isinstance(capacity_factor, dict) else {}
    if per_layer:
        unknown = sorted(set(per_layer) - set(moe_layers(model)))
        if unknown:
            raise ValueError(f"No MoE layer {unknown} in {model.name!r}; its MoE layers are "
                             f"{list(moe_layers(model))}.")
    for layer in model._flatten_layers():
        if isinstance(layer, MoEFeedForward):
            factor = layer.capacity_factor if per_layer else capacity_factor
            validate_dispatch(dispatch, factor, layer.top_k, layer.num_experts)
            if train_dispatch is not None:
                validate_dispatch(train_dispatch, factor, layer.top_k, layer.num_experts)
    for key, layer in moe_layers(model).items():
        if key in per_layer:
            validate_dispatch(dispatch, per_layer[key], layer.top_k, layer.num_experts)
    config = model.get_config()
    if priority not in ("gate", "order"):
        raise ValueError(f"priority must be 'gate' or 'order', got {priority!r}.")
    settings = {"dispatch": dispatch, "priority": priority}
    if not per_layer:
        settings["capacity_factor"] = float(capacity_factor)
    if train_dispatch is not None:
        settings["train_dispatch"] = train_dispatch
    _set_dispatch(config, settings)
    blocks = {layer["config"]["name"]: layer["config"] for layer in config["layers"]}
    for key, factor in per_layer.items():
        block, layer = key.split("/")
        factors = blocks[block].setdefault("capacity_factors", {}) or {}
        factors[layer.rsplit("_", 1)[1]] = float(factor)
        blocks[block]["capacity_factors"] = factors
    copy = model.__class__.from_config(config)
    copy.set_weights(model.get_weights())
    return copy
