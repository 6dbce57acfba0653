"""The mixture-of-experts feed-forward with per-patch, per-token or per-image routing.

Each of E experts is a feed-forward ``d -> hidden_dim -> d``. A linear router scores the
experts for each patch (the mean of its P pixel tokens), for each token, or for the whole
image (the mean of all its tokens); the top-k experts by router probability are kept and
their outputs are summed, each scaled by its gate (the router probability, optionally
renormalised over the chosen experts).

Two inference forms, both converting to ops TFLite Micro runs:

- "masked" (also the default training form): every expert runs on every token and the gates zero out
  the experts a token was not routed to. Exact, costs E feed-forwards. A top-1 batch of one
  (the exported graph) runs it through the sparse form's slots with room for every patch,
  so that the two int8 forms quantise each expert alike. The top-k choice is
  made with REDUCE_MAX, GREATER_EQUAL and CUMSUM (no TOPK_V2 or ONE_HOT).
- "sparse" (top-1): each expert gets ``capacity = ceil(capacity_factor * patches / E)``
  slots; patches are gathered into their expert's slots, each expert runs on its slots
  only, and the results are gathered back and scaled by the gate: about
  ``capacity_factor`` feed-forwards. A patch beyond its expert's capacity skips the
  feed-forward (its residual passes through), as in V-MoE. The slot arithmetic is exact
  int32 (see :func:`dispatch_slots`), because the int8 quantisation of counts drifts.
  ``train_dispatch="sparse"`` trains with the same drops (capacity-aware fine-tuning).

Per-image routing (one expert per image, as Mobile V-MoE, arXiv 2309.04354) needs no slots:
its "sparse" form gathers the chosen expert's weights (GATHER on the stacked ``[E, ...]``
constants, indexed by the router's ARG_MAX) and runs them as two 2-D FULLY_CONNECTED ops
with a runtime filter, the biases added by ADD. Only that expert's multiply-accumulates run
and no patch is ever dropped. Its exported masked form runs every expert through the same
gathered weights (the stacked weights share one per-tensor scale), so the two int8 forms
differ only by the masked form's gating roundings. The filters stay 2-D because CMSIS-NN's
fully connected kernel takes a fast 1x1-convolution path for higher ranks that ignores a
runtime filter's zero point.
"""

import math

from tinymoe.backend import keras, register, tf
from tinymoe.layers.activations import check_activation, get_activation
from tinymoe.layers.building import ScopedBuildMixin
from tinymoe.layers.int8 import activation_points, int8_activation
from tinymoe.layers.moe_checks import (  # noqa: F401 (part of this module's interface)
    DISPATCH_MODES, ROUTING_MODES, validate_dispatch, validate_moe_args, validate_superclasses)
from tinymoe.layers.routing_ops import (
    dispatch_slots, expert_capacity, load_balancing_loss, top_k_mask)

# The weights of the experts, each ``[E, ...]``: one expert is a dense feed-forward's weights
# (:func:`tinymoe.layers.feedforward.feedforward_weights`).
EXPERT_WEIGHTS = ("expert_kernel_in", "expert_bias_in", "expert_kernel_out", "expert_bias_out")



@register
class MoEFeedForward(ScopedBuildMixin, keras.layers.Layer):
    """A mixture-of-experts feed-forward on patch tokens ``[B, P, N, d]``.

    Args:
        num_experts: int >= 1, number of experts E.
        hidden_dim: int, hidden width of each expert.
        top_k: int, 1 <= top_k <= num_experts, experts used per patch (or token).
        activation: expert activation, "swish" or "hard_swish" (or "relu").
        routing: "patch" (the P pixels of a patch go to the same expert, routed on their
            mean), "token" (each pixel token routed on its own) or "image" (every token of
            an image goes to the same expert, routed on the mean of all of them).
        aux_loss_weight: float, weight of the load-balancing loss added with ``add_loss``
            during training; 0 disables it.
        normalize_gates: bool, divide the chosen gates by their sum (with top_k=1 every gate
            becomes 1).
        dispatch: inference form, "masked" (every expert on every token) or "sparse"
            (fixed-capacity top-1 dispatch).
        train_dispatch: training form, "masked" (the default) or "sparse": the forward
            pass drops the patches over capacity, as sparse dispatch will on the device,
            so that fine-tuning teaches the model to do without them (V-MoE and Switch
            train with their capacity too).
        capacity_factor: float >= 1/E, sparse dispatch slots per expert as a multiple of
            patches / E.
        priority: which patches keep their slots when an expert overflows in sparse
            dispatch: "gate" (the highest gates, as V-MoE's batch prioritised routing) or
            "order" (the first patches).
        superclasses: per-image routing only: the super-class (an expert index) of each
            class, or None. With them, training adds ``superclass_loss_weight`` times the
            cross-entropy of the router against the super-class of the image's label (Mobile
            V-MoE's router supervision, weight 0.3 there); see
            :func:`tinymoe.train.compile_for_training`, which installs that loss.
        superclass_loss_weight: float >= 0, the weight of that loss.
        expert_dropout: float in [0, 1), dropout on the experts' hidden units in training
            (Switch Transformer's "expert dropout", which helped its MoEs fine-tune on small
            data); inference and the int8 graph are unchanged. Masked training only.

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
                 routing="patch", aux_loss_weight=0.01, normalize_gates=False,
                 dispatch="masked", capacity_factor=1.25, priority="gate",
                 train_dispatch="masked", superclasses=None, superclass_loss_weight=0.3,
                 expert_dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        validate_moe_args(num_experts, top_k, routing, hidden_dim)
        validate_dispatch(dispatch, capacity_factor, top_k, num_experts)
        validate_dispatch(train_dispatch, capacity_factor, top_k, num_experts)
        if priority not in ("gate", "order"):
            raise ValueError(f"priority must be 'gate' or 'order', got {priority!r}.")
        self.priority = priority
        self.dispatch = dispatch
        self.train_dispatch = train_dispatch
        self.capacity_factor = float(capacity_factor)
        self.num_experts = int(num_experts)
        self.hidden_dim = int(hidden_dim)
        self.top_k = int(top_k)
        self.activation = check_activation(activation)
        self.routing = routing
        self.aux_loss_weight = float(aux_loss_weight)
        self.normalize_gates = bool(normalize_gates)
        self._act = get_activation(self.activation)
        self.superclasses = validate_superclasses(superclasses, self.num_experts, routing)
        if float(superclass_loss_weight) < 0:
            raise ValueError(f"superclass_loss_weight must be at least 0, got "
                             f"{superclass_loss_weight}.")
        self.superclass_loss_weight = float(superclass_loss_weight)
        if not 0.0 <= float(expert_dropout) < 1.0:
            raise ValueError(f"expert_dropout is a dropout rate in [0, 1), got {expert_dropout}.")
        if float(expert_dropout) > 0 and train_dispatch == "sparse":
            raise ValueError("expert_dropout applies to masked training; this layer trains "
                             "with train_dispatch='sparse'.")
        self.expert_dropout = float(expert_dropout)
        self._expert_drop = keras.layers.Dropout(self.expert_dropout)
        self.last_router_probs = None  # the last training call's, for the super-class loss
        # Analysis only, never saved: ``[B]`` int experts that per-image routing uses at
        # inference instead of the router's choice, under the router's own top gate
        # (tinymoe.diagnosis.superclass_oracle).
        self.forced_experts = None

    def build(self, input_shape):
        dim = int(input_shape[-1])
        experts, hidden = self.num_experts, self.hidden_dim
        self.tokens_shape = tuple(input_shape[1:3])  # (P, N)

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

    def router_probs(self, x, training=None):
        """Router probabilities ``[B, 1, N, E]`` (patch routing), ``[B, P, N, E]`` (token)
        or ``[B, 1, 1, E]`` (image)."""
        q = lambda name, value: self.int8(name, value, training)  # noqa: E731
        if self.routing == "patch":
            x = q("router_mean", tf.reduce_mean(x, axis=1, keepdims=True))  # [B, 1, N, d]
        elif self.routing == "image":
            x = q("router_mean", tf.reduce_mean(x, axis=[1, 2], keepdims=True))  # [B, 1, 1, d]
        logits = q("router", _pointwise(x, self.router_kernel) + self.router_bias)
        return q("softmax", tf.nn.softmax(logits, axis=-1))

    def int8_point_names(self):
        # The router's MEAN, CONV_2D and SOFTMAX; each expert's hidden layer (and its
        # activation); the experts' outputs, which share one range (the CONCATENATION that
        # joins them in the int8 graph unifies it); the gated output (MUL).
        if self.routing == "image":
            raise NotImplementedError(
                f"{self.name}: quantisation-aware training of per-image routing is not "
                "supported yet (its int8 graph gathers the chosen expert's weights, which "
                "the int8 simulation does not model). Convert it post-training (tinymoe "
                "export without --qat), or route per patch or token.")
        experts = sum((activation_points(f"expert{e}", self.activation)
                       for e in range(self.num_experts)), ())
        mean = ("router_mean",) if self.routing == "patch" else ()
        return mean + ("router", "softmax") + experts + ("expert_out", "gated")

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
        if self.routing == "image":
            return self._call_image(x, training)
        if (self.train_dispatch if training else self.dispatch) == "sparse":
            if training:
                probs = self.router_probs(x, training)
                self._add_balance_loss(probs, top_k_mask(probs, self.top_k))
            return self.sparse_combine(x)
        if not training and self.top_k == 1 and x.shape[0] == 1:
            # The exported masked graph: every expert on every patch, through the sparse
            # form's slots with room for all patches, so that both int8 forms quantise each
            # expert alike and differ only where sparse dispatch drops a patch.
            return self._sparse_one(x, full=True)
        probs = self.router_probs(x, training)
        gates, mask = self.gates(probs)
        if training:
            self._add_balance_loss(probs, mask)
        if self.simulate_int8:
            return self._combine_int8(x, gates, training)
        return self.combine(x, gates, training)

    def _call_image(self, x, training):
        """Per-image routing: for one image at inference (the exported graph), the gather
        form (sparse dispatch, what the device runs) or every expert gathered alike (masked);
        else every expert under its image's gate (in float all give the same values, and no
        image is ever dropped)."""
        form = self.train_dispatch if training else self.dispatch
        forced = None if training else self.forced_experts
        if forced is None and not training and x.shape[0] == 1 and self.top_k == 1:
            # The exported graphs: the chosen expert alone (sparse), or every expert through
            # the same gathered weights (masked), so that both int8 forms quantise each
            # expert alike, as the per-patch forms do.
            return self._image_select(x) if form == "sparse" else self._image_every(x)
        probs = self.router_probs(x, training)
        gates, mask = self.gates(probs)
        if training:
            self._add_balance_loss(probs, mask)
            self.last_router_probs = probs[:, 0, 0]  # [B, E]
        if forced is not None:  # the same gate value, on the expert given
            chosen = tf.one_hot(forced, self.num_experts, dtype=gates.dtype)[:, None, None]
            gates = chosen * tf.reduce_sum(gates, axis=-1, keepdims=True)
        # Every patch takes its image's gates: [B, 1, 1, E] -> [B, 1, N, E].
        return self.combine(x, gates * tf.ones([1, 1, x.shape[2], 1], gates.dtype), training)

    def _image_select(self, x):
        """One image through its chosen expert alone: the expert's weights are gathered
        from the stacked ones and run as 2-D matrix products (FULLY_CONNECTED with a
        runtime filter in the int8 graph)."""
        positions, patches, dim = x.shape[1], x.shape[2], x.shape[3]
        probs = tf.reshape(self.router_probs(x), [self.num_experts])
        chosen = tf.argmax(probs, axis=-1, output_type=tf.int32)  # ties: lower index
        out = self._gathered_expert(tf.reshape(x, [positions * patches, dim]), chosen)
        if not self.normalize_gates:  # a renormalised single gate is 1
            out = out * tf.reduce_max(probs)
        return tf.reshape(out, [1, positions, patches, dim])

    def _image_every(self, x):
        """One image through every expert, each gathered as :meth:`_image_select` gathers
        the chosen one, scaled by its gate and summed: the masked form, at E experts' MACs.
        The chosen expert comes first, computed and gated exactly as the gather form does;
        then expert (chosen + k) mod E for k = 1 .. E-1 under its gate (0 at top-1), looked
        up in the stacked weights written twice: indices computed at run time, which the
        converter cannot fold, in weights of the same range, so the same int8 scale."""
        positions, patches, dim = x.shape[1], x.shape[2], x.shape[3]
        probs = tf.reshape(self.router_probs(x), [1, self.num_experts])
        gates = tf.reshape(self.gates(probs)[0], [self.num_experts])
        chosen = tf.argmax(probs[0], axis=-1, output_type=tf.int32)  # ties: lower index
        tokens = tf.reshape(x, [positions * patches, dim])
        twice = lambda w: tf.concat([w, w], axis=0)  # noqa: E731
        weights = [twice(getattr(self, name)) for name in EXPERT_WEIGHTS]
        # The chosen expert under its gate as the gather form scales it, then the others
        # under theirs (all 0 at top-1).
        total = self._gathered_expert(tokens, chosen, weights)
        if not self.normalize_gates:  # a renormalised single gate is 1
            total = total * tf.reduce_max(probs)
        for k in range(1, self.num_experts):
            total += (self._gathered_expert(tokens, chosen + k, weights) *
                      tf.gather(twice(gates), chosen + k))
        return tf.reshape(total, [1, positions, patches, dim])

    def _gathered_expert(self, tokens, expert, weights=None):
        """Expert ``expert`` (a scalar int32 tensor) on ``tokens`` ``[n, d]``, its weights
        gathered from the stacked ones (``weights``, as :data:`EXPERT_WEIGHTS` orders them;
        default: the layer's) as FULLY_CONNECTED holds them, ``[out, in]``."""
        kernel_in, bias_in, kernel_out, bias_out = weights or [
            getattr(self, name) for name in EXPERT_WEIGHTS]
        hidden = (tf.matmul(tokens, tf.gather(tf.transpose(kernel_in, [0, 2, 1]), expert),
                            transpose_b=True) + tf.gather(bias_in, expert))
        if self._act is not None:
            hidden = self._act(hidden)
        return (tf.matmul(hidden, tf.gather(tf.transpose(kernel_out, [0, 2, 1]), expert),
                          transpose_b=True) + tf.gather(bias_out, expert))

    def _combine_int8(self, x, gates, training):
        """:meth:`combine` with the int8 points of the exported graph: each expert's output
        is computed on its own, as the sparse form does, and quantised in one shared range."""
        outputs = []
        for e in range(self.num_experts):
            hidden = _pointwise(x, self.expert_kernel_in[e]) + self.expert_bias_in[e]
            hidden = int8_activation(self, f"expert{e}", self.activation, hidden, training)
            if training and self.expert_dropout > 0:
                hidden = self._expert_drop(hidden, training=True)
            outputs.append(_pointwise(hidden, self.expert_kernel_out[e]) +
                           self.expert_bias_out[e])
        outputs = self.int8("expert_out", tf.stack(outputs, axis=-2), training)
        return self.int8("gated", tf.reduce_sum(outputs * gates[..., None], axis=-2), training)

    def _add_balance_loss(self, probs, mask):
        if self.aux_loss_weight > 0:
            self.add_loss(self.aux_loss_weight * load_balancing_loss(probs, mask, self.top_k))

    def combine(self, x, gates, training=None):
        """Runs every expert on every token and sums their outputs weighted by ``gates``
        (in training, with ``expert_dropout`` on the hidden units)."""
        positions, patches, dim = x.shape[1], x.shape[2], x.shape[3]
        experts, hidden = self.num_experts, self.hidden_dim
        gate_positions = gates.shape[1]
        # Expert-major columns: column e * h + j is hidden unit j of expert e.
        kernel_in = tf.reshape(tf.transpose(self.expert_kernel_in, [1, 0, 2]),
                               [dim, experts * hidden])
        hidden_all = _pointwise(x, kernel_in) + tf.reshape(self.expert_bias_in, [-1])
        if self._act is not None:
            hidden_all = self._act(hidden_all)  # [B, P, N, E*h]
        if training and self.expert_dropout > 0:
            hidden_all = self._expert_drop(hidden_all, training=True)
        hidden_all = tf.reshape(hidden_all, [-1, positions, patches * experts, hidden])
        gated = hidden_all * tf.reshape(gates, [-1, gate_positions, patches * experts, 1])
        gated = tf.reshape(gated, [-1, positions, patches, experts * hidden])
        kernel_out = tf.reshape(self.expert_kernel_out, [experts * hidden, dim])
        # sum_e g_e (W_e h_e + b_e) = W (g * h) + g @ b
        return _pointwise(gated, kernel_out) + _pointwise(gates, self.expert_bias_out)

    def dispatch_units(self):
        """What one image's sparse dispatch shares out among the experts: its N patches
        (per-patch routing), its P x N tokens (per-token routing), or the image itself
        (per-image routing: 1, no slots). Known once built."""
        positions, patches = self.tokens_shape
        if self.routing == "image":
            return 1
        return int(patches) if self.routing == "patch" else int(positions) * int(patches)

    def capacity(self, num_patches):
        """Slots per expert in sparse dispatch: ``ceil(capacity_factor * patches / E)``."""
        return expert_capacity(self.capacity_factor, num_patches, self.num_experts)

    def sparse_combine(self, x):
        """Fixed-capacity top-1 dispatch (inference): each expert runs on its slots only."""
        if self.routing == "image":
            return tf.map_fn(lambda item: self._image_select(item[None])[0], x)
        if x.shape[0] == 1:
            return self._sparse_one(x)
        return tf.map_fn(lambda item: self._sparse_one(item[None])[0], x)

    def _sparse_one(self, x, full=False):
        positions, patches, dim = x.shape[1], x.shape[2], x.shape[3]
        if self.routing == "token":  # every token is its own "patch"
            tokens = tf.reshape(x, [1, 1, positions * patches, dim])
            out = self._sparse_one_patch(tokens, full)
            return tf.reshape(out, [1, positions, patches, dim])
        return self._sparse_one_patch(x, full)

    def _sparse_one_patch(self, x, full=False):
        """Top-1 slot dispatch of one image; ``full`` gives every expert a slot per patch."""
        positions, patches, dim = x.shape[1], x.shape[2], x.shape[3]
        experts = self.num_experts
        capacity = patches if full else self.capacity(patches)
        probs = tf.reshape(self.router_probs(x), [patches, experts])
        chosen = tf.argmax(probs, axis=-1, output_type=tf.int32)  # ties: lower index
        gate = tf.reduce_max(probs, axis=-1)  # [n]
        if self.normalize_gates:  # a renormalised single gate is 1
            gate = tf.ones_like(gate)
        slot, source = dispatch_slots(chosen, experts, capacity,
                                      gate if self.priority == "gate" and not full else None)
        tokens = tf.concat([x[0], tf.zeros([positions, 1, dim], x.dtype)], axis=1)  # [P, n+1, d]
        gathered = tf.gather(tokens, source, axis=1)  # [P, E*C, d]
        outputs = []
        for e in range(experts):
            chunk = tf.reshape(gathered[:, e * capacity:(e + 1) * capacity],
                               [positions * capacity, dim])
            hidden = tf.matmul(chunk, self.expert_kernel_in[e]) + self.expert_bias_in[e]
            hidden = int8_activation(self, f"expert{e}", self.activation, hidden)
            out = self.int8("expert_out", tf.matmul(hidden, self.expert_kernel_out[e]) +
                            self.expert_bias_out[e])
            outputs.append(tf.reshape(out, [positions, capacity, dim]))
        outputs.append(tf.zeros([positions, 1, dim], x.dtype))  # the overflow slot
        combined = tf.gather(tf.concat(outputs, axis=1), slot, axis=1)  # [P, n, d]
        return self.int8("gated", combined * tf.reshape(gate, [1, patches, 1]))[None]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "dispatch": self.dispatch,
                "train_dispatch": self.train_dispatch, "capacity_factor": self.capacity_factor,
                "priority": self.priority, "num_experts": self.num_experts,
                "hidden_dim": self.hidden_dim, "top_k": self.top_k,
                "activation": self.activation, "routing": self.routing,
                "aux_loss_weight": self.aux_loss_weight,
                "normalize_gates": self.normalize_gates, "superclasses": self.superclasses,
                "superclass_loss_weight": self.superclass_loss_weight,
                "expert_dropout": self.expert_dropout}


def _pointwise(x, kernel):
    """``x @ kernel`` on the last axis of a 4-D tensor, as a 1x1 CONV_2D."""
    return tf.nn.conv2d(x, kernel[None, None], strides=1, padding="VALID")
