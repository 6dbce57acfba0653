"""The checks of a mixture-of-experts layer's configuration, each a ValueError that names the
bad value (used by :class:`tinymoe.layers.MoEFeedForward` and
:class:`tinymoe.models.MoEConfig`)."""

ROUTING_MODES = ("patch", "token", "image")
DISPATCH_MODES = ("masked", "sparse")


def validate_moe_args(num_experts, top_k, routing, hidden_dim=1, modes=ROUTING_MODES):
    """Raises a ValueError naming the bad value in a mixture-of-experts configuration.

    ``modes``: the routings allowed (a model configuration also allows "auto").

    Example:
        >>> validate_moe_args(num_experts=4, top_k=5, routing="patch")  # ValueError
    """
    if int(num_experts) < 1:
        raise ValueError(f"num_experts must be at least 1, got {num_experts}.")
    if not 1 <= int(top_k) <= int(num_experts):
        raise ValueError(f"top_k must be between 1 and num_experts={num_experts}, got {top_k}.")
    if routing not in modes:
        raise ValueError(f"routing must be one of {modes}, got {routing!r}.")
    if int(hidden_dim) < 1:
        raise ValueError(f"hidden_dim must be at least 1, got {hidden_dim}.")


def validate_superclasses(superclasses, num_experts, routing):
    """``superclasses`` as a list of ints (or None), or a ValueError naming what is wrong.

    Example:
        >>> validate_superclasses([0, 1, 1], num_experts=2, routing="image")
        [0, 1, 1]
    """
    if superclasses is None:
        return None
    values = [int(v) for v in superclasses]
    if routing != "image":
        raise ValueError(f"Super-classes supervise a per-image router; this layer routes per "
                         f"{routing}.")
    if not values or min(values) < 0 or max(values) >= int(num_experts):
        raise ValueError(f"superclasses must give each class an expert in [0, {num_experts}),"
                         f" got {values}.")
    return values


def validate_dispatch(dispatch, capacity_factor, top_k, num_experts):
    """Raises a ValueError naming the bad value of a dispatch configuration.

    Example:
        >>> validate_dispatch("sparse", 1.25, top_k=2, num_experts=4)  # ValueError
    """
    if dispatch not in DISPATCH_MODES:
        raise ValueError(f"dispatch must be one of {DISPATCH_MODES}, got {dispatch!r}.")
    if dispatch == "sparse" and int(top_k) != 1:
        raise ValueError(f"Sparse dispatch routes each patch to one expert (top_k=1); this "
                         f"layer has top_k={top_k}. Use dispatch='masked'.")
    if float(capacity_factor) * int(num_experts) < 1.0:
        raise ValueError(f"capacity_factor must be at least 1/num_experts, got "
                         f"{capacity_factor}.")
