"""The mixture-of-experts feed-forward with per-patch routing.

Each of E experts is a feed-forward ``d -> hidden_dim -> d``. A linear router scores the
experts for each patch (the mean of its P pixel tokens) or, optionally, for each token; the
top-k experts by router probability are kept and their outputs are summed, each scaled by its
gate (the router probability, optionally renormalised over the chosen experts).

This is the training and "masked" inference form: every expert runs on every token and the
gates zero out the experts a token was not routed to. It is exact, costs E feed-forwards,
and converts to ops that TFLite Micro runs: the top-k choice is made with REDUCE_MAX,
GREATER_EQUAL and CUMSUM (no TOPK_V2, ONE_HOT or ARG_MAX on the inference path).
"""

import math

from tinymoe.backend import keras, register, tf
from tinymoe.layers.activations import check_activation, get_activation
from tinymoe.layers.building import ScopedBuildMixin

ROUTING_MODES = ("patch", "token")


def top_k_mask(probs, k):
    """A 0/1 mask of the ``k`` largest entries along the last axis, ties to the lower index.

    Built from REDUCE_MAX, GREATER_EQUAL, CUMSUM, LESS and MUL only, so it converts for
    TFLite Micro. The cumulative-sum test uses ``< 1.5`` rather than ``== 1`` so that it stays
    right when the count is quantised to int8.

    Example:
        >>> top_k_mask(tf.constant([[0.1, 0.6, 0.3]]), 2).numpy()
        array([[0., 1., 1.]], dtype=float32)
    """
    remaining = probs
    mask = tf.zeros_like(probs)
    for _ in range(k):
        best = tf.reduce_max(remaining, axis=-1, keepdims=True)
        is_best = tf.cast(remaining >= best, probs.dtype)
        first = is_best * tf.cast(tf.cumsum(is_best, axis=-1) < 1.5, probs.dtype)
        mask = mask + first
        remaining = remaining * (1.0 - first) - first  # chosen entries drop below every prob
    return mask


def load_balancing_loss(probs, mask, top_k):
    """The Switch-Transformer balancing loss ``E * sum_e f_e * p_e``.

    ``f_e`` is the share of routing choices that went to expert e, ``p_e`` its mean router
    probability. It is 1 for perfectly uniform routing and E when one expert takes everything.
    """
    num_experts = probs.shape[-1]
    axes = list(range(len(probs.shape) - 1))
    share = tf.reduce_mean(mask, axis=axes) / float(top_k)
    mean_prob = tf.reduce_mean(probs, axis=axes)
    return float(num_experts) * tf.reduce_sum(share * mean_prob)


@register
class MoEFeedForward(ScopedBuildMixin, keras.layers.Layer):
    """A mixture-of-experts feed-forward on patch tokens ``[B, P, N, d]``.

    Args:
        num_experts: int >= 1, number of experts E.
        hidden_dim: int, hidden width of each expert.
        top_k: int, 1 <= top_k <= num_experts, experts used per patch (or token).
        activation: expert activation, "swish" or "hard_swish" (or "relu").
        routing: "patch" (the P pixels of a patch go to the same expert, routed on their
            mean) or "token" (each pixel token routed on its own).
        aux_loss_weight: float, weight of the load-balancing loss added with ``add_loss``
            during training; 0 disables it.
        normalize_gates: bool, divide the chosen gates by their sum (with top_k=1 every gate
            becomes 1).

    Weights: ``router_kernel [d, E]``, ``router_bias [E]``, ``expert_kernel_in [E, d, h]``,
    ``expert_bias_in [E, h]``, ``expert_kernel_out [E, h, d]``, ``expert_bias_out [E, d]``.

    Example:
        >>> moe = MoEFeedForward(num_experts=4, hidden_dim=64, top_k=1)
        >>> moe(tf.zeros([2, 4, 16, 32])).shape
        TensorShape([2, 4, 16, 32])
        >>> sorted(moe.route(tf.zeros([2, 4, 16, 32])))
        ['experts', 'gates', 'probs']
    """

    def __init__(self, num_experts=4, hidden_dim=64, top_k=1, activation="swish",
                 routing="patch", aux_loss_weight=0.01, normalize_gates=False, **kwargs):
        super().__init__(**kwargs)
        validate_moe_args(num_experts, top_k, routing, hidden_dim)
        self.num_experts = int(num_experts)
        self.hidden_dim = int(hidden_dim)
        self.top_k = int(top_k)
        self.activation = check_activation(activation)
        self.routing = routing
        self.aux_loss_weight = float(aux_loss_weight)
        self.normalize_gates = bool(normalize_gates)
        self._act = get_activation(self.activation)

    def build(self, input_shape):
        dim = int(input_shape[-1])
        experts, hidden = self.num_experts, self.hidden_dim

        def uniform(fan_in, fan_out):
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            return keras.initializers.RandomUniform(-limit, limit)

        self.router_kernel = self.add_weight(name="router_kernel", shape=(dim, experts),
                                             initializer=uniform(dim, experts))
        self.router_bias = self.add_weight(name="router_bias", shape=(experts,),
                                           initializer="zeros")
        self.expert_kernel_in = self.add_weight(name="expert_kernel_in",
                                                shape=(experts, dim, hidden),
                                                initializer=uniform(dim, hidden))
        self.expert_bias_in = self.add_weight(name="expert_bias_in", shape=(experts, hidden),
                                              initializer="zeros")
        self.expert_kernel_out = self.add_weight(name="expert_kernel_out",
                                                 shape=(experts, hidden, dim),
                                                 initializer=uniform(hidden, dim))
        self.expert_bias_out = self.add_weight(name="expert_bias_out", shape=(experts, dim),
                                               initializer="zeros")
        super().build(input_shape)

    def router_probs(self, x):
        """Router probabilities ``[B, 1, N, E]`` (patch routing) or ``[B, P, N, E]`` (token)."""
        if self.routing == "patch":
            x = tf.reduce_mean(x, axis=1, keepdims=True)  # [B, P, N, d] -> [B, 1, N, d]
        logits = _pointwise(x, self.router_kernel) + self.router_bias
        return tf.nn.softmax(logits, axis=-1)

    def gates(self, probs):
        """The gate of every expert: its probability if chosen (top-k), else 0."""
        mask = top_k_mask(probs, self.top_k)
        gates = probs * mask
        if self.normalize_gates:
            gates = gates / tf.reduce_sum(gates, axis=-1, keepdims=True)
        return gates, mask

    def route(self, x):
        """The routing of a batch, for analysis.

        Returns:
            dict of tensors: ``probs`` and ``gates`` ``[B, 1 or P, N, E]``, and ``experts``
            ``[B, 1 or P, N, top_k]`` int32, the chosen experts in decreasing probability.
        """
        probs = self.router_probs(x)
        gates, _ = self.gates(probs)
        experts = tf.math.top_k(probs, k=self.top_k).indices  # analysis only, not exported
        return {"probs": probs, "gates": gates, "experts": tf.cast(experts, tf.int32)}

    def call(self, x, training=None):
        probs = self.router_probs(x)
        gates, mask = self.gates(probs)
        if training and self.aux_loss_weight > 0:
            self.add_loss(self.aux_loss_weight * load_balancing_loss(probs, mask, self.top_k))
        return self.combine(x, gates)

    def combine(self, x, gates):
        """Runs every expert on every token and sums their outputs weighted by ``gates``."""
        positions, patches, dim = x.shape[1], x.shape[2], x.shape[3]
        experts, hidden = self.num_experts, self.hidden_dim
        gate_positions = gates.shape[1]
        # Expert-major columns: column e * h + j is hidden unit j of expert e.
        kernel_in = tf.reshape(tf.transpose(self.expert_kernel_in, [1, 0, 2]),
                               [dim, experts * hidden])
        hidden_all = _pointwise(x, kernel_in) + tf.reshape(self.expert_bias_in, [-1])
        if self._act is not None:
            hidden_all = self._act(hidden_all)  # [B, P, N, E*h]
        hidden_all = tf.reshape(hidden_all, [-1, positions, patches * experts, hidden])
        gated = hidden_all * tf.reshape(gates, [-1, gate_positions, patches * experts, 1])
        gated = tf.reshape(gated, [-1, positions, patches, experts * hidden])
        kernel_out = tf.reshape(self.expert_kernel_out, [experts * hidden, dim])
        # sum_e g_e (W_e h_e + b_e) = W (g * h) + g @ b
        return _pointwise(gated, kernel_out) + _pointwise(gates, self.expert_bias_out)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "num_experts": self.num_experts,
                "hidden_dim": self.hidden_dim, "top_k": self.top_k,
                "activation": self.activation, "routing": self.routing,
                "aux_loss_weight": self.aux_loss_weight,
                "normalize_gates": self.normalize_gates}


def validate_moe_args(num_experts, top_k, routing, hidden_dim=1):
    """Raises a ValueError naming the bad value in a mixture-of-experts configuration."""
    if int(num_experts) < 1:
        raise ValueError(f"num_experts must be at least 1, got {num_experts}.")
    if not 1 <= int(top_k) <= int(num_experts):
        raise ValueError(f"top_k must be between 1 and num_experts={num_experts}, got {top_k}.")
    if routing not in ROUTING_MODES:
        raise ValueError(f"routing must be one of {ROUTING_MODES}, got {routing!r}.")
    if int(hidden_dim) < 1:
        raise ValueError(f"hidden_dim must be at least 1, got {hidden_dim}.")


def _pointwise(x, kernel):
    """``x @ kernel`` on the last axis of a 4-D tensor, as a 1x1 CONV_2D."""
    return tf.nn.conv2d(x, kernel[None, None], strides=1, padding="VALID")
